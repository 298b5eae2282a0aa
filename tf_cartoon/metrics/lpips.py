"""LPIPS-VGG (Zhang et al. 2018; the ``lpips`` package's ``LPIPS(net="vgg", version="0.1")``) in TensorFlow.

    d(a, b) = sum_l mean_hw( w_l . (f_l(a) / (|f_l(a)| + 1e-10) - f_l(b) / (|f_l(b)| + 1e-10))^2 )

f_l: VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 activations (Keras' block1_conv2, block2_conv2,
block3_conv3, block4_conv3, block5_conv3 outputs), |.| the L2 norm over channels at each position, w_l the
v0.1 linear layers (1x1 convs to one channel, no bias). Images are NHWC in [-1, 1] (``normalize=False``).

Weights, all local files (nothing is downloaded):

* the linear layers: ``weights/v0.1/vgg.pth`` that the ``lpips`` wheel ships (keys ``lin{0-4}.model.1.weight``),
  found inside an installed ``lpips`` package without importing it (its import needs torchvision), or
  given as a path; read with ``tf_cartoon.io.torch_pickle.load``.
* the VGG16 (``--vgg16_weights``), either
  - torchvision's ImageNet VGG16 state dict (``vgg16-397923af.pth``, keys ``features.N.weight``; the file
    ``lpips`` itself uses): EXACT LPIPS. Images go in through LPIPS' scaling layer,
    ``(x - shift) / scale`` with shift (-.030, -.088, -.188) and scale (.458, .448, .450), RGB;
  - or a keras.applications VGG16 ``include_top=False`` .h5 (as ``tf_cartoon.project`` takes; loaded by its
    loader). Those are the Oxford/caffe VGG16 weights, a different network from torchvision's: the images
    go in as that network expects (BGR, 0..255 minus the caffe means) and the v0.1 linear layers, learned on
    torchvision's channels, weight unrelated channels. The distance is LPIPS-shaped but NOT the published
    LPIPS: use the torchvision file for numbers comparable with other papers.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
LIN_CHANNELS = (64, 128, 256, 512, 512)
LIN_FILE = os.path.join("weights", "v0.1", "vgg.pth")
# torchvision vgg16().features indices of the 13 convs, in the order of Keras' VGG16 conv layers
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class LPIPSWeightsError(ValueError):
    """A weights file given for LPIPS does not hold what it should."""


def find_lpips_weights() -> str | None:
    """``lpips/weights/v0.1/vgg.pth`` of an installed ``lpips`` package, or None.

    Looks the package folder up with importlib's finder, which does not run the package's code."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, LIN_FILE)
        if os.path.isfile(candidate):
            return candidate
    return None


def _load_state_dict(path, what) -> dict:
    from tf_cartoon.io import torch_pickle

    return torch_pickle.load_state_dict(path, what, LPIPSWeightsError)


def load_lin_weights(path) -> list[np.ndarray]:
    """The five v0.1 linear layers as [C] float32 vectors."""
    sd = _load_state_dict(os.fspath(path), "--lpips")
    out = []
    for i, c in enumerate(LIN_CHANNELS):
        key = f"lin{i}.model.1.weight"
        if key not in sd or tuple(np.shape(sd[key])) != (1, c, 1, 1):
            raise LPIPSWeightsError(f"--lpips {path}: not the lpips package's v0.1 vgg.pth (needs {key} of shape "
                                    f"(1, {c}, 1, 1), got {tuple(np.shape(sd[key])) if key in sd else 'none'})")
        out.append(np.asarray(sd[key], np.float32).reshape(c))
    return out


def _vgg_taps(keras):
    from tf_cartoon.project import VGG_LAYERS

    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    vgg.trainable = False
    return vgg, keras.Model(vgg.input, [vgg.get_layer(name).output for name in VGG_LAYERS])


def _load_torchvision_vgg(path):
    import keras

    sd = _load_state_dict(path, "--vgg16_weights")
    vgg, taps = _vgg_taps(keras)
    convs = [layer for layer in vgg.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer, idx in zip(convs, TORCHVISION_CONV_INDICES):
        w, b = sd.get(f"features.{idx}.weight"), sd.get(f"features.{idx}.bias")
        kernel_shape = tuple(layer.kernel.shape)
        want = (kernel_shape[3], kernel_shape[2], 3, 3)
        if w is None or b is None or tuple(np.shape(w)) != want:
            raise LPIPSWeightsError(f"--vgg16_weights {path}: not torchvision's VGG16 state dict (needs "
                                    f"features.{idx}.weight of shape {want})")
        layer.set_weights([np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0)), np.asarray(b, np.float32)])
    return taps


class LPIPS:
    """``LPIPS(vgg16_weights, lin_weights=None)(a, b)`` -> [N] float32 distances of NHWC images in [-1, 1]."""

    def __init__(self, vgg16_weights, lin_weights=None):
        import tensorflow as tf

        vgg16_weights = os.fspath(vgg16_weights)
        if lin_weights is None:
            lin_weights = find_lpips_weights()
            if lin_weights is None:
                raise FileNotFoundError("no LPIPS linear weights: pip install --no-deps lpips (its wheel ships "
                                        "weights/v0.1/vgg.pth) or give --lpips PATH to that file")
        self.lin_path = os.fspath(lin_weights)
        self.lins = [tf.constant(w) for w in load_lin_weights(self.lin_path)]
        self.vgg_path = vgg16_weights
        if vgg16_weights.endswith(".h5"):
            from tf_cartoon.project import VGGPerceptual

            self.taps = VGGPerceptual(vgg16_weights).model
            self.exact = False
            self._prep = VGGPerceptual.preprocess
        else:
            if not os.path.isfile(vgg16_weights):
                raise FileNotFoundError(f"--vgg16_weights {vgg16_weights} does not exist or is not a file")
            self.taps = _load_torchvision_vgg(vgg16_weights)
            self.exact = True
            shift, scale = tf.constant(LPIPS_SHIFT), tf.constant(LPIPS_SCALE)
            self._prep = lambda x: (tf.convert_to_tensor(x, tf.float32) - shift) / scale
        taps, lins, prep = self.taps, self.lins, self._prep

        @tf.function(reduce_retracing=True)
        def distance(a, b):
            n = tf.shape(a)[0]
            feats = taps(prep(tf.concat([a, b], 0)), training=False)
            total = tf.zeros([n])
            for f, w in zip(feats, lins):
                f = f / (tf.sqrt(tf.reduce_sum(tf.square(f), axis=-1, keepdims=True)) + NORM_EPS)
                diff = tf.square(f[:n] - f[n:])
                total += tf.reduce_mean(tf.tensordot(diff, w, axes=[[3], [0]]), axis=[1, 2])
            return total

        self._distance = distance

    def __call__(self, a, b) -> np.ndarray:
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two NHWC RGB batches of one shape, got {a.shape} and {b.shape}")
        return np.asarray(self._distance(a, b), np.float32)
