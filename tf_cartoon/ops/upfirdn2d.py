"""upfirdn2d: upsample, FIR-filter, downsample, on NHWC tensors.

Definition (the reference's, rosinality/stylegan2-pytorch op/upfirdn2d.py):
  1. insert ``up - 1`` zeros after every sample (per axis),
  2. pad each axis by ``(pad0, pad1)``; negative pads crop,
  3. convolve with the FIR kernel (a true convolution: the kernel is flipped),
  4. keep every ``down``-th sample.
Output size per axis: ``(in * up + pad0 + pad1 - k + down) // down``.

Layout: NHWC ``[N, H, W, C]``; the kernel is ``[kh, kw]`` (or 1-D ``[k]``,
meaning the separable outer product) and is applied to every channel alike.

Implementations (``impl``):
  * ``"ref"``: the definition above, step by step (zero insertion by reshape,
    ``tf.pad`` / slicing, one 2-D depthwise convolution, strided slicing).
  * ``"tf"`` (default): the same maths with fewer passes over memory:
    up-sampling by 2 is a stride-2 transposed depthwise convolution
    (no zeros are materialised), down-sampling is folded into the convolution's
    stride. Plain TF ops, XLA-compilable, differentiable to any order. Also
    called ``"xla"``.
  * ``"custom"``: the compiled op (custom_ops/upfirdn2d.cc / .cu, tf_cartoon/ops/custom.py).
  ``"auto"`` resolves through tf_cartoon.ops.dispatch (env TF_CARTOON_OPS_IMPL).
Every path is tested against ``"ref"`` in tests/test_ops.py (the compiled op in
tests/test_custom_ops.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_cartoon.arch import make_kernel  # noqa: F401  (re-exported: the ops' FIR kernels)
from tf_cartoon.ops.dispatch import choose, register

# auto takes the compiled op only where it measured faster than the pure-TF path in a plain (non-XLA) graph,
# which is what auto would run otherwise. `python -m tf_cartoon.bench --what ops` (README; 2-core shared CPU,
# approximate), NHWC float32, forward / forward + backward:
#   blur 4x4 [4, 256, 256, 64]:  compiled 50 / 90 ms    plain TF 59 / 122 ms    XLA 2600 / 6000 ms
#   down 2 [4, 256, 256, 64]:    compiled 13 / 45 ms    plain TF 25 / 138 ms    XLA 1100 / 6400 ms
#   up 2 (RGB) [4, 128, 128, 3]: compiled 7.6 / 12 ms   plain TF 5.9 / 27 ms
# GPU: not measured (no GPU was available), so the pure-TF path stays auto there; TF_CARTOON_OPS_IMPL=custom
# opts in.
register("upfirdn2d", ("tf", "ref", "custom"), {"CPU": "custom", "GPU": "tf"})


# ---------------------------------------------------------------------------
# FIR kernels
# ---------------------------------------------------------------------------

def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (x, y), got {v!r}")
    return int(v[0]), int(v[1])


def _pads(pad):
    """(pad0, pad1) for both axes, or (x0, x1, y0, y1) as in the reference."""
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad
    raise ValueError(f"pad must have 2 or 4 entries, got {pad!r}")


def upfirdn2d_output_size(in_size: int, k: int, up: int, down: int, pad0: int, pad1: int) -> int:
    return (in_size * up + pad0 + pad1 - k + down) // down


# ---------------------------------------------------------------------------
# Reference implementation: the definition, step by step.
# ---------------------------------------------------------------------------

def _upfirdn2d_ref(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1):
    n, h, w, c = _shape(x)
    kh, kw = kernel.shape
    # 1. zero insertion: [N, H, 1, W, 1, C] padded after the unit axes.
    x = tf.reshape(x, [n, h, 1, w, 1, c])
    x = tf.pad(x, [[0, 0], [0, 0], [0, upy - 1], [0, 0], [0, upx - 1], [0, 0]])
    x = tf.reshape(x, [n, h * upy, w * upx, c])
    # 2. pad (positive part) then crop (negative part).
    x = tf.pad(x, [[0, 0], [max(py0, 0), max(py1, 0)], [max(px0, 0), max(px1, 0)], [0, 0]])
    hh, ww = h * upy + max(py0, 0) + max(py1, 0), w * upx + max(px0, 0) + max(px1, 0)
    x = x[:, max(-py0, 0): hh - max(-py1, 0), max(-px0, 0): ww - max(-px1, 0), :]
    # 3. true convolution = correlation with the flipped kernel, per channel.
    f = tf.constant(kernel[::-1, ::-1].copy(), x.dtype)
    f = tf.tile(tf.reshape(f, [kh, kw, 1, 1]), [1, 1, c, 1])
    x = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "VALID")
    # 4. decimation.
    return x[:, ::downy, ::downx, :]


# ---------------------------------------------------------------------------
# Fast implementation (plain TF ops, XLA-compilable).
# ---------------------------------------------------------------------------

def _upfirdn2d_tf(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1):
    n, h, w, c = _shape(x)
    kh, kw = kernel.shape
    f = tf.constant(kernel[::-1, ::-1].copy(), x.dtype)
    f = tf.tile(tf.reshape(f, [kh, kw, 1, 1]), [1, 1, c, 1])
    if upx == upy and upx > 1:
        # A stride-`up` transposed depthwise convolution computes zero insertion
        # followed by the "full" convolution with the kernel, without materialising
        # the zeros: y[i] = sum_m x_up[m] k[i - m], length (in - 1) * up + k.
        # The definition's output i is y[i + (k - 1) - pad0]; the rest of the
        # pads are zero padding or crops at both ends.
        up = upx
        full_h, full_w = (h - 1) * up + kh, (w - 1) * up + kw
        out_h = h * up + py0 + py1 - kh + 1
        out_w = w * up + px0 + px1 - kw + 1
        y = tf.nn.depthwise_conv2d_backprop_input(
            input_sizes=tf.stack([n, full_h, full_w, c]),
            filter=tf.tile(tf.constant(kernel.reshape(kh, kw, 1, 1), x.dtype), [1, 1, c, 1]),
            out_backprop=x,
            strides=[1, up, up, 1],
            padding="VALID",
        )
        oy, ox = (kh - 1) - py0, (kw - 1) - px0  # >0: crop at the front, <0: pad
        # Zeros needed past the end: out + o - full = up + pad1 - k (the input size
        # cancels), so every pad amount is a Python int even when H/W are unknown.
        y = tf.pad(y, [[0, 0], [max(-oy, 0), max(up + py1 - kh, 0)],
                       [max(-ox, 0), max(up + px1 - kw, 0)], [0, 0]])
        y = y[:, max(oy, 0): max(oy, 0) + out_h, max(ox, 0): max(ox, 0) + out_w, :]
        return y[:, ::downy, ::downx, :]
    if upx > 1 or upy > 1:
        return _upfirdn2d_ref(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1)
    # up == 1: pad/crop, then one strided depthwise convolution.
    x = tf.pad(x, [[0, 0], [max(py0, 0), max(py1, 0)], [max(px0, 0), max(px1, 0)], [0, 0]])
    if min(px0, px1, py0, py1) < 0:
        hh, ww = h + max(py0, 0) + max(py1, 0), w + max(px0, 0) + max(px1, 0)
        x = x[:, max(-py0, 0): hh - max(-py1, 0), max(-px0, 0): ww - max(-px1, 0), :]
    if downx == downy:
        return tf.nn.depthwise_conv2d(x, f, [1, downy, downx, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "VALID")
    return x[:, ::downy, ::downx, :]


def _shape(x):
    """Static dims where known, dynamic otherwise (the batch may be None)."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), impl: str = "auto"):
    """Upsample, FIR-filter and downsample an NHWC batch (see module docstring).

    Args:
      x: ``[N, H, W, C]`` tensor.
      kernel: 2-D FIR kernel (numpy or list); used as given (not normalised).
      up, down: int or ``(x, y)`` factors.
      pad: ``(pad0, pad1)`` for both axes or ``(x0, x1, y0, y1)``.
      impl: "auto" | "custom" | "xla" (alias "tf") | "ref" (see tf_cartoon/ops/dispatch.py).
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim == 1:
        kernel = np.outer(kernel, kernel)
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    if min(upx, upy, downx, downy) < 1:
        raise ValueError(f"up and down must be >= 1, got up={up!r} down={down!r}")
    px0, px1, py0, py1 = _pads(pad)
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4:
        raise ValueError(f"upfirdn2d expects an NHWC tensor of rank 4, got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    kh, kw = kernel.shape
    if h is not None and h * upy + py0 + py1 < kh or w is not None and w * upx + px0 + px1 < kw:
        raise ValueError(f"upfirdn2d: padded input {x.shape} (up={up}, pad={pad}) is smaller than the kernel "
                         f"{kernel.shape}")
    args = (x, kernel, upx, upy, downx, downy, px0, px1, py0, py1)
    path = choose("upfirdn2d", impl, x.dtype,
                  None if h is not None and w is not None else f"H or W unknown at trace time (x {x.shape})")
    if path == "ref":
        return _upfirdn2d_ref(*args)
    if path == "custom":
        from tf_cartoon.ops import custom
        return custom.upfirdn2d(*args)
    return _upfirdn2d_tf(*args)


# ---------------------------------------------------------------------------
# Helpers used by the networks (their pads are the reference's).
# ---------------------------------------------------------------------------

def upsample2d(x, kernel_1d=(1, 3, 3, 1), factor: int = 2, impl: str = "auto"):
    """Zero-insertion upsampling + FIR, output ``factor`` times larger (ToRGB skips)."""
    k = make_kernel(kernel_1d, gain=factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2), impl=impl)


def downsample2d(x, kernel_1d=(1, 3, 3, 1), factor: int = 2, impl: str = "auto"):
    """FIR + decimation, output ``factor`` times smaller."""
    k = make_kernel(kernel_1d)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2), impl=impl)


def blur2d(x, kernel, pad, impl: str = "auto"):
    """FIR filter without resampling (kernel already scaled by the caller)."""
    return upfirdn2d(x, kernel, pad=pad, impl=impl)
