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


