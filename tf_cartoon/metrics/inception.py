"""The FID Inception network (pytorch-fid's "FID Inception", i.e. TF's 2015-12-05 Inception graph) in Keras, NHWC.

Architecture, as pytorch-fid's ``InceptionV3(output_blocks=[3])`` with ``use_fid_inception=True``:
torchvision's Inception3 stem and Mixed_6a / Mixed_7a, with the TF-graph-compatible blocks FIDInceptionA
(Mixed_5b-d), FIDInceptionC (Mixed_6b-e), FIDInceptionE_1 (Mixed_7b) and FIDInceptionE_2 (Mixed_7c), then a
global average pool: 2048-d features. Every conv is ``BasicConv2d`` (no bias, BatchNorm eps 1e-3, ReLU).
The branch average pools of A / C / E_1 leave the zero padding out of the mean (TF's SAME average pool, as
pytorch-fid's ``count_include_pad=False``); E_2's branch pool is a 3x3 stride-1 MAX pool (as the TF graph).

Input: NHWC images in [-1, 1] of any size; they are resized to 299x299 bilinearly with half-pixel centres
(``tf.image.resize(..., antialias=False)``, what pytorch-fid's ``F.interpolate(size=(299, 299),
mode="bilinear", align_corners=False)`` computes). pytorch-fid takes [0, 1] images and maps them with
``2x - 1``; our images already are in [-1, 1].

Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a torch state dict, keys such as
``Mixed_5b.branch1x1.conv.weight`` / ``.bn.running_var``) read with our allow-list reader
``tf_cartoon.io.torch_pickle.load``; the classifier (``fc.*``) and ``num_batches_tracked`` entries are
not used. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3
IGNORED_SUFFIXES = ("num_batches_tracked",)
IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class InceptionWeightsError(ValueError):
    """The --inception file is not pytorch-fid's FID Inception state dict."""


class _Graph:
    """Builds the functional graph block by block (names as pytorch-fid's modules); ``convs`` maps each torch
    prefix to its (conv layer, BatchNorm layer)."""

    def __init__(self, layers):
        self.layers = layers
        self.convs = {}

    def conv(self, x, name, filters, kernel, stride=1, padding="valid"):
        """pytorch-fid's BasicConv2d: conv without bias, BatchNorm, ReLU."""
        layers = self.layers
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        c = layers.Conv2D(filters, (kh, kw), strides=stride, padding=padding, use_bias=False,
                          name=name.replace(".", "__") + "__conv")
        bn = layers.BatchNormalization(epsilon=BN_EPS, name=name.replace(".", "__") + "__bn")
        self.convs[name] = (c, bn)
        return layers.ReLU()(bn(c(x)))

    def same(self, x, name, filters, kernel):  # stride 1, torch padding (k - 1) / 2 on each side
        return self.conv(x, name, filters, kernel, padding="same")

    def avg_pool_no_pad(self, x):
        return self.layers.AveragePooling2D(3, strides=1, padding="same")(x)

    def block_a(self, x, name, pool_features):
        """FIDInceptionA (Mixed_5b-d)."""
        same = self.same
        b1 = same(x, f"{name}.branch1x1", 64, 1)
        b5 = same(same(x, f"{name}.branch5x5_1", 48, 1), f"{name}.branch5x5_2", 64, 5)
        b3 = same(x, f"{name}.branch3x3dbl_1", 64, 1)
        b3 = same(same(b3, f"{name}.branch3x3dbl_2", 96, 3), f"{name}.branch3x3dbl_3", 96, 3)
        bp = same(self.avg_pool_no_pad(x), f"{name}.branch_pool", pool_features, 1)
        return self.layers.Concatenate()([b1, b5, b3, bp])

    def block_b(self, x, name):
        """InceptionB (Mixed_6a): stride-2 reduction."""
        b3 = self.conv(x, f"{name}.branch3x3", 384, 3, stride=2)
        bd = self.same(x, f"{name}.branch3x3dbl_1", 64, 1)
        bd = self.same(bd, f"{name}.branch3x3dbl_2", 96, 3)
        bd = self.conv(bd, f"{name}.branch3x3dbl_3", 96, 3, stride=2)
        bp = self.layers.MaxPooling2D(3, strides=2)(x)
        return self.layers.Concatenate()([b3, bd, bp])

    def block_c(self, x, name, c7):
        """FIDInceptionC (Mixed_6b-e): factorised 7x7 branches of width ``c7``."""
        same = self.same
        b1 = same(x, f"{name}.branch1x1", 192, 1)
        b7 = same(x, f"{name}.branch7x7_1", c7, 1)
        b7 = same(b7, f"{name}.branch7x7_2", c7, (1, 7))
        b7 = same(b7, f"{name}.branch7x7_3", 192, (7, 1))
        bd = same(x, f"{name}.branch7x7dbl_1", c7, 1)
        bd = same(bd, f"{name}.branch7x7dbl_2", c7, (7, 1))
        bd = same(bd, f"{name}.branch7x7dbl_3", c7, (1, 7))
        bd = same(bd, f"{name}.branch7x7dbl_4", c7, (7, 1))
        bd = same(bd, f"{name}.branch7x7dbl_5", 192, (1, 7))
        bp = same(self.avg_pool_no_pad(x), f"{name}.branch_pool", 192, 1)
        return self.layers.Concatenate()([b1, b7, bd, bp])

    def block_d(self, x, name):
        """InceptionD (Mixed_7a): stride-2 reduction."""
        same = self.same
        b3 = self.conv(same(x, f"{name}.branch3x3_1", 192, 1), f"{name}.branch3x3_2", 320, 3, stride=2)
        b7 = same(x, f"{name}.branch7x7x3_1", 192, 1)
        b7 = same(b7, f"{name}.branch7x7x3_2", 192, (1, 7))
        b7 = same(b7, f"{name}.branch7x7x3_3", 192, (7, 1))
        b7 = self.conv(b7, f"{name}.branch7x7x3_4", 192, 3, stride=2)
        bp = self.layers.MaxPooling2D(3, strides=2)(x)
        return self.layers.Concatenate()([b3, b7, bp])

    def block_e(self, x, name, max_pool):
        """FIDInceptionE_1 (Mixed_7b, average branch pool) / E_2 (Mixed_7c, ``max_pool``)."""
        same, layers = self.same, self.layers
        b1 = same(x, f"{name}.branch1x1", 320, 1)
        b3 = same(x, f"{name}.branch3x3_1", 384, 1)
        b3 = layers.Concatenate()([same(b3, f"{name}.branch3x3_2a", 384, (1, 3)),
                                   same(b3, f"{name}.branch3x3_2b", 384, (3, 1))])
        bd = same(x, f"{name}.branch3x3dbl_1", 448, 1)
        bd = same(bd, f"{name}.branch3x3dbl_2", 384, 3)
        bd = layers.Concatenate()([same(bd, f"{name}.branch3x3dbl_3a", 384, (1, 3)),
                                   same(bd, f"{name}.branch3x3dbl_3b", 384, (3, 1))])
        pooled = (layers.MaxPooling2D(3, strides=1, padding="same")(x) if max_pool else self.avg_pool_no_pad(x))
        bp = same(pooled, f"{name}.branch_pool", 192, 1)
        return layers.Concatenate()([b1, b3, bd, bp])

    def stem(self, x):
        """Conv2d_1a .. Conv2d_4a with the two max pools."""
        x = self.conv(x, "Conv2d_1a_3x3", 32, 3, stride=2)
        x = self.conv(x, "Conv2d_2a_3x3", 32, 3)
        x = self.same(x, "Conv2d_2b_3x3", 64, 3)
        x = self.layers.MaxPooling2D(3, strides=2)(x)
        x = self.conv(x, "Conv2d_3b_1x1", 80, 1)
        x = self.conv(x, "Conv2d_4a_3x3", 192, 3)
        return self.layers.MaxPooling2D(3, strides=2)(x)


def _build(layers, keras):
    """The functional graph; returns (inputs, pooled features, {torch prefix: (conv layer, bn layer)})."""
    graph = _Graph(layers)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    x = graph.stem(inputs)
    x = graph.block_a(x, "Mixed_5b", 32)
    x = graph.block_a(x, "Mixed_5c", 64)
    x = graph.block_a(x, "Mixed_5d", 64)
    x = graph.block_b(x, "Mixed_6a")
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = graph.block_c(x, name, c7)
    x = graph.block_d(x, "Mixed_7a")
    x = graph.block_e(x, "Mixed_7b", max_pool=False)
    x = graph.block_e(x, "Mixed_7c", max_pool=True)
    features = layers.GlobalAveragePooling2D()(x)
    return inputs, features, graph.convs


class FIDInception:
    """``FIDInception(path)(images)`` -> [N, 2048] float32 pool features of NHWC images in [-1, 1]."""

    def __init__(self, weights):
        import keras
        from keras import layers

        inputs, features, self._convs = _build(layers, keras)
        self.model = keras.Model(inputs, features, name="fid_inception")
        self.expected = {}
        for name, (c, bn) in self._convs.items():
            kh, kw, cin, cout = c.kernel.shape
            self.expected[f"{name}.conv.weight"] = (cout, cin, kh, kw)
            for part in ("weight", "bias", "running_mean", "running_var"):
                self.expected[f"{name}.bn.{part}"] = (cout,)
        self.path = None
        self.digest = None
        self._forward = None
        if weights is not None:
            self.load(weights)

    def load(self, path) -> None:
        """Read pytorch-fid's state dict from ``path`` into the model (InceptionWeightsError when it is not one)."""
        from tf_cartoon.io import torch_pickle

        path = os.fspath(path)
        sd = torch_pickle.load_state_dict(path, "--inception", InceptionWeightsError)
        missing = [k for k in self.expected if k not in sd]
        if missing:
            raise InceptionWeightsError(
                f"--inception {path}: not pytorch-fid's FID Inception weights (pt_inception-2015-12-05-6726825d"
                f".pth): {len(missing)} keys missing, e.g. {missing[:3]}")
        bad = [f"{k} {tuple(np.shape(sd[k]))} != {shape}" for k, shape in self.expected.items()
               if tuple(np.shape(sd[k])) != shape]
        if bad:
            raise InceptionWeightsError(f"--inception {path}: wrong shapes: {bad[:3]}")
        for name, (c, bn) in self._convs.items():
            w = np.asarray(sd[f"{name}.conv.weight"], np.float32)
            c.kernel.assign(np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO
            bn.set_weights([np.asarray(sd[f"{name}.bn.{p}"], np.float32)
                            for p in ("weight", "bias", "running_mean", "running_var")])
        self.path = path
        self.digest = file_digest(path)

    def __call__(self, images):
        import tensorflow as tf

        if self._forward is None:
            model = self.model

            @tf.function(reduce_retracing=True)
            def forward(x):
                x = tf.image.resize(x, [INPUT_SIZE, INPUT_SIZE], method="bilinear", antialias=False)
                return model(x, training=False)

            self._forward = forward
        x = tf.convert_to_tensor(np.asarray(images, np.float32))
        if x.shape.rank != 4 or x.shape[-1] != 3:
            raise ValueError(f"FID Inception expects NHWC RGB images, got shape {x.shape}")
        return np.asarray(self._forward(x), np.float32)


_DIGESTS: dict = {}


def file_digest(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (memoised per (path, size, mtime) within the process)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_SHARED: list = []


def get_inception(path) -> FIDInception:
    """One FID Inception per process (its Keras graph takes seconds to build), holding ``path``'s weights."""
    if not _SHARED:
        _SHARED.append(FIDInception(None))
    model = _SHARED[0]
    if path is not None and (model.path != os.fspath(path) or model.digest != file_digest(path)):
        model.load(path)
    return model
