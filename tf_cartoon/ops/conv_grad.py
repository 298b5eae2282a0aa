"""Building blocks of the fast convolutions' hand-written gradients (ops/conv.py, ops/phase_conv.py).

TF's CPU kernels for the convolutions' filter gradient (Conv2DBackpropFilter) and for transposed / strided
convolutions run 3-6x below the forward convolution's speed on this class of machine, and they dominate a
training step. The fast convolutions therefore carry their own gradients, written with forward-speed building
blocks only:
  input gradient: another of these convolutions (the adjoint of a stride-1 3x3 conv is a stride-1 3x3 conv
    with the flipped, channel-transposed kernel; a stride-2 conv and the stride-2 transposed conv are each
    other's adjoints);
  filter gradient: one matmul per kernel tap, sum over (N, H, W) of input patch x output gradient
    (:func:`tap_matmuls`).
Each gradient is built from differentiable ops (these same ops, slices, matmuls), so second-order gradients
(R1, path length) work too.
"""

from __future__ import annotations

import tensorflow as tf

from tf_cartoon.ops.compiled import compiled
from tf_cartoon.ops.dispatch import in_xla_context


def flip_t(w):
    """The adjoint's kernel: spatially flipped, in/out channels swapped."""
    return tf.transpose(w[::-1, ::-1], [0, 1, 3, 2])


def phases(x):
    """The four stride-2 sub-images of x [N, H, W, C]: {(a, b): x[:, a::2, b::2]}, odd sizes zero-padded.

    A reshape to [N, H/2, 2, W/2, 2, C] and unit-step slices: TF's strided-slice kernel copies
    element by element on CPU when a step is 2, while unit-step slices copy C-long runs."""
    h, w = x.shape[1], x.shape[2]
    if h % 2 or w % 2:
        x = tf.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
        h, w = h + h % 2, w + w % 2
    r = tf.reshape(x, [-1, h // 2, 2, w // 2, 2, x.shape[-1]])
    return {(a, b): r[:, :, a, :, b, :] for a in range(2) for b in range(2)}


def window(x, top, left, h, w):
    """x[:, top:top+h, left:left+w]. Unit-step strided slices: TF's kernel copies them as plain slices,
    and their gradient (StridedSliceGrad) is itself differentiable inside XLA, where tf.slice's is not."""
    return x[:, top: top + h, left: left + w]


# The filter gradient goes over bands of output rows so that its copies (padded input, tap windows, scaled
# input) are band-sized, not image-sized: at 256 px a full-size copy is 128 MB per 4 images, and a layer's
# backward pass would hold three of them next to everything the forward pass keeps. A band of the padded
# input is at most this many bytes (the band count is capped so graphs stay small).
FILTER_GRAD_BAND_BYTES = 16 * 2 ** 20
MAX_BANDS = 32


def _rows(x, start, stop, col_pad):
    """Rows [start, stop) of x [N, H, W, C], zero rows where outside [0, H); columns zero-padded by col_pad."""
    h = x.shape[1]
    lo, hi = max(start, 0), min(stop, h)
    part = x if (lo, hi) == (0, h) else x[:, lo:hi]
    top, bottom = lo - start, stop - hi
    if top or bottom or col_pad:
        part = tf.pad(part, [[0, 0], [top, bottom], [col_pad, col_pad], [0, 0]])
    return part


def tap_matmuls(big, small, k, stride, big_is_input=True, pad=0, scale=None):
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
    n, ho = small.shape[0], small.shape[1]
    row_bytes = (n or 1) * stride * (stride * first.shape[2] if phased else first.shape[2] + 2 * pad) \
        * first.shape[-1] * first.dtype.size
    band = max(1, FILTER_GRAD_BAND_BYTES // row_bytes, -(-ho // MAX_BANDS))
    band_fn = _band_taps if in_xla_context() or tf.executing_eagerly() else _shared_band_taps
    total, last = None, []
    for r0 in range(0, ho, band):
        r1 = min(r0 + band, ho)
        # Each band (and each tap's window copy in it) waits for the previous matmul: in a graph all copies
        # would otherwise be ready at once and live together; the matmuls use every core anyway.
        with tf.control_dependencies(last):
            if phased:  # a phase's tap offsets are 0 .. (k - 1) // 2 rows
                big_b = big if (r0, r1) == (0, ho) else {p: v[:, r0: r1 + (k - 1) // 2] for p, v in big.items()}
            else:
                big_b = _rows(big, stride * r0 - pad, stride * (r1 - 1) + k - pad, pad)
            small_b = small if (r0, r1) == (0, ho) else small[:, r0:r1]
            taps = band_fn(big_b, small_b, scale, k, stride, big_is_input)
        last = [taps]
        total = taps if total is None else total + taps
    return total


def _band_taps(big, small, scale, k, stride, big_is_input):
    """One band's k * k tap matmuls, stacked [k, k, Ci, Co]; the scale multiplied in first."""
    if scale is not None:
        if big_is_input:
            big = {p: scaled(v, scale) for p, v in big.items()} if isinstance(big, dict) else scaled(big, scale)
        else:
            small = scaled(small, scale)
    ho, wo = small.shape[1], small.shape[2]
    small2 = tf.reshape(small, [-1, small.shape[-1]])
    ph = big if isinstance(big, dict) else phases(big) if stride == 2 else None
    channels = (ph[(0, 0)] if ph else big).shape[-1]
    taps, last = [], []
    for a in range(k):
        for b in range(k):
            with tf.control_dependencies(last):
                if stride == 2:
                    part = window(ph[(a % 2, b % 2)], a // 2, b // 2, ho, wo)
                else:
                    part = window(big, a, b, ho, wo)
            part = tf.reshape(part, [-1, channels])
            taps.append(tf.matmul(part, small2, transpose_a=True) if big_is_input
                        else tf.matmul(small2, part, transpose_a=True))
            last = [taps[-1]]
    return tf.reshape(tf.stack(taps), [k, k, *taps[0].shape])


# Outside XLA each band runs as a call of one function per band shape, kept out of line (_noinline): a layer's
# equal bands, its real and fake passes and the D and G steps share one body instead of each tracing its own
# ~70 nodes (slices, reshapes, matmuls, their constants), and every traced node stays in memory (the traced
# graph, its FunctionDef copies, the executor). A 256 px training step: the D step's graph 19.5k -> 16.9k
# nodes, the heap 24 MB smaller, the first D step traced 4 s sooner. Inside XLA (which inlines everything) and
# eagerly the body runs in place.
_shared_band_taps = tf.function(_band_taps, autograph=False, experimental_attributes={"_noinline": True})


def scaled(x, scale):
    """x [N, H, W, C] times a per-sample, per-channel scale [N, C]."""
    return x * scale[:, None, None, :]


@compiled
def scale_grads(dxs, x, scale):
    """Gradients of x * scale from the gradient dxs of the product: (d x, d scale [N, Ci]), in one compiled
    pass (no image-sized dxs * x temporary)."""
    return scaled(dxs, scale), tf.reduce_sum(dxs * x, axis=[1, 2])

