"""Differentiable augmentation for the discriminator (StyleGAN2-ADA "bgc") and the adaptive-p controller.

Implements the pipeline of Karras et al. 2020, *Training Generative Adversarial Networks with Limited
Data*, Appendix B, restricted to the "bgc" group (blit + geometric + color) that the Cartoon-StyleGAN2
reference uses, written for NHWC float tensors in about [-1, 1].

Public API
----------
``augment(images, p, *, seed=None, <strength flags>, <magnitudes>, params=None, return_params=False)``
    The whole pipeline; XLA-compilable, differentiable (twice) w.r.t. ``images``.
``sample_params(batch_size, p, *, seed=None, **options)``
    The per-sample random parameters (a dict, see ``PARAM_KEYS``); unfired augmentations hold their
    identity value.  ``augment(..., params=...)`` applies a given (possibly hand-made) dict.
``geom_matrices(params, height, width)`` -> ``(G, G_inv)``; ``color_matrix(params)`` -> ``C``.
``warp(images, inv_matrix)``; ``apply_color(images, color_matrix)``.
``AdaptiveAugment``: the reference's p controller (``tune``/``accumulate``/``maybe_update``/``update``).

Conventions
-----------
* Geometric matrices are 3x3 homogeneous, batched ``[N, 3, 3]``, acting on **centred pixel
  coordinates** ``(u, v, 1)`` with ``u = x - (W - 1) / 2``, ``v = y - (H - 1) / 2`` (x = column index to the
  right, y = row index downwards).  ``G`` is the *forward* map: the content at input position ``q``
  appears at output position ``G q``; the warp samples the input at ``G_inv p`` for every output pixel ``p``.
  A positive angle turns +x towards +y (clockwise as displayed, row 0 at the top); a translation
  ``(tx, ty)`` moves content by ``+tx`` columns and ``+ty`` rows.  Translations are fractions of the image
  size (``tx = t_x * W``, ``ty = t_y * H``), which is the upstream-fixed behaviour; the reference
  (rosinality ``non_leaking.py``) translation units/direction bug is not reproduced.
* Color matrices are 4x4 homogeneous ``[N, 4, 4]`` acting on ``(r, g, b, 1)``; like ADA, the "luma axis"
  is ``v = (1, 1, 1) / sqrt(3)`` (so "luma" here is the mean of R, G, B, not Rec. 601 weights).

Composition order and distributions (ADA Appendix B; ``p`` is the probability with which *each*
augmentation fires for each sample, multiplied by that augmentation's strength flag):

==============  ==========================================================================
xflip           fires w.p. p; then i ~ U{0, 1}: scale x by 1 - 2i (so the flip rate is p / 2)
rotate90        fires w.p. p; then k ~ U{0..3}: rotate by k * 90 degrees (built exactly)
xint            fires w.p. p; t ~ U(-xint_max, xint_max)^2; translate by round(t * size) pixels
scale           fires w.p. p; isotropic s = 2^N(0, scale_std^2)
rotate (pre)    fires w.p. 1 - sqrt(1 - p); theta ~ U(-pi * rotate_max, pi * rotate_max)
aniso           fires w.p. p; s = 2^N(0, aniso_std^2): scale x by s, y by 1 / s
rotate (post)   as the pre-rotation, independently
xfrac           fires w.p. p; t ~ N(0, xfrac_std^2)^2; translate by t * size pixels
brightness      fires w.p. p; add b ~ N(0, brightness_std^2)
contrast        fires w.p. p; multiply by c = 2^N(0, contrast_std^2)
lumaflip        fires w.p. p; then i ~ U{0, 1}: Householder reflection I - 2 v v^T i
hue             fires w.p. p; rotate about v by theta ~ U(-pi * hue_max, pi * hue_max)
saturation      fires w.p. p; scale the chroma (the part orthogonal to v) by 2^N(0, saturation_std^2)
==============  ==========================================================================

``G = T_frac R_post A R_pre S T_int R90 F`` (xflip acts first) and ``C = Sat Hue Luma Con Bri``
(brightness first).  ``G_inv`` is the closed-form affine inverse of ``G``.

Randomness: one ``[N, 29]`` uniform draw per call (``tf.random.stateless_uniform(..., seed, alg="philox")``
with a seed, ``tf.random.uniform`` without); each augmentation reads fixed columns of it (normals by
Box-Muller), so turning one augmentation off does not change the others' numbers.  A single RNG op also
keeps XLA compile times low.  Note: TensorFlow's XLA kernel for the stateless Philox op orders its
output differently from the regular kernel, so the *same seed gives different (but each deterministic)
draws with and without* ``jit_compile``; use ``return_params=True`` / ``params=`` to carry exact
parameters between the two.

Exact vs simplified relative to ADA
-----------------------------------
Exact: the set of augmentations, their order, distributions and default magnitudes, the per-sample
independent firing, ``p_rot = 1 - sqrt(1 - p)``, the single composed geometric matrix and single composed
color matrix.  Simplified:

* **No anti-aliasing.** ADA upsamples 2x with a ``sym6`` wavelet filter before the warp and downsamples
  after it; here the warp is a single bilinear resampling at the output resolution (so strong
  down-scaling can alias).  Consequence worth knowing: a sample whose transforms did not fire is returned
  bit-for-bit (ADA's filter pair slightly blurs every image whenever geometric augmentation is enabled).
* **Reflection padding is done in index space**: the bilinear taps are reflected into the image
  (``numpy.pad(mode="reflect")`` semantics, edge pixel not repeated, repeated as far as needed) instead of
  materialising a padded tensor.  That is "padding by reflection enough to cover the transformed image"
  with static shapes (XLA-friendly); ADA clamps its pad to ``size - 1`` and fills beyond it with zeros,
  which only matters for extreme transforms.
* Sampling is bilinear with ``tf.gather`` (no ``ImageProjectiveTransformV3``), so the function compiles
  under ``tf.function(jit_compile=True)``; matrix products and the color transform are written as
  elementwise multiply-adds (no ``matmul``) so TF32 on GPUs cannot round them and identity transforms
  stay exact.

``p == 0`` returns the input unchanged, bit for bit: a Python ``0`` skips the work at trace time; for a
tensor / variable ``p`` the output is ``tf.where(p > 0, augmented, images)`` (the pipeline still runs;
``tf.cond`` is avoided on purpose: under XLA its second-order gradient made each new set of D weights
trigger a recompilation).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

__all__ = [
    "augment",
    "sample_params",
    "geom_matrices",
    "color_matrix",
    "warp",
    "apply_color",
    "AdaptiveAugment",
    "DEFAULT_OPTIONS",
    "GEOMETRIC",
    "COLOR",
    "PARAM_KEYS",
]

# Everything here uses explicit tf.cond and Python-level (trace-time) branching only, so AutoGraph has
# nothing to convert; skipping it cuts the first trace inside a user's tf.function by seconds.
_no_autograph = tf.autograph.experimental.do_not_convert

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")

#: Strength flags (multipliers of p) and magnitudes, ADA defaults.
DEFAULT_OPTIONS = dict(
    xflip=1.0, rotate90=1.0, xint=1.0, scale=1.0, rotate=1.0, aniso=1.0, xfrac=1.0,
    brightness=1.0, contrast=1.0, lumaflip=1.0, hue=1.0, saturation=1.0,
    xint_max=0.125, scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
    brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0,
)

#: Keys of the parameter dict, with their identity values and per-sample shapes.
#: xflip / lumaflip: 0. or 1.; rotate90: int32 k in 0..3; xint / xfrac: [N, 2] fractions of (W, H);
#: scale / aniso / contrast / saturation: factors; rotate_pre / rotate_post / hue: radians;
#: brightness: additive offset.
PARAM_KEYS = {
    "xflip": 0.0, "rotate90": 0, "xint": (0.0, 0.0), "scale": 1.0, "rotate_pre": 0.0, "aniso": 1.0,
    "rotate_post": 0.0, "xfrac": (0.0, 0.0),
    "brightness": 0.0, "contrast": 1.0, "lumaflip": 0.0, "hue": 0.0, "saturation": 1.0,
}

# Fixed columns of the per-sample random draws (21 uniforms and 7 normals, all from ONE [N, 29] uniform
# draw, normals by Box-Muller), so turning one augmentation off never changes another's numbers.
# Fire decisions use the _FIRE columns.
_FIRE = {name: i for i, name in enumerate(
    ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac",
     "brightness", "contrast", "lumaflip", "hue", "saturation"))}
_UNIFORM = {"xflip": 13, "rotate90": 14, "xint": (15, 17), "rotate_pre": 17, "rotate_post": 18,
            "lumaflip": 19, "hue": 20}
_NUM_UNIFORM = 21
_NORMAL = {"scale": 0, "aniso": 1, "xfrac": (2, 4), "brightness": 4, "contrast": 5, "saturation": 6}
_NUM_NORMAL = 7
_NUM_PAIRS = (_NUM_NORMAL + 1) // 2

_COLOR_PARAMS = ("brightness", "contrast", "lumaflip", "hue", "saturation")

_LUMA = np.array([1.0, 1.0, 1.0], np.float64) / math.sqrt(3.0)


# ---------------------------------------------------------------------------
# Small batched-matrix helpers (elementwise arithmetic only, no matmul / TF32).
# ---------------------------------------------------------------------------

# Batched matrices are [N, R, C] float32 tensors.  Products are written as unrolled elementwise
# multiply-adds (no matmul: TF32 on GPUs cannot round them, identities reproduce their operand exactly,
# and XLA fuses them into a few small kernels, which keeps CPU compile times down).

def _matrix(rows, like):
    """Stack a nested list of Python numbers / [N] tensors into an [N, R, C] float32 tensor."""
    shape = tf.shape(like)
    return tf.stack([tf.stack([tf.broadcast_to(tf.cast(e, tf.float32), shape) for e in row], axis=-1)
                     for row in rows], axis=-2)


def _mm(a, b):
    """Batched matrix product [..., R, K] x [..., K, C] (elementwise, unrolled over K)."""
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k:k + 1] * b[..., k:k + 1, :]
    return out


def _chain(mats):
    """mats[:, 0] is applied first: returns mats[:, K-1] @ ... @ mats[:, 0] for mats [N, K, R, R]."""
    out = mats[:, 0]
    for k in range(1, mats.shape[1]):
        out = _mm(mats[:, k], out)
    return out


def _cos_sin(theta):
    # Exact identity at theta == 0 whatever the backend's cos/sin approximations do.
    zero = tf.equal(theta, 0.0)
    c = tf.where(zero, tf.ones_like(theta), tf.cos(theta))
    s = tf.where(zero, tf.zeros_like(theta), tf.sin(theta))
    return c, s


def _rot90_cs(k):
    k = tf.math.floormod(tf.cast(k, tf.int32), 4)
    c = tf.gather(tf.constant([1.0, 0.0, -1.0, 0.0]), k)
    s = tf.gather(tf.constant([0.0, 1.0, 0.0, -1.0]), k)
    return c, s


# ---------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------

def _exp2(x):
    return tf.exp(x * math.log(2.0))


def _check_options(options):
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown augmentation option(s): {sorted(unknown)}")
    out = dict(DEFAULT_OPTIONS)
    out.update(options)
    for key in GEOMETRIC + COLOR:
        if not isinstance(out[key], numbers.Real):
            raise TypeError(f"strength flag {key!r} must be a Python number, got {type(out[key]).__name__}")
    return out


def _identity_params(batch_size):
    n = batch_size
    out = {}
    for key, value in PARAM_KEYS.items():
        if key == "rotate90":
            out[key] = tf.zeros([n], tf.int32)
        elif isinstance(value, tuple):
            out[key] = tf.zeros(tf.stack([n, 2]), tf.float32)
        else:
            out[key] = tf.fill(tf.reshape(n, [1]), tf.constant(value, tf.float32))
    return out


def _complete_params(params, batch_size):
    """Fill missing keys of a user-given dict with identity values and cast to the canonical dtypes."""
    unknown = set(params) - set(PARAM_KEYS)
    if unknown:
        raise KeyError(f"unknown augmentation parameter(s): {sorted(unknown)}; known: {sorted(PARAM_KEYS)}")
    out = _identity_params(batch_size)
    for key, value in params.items():
        dtype = tf.int32 if key == "rotate90" else tf.float32
        value = tf.cast(tf.convert_to_tensor(value), dtype)
        out[key] = tf.broadcast_to(value, tf.shape(out[key]))
    return out


class _Draws:
    """The per-sample random numbers of one ``sample_params`` call: ONE [N, 29] uniform draw, read as the
    columns of ``_UNIFORM`` / ``_FIRE`` and as the normals of ``_NORMAL`` (Box-Muller on the last columns:
    one RNG op in all, cheap XLA compiles)."""

    def __init__(self, n, seed):
        shape = tf.stack([n, _NUM_UNIFORM + 2 * _NUM_PAIRS])
        if seed is None:
            draws = tf.random.uniform(shape)
        else:
            seed = tf.convert_to_tensor(seed)
            if not seed.dtype.is_integer:
                raise TypeError(f"seed must be integer, got {seed.dtype}")
            if seed.dtype not in (tf.int32, tf.int64):
                seed = tf.cast(seed, tf.int64)
            draws = tf.random.stateless_uniform(shape, seed, alg="philox")
        self.uniforms = draws[:, :_NUM_UNIFORM]
        u1 = 1.0 - draws[:, _NUM_UNIFORM:_NUM_UNIFORM + _NUM_PAIRS]          # (0, 1]
        u2 = draws[:, _NUM_UNIFORM + _NUM_PAIRS:]
        self.radius = tf.sqrt(-2.0 * tf.math.log(u1))
        self.angle = (2.0 * math.pi) * u2

    def _normal_column(self, j):
        pair = j % _NUM_PAIRS
        trig = tf.cos if j < _NUM_PAIRS else tf.sin
        return self.radius[:, pair] * trig(self.angle[:, pair])

    def uniform(self, name):
        col = _UNIFORM[name]
        return self.uniforms[:, col[0]:col[1]] if isinstance(col, tuple) else self.uniforms[:, col]

    def normal(self, name):
        col = _NORMAL[name]
        if isinstance(col, tuple):
            return tf.stack([self._normal_column(j) for j in range(*col)], axis=1)
        return self._normal_column(col)

    def choose(self, params, name, prob, value):
        """``params[name]`` becomes ``value`` for the samples where ``name`` fires (probability ``prob``)."""
        mask = self.uniforms[:, _FIRE[name]] < prob
        if value.shape.rank == 2:
            mask = mask[:, None]
        params[name] = tf.where(mask, value, params[name])


@_no_autograph
def sample_params(batch_size, p, *, seed=None, **options):
    """Draw the per-sample augmentation parameters (a dict with the keys of ``PARAM_KEYS``).

    ``batch_size``: int or scalar int tensor; ``p``: Python float, tensor or variable; ``seed``: None
    (tf.random ops) or a pair / [2] int tensor (stateless, deterministic).  ``options``: the strength flags
    and magnitudes of ``augment``.  Augmentations that did not fire for a sample hold their identity value.
    """
    opts = _check_options(options)
    p = tf.cast(tf.convert_to_tensor(p), tf.float32)
    draws = _Draws(batch_size, seed)
    params = _identity_params(batch_size)
    _sample_geometric(params, draws, p, opts)
    _sample_color(params, draws, p, opts)
    return params


def _sample_geometric(params, draws, p, opts):
    if opts["xflip"] != 0:
        i = tf.floor(draws.uniform("xflip") * 2.0)
        draws.choose(params, "xflip", p * opts["xflip"], tf.minimum(i, 1.0))
    if opts["rotate90"] != 0:
        k = tf.minimum(tf.cast(tf.floor(draws.uniform("rotate90") * 4.0), tf.int32), 3)
        draws.choose(params, "rotate90", p * opts["rotate90"], k)
    if opts["xint"] != 0:
        t = (draws.uniform("xint") * 2.0 - 1.0) * opts["xint_max"]
        draws.choose(params, "xint", p * opts["xint"], t)
    if opts["scale"] != 0:
        s = _exp2(draws.normal("scale") * opts["scale_std"])
        draws.choose(params, "scale", p * opts["scale"], s)
    if opts["rotate"] != 0:
        p_rot = 1.0 - tf.sqrt(tf.clip_by_value(1.0 - p * opts["rotate"], 0.0, 1.0))
        for name in ("rotate_pre", "rotate_post"):
            theta = (draws.uniform(name) * 2.0 - 1.0) * (math.pi * opts["rotate_max"])
            draws.choose(params, name, p_rot, theta)
    if opts["aniso"] != 0:
        s = _exp2(draws.normal("aniso") * opts["aniso_std"])
        draws.choose(params, "aniso", p * opts["aniso"], s)
    if opts["xfrac"] != 0:
        t = draws.normal("xfrac") * opts["xfrac_std"]
        draws.choose(params, "xfrac", p * opts["xfrac"], t)


def _sample_color(params, draws, p, opts):
    if opts["brightness"] != 0:
        b = draws.normal("brightness") * opts["brightness_std"]
        draws.choose(params, "brightness", p * opts["brightness"], b)
    if opts["contrast"] != 0:
        c = _exp2(draws.normal("contrast") * opts["contrast_std"])
        draws.choose(params, "contrast", p * opts["contrast"], c)
    if opts["lumaflip"] != 0:
        i = tf.minimum(tf.floor(draws.uniform("lumaflip") * 2.0), 1.0)
        draws.choose(params, "lumaflip", p * opts["lumaflip"], i)
    if opts["hue"] != 0:
        theta = (draws.uniform("hue") * 2.0 - 1.0) * (math.pi * opts["hue_max"])
        draws.choose(params, "hue", p * opts["hue"], theta)
    if opts["saturation"] != 0:
        s = _exp2(draws.normal("saturation") * opts["saturation_std"])
        draws.choose(params, "saturation", p * opts["saturation"], s)


# ---------------------------------------------------------------------------
# Matrices.
# ---------------------------------------------------------------------------

def _as_tensors(params, keys):
    out = {}
    for key in keys:
        if key not in params:
            raise KeyError(f"parameter {key!r} missing (sample_params() returns a complete dict)")
        out[key] = tf.cast(params[key], tf.int32 if key == "rotate90" else tf.float32)
    return out


def _affine_inverse(g):
    """Closed-form inverse of batched affine [N, 3, 3] (exact for 0/+-1 linear parts and integer shifts)."""
    a, b, tx = g[:, 0, 0], g[:, 0, 1], g[:, 0, 2]
    c, d, ty = g[:, 1, 0], g[:, 1, 1], g[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return _matrix([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)], [0, 0, 1]], a)


@_no_autograph
def geom_matrices(params, height, width):
    """Compose the geometric parameters into ``(G, G_inv)``, each [N, 3, 3] float32.

    ``G = T_frac R_post A R_pre S T_int R90 F`` maps centred input pixel coordinates to output
    coordinates (see the module docstring); ``G_inv`` is its closed-form affine inverse, exact whenever
    only flips, 90-degree rotations and integer shifts fired.
    """
    params = _as_tensors(params, [k for k in PARAM_KEYS if k not in _COLOR_PARAMS])
    wh = tf.constant([float(width), float(height)])
    flip = 1.0 - 2.0 * params["xflip"]
    one = tf.ones_like(flip)
    zero = tf.zeros_like(flip)
    c90, s90 = _rot90_cs(params["rotate90"])
    t_int = tf.round(params["xint"] * wh)
    s = params["scale"]
    cos, sin = _cos_sin(tf.stack([params["rotate_pre"], params["rotate_post"]], axis=1))
    a = params["aniso"]
    t_frac = params["xfrac"] * wh
    # Factors in the order they act on the content, each as (m00, m01, m02, m10, m11, m12).
    factors = [
        (flip, zero, zero, zero, one, zero),                                   # F: x-flip
        (c90, -s90, zero, s90, c90, zero),                                     # R90
        (one, zero, t_int[:, 0], zero, one, t_int[:, 1]),                      # T_int
        (s, zero, zero, zero, s, zero),                                        # S: isotropic scale
        (cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0], zero),             # R_pre
        (a, zero, zero, zero, 1.0 / a, zero),                                  # A: anisotropic scale
        (cos[:, 1], -sin[:, 1], zero, sin[:, 1], cos[:, 1], zero),             # R_post
        (one, zero, t_frac[:, 0], zero, one, t_frac[:, 1]),                    # T_frac
    ]
    entries = [tf.stack([f[j] for f in factors], axis=1) for j in range(6)]   # 6 x [N, 8]
    last = [tf.zeros_like(entries[0]), tf.zeros_like(entries[0]), tf.ones_like(entries[0])]
    mats = tf.reshape(tf.stack(entries + last, axis=-1), tf.stack([tf.shape(flip)[0], 8, 3, 3]))
    g = _chain(mats)
    return g, _affine_inverse(g)


@_no_autograph
def color_matrix(params):
    """Compose the color parameters into C [N, 4, 4] acting on (r, g, b, 1): ``C = Sat Hue Luma Con Bri``.

    Every factor has the form ``alpha I + beta v v^T + gamma [v]_x`` on RGB plus an offset ``tau`` added to
    R, G and B: brightness (1, 0, 0; b), contrast (c, 0, 0; 0), luma flip (1, -2i, 0; 0), hue rotation by
    theta (Rodrigues: cos, 1 - cos, sin; 0), saturation (s, 1 - s, 0; 0) = v v^T + s (I - v v^T).
    """
    params = _as_tensors(params, _COLOR_PARAMS)
    b = params["brightness"]
    one = tf.ones_like(b)
    zero = tf.zeros_like(b)
    c = params["contrast"]
    i = params["lumaflip"]
    ch, sh = _cos_sin(params["hue"])
    s = params["saturation"]
    alpha = tf.stack([one, c, one, ch, s], axis=1)[:, :, None, None]          # [N, 5, 1, 1]
    beta = tf.stack([zero, zero, -2.0 * i, 1.0 - ch, 1.0 - s], axis=1)[:, :, None, None]
    gamma = tf.stack([zero, zero, zero, sh, zero], axis=1)[:, :, None, None]
    tau = tf.stack([b, zero, zero, zero, zero], axis=1)[:, :, None, None]
    vx, vy, vz = (float(e) for e in _LUMA)
    eye = np.diag([1.0, 1.0, 1.0, 0.0]).astype(np.float32)
    vvt = np.zeros([4, 4], np.float32)
    vvt[:3, :3] = np.outer(_LUMA, _LUMA)
    cross = np.zeros([4, 4], np.float32)
    cross[:3, :3] = [[0.0, -vz, vy], [vz, 0.0, -vx], [-vy, vx, 0.0]]            # [v]_x
    offset = np.zeros([4, 4], np.float32)
    offset[:3, 3] = 1.0
    corner = np.zeros([4, 4], np.float32)
    corner[3, 3] = 1.0
    mats = alpha * eye + beta * vvt + gamma * cross + tau * offset + corner    # [N, 5, 4, 4]
    return _chain(mats)


# ---------------------------------------------------------------------------
# Application.
# ---------------------------------------------------------------------------

def _reflect(index, size):
    """Reflect integer indices into [0, size) like numpy.pad(mode='reflect') (edge not repeated)."""
    if size == 1:
        return tf.zeros_like(index)
    period = 2 * (size - 1)
    r = tf.math.floormod(index, period)
    return tf.where(r >= size, period - r, r)


def _static_hw(images):
    if images.shape.rank != 4:
        raise ValueError(f"expected NHWC images of rank 4, got shape {images.shape}")
    h, w = images.shape[1], images.shape[2]
    if h is None or w is None:
        raise ValueError(f"image height and width must be static, got shape {images.shape}")
    return int(h), int(w)


@_no_autograph
def warp(images, inv_matrix):
    """Resample ``images`` [N, H, W, C] at ``inv_matrix @ (u, v, 1)`` for every output pixel.

    Bilinear interpolation with reflected taps; ``inv_matrix`` [N, 3, 3] in centred pixel coordinates
    (a projective last row is honoured).  Linear in ``images``; gathers only, so XLA-compilable and
    differentiable to any order w.r.t. ``images``.
    """
    images = tf.convert_to_tensor(images)
    h, w = _static_hw(images)
    n = tf.shape(images)[0]
    ch = tf.shape(images)[3]
    m = tf.cast(inv_matrix, tf.float32)
    cx = (w - 1) / 2.0
    cy = (h - 1) / 2.0
    u = (tf.range(w, dtype=tf.float32) - cx)[None, None, :]
    v = (tf.range(h, dtype=tf.float32) - cy)[None, :, None]

    def e(i, j):
        return m[:, i, j][:, None, None]

    x = e(0, 0) * u + e(0, 1) * v + e(0, 2)
    y = e(1, 0) * u + e(1, 1) * v + e(1, 2)
    q = e(2, 0) * u + e(2, 1) * v + e(2, 2)
    x = x / q + cx
    y = y / q + cy                                             # [N, H, W]
    x0f = tf.floor(x)
    y0f = tf.floor(y)
    fx = tf.cast((x - x0f)[..., None], images.dtype)
    fy = tf.cast((y - y0f)[..., None], images.dtype)
    x0 = tf.cast(x0f, tf.int32)
    y0 = tf.cast(y0f, tf.int32)
    xs = _reflect(tf.stack([x0, x0 + 1], axis=1), w)          # [N, 2, H, W]
    ys = _reflect(tf.stack([y0, y0 + 1], axis=1), h) * w
    idx = tf.concat([ys[:, :1] + xs, ys[:, 1:] + xs], axis=1)  # taps (y0,x0), (y0,x1), (y1,x0), (y1,x1)
    flat = tf.reshape(images, tf.stack([n, h * w, ch]))
    taps = tf.gather(flat, tf.reshape(idx, tf.stack([n, 4 * h * w])), batch_dims=1)
    taps = tf.reshape(taps, tf.stack([n, 4, h, w, ch]))
    top = (1 - fx) * taps[:, 0] + fx * taps[:, 1]
    bottom = (1 - fx) * taps[:, 2] + fx * taps[:, 3]
    return (1 - fy) * top + fy * bottom


@_no_autograph
def apply_color(images, color_mat):
    """out_i = sum_j C[i, j] x_j + C[i, 3] for RGB images [N, H, W, 3] and C [N, 4, 4]."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(f"color augmentation needs NHWC RGB images, got shape {images.shape}")
    c = tf.cast(color_mat, images.dtype)[:, None, None, :, :]
    out = images[..., 0:1] * c[..., :3, 0]
    out = out + images[..., 1:2] * c[..., :3, 1]
    out = out + images[..., 2:3] * c[..., :3, 2]
    return out + c[..., :3, 3]


@_no_autograph
def augment(images, p, *, seed=None,
            xflip=1.0, rotate90=1.0, xint=1.0, scale=1.0, rotate=1.0, aniso=1.0, xfrac=1.0,
            brightness=1.0, contrast=1.0, lumaflip=1.0, hue=1.0, saturation=1.0,
            xint_max=0.125, scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
            brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0,
            params=None, return_params=False):
    """ADA "bgc" augmentation of NHWC images (see the module docstring for the exact recipe).

    Args:
      images: [N, H, W, C] float (C == 3 when any color augmentation is on); N may be unknown, H and W
        must be static.  Computed in float32, returned in the input dtype.
      p: probability with which each augmentation fires per sample (times its strength flag): Python
        number, scalar tensor or ``tf.Variable``.  ``p == 0`` returns ``images`` unchanged (bit-for-bit).
      seed: None (``tf.random`` ops) or a pair / [2] int tensor (stateless, deterministic).
      xflip ... saturation: strength flags (Python numbers); 0 removes that augmentation.
      xint_max ... saturation_std: magnitudes (ADA defaults).
      params: optional dict of parameters (keys of ``PARAM_KEYS``, missing ones = identity) used
        instead of sampling; then ``p`` and ``seed`` are ignored, and the warp / color stage runs only
        if the dict has a geometric / color key.
      return_params: also return ``(G, C)``: the forward geometric matrices [N, 3, 3] (centred pixel
        coordinates) and the color matrices [N, 4, 4] that were applied.

    Returns:
      The augmented images, or ``(images, G, C)`` with ``return_params=True``.  Differentiable (to any
      order) w.r.t. ``images``; no anti-aliasing filter (see module docstring).
    """
    opts = _check_options(dict(
        xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso, xfrac=xfrac,
        brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue, saturation=saturation,
        xint_max=xint_max, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std,
        xfrac_std=xfrac_std, brightness_std=brightness_std, contrast_std=contrast_std, hue_max=hue_max,
        saturation_std=saturation_std))
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise TypeError(f"images must be floating point, got {images.dtype}")
    x = tf.cast(images, tf.float32)
    h, w = _static_hw(x)
    n = tf.shape(x)[0]
    do_geom, do_color = _stages(params, opts)
    if do_color and x.shape[-1] != 3:
        raise ValueError(f"color augmentation needs 3 channels, got shape {x.shape}; "
                         "pass brightness=contrast=lumaflip=hue=saturation=0 for other channel counts")

    def run():
        prm = sample_params(n, p, seed=seed, **opts) if params is None else _complete_params(params, n)
        return _transform(x, prm, h, w, do_geom, do_color)

    if params is not None:
        out, g, cm = run()
    elif not (do_geom or do_color):
        out, g, cm = _unchanged(x)
    elif isinstance(p, numbers.Real) and not isinstance(p, bool):
        out, g, cm = run() if p > 0 else _unchanged(x)
    else:
        # A tensor p: run, then select the input where p <= 0.  (A tf.select rather than tf.cond: under
        # XLA the second-order gradient of a cond made every call with new D weights recompile.)
        active = tf.cast(tf.convert_to_tensor(p), tf.float32) > 0
        out, g, cm = run()
        x_id, g_id, cm_id = _unchanged(x)
        out, g, cm = tf.where(active, out, x_id), tf.where(active, g, g_id), tf.where(active, cm, cm_id)
    out = tf.cast(out, images.dtype)
    if return_params:
        return out, g, cm
    return out


def _stages(params, opts):
    """Whether the geometric warp and the color transform run: the stages a given ``params`` dict has keys
    of, else those with a non-zero strength flag."""
    if params is not None:
        return any(k not in _COLOR_PARAMS for k in params), any(k in _COLOR_PARAMS for k in params)
    return any(opts[k] != 0 for k in GEOMETRIC), any(opts[k] != 0 for k in COLOR)


def _transform(x, params, h, w, do_geom, do_color):
    """The images through the stages that run, with the geometric [N, 3, 3] and color [N, 4, 4] matrices."""
    g, g_inv = geom_matrices(params, h, w)
    cm = color_matrix(params)
    y = x
    if do_geom:
        y = warp(y, g_inv)
    if do_color:
        y = apply_color(y, cm)
    return y, g, cm


def _unchanged(x):
    """The images as they are, with identity matrices."""
    n = tf.shape(x)[0]
    eye3 = tf.eye(3, batch_shape=tf.reshape(n, [1]), dtype=tf.float32)
    eye4 = tf.eye(4, batch_shape=tf.reshape(n, [1]), dtype=tf.float32)
    return x, eye3, eye4


# ---------------------------------------------------------------------------
# The adaptive p controller.
# ---------------------------------------------------------------------------

class AdaptiveAugment(tf.Module):
    """The reference's ADA p controller (rosinality ``AdaptiveAugment`` semantics).

    Every D step, ``accumulate(real_logits)`` adds ``sum(sign(D(real)))`` and the number of logits; every
    ``update_every`` steps ``update()`` sets ``r_t = sum_sign / n``, moves ``p`` by ``+n / ada_length`` if
    ``r_t > target`` else by ``-n / ada_length``, clamps p to [0, 1] and resets the accumulators.

    Modes (the reference: adaptive iff ``--augment`` and ``augment_p == 0``, otherwise p fixed):
    ``adaptive=None`` means ``augment_p == 0``.  ``AdaptiveAugment(0.3)`` keeps p at 0.3 forever
    (``update`` still records ``r_t`` for logging); ``AdaptiveAugment(0.3, adaptive=True)`` adapts starting
    from 0.3 (e.g. resuming from a checkpoint's ``ada_aug_p``).

    Distribution strategy (choice): the two accumulators are ``ON_READ`` variables with ``SUM``
    aggregation, so ``accumulate`` is called per replica (inside ``strategy.run``) and each replica adds
    its own logits locally, with no communication; reading them in the cross-replica context sums over
    replicas (the reference's ``reduce_sum`` at update time).  ``maybe_update`` / ``update`` must run in the
    cross-replica context (after ``strategy.run``); ``p``, ``r_t`` and the step counter are ordinary
    (mirrored) variables written there.  Without a strategy, ``tune(logits)`` = accumulate + maybe_update,
    like the reference's ``tune``.  All state is in ``state_variables()`` (and tracked by
    ``tf.train.Checkpoint`` through this ``tf.Module``).
    """

    def __init__(self, augment_p=0.0, *, target=0.6, ada_length=500_000, update_every=8, adaptive=None,
                 name="adaptive_augment"):
        super().__init__(name=name)
        augment_p = float(augment_p)
        if not 0.0 <= augment_p <= 1.0:
            raise ValueError(f"augment_p must be in [0, 1], got {augment_p}")
        if update_every < 1 or ada_length <= 0:
            raise ValueError("update_every must be >= 1 and ada_length > 0")
        self.target = float(target)
        self.ada_length = float(ada_length)
        self.update_every = int(update_every)
        self.adaptive = (augment_p == 0.0) if adaptive is None else bool(adaptive)
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        on_read = dict(synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM, trainable=False, dtype=tf.float32)
        with self.name_scope:
            self.p = tf.Variable(augment_p, trainable=False, dtype=tf.float32, aggregation=first, name="p")
            self.r_t = tf.Variable(0.0, trainable=False, dtype=tf.float32, aggregation=first, name="r_t")
            self.sign_sum = tf.Variable(0.0, name="sign_sum", **on_read)
            self.count = tf.Variable(0.0, name="count", **on_read)
            self.steps = tf.Variable(0, trainable=False, dtype=tf.int64, aggregation=first, name="steps")

    def state_variables(self):
        """Name -> variable for everything that must be checkpointed."""
        return {"p": self.p, "r_t": self.r_t, "sign_sum": self.sign_sum, "count": self.count,
                "steps": self.steps}

    @_no_autograph
    def accumulate(self, real_logits):
        """Add sum(sign(real_logits)) and their number to the accumulators (per replica under a strategy)."""
        logits = tf.cast(tf.convert_to_tensor(real_logits), tf.float32)
        self.sign_sum.assign_add(tf.reduce_sum(tf.sign(logits)))
        self.count.assign_add(tf.cast(tf.size(logits), tf.float32))

    @_no_autograph
    def update(self):
        """Apply one controller update now (cross-replica context); returns the new p.

        With nothing accumulated (n == 0) p and r_t are left unchanged.
        """
        sign_sum = tf.identity(self.sign_sum.read_value())
        n = tf.identity(self.count.read_value())
        have = n > 0
        r_t = tf.math.divide_no_nan(sign_sum, n)
        if self.adaptive:
            direction = tf.where(r_t > self.target, 1.0, -1.0)
            new_p = tf.clip_by_value(self.p + direction * (n / self.ada_length), 0.0, 1.0)
            self.p.assign(tf.where(have, new_p, self.p))
        self.r_t.assign(tf.where(have, r_t, self.r_t))
        self.sign_sum.assign(tf.zeros_like(sign_sum))
        self.count.assign(tf.zeros_like(n))
        return self.p.read_value()

    @_no_autograph
    def maybe_update(self):
        """Count one D step; every ``update_every``-th call runs ``update()``.  Returns p."""
        steps = self.steps.assign_add(1)

        def do_update():
            self.steps.assign(tf.zeros_like(steps))
            return self.update()

        return tf.cond(steps >= self.update_every, do_update, self.p.read_value)

    @_no_autograph
    def tune(self, real_logits):
        """The reference's ``tune``: accumulate, then maybe update.  Returns p (no strategy / default one)."""
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False:
            raise RuntimeError("AdaptiveAugment.tune cannot run in a replica context; call accumulate() inside "
                               "strategy.run and maybe_update() outside it")
        self.accumulate(real_logits)
        return self.maybe_update()
