"""Tests for tf_cartoon.layers beyond what the reference fixtures pin down.

Expected values come from an independent path: float64 NumPy transcriptions of
the reference's definitions (tests/fixtures/reference/README.md, "Facts a port
must match"), written here with explicit loops over kernel taps; they never call
tf_cartoon. The only exception is ToRGB's skip, compared against
``tf_cartoon.ops.upsample2d`` (tested on its own in tests/test_ops.py).

Everything is tiny (channels 4-8, style_dim 8, 4x4 to 16x16 maps) so the file
runs in seconds on two CPU cores.
"""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon import layers as L
from tf_cartoon.ops import upsample2d

SQRT2 = math.sqrt(2.0)
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


# ---------------------------------------------------------------------------
# Independent NumPy transcriptions (float64).
# ---------------------------------------------------------------------------

def np_lrelu(x):
    """The reference's fused leaky ReLU activation (bias added by the caller)."""
    return np.where(x >= 0, x, 0.2 * x) * SQRT2


def np_equal_linear(x, kernel, bias, lr_mul=1.0, act=None):
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    y = x @ (kernel * lr_mul / math.sqrt(kernel.shape[0]))
    if bias is not None:
        y = y + np.asarray(bias, np.float64) * lr_mul
    return np_lrelu(y) if act == "lrelu" else y


def np_correlate(x, w, stride=1, pad=0):
    """Direct cross-correlation with explicit zero padding. x [N,H,W,C], w [k,k,C,O]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    k = w.shape[0]
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c))
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]  # [N, k, k, C]
            y[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return y


def np_fir(x, kernel, pad):
    """FIR filter, true convolution (kernel flipped), pads (p0, p1) on both axes. x [N,H,W,C]."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    p0, p1 = pad
    n, h, w, c = x.shape
    xp = np.zeros((n, h + p0 + p1, w + p0 + p1, c))
    xp[:, p0:p0 + h, p0:p0 + w] = x
    kh = kernel.shape[0]
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kh + 1
    flipped = kernel[::-1, ::-1]
    y = np.zeros((n, oh, ow, c))
    for a in range(kh):
        for b in range(kh):
            y += flipped[a, b] * xp[:, a:a + oh, b:b + ow, :]
    return y


def np_blur_kernel(gain=1.0):
    k = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0])
    return k / k.sum() * gain


def np_modulated_weight(kernel, mod_kernel, mod_bias, w, demodulate):
    """Per-sample effective weight [N, k, k, in, out] from the reference's formula."""
    kernel = np.asarray(kernel, np.float64)
    k, _, cin, _ = kernel.shape
    s = np_equal_linear(w, mod_kernel, mod_bias)  # [N, in]
    wt = kernel[None] * s[:, None, None, :, None] / math.sqrt(cin * k * k)
    if demodulate:
        wt = wt / np.sqrt((wt ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
    return wt


def np_transposed_conv_s2(x, wt):
    """Stride-2 transposed convolution, no padding: out[2i+a, 2j+b] += x[i, j] * w[a, b].

    x [N,H,W,C], wt [N,k,k,C,O] (per sample) -> [N, 2(H-1)+k, 2(W-1)+k, O].
    """
    n, h, w, _ = x.shape
    k, o = wt.shape[1], wt.shape[4]
    y = np.zeros((n, 2 * (h - 1) + k, 2 * (w - 1) + k, o))
    for i in range(h):
        for j in range(w):
            y[:, 2 * i:2 * i + k, 2 * j:2 * j + k, :] += np.einsum("nc,nabco->nabo", x[:, i, j, :], wt)
    return y


# The reference's blur pads after the transposed conv: p = (4 - 2) - (k - 1);
# pads ((p + 1) // 2 + 1, p // 2 + 1) -> k=3: (1, 1), k=1: (2, 2); both give 2H.
UP_BLUR_PAD = {3: (1, 1), 1: (2, 2)}


def np_modulated_conv(x, kernel, mod_kernel, mod_bias, w, demodulate, upsample):
    x = np.asarray(x, np.float64)
    wt = np_modulated_weight(kernel, mod_kernel, mod_bias, w, demodulate)
    k = wt.shape[1]
    if upsample:
        y = np_transposed_conv_s2(x, wt)
        return np_fir(y, np_blur_kernel(gain=4.0), UP_BLUR_PAD[k])
    return np.concatenate([np_correlate(x[i:i + 1], wt[i], pad=k // 2) for i in range(x.shape[0])])


def np_minibatch_stddev(x):
    """From the definition: group = min(N, 4); sample b uses samples {b mod (N/group) + j N/group}."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    group = min(n, 4)
    m = n // group
    extra = np.zeros(x.shape[:3] + (1,))
    for b in range(n):
        members = [b % m + j * m for j in range(group)]
        var = x[members].var(axis=0)  # biased, [H, W, C]
        extra[b] = np.sqrt(var + 1e-8).mean()
    return np.concatenate([x, extra], axis=-1)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def rng(seed=0):
    return np.random.default_rng(seed)


def randomize(layer, seed=0):
    """Give every weight random values (so biases / noise strengths are non-zero)."""
    r = rng(seed)
    layer.set_weights([r.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


def normal(shape, seed=0):
    return rng(seed).normal(size=shape).astype(np.float32)


def close(got, want, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# get_config round trip, every layer class
# ---------------------------------------------------------------------------

X8 = normal([2, 8, 8, 4], 1)
W8 = normal([2, 8], 2)

ROUND_TRIP = {
    "PixelNorm": (lambda: L.PixelNorm(), lambda layer: layer(W8)),
    "EqualLinear": (lambda: L.EqualLinear(8, 6, bias_init=0.5, lr_mul=0.1, activation="lrelu"),
                    lambda layer: layer(W8)),
    "EqualLinear_nobias": (lambda: L.EqualLinear(8, 6, use_bias=False), lambda layer: layer(W8)),
    "EqualConv2d": (lambda: L.EqualConv2d(4, 6, 3, stride=2, padding=1, use_bias=True), lambda layer: layer(X8)),
    "FusedLeakyReLU": (lambda: L.FusedLeakyReLU(4), lambda layer: layer(X8)),
    "ModulatedConv2d": (lambda: L.ModulatedConv2d(4, 6, 3, 8, demodulate=False, upsample=True),
                        lambda layer: layer(X8, W8)),
    "NoiseInjection": (lambda: L.NoiseInjection(), lambda layer: layer(X8, normal([2, 8, 8, 1], 3))),
    "ConstantInput": (lambda: L.ConstantInput(6, size=4), lambda layer: layer(tf.constant(3))),
    "StyledConv": (lambda: L.StyledConv(4, 6, 3, 8, upsample=True, fused=True),
                   lambda layer: layer(X8, W8, normal([2, 16, 16, 1], 4))),
    "ToRGB": (lambda: L.ToRGB(4, 8, upsample=True), lambda layer: layer(X8, W8, normal([2, 4, 4, 3], 5))),
    "ConvLayer": (lambda: L.ConvLayer(4, 6, 3, downsample=True), lambda layer: layer(X8)),
    "ConvLayer_plain": (lambda: L.ConvLayer(4, 6, 1, use_bias=True, activate=False), lambda layer: layer(X8)),
    "ResBlock": (lambda: L.ResBlock(4, 6), lambda layer: layer(X8)),
    "MinibatchStddev": (lambda: L.MinibatchStddev(group_size=2), lambda layer: layer(X8)),
}


def test_round_trip_covers_every_layer_class():
    classes = {name for name, obj in vars(L).items()
               if isinstance(obj, type) and issubclass(obj, keras.layers.Layer) and not name.startswith("_")}
    covered = {type(make()).__name__ for make, _ in ROUND_TRIP.values()}
    assert classes <= covered, f"no round-trip test for {sorted(classes - covered)}"


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_get_config_round_trip(name):
    make, run = ROUND_TRIP[name]
    a = randomize(make(), seed=11)
    config = a.get_config()
    b = type(a).from_config(config)
    assert b.get_config() == config
    assert [tuple(w.shape) for w in b.weights] == [tuple(w.shape) for w in a.weights]
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(np.asarray(run(b)), np.asarray(run(a)))


# ---------------------------------------------------------------------------
# EqualLinear / EqualConv2d
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", [None, "lrelu"])
@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_equal_linear_matches_numpy(act, lr_mul):
    layer = L.EqualLinear(8, 5, lr_mul=lr_mul, activation=act)
    kernel, bias = normal([8, 5], 1) / lr_mul, normal([5], 2) * 3.0
    layer.set_weights([kernel, bias])
    x = normal([3, 8], 3)
    close(layer(x), np_equal_linear(x, kernel, bias, lr_mul, act))
    # [N, n, D] inputs: the same map applied row by row.
    x3 = normal([2, 3, 8], 4)
    close(layer(x3), np_equal_linear(x3.reshape(6, 8), kernel, bias, lr_mul, act).reshape(2, 3, 5))


def test_equal_linear_init():
    keras.utils.set_random_seed(0)
    layer = L.EqualLinear(64, 64, lr_mul=0.01, bias_init=0.25)
    std = float(np.std(layer.kernel.numpy()))
    assert 90.0 < std < 110.0  # stored at stddev 1 / lr_mul (4096 samples: ~1% sampling error)
    np.testing.assert_array_equal(layer.bias.numpy(), np.full([64], 0.25, np.float32))
    # Effective weight kernel * lr_mul / sqrt(in) has stddev ~1/sqrt(in).
    eff = layer.kernel.numpy() * layer.scale
    assert 0.9 / 8 < np.std(eff) < 1.1 / 8


def test_equal_linear_rejects_unknown_activation():
    with pytest.raises(ValueError):
        L.EqualLinear(4, 4, activation="relu")


@pytest.mark.parametrize("stride,pad,k", [(2, 1, 3), (1, 1, 3), (2, 0, 1), (1, 0, 3)])
def test_equal_conv2d_matches_numpy(stride, pad, k):
    layer = L.EqualConv2d(4, 5, k, stride=stride, padding=pad)
    kernel, bias = normal([k, k, 4, 5], 1), normal([5], 2)
    layer.set_weights([kernel, bias])
    x = normal([2, 7, 7, 4], 3)
    want = np_correlate(x, kernel / math.sqrt(4 * k * k), stride=stride, pad=pad) + bias
    got = layer(x)
    assert got.shape == want.shape
    close(got, want)


def test_equal_conv2d_bias_starts_at_zero_and_can_be_off():
    assert not np.any(L.EqualConv2d(3, 4, 3).bias.numpy())
    layer = L.EqualConv2d(3, 4, 3, use_bias=False)
    assert layer.bias is None and len(layer.weights) == 1


# ---------------------------------------------------------------------------
# ModulatedConv2d
# ---------------------------------------------------------------------------

MOD_COMBOS = list(itertools.product([True, False], [False, True], [1, 3], [1, 3]))  # demod, up, k, batch
MOD_IDS = [f"demod{int(d)}-up{int(u)}-k{k}-n{n}" for d, u, k, n in MOD_COMBOS]
# XLA on CPU compiles slowly (~1 s per path and combo with second-order grads), so under XLA
# the fused path runs the combos the generator uses, at batch 3 (where its batch-into-groups
# folding matters) and batch 1: StyledConv (demod, k=3, with and without upsampling) and ToRGB
# (no demod, k=1, no upsampling), plus the other k=3 combos at batch 3; each is compared with
# the eager non-fused path. The non-fused path also runs under XLA for the upsampling StyledConv.
# (Every combo runs eagerly, forward, in the tests below.)
XLA_COMBOS = [(d, u, 3, 3) for d in (True, False) for u in (False, True)] + [
    (False, False, 1, 3), (True, False, 3, 1), (True, True, 3, 1), (False, False, 1, 1)]
XLA_NONFUSED = [(True, True, 3, 3)]
XLA_IDS = [MOD_IDS[MOD_COMBOS.index(c)] for c in XLA_COMBOS]


def _modconv_case(demod, up, k, n, seed=0):
    layer = L.ModulatedConv2d(4, 5, k, 8, demodulate=demod, upsample=up, name=f"mc_{int(demod)}{int(up)}{k}{n}")
    randomize(layer, seed)
    x = tf.constant(normal([n, 4, 4, 4], seed + 1))
    w = tf.constant(normal([n, 8], seed + 2))
    return layer, x, w


def _modconv_outputs(layer, x, w, fused):
    """Output, first-order grads (x, w, kernel) of sum(y * r), and the second-order grads of
    sum(dL/dw ^ 2) w.r.t. w and the kernel (what the path-length regulariser differentiates)."""
    r = tf.cos(tf.range(tf.size(layer(x, w, fused=False)), dtype=tf.float32))  # fixed, non-trivial weights
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch([x, w])
            y = layer(x, w, fused=fused)
            loss = tf.reduce_sum(tf.reshape(y, [-1]) * r)
        gx, gw, gk = inner.gradient(loss, [x, w, layer.kernel])
        gnorm = tf.reduce_sum(tf.square(gw))
    # Without demodulation dL/dw does not depend on w (y is linear in s = affine(w)): zero, not None.
    g2w, g2k = outer.gradient(gnorm, [w, layer.kernel], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [y, gx, gw, gk, g2w, g2k]


@pytest.fixture(scope="module")
def modconv_results():
    """Per combo: (layer, x, w, eager non-fused, None, None); modconv_results_xla fills the last two."""
    cases = {c: _modconv_case(*c, seed=10 * i) for i, c in enumerate(MOD_COMBOS)}
    return {c: (*cases[c], _modconv_outputs(*cases[c], False), None, None) for c in MOD_COMBOS}


@pytest.fixture(scope="module")
def modconv_results_xla(modconv_results):
    """modconv_results with (XLA non-fused, XLA fused); the XLA entries are None outside XLA_COMBOS.
    One XLA compile for all: a fixture of its own, so only the slow tier pays for it."""
    cases = {c: r[:3] for c, r in modconv_results.items()}

    @tf.function(jit_compile=True)
    def xla():
        return {str(c): (_modconv_outputs(*cases[c], False) if c in XLA_NONFUSED else None,
                         _modconv_outputs(*cases[c], True)) for c in XLA_COMBOS}

    compiled = xla()
    return {c: (*r[:4], *compiled.get(str(c), (None, None))) for c, r in modconv_results.items()}


NAMES = ["y", "dx", "dw", "dkernel", "d2w", "d2kernel"]


def _assert_all_close(a, b, what, atol=1e-5, rtol=1e-4):
    for name, u, v in zip(NAMES, a, b):
        u, v = np.asarray(u), np.asarray(v)
        scale = max(1.0, float(np.abs(u).max()))
        np.testing.assert_allclose(v, u, rtol=rtol, atol=atol * scale, err_msg=f"{what}: {name}")
        assert np.all(np.isfinite(u)), f"{what}: {name} not finite"


@pytest.mark.parametrize("combo", XLA_COMBOS, ids=XLA_IDS)
@pytest.mark.slow
def test_modconv_fused_equals_nonfused_with_grads_xla(modconv_results_xla, combo):
    layer, x, w, eager_nf, xla_nf, xla_f = modconv_results_xla[combo]
    _assert_all_close(eager_nf, xla_f, "eager non-fused vs XLA fused")
    if xla_nf is not None:
        _assert_all_close(eager_nf, xla_nf, "eager non-fused vs XLA non-fused")
        _assert_all_close(xla_nf, xla_f, "XLA non-fused vs XLA fused")
    # The second-order terms are really there (not silently zero); w.r.t. w only with demodulation.
    assert float(tf.reduce_max(tf.abs(xla_f[5]))) > 0
    assert (float(tf.reduce_max(tf.abs(xla_f[4]))) > 0) == combo[0]


@pytest.mark.parametrize("combo", MOD_COMBOS, ids=MOD_IDS)
def test_modconv_fused_equals_nonfused_eager_forward(modconv_results, combo):
    layer, x, w, eager_nf, _, _ = modconv_results[combo]
    close(layer(x, w, fused=True), eager_nf[0], atol=1e-5)


@pytest.mark.parametrize("up", [False, True], ids=["up0", "up1"])
def test_modconv_fused_grads_eager(modconv_results, up):
    layer, x, w, eager_nf, _, _ = modconv_results[(True, up, 3, 3)]
    _assert_all_close(eager_nf, _modconv_outputs(layer, x, w, True), "eager non-fused vs eager fused")


@pytest.mark.parametrize("combo", MOD_COMBOS, ids=MOD_IDS)
def test_modconv_matches_numpy(modconv_results, combo):
    demod, up, k, n = combo
    layer, x, w, eager_nf, _, _ = modconv_results[combo]
    kernel, mod_kernel, mod_bias = (v.numpy() for v in (layer.kernel, layer.modulation.kernel,
                                                          layer.modulation.bias))
    want = np_modulated_conv(x.numpy(), kernel, mod_kernel, mod_bias, w.numpy(), demod, up)
    assert want.shape == (n, 8 if up else 4, 8 if up else 4, 5)
    assert tuple(eager_nf[0].shape) == want.shape
    close(eager_nf[0], want, rtol=1e-4, atol=1e-5)


def test_modulation_bias_starts_at_one():
    layer = L.ModulatedConv2d(4, 5, 3, 8)
    np.testing.assert_array_equal(layer.modulation.bias.numpy(), np.ones([4], np.float32))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("demod", [True, False])
def test_demodulated_weight_has_unit_norm(fused, demod):
    """Exact identity: with a one-hot input at the centre of a 3x3 map (padding 1), output
    pixel (i, j) is the effective weight's tap (2-i, 2-j); summing the squares over all
    pixels and input channels gives sum W'^2 per output channel = S / (S + 1e-8) ~ 1."""
    cin, cout, m = 6, 5, 3
    layer = randomize(L.ModulatedConv2d(cin, cout, 3, 8, demodulate=demod), seed=5)
    x = np.zeros([m * cin, 3, 3, cin], np.float32)
    for j in range(m):
        for c in range(cin):
            x[j * cin + c, 1, 1, c] = 1.0
    styles = normal([m, 8], 6)
    w = np.repeat(styles, cin, axis=0)  # sample j*cin + c uses style j
    y = layer(x, w, fused=fused).numpy().astype(np.float64).reshape(m, cin, 3, 3, cout)
    taps = y[:, :, ::-1, ::-1, :].transpose(0, 2, 3, 1, 4)  # [m, kh, kw, in, out]
    want = np_modulated_weight(layer.kernel.numpy(), layer.modulation.kernel.numpy(),
                               layer.modulation.bias.numpy(), styles, demod)
    close(taps, want, atol=1e-6)
    norms = (taps ** 2).sum(axis=(1, 2, 3))
    if demod:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert np.abs(norms - 1.0).max() > 1e-2  # not normalised without demodulation


def test_demodulation_keeps_unit_variance():
    """Statistical: iid N(0, 1) input -> each output channel has variance ~1 away from the border."""
    layer = randomize(L.ModulatedConv2d(8, 6, 3, 8, demodulate=True), seed=7)
    x = normal([4, 32, 32, 8], 8)
    w = normal([4, 8], 9) * 3.0
    y = layer(x, w).numpy()[:, 1:-1, 1:-1, :]
    var = y.reshape(4, -1, 6).var(axis=1)  # per sample and channel
    assert np.all((var > 0.75) & (var < 1.25)), var


# ---------------------------------------------------------------------------
# NoiseInjection / ToRGB / StyledConv
# ---------------------------------------------------------------------------

def test_noise_injection():
    layer = L.NoiseInjection()
    assert not np.any(layer.strength.numpy())  # starts at zero
    layer.set_weights([np.array([0.7], np.float32)])
    x = normal([3, 5, 5, 4], 1)
    noise = normal([3, 5, 5, 1], 2)
    close(layer(x, noise), x + 0.7 * noise, atol=1e-6)
    # [1, H, W, 1] broadcasts over the batch and the channels.
    single = normal([1, 5, 5, 1], 3)
    close(layer(x, single), x + 0.7 * single, atol=1e-6)
    # None: fresh N(0, 1) noise [N, H, W, 1], different per call and per sample.
    a = (layer(x).numpy() - x) / 0.7
    b = (layer(x).numpy() - x) / 0.7
    np.testing.assert_allclose(a, a[..., :1].repeat(4, axis=-1), atol=1e-5)  # one map for all channels
    assert not np.allclose(a, b)
    assert not np.allclose(a[0], a[1])
    assert 0.3 < a[..., 0].std() < 2.0


def _np_to_rgb(layer, x, w, skip):
    s = np_equal_linear(w, layer.conv.modulation.kernel.numpy(), layer.conv.modulation.bias.numpy())
    kernel = layer.conv.kernel.numpy().astype(np.float64)[0, 0]  # [in, 3]
    y = np.einsum("nhwc,nc,co->nhwo", x, s, kernel) / math.sqrt(kernel.shape[0]) + layer.bias.numpy()
    return y if skip is None else y + np.asarray(upsample2d(tf.constant(skip)))


def test_to_rgb_with_skip():
    layer = randomize(L.ToRGB(6, 8, upsample=True), seed=3)
    assert not layer.conv.demodulate
    x, w, skip = normal([2, 8, 8, 6], 1), normal([2, 8], 2), normal([2, 4, 4, 3], 4)
    got = layer(x, w, skip)
    assert got.shape == (2, 8, 8, 3)
    close(got, _np_to_rgb(layer, x, w, skip))
    close(got - layer(x, w), np.asarray(upsample2d(tf.constant(skip))))
    # the fused path too
    close(layer(x, w, skip, fused=True), got)


def test_to_rgb_without_skip():
    layer = randomize(L.ToRGB(6, 8, upsample=False), seed=3)
    x, w = normal([2, 4, 4, 6], 1), normal([2, 8], 2)
    close(layer(x, w), _np_to_rgb(layer, x, w, None))


def test_styled_conv_order():
    """modconv -> + strength * noise -> leaky ReLU(. + bias) * sqrt(2)."""
    layer = randomize(L.StyledConv(4, 5, 3, 8), seed=4)
    x, w, noise = normal([2, 6, 6, 4], 1), normal([2, 8], 2), normal([2, 6, 6, 1], 3)
    conv = np_modulated_conv(x, layer.conv.kernel.numpy(), layer.conv.modulation.kernel.numpy(),
                             layer.conv.modulation.bias.numpy(), w, True, False)
    want = np_lrelu(conv + layer.noise.strength.numpy() * noise + layer.activate.bias.numpy())
    close(layer(x, w, noise), want)


def test_constant_input_tiles():
    layer = randomize(L.ConstantInput(5), seed=1)
    out = layer(tf.constant(3)).numpy()  # a tensor: Keras refuses a positional Python int
    assert out.shape == (3, 4, 4, 5)
    for i in range(3):
        np.testing.assert_array_equal(out[i], layer.const.numpy()[0])


def test_pixel_norm():
    x = normal([3, 2, 8], 1) * 5
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True) + 1e-8)
    close(L.PixelNorm()(x), want)


# ---------------------------------------------------------------------------
# MinibatchStddev
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 8, 12])
def test_minibatch_stddev_matches_numpy(n):
    # Per-sample offsets make the strided vs contiguous grouping distinguishable.
    x = normal([n, 4, 4, 5], n) * (1.0 + np.arange(n, dtype=np.float32))[:, None, None, None]
    got = L.MinibatchStddev()(x)
    assert got.shape == (n, 4, 4, 6)
    close(got, np_minibatch_stddev(x), atol=1e-5)


def test_minibatch_stddev_batch_one_is_sqrt_eps():
    got = L.MinibatchStddev()(normal([1, 4, 4, 3], 1)).numpy()
    np.testing.assert_allclose(got[..., -1], 1e-4, rtol=1e-3)


def test_minibatch_stddev_indivisible_batch():
    with pytest.raises(ValueError, match="divisible"):
        L.MinibatchStddev()(normal([6, 4, 4, 3], 1))


def test_minibatch_stddev_unknown_batch():
    """With a symbolic batch the same values come out (graph path with tf.minimum)."""
    x = normal([8, 4, 4, 3], 2)
    layer = L.MinibatchStddev()
    f = tf.function(layer.call, input_signature=[tf.TensorSpec([None, 4, 4, 3])])
    close(f(x), np_minibatch_stddev(x), atol=1e-5)


# ---------------------------------------------------------------------------
# ConvLayer / ResBlock (discriminator)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("activate,use_bias", [(True, True), (True, False), (False, True), (False, False)])
def test_conv_layer_bias_placement(activate, use_bias):
    layer = L.ConvLayer(4, 5, 3, activate=activate, use_bias=use_bias)
    randomize(layer, seed=2)
    x = normal([2, 6, 6, 4], 1)
    kernel = layer.conv.kernel.numpy() / math.sqrt(4 * 9)
    pre = np_correlate(x, kernel, pad=1)
    if activate and use_bias:  # bias inside the activation, none in the conv
        assert layer.conv.bias is None and layer.act is not None
        want = np_lrelu(pre + layer.act.bias.numpy())
    elif activate:
        assert layer.conv.bias is None and layer.act is None
        want = np_lrelu(pre)
    elif use_bias:
        assert layer.conv.bias is not None and layer.act is None
        want = pre + layer.conv.bias.numpy()
    else:
        assert layer.conv.bias is None and layer.act is None
        want = pre
    assert len(layer.weights) == 1 + int(use_bias)
    close(layer(x), want)


def test_res_block_matches_numpy():
    block = randomize(L.ResBlock(4, 6), seed=3)
    x = normal([2, 8, 8, 4], 1)
    c1 = block.conv1
    h = np_lrelu(np_correlate(x, c1.conv.kernel.numpy() / math.sqrt(4 * 9), pad=1) + c1.act.bias.numpy())
    c2 = block.conv2
    h = np_fir(h, np_blur_kernel(), (2, 2))
    h = np_lrelu(np_correlate(h, c2.conv.kernel.numpy() / math.sqrt(4 * 9), stride=2) + c2.act.bias.numpy())
    skip = np_fir(x, np_blur_kernel(), (1, 1))
    skip = np_correlate(skip, block.skip.conv.kernel.numpy() / 2.0, stride=2)
    want = (h + skip) / SQRT2
    got = block(x)
    assert got.shape == (2, 4, 4, 6)
    close(got, want)


@pytest.mark.parametrize("hw", [4, 16])
def test_res_block_halves_resolution(hw):
    assert L.ResBlock(4, 5)(normal([1, hw, hw, 4], 1)).shape == (1, hw // 2, hw // 2, 5)


# ---------------------------------------------------------------------------
# track_items: tf.train.Checkpoint sees every variable
# ---------------------------------------------------------------------------

def _tiny_model(which, seed):
    from tf_cartoon.networks import Discriminator, Generator

    keras.utils.set_random_seed(seed)
    if which == "generator":
        model = Generator(8, style_dim=8, n_mlp=2, channels={4: 8, 8: 6})
    else:
        model = Discriminator(8, channels={4: 8, 8: 6})
    r = np.random.default_rng(seed)
    for v in model.variables:  # biases / noise strengths non-zero too
        v.assign(r.normal(size=v.shape).astype(np.float32) * 0.5)
    return model


def test_track_items_in_module():
    holder = keras.layers.Layer()
    items = [keras.layers.Dense(2), keras.layers.Dense(3)]
    assert L.track_items(holder, "blk", items) is items
    assert holder.blk_0 is items[0] and holder.blk_1 is items[1]


@pytest.mark.parametrize("which", ["generator", "discriminator"])
def test_checkpoint_writes_every_variable_and_restores(tmp_path, which):
    model = _tiny_model(which, 1)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path) if n.endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    names = [n for n in names if n.startswith("model/")]
    assert len(names) == len(model.variables), sorted(names)

    fresh = _tiny_model(which, 2)
    assert not all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, fresh.variables))
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched().expect_partial()
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    if which == "generator":
        z = normal([2, 8], 3)
        np.testing.assert_array_equal(model(z, randomize_noise=False).numpy(),
                                      fresh(z, randomize_noise=False).numpy())
    else:
        x = normal([4, 8, 8, 3], 4)
        np.testing.assert_array_equal(model(x).numpy(), fresh(x).numpy())
