"""StyleGAN2's modulated convolution as a plain function, NHWC (the Keras layer in layers.py owns the weights).

``modulated_conv2d(x, weight, styles)``: W' = W * s (per sample, per input channel); with demodulation
W' *= rsqrt(sum_{kh,kw,in} W'^2 + 1e-8) (per sample, per output channel). Two numerically equal forms:
  * non-fused (default): scale the input by s, run ONE shared convolution over the batch (ops/conv.py,
    ops/phase_conv.py: their fast paths take s separately and keep x, not x * s, for the backward pass), then
    scale the output by the demodulation coefficients. Much faster with oneDNN / cuDNN;
  * fused: per-sample weights and one grouped convolution (groups = N) over the batch folded into channels
    (the reference's form).
Upsampling: stride-2 transposed convolution without padding (2H + k - 2), then the FIR blur ``upfirdn2d(.,
fir, pad)``: 2H for the 3x3 kernel with the (1, 3, 3, 1) filter.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_cartoon.ops import dispatch
from tf_cartoon.ops.conv import conv1x1, conv3x3, plain_winograd, unknown_hw
from tf_cartoon.ops.epilogue import FOLDED, GAIN
from tf_cartoon.ops.conv_grad import scaled
from tf_cartoon.ops.phase_conv import conv_transpose3x3_up2_blur
from tf_cartoon.ops.upfirdn2d import upfirdn2d
from tf_cartoon.ops.winograd import folding_pays, winograd_plain


def demodulation(weight, styles):
    """rsqrt(sum_{kh,kw,in} (W s)^2 + 1e-8) = rsqrt(s^2 @ sum_{kh,kw} W^2 + 1e-8): [N, out]."""
    return tf.math.rsqrt(tf.matmul(tf.square(styles), tf.reduce_sum(tf.square(weight), axis=[0, 1])) + 1e-8)


def modulated_conv2d(x, weight, styles, demodulate=True, upsample=None, fused=False, defer_demod=False):
    """The modulated convolution of x [N, H, W, in] with weight [k, k, in, out] (equalised scale applied) and
    styles [N, in]; "SAME" padding, or upsampling by 2 when ``upsample`` is the blur's (fir, pad).

    defer_demod: return (y, demod) with the demodulation coefficients [N, out] not yet applied, for a caller
    that fuses them into its epilogue (ops/epilogue.py); demod is None where nothing is left to apply (no
    demodulation, or the fused form, which folds it into the weights), and ``epilogue.FOLDED`` where an export's
    plain Winograd folded the style, the demodulation and the epilogue's gain into per-sample weights (a 3x3
    conv without upsampling where that pays, winograd.folding_pays): y is then styled_epilogue's input as is."""
    if fused:
        y = _fused(x, weight, styles, demodulate, upsample)
        return (y, None) if defer_demod else y
    if defer_demod and demodulate and weight.shape[0] == 3 and upsample is None and _folds(x, weight):
        out_scale = demodulation(weight, styles) * tf.cast(GAIN, x.dtype)
        return winograd_plain(x, weight, styles, out_scale), FOLDED
    y = _scaled_conv(x, weight, styles, upsample)
    demod = demodulation(weight, styles) if demodulate else None
    if defer_demod or demod is None:  # a per-channel scale: commutes with the (linear, depthwise) blur
        return (y, demod) if defer_demod else y
    return y * demod[:, None, None, :]


def _folds(x, weight) -> bool:
    """Whether conv3x3 takes its plain Winograd here (exports) and folding the scales into it pays."""
    if unknown_hw(x) or dispatch.choose("conv3x3") != "plain":
        return False
    return plain_winograd(x, weight) and folding_pays(x, weight)


def _scaled_conv(x, weight, styles, upsample):
    """The convolution (+ upsampling blur) of x * styles; the networks' 3x3 and 1x1 shapes take their
    rewritten paths, any other kernel size the direct TF ops."""
    k = weight.shape[0]
    if k == 3 and upsample is not None:
        return conv_transpose3x3_up2_blur(x, weight, *upsample, scale=styles)
    if k == 3:
        return conv3x3(x, weight, scale=styles)
    if k == 1 and upsample is None:
        return conv1x1(x, weight, scale=styles)
    x = scaled(x, styles)
    if upsample is None:
        p = k // 2
        return tf.nn.conv2d(x, weight, 1, [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID")
    shape, co = tf.shape(x), weight.shape[-1]
    out_shape = tf.stack([shape[0], 2 * shape[1] + k - 2, 2 * shape[2] + k - 2, co])
    y = tf.nn.conv2d_transpose(x, tf.transpose(weight, [0, 1, 3, 2]), out_shape, strides=2, padding="VALID")
    if x.shape[1] is not None:
        y = tf.ensure_shape(y, [x.shape[0], 2 * x.shape[1] + k - 2, 2 * x.shape[2] + k - 2, co])
    return upfirdn2d(y, upsample[0], pad=upsample[1])


def _fused(x, weight, styles, demodulate, upsample):
    """Per-sample weights, one grouped convolution (groups = N) over [1, H, W, N * in]; group g is sample g."""
    k, cin, cout = weight.shape[0], weight.shape[2], weight.shape[3]
    wt = weight[None] * styles[:, None, None, :, None]  # [N, k, k, in, out]
    if demodulate:
        wt = wt * tf.math.rsqrt(tf.reduce_sum(tf.square(wt), axis=[1, 2, 3]) + 1e-8)[:, None, None, None, :]
    shape = tf.shape(x)
    n, h, wd = shape[0], shape[1], shape[2]
    xg = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), tf.stack([1, h, wd, n * cin]))
    wg = tf.reshape(tf.transpose(wt, [1, 2, 3, 0, 4]), tf.stack([k, k, cin, n * cout]))
    if upsample is not None:
        # Transposed stride-2 conv = zero insertion, pad k-1, correlation with the flipped kernel.
        xg = upfirdn2d(xg, np.ones([1, 1], np.float32), up=2, pad=(k - 1, k - 1 - 1), impl="ref")
        wg, pads = wg[::-1, ::-1], "VALID"
    else:
        p = k // 2
        pads = [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
    if dispatch.device() == "GPU":
        y = tf.nn.conv2d(xg, wg, 1, pads)
    else:  # TF has no CPU gradient for grouped convolutions: same maths as per-sample patches x weights
        y = _grouped_conv_patches(xg, wg, pads, k, n, cin, cout)
    ys = tf.shape(y)
    y = tf.transpose(tf.reshape(y, tf.stack([ys[1], ys[2], n, cout])), [2, 0, 1, 3])
    if x.shape[0] is not None and x.shape[1] is not None:
        up = upsample is not None
        oh, ow = (2 * x.shape[1] + k - 2, 2 * x.shape[2] + k - 2) if up else (x.shape[1], x.shape[2])
        y = tf.ensure_shape(y, [x.shape[0], oh, ow, cout])
    return y if upsample is None else upfirdn2d(y, upsample[0], pad=upsample[1])


def _grouped_conv_patches(xg, wg, pads, k, n, cin, cout):
    """Grouped conv (groups = N) as patches @ per-sample weights; [1, H, W, N*in] -> [1, H', W', N*out]."""
    if pads != "VALID":
        xg = tf.pad(xg, pads)
    s = tf.shape(xg)
    x = tf.transpose(tf.reshape(xg, tf.stack([s[1], s[2], n, cin])), [2, 0, 1, 3])  # [N, H, W, in]
    patches = tf.image.extract_patches(x, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")  # [N,H',W',k*k*in]
    w = tf.transpose(tf.reshape(wg, tf.stack([k * k * cin, n, cout])), [1, 0, 2])  # [N, k*k*in, out]
    y = tf.einsum("nhwi,nio->nhwo", patches, w)
    ys = tf.shape(y)
    return tf.reshape(tf.transpose(y, [1, 2, 0, 3]), tf.stack([1, ys[1], ys[2], n * cout]))
