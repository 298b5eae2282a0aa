"""Tests for tf_cartoon.ops: upfirdn2d (both impls), the network's FIR helpers,
bias_act / fused_leaky_relu, and the impl dispatch.

Expected values come from an independent path: a float64 NumPy transcription
of the reference's definition (explicit loops over the kernel taps), and, for
derivatives, the explicit matrix of that transcription (built by applying it to
unit vectors). Nothing in the NumPy path calls tf_cartoon.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.ops import (bias_act, blur2d, downsample2d, fused_leaky_relu, make_kernel,
                            set_default_impl, upfirdn2d, upfirdn2d_output_size, upsample2d)
from tf_cartoon.ops import dispatch

# tf_cartoon.ops re-exports the function under the module's name, so fetch the module itself.
upfirdn2d_module = importlib.import_module("tf_cartoon.ops.upfirdn2d")

IMPLS = ("ref", "tf")


# ---------------------------------------------------------------------------
# Independent NumPy transcription of the definition.
# ---------------------------------------------------------------------------

def np_upfirdn2d(x, k, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0)):
    """The reference's definition, step by step, in float64.

    x: [..., H, W, C] (any leading dims); k: [kh, kw]; up/down: (x, y) factors;
    pad: (x0, x1, y0, y1), negative entries crop.
    """
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    *lead, h, w, c = x.shape
    kh, kw = k.shape
    # 1. zero insertion: up - 1 zeros AFTER each sample.
    xu = np.zeros((*lead, h * upy, w * upx, c))
    for i in range(h):
        for j in range(w):
            xu[..., i * upy, j * upx, :] = x[..., i, j, :]
    # 2. pad / crop: padded[t] = xu[t - p0] where that index exists, else 0.
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    xp = np.zeros((*lead, hp, wp, c))
    for t in range(hp):
        src_t = t - py0
        if not 0 <= src_t < h * upy:
            continue
        for s in range(wp):
            src_s = s - px0
            if 0 <= src_s < w * upx:
                xp[..., t, s, :] = xu[..., src_t, src_s, :]
    # 3. true convolution (flipped kernel), "valid" extent; explicit loop over taps.
    oh, ow = hp - kh + 1, wp - kw + 1
    assert oh >= 1 and ow >= 1, "test case is invalid: padded input smaller than the kernel"
    out = np.zeros((*lead, oh, ow, c))
    for a in range(kh):
        for b in range(kw):
            out += k[kh - 1 - a, kw - 1 - b] * xp[..., a:a + oh, b:b + ow, :]
    # 4. keep every down-th sample.
    return out[..., ::downy, ::downx, :]


def np_matrix(shape, k, up, down, pad):
    """Explicit matrix A (out_size x in_size) of the transcription, column by column."""
    d = int(np.prod(shape))
    eye = np.eye(d).reshape(d, *shape)
    cols = np_upfirdn2d(eye, k, up, down, pad)  # [d, *out_shape]
    out_shape = cols.shape[1:]
    return cols.reshape(d, -1).T, out_shape


def np_out_size(n_in, k, up, down, p0, p1):
    """Length along one axis, counted the slow way (no closed formula)."""
    padded = n_in * up + p0 + p1
    full = padded - k + 1
    return len(range(0, full, down))


def scaled_close(actual, expected, tol=1e-5):
    """allclose with atol relative to the expected values' magnitude."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def ref_kernel_1d(k1d, gain=1.0):
    """make_kernel written out independently: outer product, sum 1, times gain."""
    k = np.outer(np.asarray(k1d, np.float64), np.asarray(k1d, np.float64))
    return k / k.sum() * gain


# ---------------------------------------------------------------------------
# Cases: fixed-seed random shapes, kernels, factors and pads.
# ---------------------------------------------------------------------------

# Each mode pins the branch of the "tf" impl being exercised.
_MODES = [
    "up_same",     # upx == upy > 1: transposed-conv path
    "up_diff",     # upx != upy: fallback path
    "down_same",   # up 1, downx == downy: strided conv
    "down_diff",   # up 1, downx != downy: conv + strided slice
    "up_down",     # upx == upy > 1 and down > 1
    "plain",       # up 1, down 1
]


def _make_case(rng, mode, max_n=3, max_c=5, hw=(3, 9)):
    while True:
        n = int(rng.integers(1, max_n + 1))
        c = int(rng.integers(1, max_c + 1))
        h = int(rng.integers(hw[0], hw[1] + 1))
        w = int(rng.integers(hw[0], hw[1] + 1))
        if h == w:
            continue
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        if mode in ("up_same", "up_down"):
            u = int(rng.choice([2, 4]))
            up = (u, u)
        elif mode == "up_diff":
            up = tuple(int(v) for v in rng.choice([1, 2, 4], size=2, replace=False))
        else:
            up = (1, 1)
        if mode == "down_same":
            d = int(rng.choice([2, 4]))
            down = (d, d)
        elif mode == "down_diff":
            down = tuple(int(v) for v in rng.choice([1, 2, 4], size=2, replace=False))
        elif mode == "up_down":
            down = (int(rng.choice([2, 4])), int(rng.choice([1, 2])))
        elif mode == "up_diff":
            down = tuple(int(v) for v in rng.choice([1, 2], size=2))
        else:
            down = (1, 1)
        pad = tuple(int(v) for v in rng.integers(-3, 4, size=4))
        px0, px1, py0, py1 = pad
        if h * up[1] + py0 + py1 < kh or w * up[0] + px0 + px1 < kw:
            continue
        # Keep some non-symmetric real-valued kernels, and some non-square ones.
        k = rng.uniform(-1.0, 1.0, size=(kh, kw))
        return dict(shape=(n, h, w, c), k=k, up=up, down=down, pad=pad)


def _case_id(cs):
    n, h, w, c = cs["shape"]
    kh, kw = cs["k"].shape
    p = "_".join(str(v) for v in cs["pad"]).replace("-", "m")
    return (f"n{n}h{h}w{w}c{c}-k{kh}x{kw}-up{cs['up'][0]}x{cs['up'][1]}"
            f"-dn{cs['down'][0]}x{cs['down'][1]}-p{p}")


def _build_cases(seed, count, **kw):
    rng = np.random.default_rng(seed)
    return [_make_case(rng, _MODES[i % len(_MODES)], **kw) for i in range(count)]


# Hand-picked: the network's own configurations and a few edge cases.
_FIXED = [
    dict(shape=(2, 4, 6, 3), k=ref_kernel_1d([1, 3, 3, 1], 4), up=(2, 2), down=(1, 1), pad=(2, 1, 2, 1)),
    dict(shape=(1, 9, 7, 2), k=ref_kernel_1d([1, 3, 3, 1], 4), up=(1, 1), down=(1, 1), pad=(1, 1, 1, 1)),
    dict(shape=(2, 8, 6, 2), k=ref_kernel_1d([1, 3, 3, 1]), up=(1, 1), down=(1, 1), pad=(2, 2, 2, 2)),
    dict(shape=(1, 8, 6, 3), k=ref_kernel_1d([1, 3, 3, 1]), up=(1, 1), down=(2, 2), pad=(1, 1, 1, 1)),
    dict(shape=(1, 1, 1, 1), k=np.array([[2.0]]), up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0)),
    dict(shape=(1, 3, 5, 2), k=np.arange(1.0, 7.0).reshape(2, 3), up=(4, 4), down=(1, 1), pad=(-3, -2, -1, -3)),
    dict(shape=(2, 3, 4, 1), k=np.arange(1.0, 5.0).reshape(4, 1), up=(2, 1), down=(1, 2), pad=(0, 0, 3, 0)),
    dict(shape=(1, 5, 3, 2), k=np.arange(1.0, 6.0).reshape(1, 5), up=(1, 4), down=(2, 1), pad=(2, 0, -2, 1)),
]

CASES = _FIXED + _build_cases(20240611, 36)
CASE_IDS = [_case_id(cs) for cs in CASES]
# Smaller shapes for tests that build the explicit matrix A.
GRAD_CASES = _FIXED[:3] + _FIXED[5:] + _build_cases(7, 12, max_n=2, max_c=3, hw=(3, 6))
GRAD_IDS = [_case_id(cs) for cs in GRAD_CASES]


def _run(cs, x, impl):
    return upfirdn2d(x, cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"], impl=impl)


def _input(cs, seed=0):
    return np.random.default_rng(seed).standard_normal(cs["shape"]).astype(np.float32)


@pytest.fixture(autouse=True)
def _clean_default_impl(monkeypatch):
    monkeypatch.delenv("TF_CARTOON_OPS_IMPL", raising=False)
    set_default_impl(None)
    yield
    set_default_impl(None)


# ---------------------------------------------------------------------------
# 1. Values against the NumPy transcription.
# ---------------------------------------------------------------------------

def test_transcription_sanity():
    """The NumPy transcription itself, on a case small enough to do by hand."""
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1)
    k = np.array([[1.0, 10.0]])  # non-symmetric: detects a missing flip
    # up 2 in x: [1,0,2,0,3,0]; pad (1, 0): [0,1,0,2,0,3,0]; true conv with [1,10]:
    # out[i] = p[i]*10 + p[i+1]*1 -> [1, 10, 2, 20, 3, 30]; down 2 -> [1, 2, 3].
    y = np_upfirdn2d(x, k, up=(2, 1), pad=(1, 0, 0, 0))
    np.testing.assert_array_equal(y.ravel(), [1, 10, 2, 20, 3, 30])
    y = np_upfirdn2d(x, k, up=(2, 1), down=(2, 1), pad=(1, 0, 0, 0))
    np.testing.assert_array_equal(y.ravel(), [1, 2, 3])
    # a negative pad crops: drop the first sample, then true conv with [1, 10].
    y = np_upfirdn2d(x, k, pad=(-1, 0, 0, 0))
    np.testing.assert_array_equal(y.ravel(), [2 * 10 + 3])


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed(impl):
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 1, 3, 1)
    k = np.array([[1.0, 10.0]], np.float32)
    y = upfirdn2d(x, k, up=(2, 1), pad=(1, 0, 0, 0), impl=impl)
    np.testing.assert_allclose(np.asarray(y).ravel(), [1, 10, 2, 20, 3, 30])
    y = upfirdn2d(x, k, pad=(-1, 0, 0, 0), impl=impl)
    np.testing.assert_allclose(np.asarray(y).ravel(), [23])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cs", CASES, ids=CASE_IDS)
def test_upfirdn2d_matches_numpy(cs, impl):
    x = _input(cs)
    expected = np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"])
    y = _run(cs, x, impl)
    assert y.dtype == tf.float32
    scaled_close(y, expected)


def test_1d_kernel_means_outer_product():
    x = _input(dict(shape=(2, 5, 7, 3)))
    k1 = np.array([1.0, 2.0, 5.0])
    expected = np_upfirdn2d(x, np.outer(k1, k1), (2, 2), (1, 1), (1, 1, 1, 1))
    for impl in IMPLS:
        scaled_close(upfirdn2d(x, k1, up=2, pad=(1, 1), impl=impl), expected)


def test_pad_pair_applies_to_both_axes_and_factor_pairs_are_xy():
    x = _input(dict(shape=(1, 3, 5, 2)))
    k = np.random.default_rng(3).uniform(-1, 1, (3, 2))
    for impl in IMPLS:
        y = upfirdn2d(x, k, up=(2, 1), down=(1, 2), pad=(1, 2), impl=impl)
        expected = np_upfirdn2d(x, k, (2, 1), (1, 2), (1, 2, 1, 2))
        scaled_close(y, expected)
        # x factors act on W (axis 2), y factors on H (axis 1).
        assert y.shape[1] == (3 + 1 + 2 - 3 + 2) // 2
        assert y.shape[2] == 5 * 2 + 1 + 2 - 2 + 1


def test_float64_input():
    cs = CASES[0]
    x = _input(cs).astype(np.float64)
    expected = np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"])
    for impl in IMPLS:
        y = _run(cs, x, impl)
        assert y.dtype == tf.float64
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# 2. Output-size formula.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,k,up,down,p0,p1", [
    (n_in, k, up, down, p0, p1)
    for n_in in (1, 4, 7) for k in (1, 3, 4) for up in (1, 2, 4) for down in (1, 2, 4)
    for p0, p1 in ((0, 0), (2, 1), (-1, 3), (1, -2)) if n_in * up + p0 + p1 >= k
][::3])
def test_output_size_formula(n_in, k, up, down, p0, p1):
    assert upfirdn2d_output_size(n_in, k, up, down, p0, p1) == np_out_size(n_in, k, up, down, p0, p1)


def test_output_size_matches_ops():
    for cs in CASES:
        n, h, w, c = cs["shape"]
        kh, kw = cs["k"].shape
        px0, px1, py0, py1 = cs["pad"]
        oh = upfirdn2d_output_size(h, kh, cs["up"][1], cs["down"][1], py0, py1)
        ow = upfirdn2d_output_size(w, kw, cs["up"][0], cs["down"][0], px0, px1)
        x = tf.zeros(cs["shape"])
        for impl in IMPLS:
            assert tuple(_run(cs, x, impl).shape) == (n, oh, ow, c), (_case_id(cs), impl)


# ---------------------------------------------------------------------------
# 3. The network helpers with the reference's pads.
# ---------------------------------------------------------------------------

def test_make_kernel():
    k = make_kernel([1, 3, 3, 1])
    assert k.dtype == np.float32 and k.shape == (4, 4)
    np.testing.assert_allclose(k, ref_kernel_1d([1, 3, 3, 1]), rtol=1e-7)
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(make_kernel([1, 3, 3, 1], gain=4), ref_kernel_1d([1, 3, 3, 1], 4), rtol=1e-7)
    k2 = [[1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_allclose(make_kernel(k2), np.array(k2) / 10.0, rtol=1e-7)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        make_kernel(np.ones((2, 2, 2)))


@pytest.mark.parametrize("impl", IMPLS)
def test_upsample2d(impl):
    x = _input(dict(shape=(2, 4, 6, 3)), seed=1)
    # ToRGB skip: up 2, kernel [1,3,3,1] * 4, pad (2, 1) -> exactly 2x.
    expected = np_upfirdn2d(x, ref_kernel_1d([1, 3, 3, 1], 4), (2, 2), (1, 1), (2, 1, 2, 1))
    y = upsample2d(x, impl=impl)
    assert tuple(y.shape) == (2, 8, 12, 3)
    scaled_close(y, expected)
    # A constant image stays constant away from the borders (gain 4 keeps magnitude).
    y = np.asarray(upsample2d(np.ones((1, 6, 6, 1), np.float32), impl=impl))
    np.testing.assert_allclose(y[0, 2:-2, 2:-2, 0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_downsample2d(impl):
    x = _input(dict(shape=(2, 8, 6, 3)), seed=2)
    expected = np_upfirdn2d(x, ref_kernel_1d([1, 3, 3, 1]), (1, 1), (2, 2), (1, 1, 1, 1))
    y = downsample2d(x, impl=impl)
    assert tuple(y.shape) == (2, 4, 3, 3)
    scaled_close(y, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_blur2d_reference_pads(impl):
    rng = np.random.default_rng(4)
    # Generator: transposed conv gives 2H+1; blur kernel*4 with pads (1, 1) gives 2H.
    x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
    k4 = ref_kernel_1d([1, 3, 3, 1], 4)
    y = blur2d(x, k4.astype(np.float32), pad=(1, 1), impl=impl)
    assert tuple(y.shape) == (2, 8, 10, 3)
    scaled_close(y, np_upfirdn2d(x, k4, (1, 1), (1, 1), (1, 1, 1, 1)))
    # Discriminator: blur pad (2, 2) before the 3x3 stride-2 conv -> H+1,
    # blur pad (1, 1) before the 1x1 stride-2 skip conv -> H-1.
    x = rng.standard_normal((2, 8, 6, 4)).astype(np.float32)
    k = ref_kernel_1d([1, 3, 3, 1])
    y = blur2d(x, k.astype(np.float32), pad=(2, 2), impl=impl)
    assert tuple(y.shape) == (2, 9, 7, 4)
    scaled_close(y, np_upfirdn2d(x, k, (1, 1), (1, 1), (2, 2, 2, 2)))
    y = blur2d(x, k.astype(np.float32), pad=(1, 1), impl=impl)
    assert tuple(y.shape) == (2, 7, 5, 4)
    scaled_close(y, np_upfirdn2d(x, k, (1, 1), (1, 1), (1, 1, 1, 1)))


# ---------------------------------------------------------------------------
# 4. Gradients (first order: adjoint; second order: Hessian-vector product).
# ---------------------------------------------------------------------------

def _tape_grad(cs, x, r, impl):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = _run(cs, x, impl)
        loss = tf.reduce_sum(y * r)
    return y, tape.gradient(loss, x)


def _tape_hvp(cs, x, r, v, impl):
    """Hessian-vector product of f(x) = sum(upfirdn2d(x)^2 * r)."""
    x = tf.constant(x)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = tf.reduce_sum(tf.square(_run(cs, x, impl)) * r)
        g = inner.gradient(f, x)
        gv = tf.reduce_sum(g * v)
    return g, outer.gradient(gv, x)


@pytest.mark.parametrize("cs", GRAD_CASES, ids=GRAD_IDS)
def test_gradients_adjoint_and_hvp(cs):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(cs["shape"]).astype(np.float32)
    v = rng.standard_normal(cs["shape"]).astype(np.float32)
    A, out_shape = np_matrix(cs["shape"], cs["k"], cs["up"], cs["down"], cs["pad"])
    r = rng.standard_normal(out_shape).astype(np.float32)
    r64 = r.astype(np.float64).ravel()
    x64, v64 = x.astype(np.float64).ravel(), v.astype(np.float64).ravel()
    # Sanity of the matrix itself against the transcription applied directly.
    np.testing.assert_allclose(A @ x64, np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"]).ravel(),
                               rtol=1e-10, atol=1e-10)
    adj = (A.T @ r64).reshape(cs["shape"])
    hvp = (2.0 * A.T @ (r64 * (A @ v64))).reshape(cs["shape"])
    grad_x = (2.0 * A.T @ (r64 * (A @ x64))).reshape(cs["shape"])

    results = {}
    for impl in IMPLS:
        y, g = _tape_grad(cs, x, r, impl)
        # Dot-product test: <A x, r> == <x, A^T r> with A^T r from the tape.
        lhs = float(np.sum(np.asarray(y, np.float64) * r))
        rhs = float(np.sum(x.astype(np.float64) * np.asarray(g, np.float64)))
        assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs), float(np.abs(y).sum())), (impl, lhs, rhs)
        scaled_close(g, adj)
        g2, h = _tape_hvp(cs, x, r, v, impl)
        scaled_close(g2, grad_x)
        scaled_close(h, hvp)
        results[impl] = (np.asarray(g), np.asarray(h))
    # And the two impls against each other.
    scaled_close(results["tf"][0], results["ref"][0])
    scaled_close(results["tf"][1], results["ref"][1])


# ---------------------------------------------------------------------------
# 5. XLA (jit_compile=True) equals eager: values, gradient, grad-of-grad.
# ---------------------------------------------------------------------------

_XLA_CASES = [
    dict(shape=(2, 5, 6, 3), k=np.random.default_rng(20).uniform(-1, 1, (3, 4)), up=(1, 1), down=(1, 1), pad=(1, 2, 0, 1)),
    dict(shape=(2, 4, 6, 3), k=ref_kernel_1d([1, 3, 3, 1], 4), up=(2, 2), down=(1, 1), pad=(2, 1, 2, 1)),
    dict(shape=(1, 3, 5, 2), k=np.random.default_rng(21).uniform(-1, 1, (4, 3)), up=(4, 4), down=(1, 1), pad=(-2, 1, 2, -3)),
    dict(shape=(2, 7, 6, 2), k=np.random.default_rng(22).uniform(-1, 1, (3, 3)), up=(1, 1), down=(2, 2), pad=(-1, 1, 1, -1)),
    dict(shape=(1, 4, 5, 2), k=np.random.default_rng(23).uniform(-1, 1, (5, 2)), up=(2, 2), down=(2, 1), pad=(-1, 2, 1, -2)),
    dict(shape=(2, 3, 4, 2), k=np.random.default_rng(24).uniform(-1, 1, (3, 3)), up=(4, 4), down=(2, 2), pad=(1, -1, -2, 2)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cs", _XLA_CASES, ids=[_case_id(c) for c in _XLA_CASES])
def test_xla_matches_eager(cs, impl):
    rng = np.random.default_rng(30)
    x = rng.standard_normal(cs["shape"]).astype(np.float32)
    v = rng.standard_normal(cs["shape"]).astype(np.float32)
    out_shape = _run(cs, x, impl).shape
    r = tf.constant(rng.standard_normal(out_shape).astype(np.float32))

    def all_of_it(x, v):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = _run(cs, x, impl)
                f = tf.reduce_sum(tf.square(y) * r)
            g = inner.gradient(f, x)
            gv = tf.reduce_sum(g * v)
        return y, g, outer.gradient(gv, x)

    eager = all_of_it(tf.constant(x), tf.constant(v))
    xla = tf.function(all_of_it, jit_compile=True)(tf.constant(x), tf.constant(v))
    for e, c in zip(eager, xla):
        scaled_close(c, e)
    # And eager itself is right.
    scaled_close(eager[0], np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"]))


# ---------------------------------------------------------------------------
# 6. bias_act.
# ---------------------------------------------------------------------------

def np_lrelu(z, alpha=0.2, gain=math.sqrt(2.0)):
    return np.where(z >= 0, z, alpha * z) * gain


def np_slope(z, alpha=0.2):
    return np.where(z >= 0, 1.0, alpha)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4, 6)], ids=["NF", "NHWC"])
def test_bias_act_values(shape, impl):
    rng = np.random.default_rng(40)
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    z = x.astype(np.float64) + b
    scaled_close(bias_act(x, b, impl=impl), np_lrelu(z))
    scaled_close(fused_leaky_relu(x, b, impl=impl), np_lrelu(z))
    scaled_close(fused_leaky_relu(x, b, negative_slope=0.1, scale=3.0, impl=impl), np_lrelu(z, 0.1, 3.0))
    scaled_close(bias_act(x, None, impl=impl), np_lrelu(x.astype(np.float64)))
    scaled_close(bias_act(x, b, act="linear", impl=impl), z)
    scaled_close(bias_act(x, b, act="linear", gain=2.5, impl=impl), 2.5 * z)
    scaled_close(bias_act(x, b, gain=1.0, impl=impl), np_lrelu(z, gain=1.0))
    scaled_close(bias_act(x, b, alpha=0.5, gain=0.7, impl=impl), np_lrelu(z, 0.5, 0.7))


def _bias_act_derivs(x, b, r, v, impl, act, gain):
    """y, dL/dx, dL/db and the x-Hessian-vector product of L = sum(y^2 * r)."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, b])
        with tf.GradientTape() as inner:
            inner.watch([x, b])
            y = bias_act(x, b, act=act, gain=gain, impl=impl)
            loss = tf.reduce_sum(tf.square(y) * r)
        gx, gb = inner.gradient(loss, [x, b])
        gv = tf.reduce_sum(gx * v)
    hx = outer.gradient(gv, x)
    hb = outer.gradient(gv, b)
    del outer
    return y, gx, gb, hx, hb


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act,gain", [("lrelu", None), ("linear", 1.7)])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4, 6)], ids=["NF", "NHWC"])
def test_bias_act_derivatives(shape, act, gain, impl, jit):
    rng = np.random.default_rng(41)
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    fn = _bias_act_derivs
    if jit:
        fn = tf.function(fn, jit_compile=True)
    y, gx, gb, hx, hb = fn(tf.constant(x), tf.constant(b), tf.constant(r), tf.constant(v), impl, act, gain)

    z = x.astype(np.float64) + b
    if act == "lrelu":
        g = math.sqrt(2.0) if gain is None else gain
        s = np_slope(z) * g          # dy/dz
        yy = np_lrelu(z, gain=g)
    else:
        s = np.full_like(z, gain)
        yy = gain * z
    # L = sum(y^2 r): dL/dz = 2 y r s; d2L/dz2 = 2 r s^2 (y piecewise linear).
    dz = 2 * yy * r * s
    hz = 2 * r * s * s * v
    axes = tuple(range(len(shape) - 1))
    scaled_close(y, yy)
    scaled_close(gx, dz)
    scaled_close(gb, dz.sum(axis=axes))
    scaled_close(hx, hz)
    scaled_close(hb, hz.sum(axis=axes))


def test_bias_act_shape_errors():
    x = tf.zeros([2, 4, 4, 3])
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 4, 4, 3\)"):
        bias_act(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        bias_act(x, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(5,\).*\(2, 3\)"):
        fused_leaky_relu(tf.zeros([2, 3]), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="act"):
        bias_act(x, None, act="relu")


# ---------------------------------------------------------------------------
# 7. Errors and dispatch.
# ---------------------------------------------------------------------------

def test_upfirdn2d_errors():
    k = np.ones((3, 3), np.float32)
    x = tf.zeros([1, 4, 4, 2])
    with pytest.raises(ValueError, match=r"rank 4.*\(4, 4, 2\)"):
        upfirdn2d(tf.zeros([4, 4, 2]), k)
    with pytest.raises(ValueError, match="rank 4"):
        upfirdn2d(tf.zeros([1, 1, 4, 4, 2]), k)
    with pytest.raises(ValueError, match=r"up and down must be >= 1.*up=0"):
        upfirdn2d(x, k, up=0)
    with pytest.raises(ValueError, match=r"up and down must be >= 1"):
        upfirdn2d(x, k, down=(1, 0))
    with pytest.raises(ValueError, match=r"up must be an int or a pair"):
        upfirdn2d(x, k, up=(2, 2, 2))
    with pytest.raises(ValueError, match=r"pad must have 2 or 4 entries.*\(1, 1, 1\)"):
        upfirdn2d(x, k, pad=(1, 1, 1))


def test_upfirdn2d_kernel_too_large():
    k = np.ones((3, 3), np.float32)
    x = tf.zeros([1, 4, 4, 2])
    assert tuple(upfirdn2d(x, k, pad=(-1, 0)).shape) == (1, 1, 1, 2)  # padded 3 == kernel: valid
    for pad in [(-1, -1), (0, 0, -2, 0), (-2, 0, 0, 0)]:
        with pytest.raises(ValueError, match=r"smaller than the kernel.*\(3, 3\)"):
            upfirdn2d(x, k, pad=pad)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        upfirdn2d(tf.zeros([1, 2, 8, 1]), np.ones((4, 1), np.float32))


def test_dispatch_env(monkeypatch):
    assert dispatch.default_impl("upfirdn2d") == "auto"
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "ref")
    assert dispatch.default_impl("upfirdn2d") == "ref" and dispatch.choose("upfirdn2d") == "ref"
    assert dispatch.choose("upfirdn2d", "tf") == "tf" and dispatch.choose("upfirdn2d", "xla") == "tf"
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "cuda")
    with pytest.raises(ValueError, match="TF_CARTOON_OPS_IMPL.*'cuda'"):
        dispatch.choose("upfirdn2d")


def test_dispatch_routes_auto(monkeypatch):
    """impl="auto" really runs the path the environment / default names."""
    # Between the pure-TF paths only: auto's preference for the compiled ops is tested in test_custom_ops.py.
    for op in ("upfirdn2d", "bias_act"):
        monkeypatch.setitem(dispatch.FAMILIES[op].prefer, dispatch.device(), "tf")
    calls = []
    real_ref, real_tf = upfirdn2d_module._upfirdn2d_ref, upfirdn2d_module._upfirdn2d_tf
    monkeypatch.setattr(upfirdn2d_module, "_upfirdn2d_ref", lambda *a: calls.append("ref") or real_ref(*a))
    monkeypatch.setattr(upfirdn2d_module, "_upfirdn2d_tf", lambda *a: calls.append("tf") or real_tf(*a))
    x = tf.ones([1, 4, 4, 1])
    k = np.ones((3, 3), np.float32)
    upfirdn2d(x, k, pad=(1, 1))
    assert calls == ["tf"]
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "ref")
    calls.clear()
    upfirdn2d(x, k, pad=(1, 1))
    assert calls == ["ref"]
    # set_default_impl wins over the environment.
    set_default_impl("tf")
    calls.clear()
    upfirdn2d(x, k, pad=(1, 1))
    assert calls == ["tf"]
    set_default_impl(None)
    calls.clear()
    upfirdn2d(x, k, pad=(1, 1), impl="ref")
    assert calls == ["ref"]


def test_dispatch_bias_act_env(monkeypatch):
    """bias_act's "auto" follows the environment too (ref spells it with tf.where)."""
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "ref")
    x = tf.constant([[-1.0, 2.0]])

    @tf.function
    def f(x):
        return bias_act(x)

    ops = {op.type for op in f.get_concrete_function(x).graph.get_operations()}
    assert "LeakyRelu" not in ops and "SelectV2" in ops
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "tf")

    @tf.function
    def g(x):
        return bias_act(x)

    ops = {op.type for op in g.get_concrete_function(x).graph.get_operations()}
    assert "LeakyRelu" in ops


def test_unknown_impl():
    x = tf.zeros([1, 4, 4, 1])
    with pytest.raises(ValueError, match="'cuda'"):
        upfirdn2d(x, np.ones((1, 1), np.float32), impl="cuda")
    with pytest.raises(ValueError, match="'cuda'"):
        bias_act(x, impl="cuda")
    with pytest.raises(ValueError, match="'cuda'"):
        set_default_impl("cuda")


# ---------------------------------------------------------------------------
# 8. Dynamic batch (unknown at trace time).
# ---------------------------------------------------------------------------

_DYN_CASES = [_FIXED[0], _FIXED[3], _FIXED[5], _FIXED[6], _XLA_CASES[4], _XLA_CASES[0]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cs", _DYN_CASES, ids=[_case_id(c) for c in _DYN_CASES])
def test_dynamic_batch(cs, impl):
    _, h, w, c = cs["shape"]
    rng = np.random.default_rng(50)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32)])
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = _run(cs, x, impl)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    concrete = f.get_concrete_function()
    n_out, oh, ow, oc = concrete.structured_outputs[0].shape.as_list()
    assert n_out is None
    expected_hw = np_upfirdn2d(np.zeros((1, h, w, c)), cs["k"], cs["up"], cs["down"], cs["pad"]).shape[1:]
    # Static H, W, C survive tracing with an unknown batch.
    assert (oh, ow, oc) == expected_hw
    for n in (1, 3):
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        y, g = f(tf.constant(x))
        assert y.shape[0] == n and g.shape == x.shape
        scaled_close(y, np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"]))
        _, eager_g = _tape_grad(cs, x, 2 * np.asarray(y), impl)  # d sum(y^2) = A^T (2y)
        scaled_close(g, eager_g)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cs", _DYN_CASES, ids=[_case_id(c) for c in _DYN_CASES])
def test_unknown_spatial_dims(cs, impl):
    """Unknown H and W at trace time (e.g. an exported [None, None, None, C] signature)."""
    _, h, w, c = cs["shape"]
    rng = np.random.default_rng(51)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, c], tf.float32)])
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = _run(cs, x, impl)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    for n, hh, ww in ((2, h, w), (1, h + 3, w + 2)):
        x = rng.standard_normal((n, hh, ww, c)).astype(np.float32)
        y, g = f(tf.constant(x))
        scaled_close(y, np_upfirdn2d(x, cs["k"], cs["up"], cs["down"], cs["pad"]))
        scaled_close(g, _tape_grad(cs, x, 2 * np.asarray(y), impl)[1])
