"""The networks' stride-1 convolutions (3x3 SAME, 1x1), NHWC: a direct path and exact faster CPU rewrites.

Two paths each (dispatch.py families ``conv3x3`` and ``conv1x1``; auto: ``fast`` on CPU, ``direct`` where a
GPU is visible, as cuDNN already picks Winograd / FFT algorithms itself), and a third for the 3x3 conv:
  * ``direct``: one ``tf.nn.conv2d`` (cuDNN / oneDNN / Eigen).
  * ``fast``: the same maths with hand-written gradients built from forward-speed blocks (ops/conv_grad.py).
    The 3x3 forward pass is Winograd (ops/winograd.py: F(4x4, 3x3) in float32, F(2x2, 3x3) otherwise) where
    it measured faster (wide layers), else oneDNN's conv2d; the 1x1 conv is a matmul over the pixels.
  * ``plain``: the forward pass in plain TF ops with TF's own gradients, what exports run. conv3x3: Winograd
    (winograd.winograd_plain) where the fast path takes it and the input is float32 or bfloat16 (F(2x2): at
    >= 256 channels faster than oneDNN's bfloat16 conv2d on a CPU with AVX512_BF16), else oneDNN's conv2d;
    conv1x1: the fast path's matmuls.
The stride-2 convolutions of the up- and downsampling layers are in ops/phase_conv.py.

Both paths are exact reformulations (equal up to float rounding); tests compare them, values and gradients to
second order. Exports use the plain paths (dispatch.plain_ops: no nested XLA clusters in a SavedModel that TF
Serving must run).
"""

from __future__ import annotations

import tensorflow as tf

from tf_cartoon.ops.conv_grad import flip_t, phases, scale_grads, scaled, tap_matmuls
from tf_cartoon.ops.dispatch import choose, register
from tf_cartoon.ops.winograd import use_winograd, winograd, winograd_plain

# bench (2-core EPYC): TF's CPU filter gradient runs 4-6x below the forward conv's speed; cuDNN needs no help.
register("conv3x3", ("direct", "fast", "plain"), {"CPU": "fast", "GPU": "direct"}, export="plain")
register("conv1x1", ("direct", "fast", "plain"), {"CPU": "fast", "GPU": "direct"}, export="plain")


def unknown_hw(x) -> str | None:
    """Why a fast path cannot run on x (its graphs need static H and W), or None."""
    return None if x.shape[1] is not None and x.shape[2] is not None else f"H or W unknown at trace time ({x.shape})"


def conv1x1(x, w, stride: int = 1, impl: str = "auto", scale=None):
    """VALID 1x1 convolution with stride 1 or 2; x [N, H, W, Ci], w [1, 1, Ci, Co]. The fast path is a
    matmul over the (subsampled) pixels: its gradients are matmuls too, where TF's CPU filter gradient
    of a 1x1 convolution over a large image is slow.

    scale [N, Ci] (optional, stride 1): the convolution of x * scale (ToRGB's modulation). The fast and plain
    paths fold the scale into per-sample weights (one [Ci, Co] matrix per image, a few KB) instead of writing
    the image-sized x * scale; the fast path keeps x, not x * scale, for the backward pass (see conv3x3), the
    plain one (exports) takes TF's own gradients."""
    path = choose("conv1x1", impl, unsupported=unknown_hw(x))
    if path == "direct" or stride not in (1, 2):
        return tf.nn.conv2d(x if scale is None else scaled(x, scale), w, stride, "VALID")
    if scale is not None:
        if stride != 1:
            raise ValueError("conv1x1: scale needs stride 1")
        return _conv1x1_scaled_forward(x, scale, w) if path == "plain" else _conv1x1_scaled_fast(x, scale, w)
    if stride == 2:
        x = phases(x)[(0, 0)]
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(w, w.shape[2:]))
    return tf.reshape(y, [-1, x.shape[1], x.shape[2], w.shape[-1]])


def _conv1x1_scaled_forward(x, scale, w):
    """x * scale times the 1x1 kernel w as one matmul per image with the scale in its weights: [N, H W, Ci] x
    [N, Ci, Co]. The image is read once; x * scale would be written and read again (at 256 px a ToRGB's input
    is 134 MB for 4 images)."""
    h, wd, ci, co = x.shape[1], x.shape[2], x.shape[3], w.shape[-1]
    per_sample = scale[:, :, None] * tf.reshape(w, [1, ci, co])
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, h * wd, ci]), per_sample), [-1, h, wd, co])


@tf.custom_gradient
def _conv1x1_scaled_fast(x, scale, w):
    h, wd, ci, co = x.shape[1], x.shape[2], x.shape[3], w.shape[-1]
    w2 = tf.reshape(w, [ci, co])
    y = _conv1x1_scaled_forward(x, scale, w)

    def grad(dy):
        dxs = tf.reshape(tf.matmul(tf.reshape(dy, [-1, co]), w2, transpose_b=True), [-1, h, wd, ci])
        dx, dscale = scale_grads(dxs, x, scale)
        # sum over samples of scale_n * (x_n^T dy_n): per-sample [Ci, Co] products, then the scales
        per_sample = tf.matmul(tf.reshape(x, [-1, h * wd, ci]), tf.reshape(dy, [-1, h * wd, co]), transpose_a=True)
        dw = tf.reduce_sum(scale[:, :, None] * per_sample, axis=0)
        return dx, dscale, tf.reshape(dw, [1, 1, ci, co])

    return y, grad


def plain_winograd(x, w) -> bool:
    """Whether conv3x3's plain path computes x by w with Winograd (float32 / bfloat16, where use_winograd)."""
    return x.dtype in (tf.float32, tf.bfloat16) and use_winograd(x, w)


def conv3x3(x, w, impl: str = "auto", scale=None):
    """SAME stride-1 3x3 correlation; x [N, H, W, Ci], w [3, 3, Ci, Co] -> [N, H, W, Co].

    scale [N, Ci] (optional): the correlation of x * scale (a modulated conv's input scaling). The fast path
    then keeps x, not x * scale, for the backward pass and recomputes the product there: one image-sized
    tensor less per layer held between the forward and the backward pass."""
    path = choose("conv3x3", impl, unsupported=unknown_hw(x))
    if path == "plain" and plain_winograd(x, w):
        return winograd_plain(x, w, scale)
    if path != "fast":  # float16 exports (GPUs) keep the convolution op
        return tf.nn.conv2d(x if scale is None else scaled(x, scale), w, 1, "SAME")
    return _conv3x3_fast(x, w) if scale is None else _conv3x3_scaled_fast(x, scale, w)


@tf.custom_gradient
def _conv3x3_fast(x, w):
    y = _conv3x3_forward(x, w)

    return y, lambda dy: _conv3x3_backward(x, dy, w)


def _conv3x3_backward(x, dy, w, scale=None):
    """(dx, dw) of the stride-1 3x3 conv of x (of x * scale when given: then dx is the gradient of x and a
    third output the gradient of scale): the adjoint conv, and one matmul per tap."""
    dxs = _conv3x3_fast(dy, flip_t(w))
    dw = tap_matmuls(x, dy, 3, 1, pad=1, scale=scale)
    if scale is None:
        return dxs, dw
    return (*scale_grads(dxs, x, scale), dw)


def _conv3x3_forward(x, w, scale=None):
    if use_winograd(x, w):
        return winograd(x, w, scale)
    return tf.nn.conv2d(x if scale is None else scaled(x, scale), w, 1, "SAME")


@tf.custom_gradient
def _conv3x3_scaled_fast(x, scale, w):
    y = _conv3x3_forward(x, w, scale)

    # x * scale is not kept: the filter gradient scales its bands of x, the input gradient needs w only
    return y, lambda dy: _conv3x3_backward(x, dy, w, scale)

