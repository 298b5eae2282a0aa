"""The networks' 3x3 convolutions, NHWC, with a direct path and faster CPU rewrites of the same maths.

``conv3x3(x, w)``: stride-1 "SAME" 3x3 correlation, x [N, H, W, Ci], w [3, 3, Ci, Co].
  * ``direct``: one ``tf.nn.conv2d`` (cuDNN / oneDNN / Eigen).
  * ``winograd``: Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2015, "Fast Algorithms for
    Convolutional Neural Networks"). Each 2x2 output tile needs 16 products of transformed inputs and
    transformed weights instead of 36, and the 16 products over all tiles are 16 batched
    ``[T, Ci] x [Ci, Co]`` matmuls: 2.25x fewer multiply-adds. The input/output transforms are only
    additions; they are compiled with XLA so they fuse into a few passes over memory (applying the modulated
    conv's input scale on the way); the products are one TF batched matmul between them (oneDNN's, faster
    here than XLA's dot). XLA's CPU convolutions are ~3x slower than oneDNN's, so XLA never convolves.

``conv_transpose3x3_up2_blur(x, w, fir, pad)``: the generator's upsampling convolution, a stride-2 "VALID"
transposed 3x3 convolution (output 2H+1) followed by the FIR blur ``upfirdn2d(y, fir, pad=pad)``.
  * ``direct``: ``tf.nn.conv2d_transpose`` then the blur.
  * ``phase``: the transposed convolution split into its four output phases, each an ordinary stride-1
    convolution at the INPUT resolution with the kernel taps that reach it (2x2, 2x1, 1x2, 1x1 taps: 9 in
    all, no multiplications by inserted zeros). The blur then reads the four phases and writes the
    interleaved, blurred image in one compiled pass (``phase_fir``): the 2H+1 image is never built.
    The discriminator's stride-2 conv is the adjoint: four stride-1 convs of its input's phases.

Both rewrites are exact reformulations (equal up to float rounding); tests compare them with the direct
path, values and gradients to second order. Which path ``"auto"`` means is decided per device from
``python -m tf_cartoon.bench`` measurements (see ``default_impl``); ``TF_CARTOON_CONV_IMPL=direct|fast``
overrides it for the process, and exports always use the direct path (no nested XLA clusters in a
SavedModel that TF Serving must run).
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import tensorflow as tf

from tf_cartoon.ops.upfirdn2d import upfirdn2d

IMPLS = ("direct", "fast")
_forced: str | None = None

# Winograd F(2x2, 3x3) matrices: Y = A^T [(G g G^T) * (B^T d B)] A, d a 4x4 input tile, g the 3x3 kernel.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def default_impl() -> str:
    """What ``"auto"`` means: ``fast`` on CPU (measured faster there), ``direct`` where a GPU is visible
    (cuDNN already picks Winograd / FFT algorithms itself)."""
    if _forced is not None:
        return _forced
    env = os.environ.get("TF_CARTOON_CONV_IMPL")
    if env:
        if env not in IMPLS:
            raise ValueError(f"TF_CARTOON_CONV_IMPL must be one of {IMPLS}, got {env!r}")
        return env
    return "direct" if tf.config.list_logical_devices("GPU") else "fast"


def resolve(impl: str) -> str:
    if impl == "auto":
        return default_impl()
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl


@contextlib.contextmanager
def forced_impl(impl: str | None):
    """Make ``"auto"`` mean ``impl`` inside the block (tracing happens inside it); None: no change."""
    global _forced
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    previous = _forced
    _forced = impl if impl is not None else previous
    try:
        yield
    finally:
        _forced = previous


# ---------------------------------------------------------------------------------------------
# Gradients. TF's CPU kernels for the convolutions' filter gradient (Conv2DBackpropFilter) and for
# transposed / strided convolutions run 3-6x below the forward convolution's speed on this class of
# machine, and they dominate a training step. The "fast" ops below therefore carry their own gradients,
# written with forward-speed building blocks only:
#   input gradient: another of these convolutions (the adjoint of a stride-1 3x3 conv is a stride-1 3x3
#     conv with the flipped, channel-transposed kernel; a stride-2 conv and the stride-2 transposed conv are
#     each other's adjoints);
#   filter gradient: one matmul per kernel tap, sum over (N, H, W) of input patch x output gradient.
# Each gradient is built from differentiable ops (these same ops, slices, matmuls), so second-order
# gradients (R1, path length) work too.
# ---------------------------------------------------------------------------------------------

def _flip_t(w):
    """The adjoint's kernel: spatially flipped, in/out channels swapped."""
    return tf.transpose(w[::-1, ::-1], [0, 1, 3, 2])


def _phases(x):
    """The four stride-2 sub-images of x [N, H, W, C]: {(a, b): x[:, a::2, b::2]}, odd sizes zero-padded.

    A reshape to [N, H/2, 2, W/2, 2, C] and unit-step slices: TF's strided-slice kernel copies
    element by element on CPU when a step is 2, while unit-step slices copy C-long runs."""
    h, w = x.shape[1], x.shape[2]
    if h % 2 or w % 2:
        x = tf.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
        h, w = h + h % 2, w + w % 2
    r = tf.reshape(x, [-1, h // 2, 2, w // 2, 2, x.shape[-1]])
    return {(a, b): r[:, :, a, :, b, :] for a in range(2) for b in range(2)}


def _window(x, top, left, h, w):
    """x[:, top:top+h, left:left+w]. Unit-step strided slices: TF's kernel copies them as plain slices,
    and their gradient (StridedSliceGrad) is itself differentiable inside XLA, where tf.slice's is not."""
    return x[:, top: top + h, left: left + w]


# The filter gradient goes over bands of output rows so that its copies (padded input, tap windows, scaled
# input) are band-sized, not image-sized: at 256 px a full-size copy is 128 MB per 4 images, and a layer's
# backward pass used to hold three of them next to everything the forward pass kept. A band of the padded
# input is at most this many bytes (the band count is capped so graphs stay small).
FILTER_GRAD_BAND_BYTES = 16 * 2 ** 20
_MAX_BANDS = 32


def _rows(x, start, stop, col_pad):
    """Rows [start, stop) of x [N, H, W, C], zero rows where outside [0, H); columns zero-padded by col_pad."""
    h = x.shape[1]
    lo, hi = max(start, 0), min(stop, h)
    part = x if (lo, hi) == (0, h) else x[:, lo:hi]
    top, bottom = lo - start, stop - hi
    if top or bottom or col_pad:
        part = tf.pad(part, [[0, 0], [top, bottom], [col_pad, col_pad], [0, 0]])
    return part


def _tap_matmuls(big, small, k, stride, big_is_input=True, pad=0, scale=None):
    """Filter gradient [k, k, Ci, Co] as one matmul per tap (stride 1 or 2), band by band.

    big [N, Hb, Wb, Cb], read as if zero-padded by ``pad`` on each spatial side, or (stride 2, no pad) the
    dict of its phases {(a, b): big[:, a::2, b::2]}; small [N, Ho, Wo, Cs]; tap (a, b) pairs padded
    big[s*i + a, s*j + b] with small[i, j] (a VALID strided correlation).
    big_is_input: big is the input (Ci), small the output gradient dy (Co); else (transposed conv) big is dy,
      small the input.
    scale [N, Ci] (optional): the input side is x * scale (modulated convs), multiplied in band by band.
    """
    phased = isinstance(big, dict)
    first = big[(0, 0)] if phased else big
    n, ho, wo = small.shape[0], small.shape[1], small.shape[2]
    row_bytes = (n or 1) * stride * (stride * first.shape[2] if phased else first.shape[2] + 2 * pad) \
        * first.shape[-1] * first.dtype.size
    band = max(1, FILTER_GRAD_BAND_BYTES // row_bytes, -(-ho // _MAX_BANDS))
    total, last = None, []
    for r0 in range(0, ho, band):
        r1 = min(r0 + band, ho)
        # Each band (and each tap's window copy below) waits for the previous matmul: in a graph all copies
        # would otherwise be ready at once and live together; the matmuls use every core anyway.
        with tf.control_dependencies(last):
            if phased:  # a phase's tap offsets are 0 .. (k - 1) // 2 rows
                big_b = big if (r0, r1) == (0, ho) else {p: v[:, r0: r1 + (k - 1) // 2] for p, v in big.items()}
            else:
                big_b = _rows(big, stride * r0 - pad, stride * (r1 - 1) + k - pad, pad)
            small_b = small if (r0, r1) == (0, ho) else small[:, r0:r1]
        if scale is not None:
            if big_is_input:
                big_b = {p: _scaled(v, scale) for p, v in big_b.items()} if phased else _scaled(big_b, scale)
            else:
                small_b = _scaled(small_b, scale)
        taps, last = _band_taps(big_b, small_b, k, stride, big_is_input, r1 - r0, wo, last)
        total = taps if total is None else total + taps
    return total


def _band_taps(big, small, k, stride, big_is_input, ho, wo, last):
    small2 = tf.reshape(small, [-1, small.shape[-1]])
    phases = big if isinstance(big, dict) else _phases(big) if stride == 2 else None
    channels = (phases[(0, 0)] if phases else big).shape[-1]
    taps = []
    for a in range(k):
        for b in range(k):
            with tf.control_dependencies(last):
                if stride == 2:
                    part = _window(phases[(a % 2, b % 2)], a // 2, b // 2, ho, wo)
                else:
                    part = _window(big, a, b, ho, wo)
            part = tf.reshape(part, [-1, channels])
            taps.append(tf.matmul(part, small2, transpose_a=True) if big_is_input
                        else tf.matmul(small2, part, transpose_a=True))
            last = [taps[-1]]
    return tf.reshape(tf.stack(taps), [k, k, *taps[0].shape]), last


# ---------------------------------------------------------------------------------------------
# 1x1 convolution
# ---------------------------------------------------------------------------------------------

def conv1x1(x, w, stride: int = 1, impl: str = "auto", scale=None):
    """VALID 1x1 convolution with stride 1 or 2; x [N, H, W, Ci], w [1, 1, Ci, Co]. The fast path is a
    matmul over the (subsampled) pixels: its gradients are matmuls too, where TF's CPU filter gradient
    of a 1x1 convolution over a large image is slow.

    scale [N, Ci] (optional, stride 1): the convolution of x * scale (ToRGB's modulation); the fast path keeps
    x, not x * scale, for the backward pass (see conv3x3)."""
    if resolve(impl) == "direct" or x.shape[1] is None or x.shape[2] is None or stride not in (1, 2):
        return tf.nn.conv2d(x if scale is None else _scaled(x, scale), w, stride, "VALID")
    if scale is not None:
        if stride != 1:
            raise ValueError("conv1x1: scale needs stride 1")
        return _conv1x1_scaled_fast(x, scale, w)
    if stride == 2:
        x = _phases(x)[(0, 0)]
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(w, w.shape[2:]))
    return tf.reshape(y, [-1, x.shape[1], x.shape[2], w.shape[-1]])


@tf.custom_gradient
def _conv1x1_scaled_fast(x, scale, w):
    h, wd, ci, co = x.shape[1], x.shape[2], x.shape[3], w.shape[-1]
    w2 = tf.reshape(w, [ci, co])
    y = tf.reshape(tf.matmul(tf.reshape(_scaled(x, scale), [-1, ci]), w2), [-1, h, wd, co])

    def grad(dy):
        dxs = tf.reshape(tf.matmul(tf.reshape(dy, [-1, co]), w2, transpose_b=True), [-1, h, wd, ci])
        dx, dscale = _scale_grads(dxs, x, scale)
        # sum over samples of scale_n * (x_n^T dy_n): per-sample [Ci, Co] products, then the scales
        per_sample = tf.matmul(tf.reshape(x, [-1, h * wd, ci]), tf.reshape(dy, [-1, h * wd, co]), transpose_a=True)
        dw = tf.reduce_sum(scale[:, :, None] * per_sample, axis=0)
        return dx, dscale, tf.reshape(dw, [1, 1, ci, co])

    return y, grad


# ---------------------------------------------------------------------------------------------
# Stride-1 3x3 convolution
# ---------------------------------------------------------------------------------------------

def conv3x3(x, w, impl: str = "auto", scale=None):
    """SAME stride-1 3x3 correlation; x [N, H, W, Ci], w [3, 3, Ci, Co] -> [N, H, W, Co].

    scale [N, Ci] (optional): the correlation of x * scale (a modulated conv's input scaling). The fast path
    then keeps x, not x * scale, for the backward pass and recomputes the product there: one image-sized
    tensor less per layer held between the forward and the backward pass."""
    if resolve(impl) == "direct" or x.shape[1] is None or x.shape[2] is None:
        return tf.nn.conv2d(x if scale is None else x * scale[:, None, None, :], w, 1, "SAME")
    return _conv3x3_fast(x, w) if scale is None else _conv3x3_scaled_fast(x, scale, w)


def _use_winograd(x, w) -> bool:
    # Measured (bench, 2-core EPYC): the transforms pay from 32x32 up with >= 256 input channels; at 256x256
    # with 128 channels Winograd and oneDNN's direct convolution take the same time; below 32x32 direct wins.
    return x.shape[1] >= 32 and x.shape[2] >= 32 and w.shape[2] >= 256


@tf.custom_gradient
def _conv3x3_fast(x, w):
    y = _conv3x3_forward(x, w)

    return y, lambda dy: _conv3x3_backward(x, dy, w)


def _conv3x3_backward(x, dy, w, scale=None):
    """(dx, dw) of the stride-1 3x3 conv of x (of x * scale when given: then dx is the gradient of x and a
    third output the gradient of scale): the adjoint conv, and one matmul per tap."""
    dxs = _conv3x3_fast(dy, _flip_t(w))
    dw = _tap_matmuls(x, dy, 3, 1, pad=1, scale=scale)
    if scale is None:
        return dxs, dw
    return (*_scale_grads(dxs, x, scale), dw)


def _conv3x3_forward(x, w, scale=None):
    if _use_winograd(x, w):
        return _winograd(x, w, scale)
    return tf.nn.conv2d(x if scale is None else _scaled(x, scale), w, 1, "SAME")


def _scaled(x, scale):
    return x * scale[:, None, None, :]


@tf.function(jit_compile=True, autograph=False)
def _scale_grads(dxs, x, scale):
    """Gradients of x * scale from the gradient dxs of the product: (d x, d scale [N, Ci]), in one compiled
    pass (no image-sized dxs * x temporary)."""
    return _scaled(dxs, scale), tf.reduce_sum(dxs * x, axis=[1, 2])


@tf.custom_gradient
def _conv3x3_scaled_fast(x, scale, w):
    y = _conv3x3_forward(x, w, scale)

    # x * scale is not kept: the filter gradient scales its bands of x, the input gradient needs w only
    return y, lambda dy: _conv3x3_backward(x, dy, w, scale)


def _winograd_tiles(v, axis, n_tiles):
    """B^T along ``axis``: 4 arrays of tile-row combinations (stride 2), each n_tiles long on ``axis``."""
    def rows(k):
        idx = [slice(None)] * 4
        idx[axis] = slice(k, k + 2 * n_tiles, 2)
        return v[tuple(idx)]

    r0, r1, r2, r3 = rows(0), rows(1), rows(2), rows(3)
    # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


# The transformed tiles of the whole image are 4x the input and the 16 products 4x the output (at 128 px, 256
# channels and 4 images: a 0.5 GB temporary inside the compiled function). Above this size the image goes
# through in bands of rows, one compiled call per band, each waiting for the previous one.
WINOGRAD_BAND_BYTES = 32 * 2 ** 20


def _winograd(x, w, scale=None):
    """SAME 3x3 correlation of x (of x * scale [N, Ci] when given) by Winograd F(2x2, 3x3), in bands of output
    rows when the whole image's transforms would be larger than WINOGRAD_BAND_BYTES. Each band's input
    transform reads its rows (and a halo row each side) of x itself and applies the scale on the way: no
    band copies, no scaled copy of x."""
    n, h, wd, ci = x.shape
    per_row_pair = 16 * (n or 1) * ((wd + 1) // 2) * max(ci, w.shape[-1]) * x.dtype.size
    rows = 2 * max(1, WINOGRAD_BAND_BYTES // per_row_pair, -(-h // (2 * _MAX_BANDS)))
    if n is None:  # the band's slice needs static sizes
        rows = h + h % 2
    u = _winograd_weights(w)
    bands, last = [], []
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        th = (r1 - r0 + 1) // 2  # tile rows; an odd last band is padded to even, then cropped
        with tf.control_dependencies(last):
            # The 16 [T, Ci] x [Ci, Co] products: one TF batched matmul between the compiled transforms
            # (oneDNN's; measured 8-12% faster here than XLA's dot inside the compiled function).
            lo, hi = max(r0 - 1, 0), min(r0 + 2 * th + 1, h)  # rows read; zero rows beyond the edges
            pads = (lo - (r0 - 1), r0 + 2 * th + 1 - hi)
            m = tf.matmul(_winograd_input(x, scale, tf.constant(lo, tf.int32), hi - lo, pads, th), u)
        bands.append(_winograd_output(m, th, (wd + 1) // 2, r1 - r0, wd))
        last = [bands[-1]]
    return bands[0] if len(bands) == 1 else tf.concat(bands, axis=1)


@tf.function(jit_compile=True, autograph=False)
def _winograd_weights(w):
    g = tf.constant(_G, w.dtype)
    return tf.reshape(tf.einsum("ai,ijcd,bj->abcd", g, w, g), [16, w.shape[2], w.shape[-1]])  # G g G^T


@tf.function(jit_compile=True, autograph=False)
def _winograd_input(x, scale, lo, rows, pads, th):
    """B^T d B of the 4x4 input tiles (stride 2) of th tile rows: [16, N * th * tw, Ci]. They read rows
    lo .. lo + rows - 1 of x, zero-padded by pads (top, bottom) rows, scaled by scale [N, Ci] when given.
    lo is a tensor: all inner bands of a conv share one compiled function."""
    n, _, wd, ci = x.shape
    tw = (wd + 1) // 2
    xb = tf.slice(x, tf.stack([0, lo, 0, 0]), [n, rows, wd, ci])
    if scale is not None:
        xb = xb * scale[:, None, None, :]
    xp = tf.pad(xb, [[0, 0], list(pads), [1, 1 + 2 * tw - wd], [0, 0]])
    d = []
    for v in _winograd_tiles(xp, 1, th):
        d += _winograd_tiles(v, 2, tw)
    return tf.reshape(tf.stack(d), [16, -1, ci])


@tf.function(jit_compile=True, autograph=False)
def _winograd_output(m, th, tw, ho, wd):
    """A^T m A of the 16 products [16, N * th * tw, Co] -> output rows [N, ho, wd, Co]."""
    co = m.shape[-1]
    m = tf.reshape(m, [4, 4, -1, th, tw, co])  # [4 (row), 4 (col), N, th, tw, Co]
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    t0, t1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]
    y = tf.concat([t0[0] + t0[1] + t0[2], t0[1] - t0[2] - t0[3],
                   t1[0] + t1[1] + t1[2], t1[1] - t1[2] - t1[3]], axis=-1)  # [N, th, tw, 4*Co]
    y = tf.nn.depth_to_space(y, 2)  # channel blocks (0,0), (0,1), (1,0), (1,1) -> 2x2 pixels
    return y[:, :ho, :wd] if (2 * th != ho or 2 * tw != wd) else y


# ---------------------------------------------------------------------------------------------
# Stride-2 convolutions by phases. The generator's upsampling conv (a stride-2 transposed 3x3 conv, then a
# blur) and the discriminator's downsampling conv (a blur, then a stride-2 3x3 conv) are each other's
# adjoints, and both split into four stride-1 convolutions at the LOW resolution, one per (row, column) parity
# of the high-resolution side, each with the taps that reach it (2x2, 2x1, 1x2, 1x1: 9 in all, nothing
# multiplied by inserted zeros). For a low-resolution side [N, H, W, .] the phases of the high-resolution side
# y [N, 2H+1, 2W+1, .] are {(a, b): y[:, a::2, b::2]}: (0, 0) [H+1, W+1], (0, 1) [H+1, W], (1, 0) [H, W+1],
# (1, 1) [H, W], listed in PARITIES order wherever they travel as a tuple.
# ---------------------------------------------------------------------------------------------

PARITIES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _down2_kernels(w, flip=False):
    """The taps of w [3, 3, Ci, Co] per input parity of y[i] = sum_k x[2i + k] w[k]: the even offsets
    k = 0, 2 read phase 0 at i and i + 1, the odd offset k = 1 reads phase 1 at i (per axis). flip: each
    kernel spatially reversed (the transposed conv's). One gather per kernel (w is up to 9 MB; slicing it tap
    by tap was 20 ops per layer)."""
    w9 = tf.reshape(w, [9, *w.shape[2:]])
    taps = {(0, 0): ([0, 2, 6, 8], 2, 2), (0, 1): ([1, 7], 2, 1), (1, 0): ([3, 5], 1, 2), (1, 1): ([4], 1, 1)}
    return {p: tf.reshape(tf.gather(w9, idx[::-1] if flip else idx), [kh, kw, *w.shape[2:]])
            for p, (idx, kh, kw) in taps.items()}


def _down2_sum(ph, w):
    """Stride-2 VALID 3x3 correlation from the input's phases (dict, shapes above) -> [N, H, W, Co]."""
    k = _down2_kernels(w)
    return tf.add_n([tf.nn.conv2d(ph[p], k[p], 1, "VALID") for p in PARITIES])


def _up2_convs(x, w):
    """The stride-2 transposed 3x3 conv of x [N, H, W, Ci] (out[2i + k] += x[i] w[k]) as its output's
    phases (dict): x correlated with the flipped taps of _down2_kernels, zero-padded by one on each side
    of an axis with two taps. oneDNN pads inside the convolution: no padded copy of x."""
    out = {}
    for p, k in _down2_kernels(w, flip=True).items():
        r, c = k.shape[0] - 1, k.shape[1] - 1
        out[p] = tf.nn.conv2d(x, k, 1, [[0, 0], [r, r], [c, c], [0, 0]])
    return out


@tf.custom_gradient
def _up2_fast(x, w):
    """_up2_convs as a tuple in PARITIES order, with its gradient written in the same building blocks."""
    ph = _up2_convs(x, w)

    return tuple(ph[p] for p in PARITIES), lambda *dph: _up2_backward(x, dph, w)


def _up2_backward(x, dph, w, scale=None):
    """(dx, dw) of _up2_fast (of x * scale when given: then (dx, dscale, dw), see _conv3x3_backward): the
    stride-2 conv of the phase gradients, and one matmul per tap."""
    dph = {p: _zero_phase(x, w, p) if d is None else d for p, d in zip(PARITIES, dph)}
    dxs = _down2_fast(*(dph[p] for p in PARITIES), _swap_io(w))
    dw = _tap_matmuls(dph, x, 3, 2, big_is_input=False, scale=scale)
    if scale is None:
        return dxs, dw
    return (*_scale_grads(dxs, x, scale), dw)


def _zero_phase(x, w, p):
    """Zeros shaped like phase p of _up2_fast(x, w) (the gradient of an output nothing used)."""
    return tf.zeros([tf.shape(x)[0], x.shape[1] + 1 - p[0], x.shape[2] + 1 - p[1], w.shape[-1]], x.dtype)


@tf.custom_gradient
def _up2_scaled_fast(x, scale, w):
    """_up2_fast(x * scale, w), keeping x rather than x * scale for the backward pass."""
    ph = _up2_convs(_scaled(x, scale), w)

    return tuple(ph[p] for p in PARITIES), lambda *dph: _up2_backward(x, dph, w, scale)


@tf.custom_gradient
def _down2_fast(ee, eo, oe, oo, w):
    """_down2_sum of the phases (positional, PARITIES order); its input gradient is _up2_fast."""
    ph = dict(zip(PARITIES, (ee, eo, oe, oo)))
    y = _down2_sum(ph, w)

    def grad(dy):
        return (*_up2_fast(dy, _swap_io(w)), _tap_matmuls(ph, dy, 3, 2))

    return y, grad


def phase_fir(ph, taps, pads):
    """upfirdn2d(y, fir, pad) of the image y [N, 2H+1, 2W+1, C] whose four phases ph are (tuple in PARITIES
    order), without building y: output pixel (2m + a, 2n + b) is sum_{t,u} taps[t][u] y[2m + a + t - py0,
    2n + b + u - px0], and y[2i + r] is phase r at row i, so each output phase is a sum of shifted phases;
    one compiled pass computes them and writes them interleaved. taps: the FIR kernel flipped (a
    correlation), nested tuples of floats; pads (py0, py1, px0, px1), negative ones crop. taps ((1.0,),) with
    pads (0, 1, 0, 1) just interleaves (2H+2 rows, the last zero).

    Its gradient is the adjoint map, compiled likewise: XLA's own gradient of the compiled function would
    keep every padded phase alive until the backward pass."""
    return _phase_fir_op(taps, tuple(pads), tuple(ph[0].shape[1:3]))(*ph)


@functools.lru_cache(maxsize=None)
def _phase_fir_op(taps, pads, rows_cols):
    """The custom-gradient op of phase_fir for one (taps, pads, phase (0, 0) size): forward and adjoint are
    each other's gradients, so it is differentiable to any order."""
    plan = _phase_fir_plan(taps, pads, rows_cols)
    forward = tf.function(functools.partial(_phase_fir_forward, plan), jit_compile=True, autograph=False)
    adjoint = tf.function(functools.partial(_phase_fir_adjoint, plan), jit_compile=True, autograph=False)

    @tf.custom_gradient
    def op(ee, eo, oe, oo):
        return forward(ee, eo, oe, oo), adjoint_op

    @tf.custom_gradient
    def adjoint_op(dz):
        return adjoint(dz), lambda *d: op(*d)

    return op


def _phase_fir_plan(taps, pads, rows_cols):
    """Static bookkeeping of phase_fir: output size, output phase size (mh, mw), and per output phase the
    terms (weight, source phase, first row, first column); per source phase the zero padding (top, bottom,
    left, right) that makes every shifted window of it a plain slice."""
    (py0, py1, px0, px1), (rows, cols) = pads, rows_cols
    kh, kw = len(taps), len(taps[0])
    ho, wo = 2 * rows - 1 + py0 + py1 - kh + 1, 2 * cols - 1 + px0 + px1 - kw + 1
    mh, mw = (ho + 1) // 2, (wo + 1) // 2  # output phase 0's size (phase 1 has as many or one fewer)
    terms = {q: [] for q in PARITIES}
    for a, b in PARITIES:
        for t in range(kh):
            for u in range(kw):
                if taps[t][u] != 0:
                    (i0, r), (j0, c) = divmod(a + t - py0, 2), divmod(b + u - px0, 2)
                    terms[(a, b)].append((taps[t][u], (r, c), i0, j0))
    padding = {}
    for q in PARITIES:
        used = [(i0, j0) for ts in terms.values() for _, src, i0, j0 in ts if src == q]
        if used:
            size = (rows - q[0], cols - q[1])
            padding[q] = (max(0, -min(i for i, _ in used)), max(0, max(i for i, _ in used) + mh - size[0]),
                          max(0, -min(j for _, j in used)), max(0, max(j for _, j in used) + mw - size[1]))
    return {"out": (ho, wo), "phase": (mh, mw), "terms": terms, "padding": padding, "rows_cols": rows_cols}


def _phase_fir_forward(plan, ee, eo, oe, oo):
    ph = dict(zip(PARITIES, (ee, eo, oe, oo)))
    (mh, mw), (ho, wo) = plan["phase"], plan["out"]
    padded = {q: tf.pad(ph[q], [[0, 0], [t, b], [l, r], [0, 0]]) for q, (t, b, l, r) in plan["padding"].items()}
    out = []
    for q in PARITIES:
        acc = tf.zeros([tf.shape(ee)[0], mh, mw, ee.shape[-1]], ee.dtype)
        for weight, src, i0, j0 in plan["terms"][q]:
            top, left = plan["padding"][src][0], plan["padding"][src][2]
            acc += weight * padded[src][:, top + i0: top + i0 + mh, left + j0: left + j0 + mw]
        out.append(acc)
    # [N, mh, 2, mw, 2, C] -> [N, 2 mh, 2 mw, C], cropped to the output size
    y = tf.stack([tf.stack(out[:2], axis=3), tf.stack(out[2:], axis=3)], axis=2)
    return tf.reshape(y, [-1, 2 * mh, 2 * mw, ee.shape[-1]])[:, :ho, :wo]


def _phase_fir_adjoint(plan, dz):
    (mh, mw), (ho, wo), (rows, cols) = plan["phase"], plan["out"], plan["rows_cols"]
    c = dz.shape[-1]
    dz = tf.reshape(tf.pad(dz, [[0, 0], [0, 2 * mh - ho], [0, 2 * mw - wo], [0, 0]]), [-1, mh, 2, mw, 2, c])
    dout = {(a, b): dz[:, :, a, :, b] for a, b in PARITIES}
    grads = []
    for q in PARITIES:
        h, w = rows - q[0], cols - q[1]  # source phase q's size
        if q not in plan["padding"]:  # no tap reads it
            grads.append(tf.zeros([tf.shape(dz)[0], h, w, c], dz.dtype))
            continue
        top, bottom, left, right = plan["padding"][q]
        acc = None
        for p in PARITIES:
            for weight, src, i0, j0 in plan["terms"][p]:
                if src == q:  # the forward read padded q at [top + i0: top + i0 + mh, left + j0: ...]
                    term = tf.pad(weight * dout[p], [[0, 0], [top + i0, h + bottom - i0 - mh],
                                                     [left + j0, w + right - j0 - mw], [0, 0]])
                    acc = term if acc is None else acc + term
        grads.append(acc[:, top: top + h, left: left + w])
    return tuple(grads)


# ---------------------------------------------------------------------------------------------
# Stride-2 3x3 convolution (the discriminator's downsampling conv, after its blur)
# ---------------------------------------------------------------------------------------------

def conv3x3_down2(x, w, impl: str = "auto"):
    """VALID stride-2 3x3 correlation; x [N, H, W, Ci] (already padded) -> [N, (H-3)//2+1, (W-3)//2+1, Co]."""
    if resolve(impl) == "direct" or x.shape[1] is None or x.shape[2] is None:
        return tf.nn.conv2d(x, w, 2, "VALID")
    return _conv3x3_down2_fast(x, w)


def _input_phases(x, ho, wo):
    """The phases of x [N, H, W, C] a stride-2 3x3 conv with output [Ho, Wo] reads (shapes as above)."""
    p = _phases(x)
    return {(a, b): _window(p[(a, b)], 0, 0, ho + 1 - a, wo + 1 - b) for a, b in PARITIES}


@tf.custom_gradient
def _conv3x3_down2_fast(x, w):
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    y = _down2_sum(_input_phases(x, ho, wo), w)
    h, wd = x.shape[1], x.shape[2]

    def grad(dy):
        # the transposed conv's 2Ho+1 rows, and a zero row where H is 2Ho+2
        dx = phase_fir(_up2_fast(dy, _swap_io(w)), ((1.0,),), (0, h - 2 * ho - 1, 0, wd - 2 * wo - 1))
        return dx, _tap_matmuls(x, dy, 3, 2)

    return y, grad


# ---------------------------------------------------------------------------------------------
# Stride-2 transposed 3x3 convolution + blur (the generator's upsampling conv)
# ---------------------------------------------------------------------------------------------

def _swap_io(w):
    return tf.transpose(w, [0, 1, 3, 2])


def conv_transpose3x3_up2_blur(x, w, fir, pad, impl: str = "auto", scale=None):
    """tf.nn.conv2d_transpose(x, w, stride 2, VALID) -> [N, 2H+1, 2W+1, Co], then upfirdn2d(., fir, pad).

    x [N, H, W, Ci]; w [3, 3, Ci, Co] in correlation layout (out[2i + k] += x[i] * w[k]); fir a 2-D kernel
    (numpy). scale [N, Ci] (optional): the same for x * scale, which the fast path recomputes in its
    backward pass instead of keeping it (see conv3x3). The fast path never builds the 2H+1 image: the blur
    reads the transposed conv's four phases and writes the interleaved result (phase_fir).
    """
    if resolve(impl) == "direct" or x.shape[1] is None or x.shape[2] is None:
        if scale is not None:
            x = _scaled(x, scale)
        shape = tf.shape(x)
        co = w.shape[-1]
        out_shape = tf.stack([shape[0], 2 * shape[1] + 1, 2 * shape[2] + 1, co])
        y = tf.nn.conv2d_transpose(x, _swap_io(w), out_shape, strides=2, padding="VALID")
        if x.shape[1] is not None and x.shape[2] is not None:
            y = tf.ensure_shape(y, [x.shape[0], 2 * x.shape[1] + 1, 2 * x.shape[2] + 1, co])
        return upfirdn2d(y, fir, pad=pad)
    ph = _up2_fast(x, w) if scale is None else _up2_scaled_fast(x, scale, w)
    (px0, px1), (py0, py1) = _pads(pad)
    taps = tuple(tuple(float(v) for v in row) for row in np.asarray(fir, np.float32)[::-1, ::-1])
    return phase_fir(ph, taps, (py0, py1, px0, px1))


def _pads(pad):
    if len(pad) == 2:
        return (pad[0], pad[1]), (pad[0], pad[1])
    return (pad[0], pad[1]), (pad[2], pad[3])


# ---------------------------------------------------------------------------------------------
# The styled convolution's epilogue
# ---------------------------------------------------------------------------------------------

@tf.function(jit_compile=True, autograph=False)
def _styled_epilogue(y, demod, noise, strength, bias):
    z = y * demod[:, None, None, :] + strength * noise + bias
    return tf.nn.leaky_relu(z, 0.2) * tf.cast(np.sqrt(2.0), z.dtype)


@tf.function(jit_compile=True, autograph=False)
def _styled_epilogue_grad(dout, out, demod, noise, strength, bias):
    """(dy, ddemod, dnoise, dstrength, dbias) from the output only (see _epilogue_reductions)."""
    dy = _epilogue_dy(dout, out, demod)
    return (dy, *_epilogue_reductions(dout, out, demod, noise, strength, bias))


def _epilogue_dz(dout, out):
    # out > 0 exactly where the pre-activation z > 0 (leaky ReLU keeps the sign)
    return tf.where(out > 0, dout, dout * tf.cast(0.2, dout.dtype)) * tf.cast(np.sqrt(2.0), dout.dtype)


def _epilogue_dy(dout, out, demod):
    return _epilogue_dz(dout, out) * demod[:, None, None, :]


def _epilogue_reductions(dout, out, demod, noise, strength, bias):
    """(ddemod, dnoise, dstrength, dbias) of the epilogue, reading the output (the next layer's input, kept
    anyway), never z or y: the leaky ReLU is inverted to get z, and y = (z - strength * noise - bias) / demod
    (demod = rsqrt(. + 1e-8) > 0), rebuilt in float32 (mixed precision). Neither is kept between the passes:
    two image-sized tensors less per styled conv."""
    dz = _epilogue_dz(dout, out)
    f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731
    gain = np.sqrt(2.0)
    z = f32(out) * tf.where(out > 0, np.float32(1.0 / gain), np.float32(1.0 / (0.2 * gain)))
    y = (z - f32(strength) * f32(noise) - f32(bias)) / f32(demod)[:, None, None, :]
    ddemod = tf.cast(tf.reduce_sum(f32(dz) * y, axis=[1, 2]), demod.dtype)
    dnoise = tf.reduce_sum(dz, axis=-1, keepdims=True) * strength
    if noise.shape[0] == 1 and dnoise.shape[0] != 1:  # one noise map broadcast over the batch
        dnoise = tf.reduce_sum(dnoise, axis=0, keepdims=True)
    dstrength = tf.reshape(tf.reduce_sum(dz * noise), [1])
    dbias = tf.reduce_sum(dz, axis=[0, 1, 2])
    return ddemod, dnoise, dstrength, dbias


_epilogue_dy_xla = tf.function(_epilogue_dy, jit_compile=True, autograph=False)
_epilogue_reductions_xla = tf.function(_epilogue_reductions, jit_compile=True, autograph=False)

# XLA's CPU backend materialises each reduced product (dz, dz * y, dz * noise) as a full map: 0.4 GB at 256 px
# for 4 images. Above this many bytes per map the reductions go one image at a time (one compiled call per
# image, each after the previous one), and dy (elementwise only, no temporaries) is a call of its own.
EPILOGUE_GRAD_SPLIT_BYTES = 32 * 2 ** 20


def _styled_epilogue_backward(dout, out, demod, noise, strength, bias):
    n = dout.shape[0]
    if n is None or n == 1 or dout.shape.num_elements() * dout.dtype.size <= EPILOGUE_GRAD_SPLIT_BYTES:
        return _styled_epilogue_grad(dout, out, demod, noise, strength, bias)
    shared_noise = noise.shape[0] == 1
    parts, last = [], []
    for i in range(n):
        with tf.control_dependencies(last):
            take = lambda t: t[i: i + 1]  # noqa: E731
            parts.append(_epilogue_reductions_xla(take(dout), take(out), take(demod),
                                                  noise if shared_noise else take(noise), strength, bias))
        last = list(parts[-1])
    with tf.control_dependencies(last):
        dy = _epilogue_dy_xla(dout, out, demod)
    ddemod, dnoise, dstrength, dbias = (list(t) for t in zip(*parts))
    dnoise = tf.add_n(dnoise) if shared_noise else tf.concat(dnoise, axis=0)
    return dy, tf.concat(ddemod, axis=0), dnoise, tf.add_n(dstrength), tf.add_n(dbias)


@tf.custom_gradient
def _styled_epilogue_fast(y, demod, noise, strength, bias):
    out = _styled_epilogue(y, demod, noise, strength, bias)

    def grad(dout):
        return _styled_epilogue_backward(dout, out, demod, noise, strength, bias)

    return out, grad


def styled_epilogue(y, demod, noise, strength, bias, impl: str = "auto"):
    """lrelu(y * demod + strength * noise + bias, 0.2) * sqrt(2): demodulation, noise injection and the
    fused bias + leaky ReLU of a StyledConv in ONE pass over the feature map (XLA fuses it) instead of
    four, and a backward pass that keeps the output only (neither y nor the pre-activation).
    y [N, H, W, C], demod [N, C], noise [N or 1, H, W, 1], strength [1], bias [C]."""
    if resolve(impl) == "direct":
        z = y * demod[:, None, None, :] + strength * noise + bias
        return tf.nn.leaky_relu(z, 0.2) * tf.cast(np.sqrt(2.0), z.dtype)
    if y.shape[0] is None or noise.shape[0] is None:  # the noise gradient's broadcast needs static batches
        return _styled_epilogue(y, demod, noise, strength, bias)
    return _styled_epilogue_fast(y, demod, noise, strength, bias)
