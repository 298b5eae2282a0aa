"""Winograd's minimal filtering (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural Networks"): the
stride-1 3x3 convolution of ops/conv.py's fast path for wide layers.

F(m x m, 3x3) computes an m x m output tile from an (m + 2) x (m + 2) input tile with (m + 2)^2 products of
transformed input tiles and transformed weights instead of 9 m^2: F(4x4, 3x3) in float32 (36 instead of 144, and
transformed tiles 2.25x the image), F(2x2, 3x3) otherwise (16 instead of 36, tiles 4x the image; F(4x4)'s larger
transform coefficients cost too much precision in bfloat16 / float16). The transforms are only additions and
small constant multiples, compiled with XLA into few passes over memory (applying the modulated conv's input
scale on the way); the products are TF matmuls between them (oneDNN's, faster here than XLA's dot). XLA's CPU
convolutions are ~3x slower than oneDNN's, so XLA never convolves.

These layers are memory-bound on this host (2-core EPYC): the transformed arrays stay apart (a tuple out of the
compiled input transform, one [T, Ci] x [Ci, Co] matmul each, a tuple into the compiled output transform), as
stacking them inside the compiled function took as long again as the transform itself.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_cartoon.ops.compiled import compiled
from tf_cartoon.ops.conv_grad import MAX_BANDS

# Y = A^T [(G g G^T) * (B^T d B)] A for a 3x3 kernel g and an (m + 2) x (m + 2) input tile d (stride m), giving
# an m x m output tile. F(2x2, 3x3): interpolation points 0, 1, -1, infinity; F(4x4, 3x3): 0, 1, -1, 2, -2,
# infinity (Lavin & Gray's matrices).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_BT43 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32)
_G43 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT43 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float32)
_MATRICES = {2: (_BT, _G, _AT), 4: (_BT43, _G43, _AT43)}  # output tile size m -> (B^T, G, A^T)


def use_winograd(x, w) -> bool:
    # Measured (ms, 4 images, scaled input, the pooled allocator, quiet 2-core EPYC; oneDNN's direct conv /
    # F(4x4)): 32 px 512 channels 139 / 79, 64 px 512 channels 529 / 251, 128 px 256 channels 536 / 275, 128 px
    # 128 channels 126 / 87, 256 px 128 channels 568 / 448; they tie at 16 px 512 channels and at 256 px 64
    # channels. F(2x2) (bfloat16 / float16) keeps the threshold measured for it in float32: 256 channels.
    return x.shape[1] >= 32 and x.shape[2] >= 32 and w.shape[2] >= (128 if tile_size(x.dtype) == 4 else 256)


def tile_size(dtype) -> int:
    """Output tile size m of F(m x m, 3x3) for this dtype: 4 in float32, else 2 (F(4x4)'s transform
    coefficients (up to 8 and 1/24) cost too much precision in 8- and 11-bit mantissas)."""
    return 4 if tf.as_dtype(dtype) == tf.float32 else 2


# The transformed tiles of the whole image are (m + 2)^2 / m^2 times the input (2.25x for F(4x4), 4x for F(2x2)),
# and the products as much of the output (at 128 px, 256 channels and 4 images: 0.15 GB per side for F(4x4)).
# Above this size the image goes through in bands of rows, one compiled call per band, each waiting for the
# previous one.
WINOGRAD_BAND_BYTES = 32 * 2 ** 20


def winograd(x, w, scale=None):
    """SAME 3x3 correlation of x (of x * scale [N, Ci] when given) by Winograd F(m x m, 3x3), m = tile_size, in
    bands of output rows when the whole image's transforms would be larger than WINOGRAD_BAND_BYTES. Each
    band's input transform reads its rows (and a halo row each side) of x itself and applies the scale on the
    way: no band copies, no scaled copy of x."""
    n, h, wd, ci = x.shape
    m = tile_size(x.dtype)
    t, tw = m + 2, -(-wd // m)
    per_tile_row = (m + 2) ** 2 * (n or 1) * tw * max(ci, w.shape[-1]) * x.dtype.size
    rows = m * max(1, WINOGRAD_BAND_BYTES // per_tile_row, -(-h // (m * MAX_BANDS)))
    if n is None:  # the band's slice needs static sizes
        rows = m * -(-h // m)
    # The transformed weights ((m + 2)^2 / 9 times w: 36 MB for a 512 x 512 kernel in F(4x4)) depend on the
    # weights only: without this dependency TF computes every layer's at the start of a step and keeps them
    # all alive until their layers run (+165 MB at the peak of a 64 px training step).
    with tf.control_dependencies([x]):
        u = tf.unstack(_weights(w, m))  # one node; indexing per band would add 36 slices (+ 3 consts each) per band
    bands, last = [], []
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        th = -(-(r1 - r0) // m)  # tile rows; a short last band is padded, then cropped
        lo, hi = max(r0 - 1, 0), min(r0 + m * th + 1, h)  # rows read; zero rows beyond the edges
        with tf.control_dependencies(last):
            d = _input(x, scale, tf.constant(lo, tf.int32), hi - lo, (lo - (r0 - 1), r0 + m * th + 1 - hi), th, m)
            # The (m + 2)^2 [T, Ci] x [Ci, Co] products: TF matmuls between the compiled transforms (oneDNN's;
            # faster here than XLA's dot inside the compiled function).
            y = _output(tuple(tf.matmul(d[t * r + c], u[t * c + r]) for r in range(t) for c in range(t)), th, tw, m)
        bands.append(y[:, : r1 - r0, :wd] if (m * th != r1 - r0 or m * tw != wd) else y)
        last = [bands[-1]]
    return bands[0] if len(bands) == 1 else tf.concat(bands, axis=1)


def _combine(arrays, coefficients):
    """[sum_j c[i, j] arrays[j] for each row i of c], leaving out zero coefficients and multiplications by 1."""
    out = []
    for row in coefficients:
        acc = None
        for c, a in zip(row, arrays):
            if c == 0:
                continue
            term = a if c == 1 else (-a if c == -1 else a * float(c))
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _weights(w, m):
    """G g G^T of each (Ci, Co) kernel: [(m + 2)^2, Ci, Co], k = (m + 2) * column + row. Two matmuls (oneDNN)
    and a transpose of the small middle result, in float32 whatever w's dtype. At 512 x 512 channels one einsum
    took 2.7x as long in float32 (6x in float64, also compiled), a large share of the layer."""
    t, ci, co = m + 2, w.shape[2], w.shape[3]
    g = tf.constant(_MATRICES[m][1], tf.float32)
    rows = tf.matmul(g, tf.reshape(tf.cast(w, tf.float32), [3, -1]))  # [row, (kernel column, Ci, Co)]
    rows = tf.transpose(tf.reshape(rows, [t, 3, ci * co]), [1, 0, 2])  # [kernel column, row, Ci * Co]
    u = tf.matmul(g, tf.reshape(rows, [3, -1]))  # [column, (row, Ci, Co)]
    return tf.cast(tf.reshape(u, [t * t, ci, co]), w.dtype)


@compiled
def _input(x, scale, lo, rows, pads, th, m):
    """B^T d B of the (m + 2)^2 input tiles (stride m) of th tile rows: a tuple of (m + 2)^2 [N * th * tw, Ci]
    (k = (m + 2) * row + column). They read rows lo .. lo + rows - 1 of x, zero-padded by pads (top, bottom),
    scaled by scale [N, Ci] when given. lo is a tensor: all inner bands of a conv share one compiled function.
    A tuple, not one stacked array: stacking inside the compiled function ran 2x slower than the transform."""
    n, _, wd, ci = x.shape
    tw, t = -(-wd // m), m + 2
    bt = _MATRICES[m][0]
    xb = tf.slice(x, tf.stack([0, lo, 0, 0]), [n, rows, wd, ci])
    if scale is not None:
        xb = xb * scale[:, None, None, :]
    xp = tf.pad(xb, [[0, 0], list(pads), [1, 1 + m * tw - wd], [0, 0]])  # [N, m th + 2, m tw + 2, Ci]
    d = []
    for v in _combine([xp[:, k: k + m * th: m] for k in range(t)], bt):
        d += _combine([v[:, :, k: k + m * tw: m] for k in range(t)], bt)
    return tuple(tf.reshape(a, [-1, ci]) for a in d)


@compiled
def _output(products, th, tw, m):
    """A^T M A of the (m + 2)^2 products (a tuple of [N * th * tw, Co], k = (m + 2) * row + column) -> the
    output rows [N, m th, m tw, Co]."""
    t, at = m + 2, _MATRICES[m][2]
    co = products[0].shape[-1]
    p = [tf.reshape(a, [-1, th, tw, co]) for a in products]
    by_column = [_combine([p[t * r + c] for r in range(t)], at) for c in range(t)]  # [column][output row]
    pixels = []
    for i in range(m):
        pixels += _combine([by_column[c][i] for c in range(t)], at)  # output pixels (i, j), j = 0 .. m - 1
    return tf.nn.depth_to_space(tf.concat(pixels, axis=-1), m)  # channel blocks (i, j) -> m x m pixels


# ---------------------------------------------------------------------------------------------
# The same Winograd in plain TF ops (no XLA): what exports run (dispatch.plain_ops). Without XLA every op is its
# own pass over memory, so the transforms are written as few, large, copy-like ops: the (m + 2)^2 input tiles
# (stride m) are unit-step slices of a [N, H/m, m, W/m, m, C] view stacked on a leading axis, B^T is one
# [m + 2, m + 2] matmul per axis over that leading axis, so the transformed arrays come out as the
# [(m + 2)^2, T, Ci] operand of the batched matmul with no transpose (transposes ran 2-3x slower per byte here
# than slices); A^T M A is one [m^2, (m + 2)^2] matmul and one transpose into the m x m output pixels.
# ---------------------------------------------------------------------------------------------


def winograd_plain(x, w, scale=None, out_scale=None):
    """SAME 3x3 correlation of x (of x * scale [N, Ci] when given) by Winograd F(m x m, 3x3), m = tile_size, in
    plain TF ops: no XLA cluster, and a dynamic batch size works (H and W must be static).

    out_scale [N, Co] (with scale): the result times out_scale, both scales folded into per-sample transformed
    weights [(m + 2)^2, N, Ci, Co] (one batched matmul per sample) instead of a pass over the input and one over
    the output; it pays where those weights are small beside the maps (:func:`folding_pays`)."""
    _, h, wd, ci = x.shape
    co = w.shape[-1]
    m = tile_size(x.dtype)
    t, at = m + 2, _MATRICES[m][2]
    th, tw = -(-h // m), -(-wd // m)
    if scale is not None and out_scale is None:
        x = x * scale[:, None, None, :]
    d = _plain_input(x, th, tw, m)  # [t^2, T, Ci], k = t * kc + kr
    if out_scale is None:
        products = tf.matmul(d, _weights(w, m))  # [t^2, T, Co]
    else:  # computed in float32, rounded once to x's dtype
        f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731
        u = f32(_weights(w, m))[:, None] * f32(scale)[None, :, :, None] * f32(out_scale)[None, :, None, :]
        products = tf.matmul(tf.reshape(d, [t * t, -1, th * tw, ci]), tf.cast(u, x.dtype))  # [t^2, N, T / N, Co]
        products = tf.reshape(products, [t * t, -1, co])
    # output pixel (p, q) of a tile: sum_k A^T[p, kr] A^T[q, kc] M_k
    out_pq_k = np.einsum("pr,qc->pqcr", at, at).reshape(m * m, t * t)
    y = tf.matmul(tf.constant(out_pq_k, x.dtype), tf.reshape(products, [t * t, -1]))  # [(p, q), T * Co]
    y = tf.transpose(tf.reshape(y, [m, m, -1, th, tw, co]), [2, 3, 0, 4, 1, 5])  # [N, th, p, tw, q, Co]
    y = tf.reshape(y, [-1, m * th, m * tw, co])
    return y[:, :h, :wd] if (m * th != h or m * tw != wd) else y


def folding_pays(x, w) -> bool:
    """Whether winograd_plain's folded per-sample weights (out_scale) beat the two passes over the maps they
    replace: the weights [(m + 2)^2, Ci, Co] per sample at most half the elements of an input and an output
    map. Measured (one 256 px StyledConv's conv and plain epilogue, 4 images, float32, best / median of 11, ms,
    passes / folded): 256 px 128 -> 128 channels 442 / 491 -> 389 / 412, 128 px 256 -> 256 227 / 243 -> 214 /
    233, 64 px 512 -> 512 155 / 164 -> 167 / 172 (not folded)."""
    t, ci, co = tile_size(x.dtype) + 2, w.shape[2], w.shape[3]
    return 2 * t * t * ci * co <= x.shape[1] * x.shape[2] * (ci + co)


def _plain_input(x, th, tw, m):
    """B^T d B of every (m + 2)^2 input tile (stride m, the image zero-padded by one): [(m + 2)^2 (kc, kr),
    N * th * tw, Ci]."""
    _, h, wd, ci = x.shape
    t, bt = m + 2, tf.constant(_MATRICES[m][0], x.dtype)
    xp = tf.pad(x, [[0, 0], [1, m * th + m - 1 - h], [1, m * tw + m - 1 - wd], [0, 0]])  # [N, m(th+1), m(tw+1), Ci]
    v = tf.reshape(xp, [-1, th + 1, m, m * tw + m, ci])  # tile row i reads rows m i .. m i + m + 1 of xp
    rows = tf.stack([v[:, k // m: k // m + th, k % m] for k in range(t)])  # [t, N, th, W', Ci]
    rows = tf.reshape(tf.matmul(bt, tf.reshape(rows, [t, -1])), [t, -1, th, tw + 1, m, ci])
    cols = tf.stack([rows[:, :, :, k // m: k // m + tw, k % m] for k in range(t)])  # [t (col), t (row), ...]
    return tf.reshape(tf.matmul(bt, tf.reshape(cols, [t, -1])), [t * t, -1, ci])
