"""The networks' stride-2 3x3 convolutions, NHWC: a direct path and an exact faster CPU rewrite by phases.

``conv_transpose3x3_up2_blur(x, w, fir, pad)``: the generator's upsampling convolution, a stride-2 "VALID"
transposed 3x3 convolution (output 2H+1) followed by the FIR blur ``upfirdn2d(y, fir, pad=pad)``.
``conv3x3_down2(x, w)``: the discriminator's stride-2 "VALID" 3x3 convolution (after its blur).

Two paths each (dispatch.py families ``conv3x3_up2`` and ``conv3x3_down2``; auto: ``fast`` on CPU, ``direct``
where a GPU is visible), and a third for the upsampling conv:
  * ``direct``: ``tf.nn.conv2d_transpose`` then the blur; ``tf.nn.conv2d`` with stride 2.
  * ``fast``: the transposed convolution split into its four output phases, each an ordinary stride-1
    convolution at the INPUT resolution with the kernel taps that reach it (2x2, 2x1, 1x2, 1x1 taps: 9 in
    all, no multiplications by inserted zeros). The blur then reads the four phases and writes the
    interleaved, blurred image in one compiled pass (``phase_fir``): the 2H+1 image is never built.
    The stride-2 conv is the adjoint: four stride-1 convs of its input's phases. Their gradients are written
    with the same blocks (ops/conv_grad.py).
  * ``plain`` (up2): what exports run, plain TF ops only (no XLA cluster); TF's own gradients. Up to
    PLAIN_PHASES_MAX_HW input pixels the four phase convolutions, interleaved by one concat and
    depth_to_space, then the blur; above it the direct path, which measured faster without XLA.
Both are exact reformulations (equal up to float rounding), tested against the direct path to second order.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from tf_cartoon.ops.compiled import compiled
from tf_cartoon.ops.conv import unknown_hw
from tf_cartoon.ops.conv_grad import phases, scale_grads, scaled, tap_matmuls, window
from tf_cartoon.ops.dispatch import choose, register
from tf_cartoon.ops.upfirdn2d import upfirdn2d

# bench (2-core EPYC): TF's CPU transposed / strided convolutions lose 2-3x at large sizes, and their filter
# gradients 4-6x; cuDNN needs no help.
register("conv3x3_up2", ("direct", "fast", "plain"), {"CPU": "fast", "GPU": "direct"}, export="plain")
register("conv3x3_down2", ("direct", "fast"), {"CPU": "fast", "GPU": "direct"})

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
    kernel spatially reversed (the transposed conv's). One gather per kernel (w is up to 9 MB): 4 ops per
    layer where slicing tap by tap takes 20."""
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
    dw = tap_matmuls(dph, x, 3, 2, big_is_input=False, scale=scale)
    if scale is None:
        return dxs, dw
    return (*scale_grads(dxs, x, scale), dw)


def _zero_phase(x, w, p):
    """Zeros shaped like phase p of _up2_fast(x, w) (the gradient of an output nothing used)."""
    return tf.zeros([tf.shape(x)[0], x.shape[1] + 1 - p[0], x.shape[2] + 1 - p[1], w.shape[-1]], x.dtype)


@tf.custom_gradient
def _up2_scaled_fast(x, scale, w):
    """_up2_fast(x * scale, w), keeping x rather than x * scale for the backward pass."""
    ph = _up2_convs(scaled(x, scale), w)

    return tuple(ph[p] for p in PARITIES), lambda *dph: _up2_backward(x, dph, w, scale)


@tf.custom_gradient
def _down2_fast(ee, eo, oe, oo, w):
    """_down2_sum of the phases (positional, PARITIES order); its input gradient is _up2_fast."""
    ph = dict(zip(PARITIES, (ee, eo, oe, oo)))
    y = _down2_sum(ph, w)

    def grad(dy):
        return (*_up2_fast(dy, _swap_io(w)), tap_matmuls(ph, dy, 3, 2))

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
    forward = compiled(functools.partial(_phase_fir_forward, plan))
    adjoint = compiled(functools.partial(_phase_fir_adjoint, plan))

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
    if choose("conv3x3_down2", impl, unsupported=unknown_hw(x)) == "direct":
        return tf.nn.conv2d(x, w, 2, "VALID")
    return _conv3x3_down2_fast(x, w)


def _inputphases(x, ho, wo):
    """The phases of x [N, H, W, C] a stride-2 3x3 conv with output [Ho, Wo] reads (shapes as above)."""
    p = phases(x)
    return {(a, b): window(p[(a, b)], 0, 0, ho + 1 - a, wo + 1 - b) for a, b in PARITIES}


@tf.custom_gradient
def _conv3x3_down2_fast(x, w):
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    y = _down2_sum(_inputphases(x, ho, wo), w)
    h, wd = x.shape[1], x.shape[2]

    def grad(dy):
        # the transposed conv's 2Ho+1 rows, and a zero row where H is 2Ho+2
        dx = phase_fir(_up2_fast(dy, _swap_io(w)), ((1.0,),), (0, h - 2 * ho - 1, 0, wd - 2 * wo - 1))
        return dx, tap_matmuls(x, dy, 3, 2)

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
    path = choose("conv3x3_up2", impl, unsupported=unknown_hw(x))
    (px0, px1), (py0, py1) = _pads(pad)
    if path == "plain" and max(x.shape[1], x.shape[2]) <= PLAIN_PHASES_MAX_HW:
        # the interleaved image has one zero row and column more than the transposed conv's (2H+2): one
        # less padding at the end gives the same blur
        y = _interleave(_up2_convs(x if scale is None else scaled(x, scale), w))
        return upfirdn2d(y, fir, pad=(px0, px1 - 1, py0, py1 - 1))
    if path != "fast":
        if scale is not None:
            x = scaled(x, scale)
        shape = tf.shape(x)
        co = w.shape[-1]
        out_shape = tf.stack([shape[0], 2 * shape[1] + 1, 2 * shape[2] + 1, co])
        y = tf.nn.conv2d_transpose(x, _swap_io(w), out_shape, strides=2, padding="VALID")
        if x.shape[1] is not None and x.shape[2] is not None:
            y = tf.ensure_shape(y, [x.shape[0], 2 * x.shape[1] + 1, 2 * x.shape[2] + 1, co])
        return upfirdn2d(y, fir, pad=pad)
    ph = _up2_fast(x, w) if scale is None else _up2_scaled_fast(x, scale, w)
    taps = tuple(tuple(float(v) for v in row) for row in np.asarray(fir, np.float32)[::-1, ::-1])
    return phase_fir(ph, taps, (py0, py1, px0, px1))


# The plain path's phase convolutions against TF's transposed conv, both followed by the plain blur (bench, quiet
# 2-core EPYC, 4 images, float32, 512 channels, best of 11, ms, transposed / phases): 8 px 22 / 12, 16 px 70-74 /
# 38-44, 32 px 167-175 / 152-164; at 64 px (512 -> 256 channels) 258-285 / 300-315, so larger inputs stay direct.
PLAIN_PHASES_MAX_HW = 32


def _interleave(ph):
    """The image [N, 2H+2, 2W+2, C] whose phases are ph (a dict, shapes as above; the row and column past the
    transposed conv's 2H+1 are zero): the three smaller phases zero-padded to [H+1, W+1], one concat on the
    channels, one depth_to_space (channel block 2a + b -> pixel offset (a, b))."""
    def pad(a, rows, cols):
        return tf.pad(a, [[0, 0], [0, rows], [0, cols], [0, 0]])

    blocks = [ph[(0, 0)], pad(ph[(0, 1)], 0, 1), pad(ph[(1, 0)], 1, 0), pad(ph[(1, 1)], 1, 1)]
    return tf.nn.depth_to_space(tf.concat(blocks, axis=-1), 2)


def _pads(pad):
    if len(pad) == 2:
        return (pad[0], pad[1]), (pad[0], pad[1])
    return (pad[0], pad[1]), (pad[2], pad[3])

