"""The StyledConv epilogue: demodulation, noise, bias and leaky ReLU after the modulated convolution.

``styled_epilogue(y, demod, noise_term, bias)`` = lrelu(y * demod + noise_term + bias, 0.2) * sqrt(2), with
y [N, H, W, C], demod [N, C] (None: y is demodulated already, or not at all), noise_term [N or 1, H, W, 1]
(the noise map times its strength), bias [C]. Three paths (dispatch.py family ``styled_epilogue``; auto:
``fast`` on CPU, ``direct`` where a GPU is visible; exports: ``plain``):
  * ``direct``: the product and the sum, then ``bias_act`` (the reference's layer order);
  * ``fast``: ONE compiled pass over the feature map (XLA fuses it) instead of four, and a backward pass that
    keeps the output only (neither y nor the pre-activation), rebuilding what it needs from it;
  * ``plain``: plain TF ops (no XLA cluster) with fewer passes than ``direct``; TF's own gradients.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_cartoon.ops.bias_act import bias_act
from tf_cartoon.ops.compiled import compiled
from tf_cartoon.ops.dispatch import choose, register

register("styled_epilogue", ("direct", "fast", "plain"), {"CPU": "fast", "GPU": "direct"}, export="plain")

GAIN = np.sqrt(2.0)
# styled_epilogue's demod where the convolution has applied the demodulation and the gain already (an export's
# plain Winograd with folded per-sample weights, modulated_conv2d): what is left is lrelu(y + (noise + bias) g).
FOLDED = "demodulation and gain folded into y"


def styled_epilogue(y, demod, noise_term, bias, impl: str = "auto"):
    """lrelu(y * demod + noise_term + bias, 0.2) * sqrt(2) (shapes in the module docstring); demod FOLDED: y is
    y * demod * sqrt(2) already."""
    if isinstance(demod, str) and demod == FOLDED:
        return _plain(y, None, noise_term, bias)
    unsupported = None
    if demod is None:
        unsupported = "no demodulation to fuse"
    elif y.shape[1] is None or y.shape[2] is None:
        unsupported = f"H or W unknown at trace time ({y.shape})"
    path = choose("styled_epilogue", impl, unsupported=unsupported)
    if path == "direct":
        z = y if demod is None else y * demod[:, None, None, :]
        return bias_act(z + noise_term, bias, "lrelu")
    if path == "plain":
        return _plain(y, demod, noise_term, bias)
    if y.shape[0] is None or noise_term.shape[0] is None:  # the noise gradient's broadcast needs static batches
        return _forward(y, demod, noise_term, bias)
    return _fast(y, demod, noise_term, bias)


def _plain(y, demod, noise_term, bias):
    """Fewer passes over the feature map in plain TF ops than ``direct``: the gain (> 0) goes into the small
    operands, lrelu(z) * g = lrelu(z * g); a noise map shared by the batch (the stored noise of exports) and
    the bias are added as one [1, H, W, C] term, made once per call where the batch needs it N times.
    Measured (quiet 2-core EPYC, [4, 256, 256, 128] float32, best of 15, ms): that form 47, the noise and the
    bias added apart 56, the compiled one-pass 29."""
    g = tf.cast(GAIN, y.dtype)
    z = y if demod is None else y * (demod * g)[:, None, None, :]  # None: y carries demod * g (FOLDED)
    if noise_term.shape[0] == 1:
        return tf.nn.leaky_relu(z + (noise_term + tf.cast(bias, y.dtype)) * g, 0.2)
    return tf.nn.leaky_relu(tf.nn.bias_add(z + noise_term * g, tf.cast(bias, y.dtype) * g), 0.2)


@compiled
def _forward(y, demod, noise_term, bias):
    z = y * demod[:, None, None, :] + noise_term + bias
    return tf.nn.leaky_relu(z, 0.2) * tf.cast(GAIN, z.dtype)


@tf.custom_gradient
def _fast(y, demod, noise_term, bias):
    out = _forward(y, demod, noise_term, bias)

    def grad(dout):
        return _backward(dout, out, demod, noise_term, bias)

    return out, grad


@compiled
def _grad(dout, out, demod, noise_term, bias):
    """(dy, ddemod, dnoise_term, dbias) from the output only (see _reductions)."""
    dy = _dy(dout, out, demod)
    return (dy, *_reductions(dout, out, demod, noise_term, bias))


def _dz(dout, out):
    # out > 0 exactly where the pre-activation z > 0 (leaky ReLU keeps the sign)
    return tf.where(out > 0, dout, dout * tf.cast(0.2, dout.dtype)) * tf.cast(GAIN, dout.dtype)


def _dy(dout, out, demod):
    return _dz(dout, out) * demod[:, None, None, :]


def _reductions(dout, out, demod, noise_term, bias):
    """(ddemod, dnoise_term, dbias), reading the output (the next layer's input, kept anyway), never z or y:
    the leaky ReLU is inverted to get z, and y = (z - noise_term - bias) / demod (demod = rsqrt(. + 1e-8) > 0),
    rebuilt in float32 (mixed precision). Neither is kept between the passes: two image-sized tensors less
    per styled conv."""
    dz = _dz(dout, out)
    f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731
    z = f32(out) * tf.where(out > 0, np.float32(1.0 / GAIN), np.float32(1.0 / (0.2 * GAIN)))
    y = (z - f32(noise_term) - f32(bias)) / f32(demod)[:, None, None, :]
    ddemod = tf.cast(tf.reduce_sum(f32(dz) * y, axis=[1, 2]), demod.dtype)
    dnoise = tf.reduce_sum(dz, axis=-1, keepdims=True)
    if noise_term.shape[0] == 1 and dnoise.shape[0] != 1:  # one noise map broadcast over the batch
        dnoise = tf.reduce_sum(dnoise, axis=0, keepdims=True)
    dbias = tf.reduce_sum(dz, axis=[0, 1, 2])
    return ddemod, dnoise, dbias


_dy_xla = compiled(_dy)
_reductions_xla = compiled(_reductions)

# XLA's CPU backend materialises each reduced product (dz, dz * y) as a full map: 0.4 GB at 256 px for 4
# images. Above this many bytes per map the reductions go one image at a time (one compiled call per image,
# each after the previous one), and dy (elementwise only, no temporaries) is a call of its own.
GRAD_SPLIT_BYTES = 32 * 2 ** 20


def _backward(dout, out, demod, noise_term, bias):
    n = dout.shape[0]
    if n is None or n == 1 or dout.shape.num_elements() * dout.dtype.size <= GRAD_SPLIT_BYTES:
        return _grad(dout, out, demod, noise_term, bias)
    shared_noise = noise_term.shape[0] == 1
    parts, last = [], []
    for i in range(n):
        with tf.control_dependencies(last):
            take = lambda t: t[i: i + 1]  # noqa: E731
            parts.append(_reductions_xla(take(dout), take(out), take(demod),
                                         noise_term if shared_noise else take(noise_term), bias))
        last = list(parts[-1])
    with tf.control_dependencies(last):
        dy = _dy_xla(dout, out, demod)
    ddemod, dnoise, dbias = (list(t) for t in zip(*parts))
    dnoise = tf.add_n(dnoise) if shared_noise else tf.concat(dnoise, axis=0)
    return dy, tf.concat(ddemod, axis=0), dnoise, tf.add_n(dbias)
