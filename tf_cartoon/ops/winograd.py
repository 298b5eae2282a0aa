"""Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural
Networks"): the stride-1 3x3 convolution of ops/conv.py's fast path for wide layers.

Each 2x2 output tile needs 16 products of transformed inputs and transformed weights instead of 36, and the 16
products over all tiles are 16 batched ``[T, Ci] x [Ci, Co]`` matmuls: 2.25x fewer multiply-adds. The input /
output transforms are only additions; they are compiled with XLA so they fuse into a few passes over memory
(applying the modulated conv's input scale on the way); the products are one TF batched matmul between them
(oneDNN's, faster here than XLA's dot). XLA's CPU convolutions are ~3x slower than oneDNN's, so XLA never
convolves.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_cartoon.ops.conv_grad import MAX_BANDS

# Winograd F(2x2, 3x3) matrices: Y = A^T [(G g G^T) * (B^T d B)] A, d a 4x4 input tile, g the 3x3 kernel.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def use_winograd(x, w) -> bool:
    # Measured (bench, 2-core EPYC): the transforms pay from 32x32 up with >= 256 input channels; at 256x256
    # with 128 channels Winograd and oneDNN's direct convolution take the same time; below 32x32 direct wins.
    return x.shape[1] >= 32 and x.shape[2] >= 32 and w.shape[2] >= 256



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


def winograd(x, w, scale=None):
    """SAME 3x3 correlation of x (of x * scale [N, Ci] when given) by Winograd F(2x2, 3x3), in bands of output
    rows when the whole image's transforms would be larger than WINOGRAD_BAND_BYTES. Each band's input
    transform reads its rows (and a halo row each side) of x itself and applies the scale on the way: no
    band copies, no scaled copy of x."""
    n, h, wd, ci = x.shape
    per_row_pair = 16 * (n or 1) * ((wd + 1) // 2) * max(ci, w.shape[-1]) * x.dtype.size
    rows = 2 * max(1, WINOGRAD_BAND_BYTES // per_row_pair, -(-h // (2 * MAX_BANDS)))
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
# The same F(2x2, 3x3) in plain TF ops (no XLA): what exports run (dispatch.plain_ops). Without XLA every op
# is its own pass over memory, so the transforms are written as few, large, copy-like ops: the 4x4 input tiles
# (stride 2) are unit-step slices of a [N, H/2, 2, W/2, 2, C] view stacked on a leading axis, B^T is one
# [4, 4] matmul per axis over that leading axis, so the 16 transformed arrays come out as the [16, T, Ci]
# operand of the batched matmul with no transpose (transposes ran 2-3x slower per byte here than slices);
# A^T m A is one [4, 16] matmul and one transpose into the 2x2 output pixels. Measured (shared 2-core EPYC,
# 4 images, scaled input, process CPU ms, one run: direct conv2d / this path / the XLA-fused path): 32 px 512
# channels 242 / 173 / 149; 64 px 512 channels 977 / 599 / 553; 128 px 256 channels 1001 / 748 / 672.
# ---------------------------------------------------------------------------------------------

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# The 16 products are ordered k = 4 * kc + kr (column transform outermost, as _plain_input makes them); the output
# pixel (p, q) of a tile is sum_k A^T[p, kr] A^T[q, kc] m_k, rows of this matrix in (p, q) order.
_OUT_PQ_K = np.einsum("pr,qc->pqcr", _AT, _AT).reshape(4, 16)


def winograd_plain(x, w, scale=None):
    """SAME 3x3 correlation of x (of x * scale [N, Ci] when given) by Winograd F(2x2, 3x3) in plain TF ops:
    no XLA cluster, and a dynamic batch size works (H and W must be static)."""
    _, h, wd, ci = x.shape
    co = w.shape[-1]
    th, tw = (h + 1) // 2, (wd + 1) // 2
    if scale is not None:
        x = x * scale[:, None, None, :]
    d = _plain_input(x, th, tw)  # [16, T, Ci]
    g = tf.constant(_G, w.dtype)
    u = tf.einsum("ai,ijcd,bj->bacd", g, w, g)  # G g G^T, stored [kc, kr, Ci, Co] to match d's order
    m = tf.matmul(d, tf.reshape(u, [16, ci, co]))  # [16, T, Co]
    y = tf.matmul(tf.constant(_OUT_PQ_K, x.dtype), tf.reshape(m, [16, -1]))  # [(p, q), T * Co]
    y = tf.transpose(tf.reshape(y, [2, 2, -1, th, tw, co]), [2, 3, 0, 4, 1, 5])  # [N, th, p, tw, q, Co]
    y = tf.reshape(y, [-1, 2 * th, 2 * tw, co])
    return y[:, :h, :wd] if (2 * th != h or 2 * tw != wd) else y


def _plain_input(x, th, tw):
    """B^T d B of every 4x4 input tile (stride 2, the image zero-padded by one): [16 (kc, kr), N * th * tw, Ci]."""
    _, h, wd, ci = x.shape
    xp = tf.pad(x, [[0, 0], [1, 2 * th + 1 - h], [1, 2 * tw + 1 - wd], [0, 0]])  # [N, 2 th + 2, 2 tw + 2, Ci]
    bt = tf.constant(_BT, x.dtype)
    v = tf.reshape(xp, [-1, th + 1, 2, 2 * tw + 2, ci])  # tile row i reads rows 2i .. 2i + 3 of xp
    rows = tf.stack([v[:, :th, 0], v[:, :th, 1], v[:, 1:, 0], v[:, 1:, 1]])  # [4, N, th, W', Ci]
    rows = tf.reshape(tf.matmul(bt, tf.reshape(rows, [4, -1])), [4, -1, th, tw + 1, 2, ci])
    cols = tf.stack([rows[:, :, :, :tw, 0], rows[:, :, :, :tw, 1], rows[:, :, :, 1:, 0], rows[:, :, :, 1:, 1]])
    return tf.reshape(tf.matmul(bt, tf.reshape(cols, [4, -1])), [16, -1, ci])
