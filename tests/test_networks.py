"""Tests for tf_cartoon.networks: the behaviour the reference fixtures don't pin down
(shapes and validation, W+ construction, noise handling, feature taps / layer
swapping, discriminator structure, higher-order gradients, Keras integration).

Expected values come from the reference's definitions (tests/fixtures/reference/README.md, "Facts a port must match"):
the W+ slot table, truncation ``t + psi (w - t)``, FreezeSG / freezeFC rules, the
minibatch-stddev grouping. Models are tiny (sizes 8-32, style_dim 8, 4-8 channels).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.io.reference_keys import generator_table
from tf_cartoon.networks import Discriminator, Generator, MappingNetwork, resolve_channels

D = 8  # style_dim
CHANNELS = {4: 8, 8: 8, 16: 6, 32: 4}


def tiny_generator(size=16, seed=0, n_mlp=2, noise_strength=0.3, **kw):
    keras.utils.set_random_seed(seed)
    g = Generator(size, style_dim=D, n_mlp=n_mlp, channels={r: c for r, c in CHANNELS.items() if r <= size}, **kw)
    r = np.random.default_rng(seed)
    for layer in [g.conv1, *g.convs]:  # noise strengths start at 0: make the noise visible
        layer.noise.strength.assign([noise_strength])
        layer.activate.bias.assign(r.normal(size=layer.activate.bias.shape).astype(np.float32) * 0.1)
    for layer in [g.to_rgb1, *g.to_rgbs]:
        layer.bias.assign(r.normal(size=[3]).astype(np.float32) * 0.1)
    return g


def tiny_discriminator(size=16, seed=0):
    keras.utils.set_random_seed(seed)
    d = Discriminator(size, channels={r: c for r, c in CHANNELS.items() if r <= size})
    r = np.random.default_rng(seed)
    for v in d.trainable_variables:
        if len(v.shape) == 1:  # biases start at 0: give them values
            v.assign(r.normal(size=v.shape).astype(np.float32) * 0.2)
    return d


def normal(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.fixture(scope="module")
def g16():
    return tiny_generator(16, seed=1)


@pytest.fixture(scope="module")
def g16_other():
    return tiny_generator(16, seed=2)


@pytest.fixture(scope="module")
def g8():
    return tiny_generator(8, seed=3)


@pytest.fixture(scope="module")
def d16():
    return tiny_discriminator(16, seed=4)


def eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def close(a, b, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------
# Shapes and validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 16, 32])
def test_generator_shapes(size):
    g = tiny_generator(size, seed=size)
    log = int(math.log2(size))
    assert g.n_latent == 2 * log - 2
    assert g.num_layers == 2 * (log - 2) + 1
    assert g.n_blocks == log - 2
    assert len(g.convs) == 2 * g.n_blocks and len(g.to_rgbs) == g.n_blocks
    noise_res = [4] + [2 ** (b + 3) for b in range(g.n_blocks) for _ in (0, 1)]  # conv1, then 2 per block
    assert [tuple(v.shape) for v in g.noise_buffers] == [(1, r, r, 1) for r in noise_res]
    img, wplus = g(normal([3, D]), return_latents=True)
    assert img.shape == (3, size, size, 3)
    assert wplus.shape == (3, g.n_latent, D)
    assert np.all(np.isfinite(img.numpy()))


@pytest.mark.parametrize("size", [12, 4, 2048, 0, -8])
def test_generator_invalid_size(size):
    with pytest.raises(ValueError, match="power of two"):
        Generator(size, style_dim=D, n_mlp=1, channels=CHANNELS)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(size, channels=CHANNELS)


def test_channel_map_nonpositive_entry_raises():
    with pytest.raises(ValueError, match="resolution 8"):
        Generator(16, style_dim=D, n_mlp=1, channels={4: 8, 8: 0, 16: 4})


def test_channel_map_missing_resolution_raises():
    with pytest.raises(ValueError, match=r"resolution\(s\) \[16\]"):
        resolve_channels(16, channels={4: 8, 8: 8})


def test_channel_map_keys_may_be_strings():
    assert resolve_channels(8, channels={"4": 5, "8": 3}) == {4: 5, 8: 3}


# ---------------------------------------------------------------------------
# make_wplus
# ---------------------------------------------------------------------------

def test_make_wplus_single_style(g16):
    z = normal([3, D], 1)
    w = g16.mapping(z).numpy()
    wplus = g16.make_wplus(z).numpy()
    assert wplus.shape == (3, g16.n_latent, D)
    for r in range(g16.n_latent):
        eq(wplus[:, r], w)
    # a list of one style is the same
    eq(g16.make_wplus([z]), wplus)
    # a w input with input_is_latent is broadcast as is
    eq(g16.make_wplus(w, input_is_latent=True), wplus)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_make_wplus_mixing(g16, k, as_tensor):
    z1, z2 = normal([2, D], 1), normal([2, D], 2)
    w1, w2 = g16.mapping(z1).numpy(), g16.mapping(z2).numpy()
    idx = tf.constant(k) if as_tensor else k
    wplus = g16.make_wplus([z1, z2], inject_index=idx).numpy()
    for r in range(g16.n_latent):
        eq(wplus[:, r], w1 if r < k else w2)


def test_make_wplus_random_inject_index():
    g = tiny_generator(8, seed=5)  # n_latent 4: index in {1, 2, 3}
    w1, w2 = normal([1, D], 1), normal([1, D], 2)
    tf.random.set_seed(0)
    seen = []
    for _ in range(40):
        wplus = g.make_wplus([w1, w2], input_is_latent=True).numpy()[0]
        from_first = [np.array_equal(wplus[r], w1.numpy()[0]) for r in range(g.n_latent)]
        k = sum(from_first)
        assert from_first == [True] * k + [False] * (g.n_latent - k)  # a prefix from the first style
        seen.append(k)
    assert set(seen) == {1, 2, 3}, seen  # uniform in [1, n_latent - 1]: each value w.p. 1/3 per draw


def test_make_wplus_truncation_scalar(g16):
    z = normal([3, D], 1)
    t = normal([1, D], 2)
    w = g16.mapping(z).numpy().astype(np.float64)
    want = t.numpy() + 0.7 * (w - t.numpy())
    got = g16.make_wplus(z, truncation=0.7, truncation_latent=t).numpy()
    for r in range(g16.n_latent):
        close(got[:, r], want, atol=1e-6)
    # a scalar tensor psi is the same
    close(g16.make_wplus(z, truncation=tf.constant(0.7), truncation_latent=t), got, atol=1e-7)
    # psi = 1 (Python) is a no-op, with or without a latent
    eq(g16.make_wplus(z, truncation=1.0), g16.make_wplus(z))
    eq(g16.make_wplus(z, truncation=1, truncation_latent=t), g16.make_wplus(z))


def test_make_wplus_truncation_per_sample(g16):
    z = normal([3, D], 1)
    t = normal([1, D], 2)
    psi = np.array([0.0, 0.5, 1.0], np.float32)
    w = g16.mapping(z).numpy().astype(np.float64)
    want = t.numpy() + psi[:, None] * (w - t.numpy())
    got = g16.make_wplus(z, truncation=tf.constant(psi), truncation_latent=t).numpy()
    for r in range(g16.n_latent):
        close(got[:, r], want, atol=1e-6)
    close(got[0, 0], t.numpy()[0], atol=1e-7)  # psi 0 -> exactly the mean
    # a W+ input is truncated row by row too
    wp = normal([3, g16.n_latent, D], 3)
    got = g16.make_wplus(wp, input_is_latent=True, truncation=tf.constant(psi), truncation_latent=t).numpy()
    close(got, t.numpy()[:, None, :] + psi[:, None, None] * (wp.numpy() - t.numpy()[:, None, :]), atol=1e-6)


def test_make_wplus_truncation_applies_to_both_styles(g16):
    z1, z2 = normal([2, D], 1), normal([2, D], 2)
    t = normal([1, D], 3).numpy()
    w1, w2 = g16.mapping(z1).numpy(), g16.mapping(z2).numpy()
    got = g16.make_wplus([z1, z2], truncation=0.5, truncation_latent=t, inject_index=2).numpy()
    close(got[:, 0], t + 0.5 * (w1 - t), atol=1e-6)
    close(got[:, 5], t + 0.5 * (w2 - t), atol=1e-6)


@pytest.mark.parametrize("psi", [0.7, tf.constant(0.7), tf.constant([0.5, 0.6])])
def test_make_wplus_truncation_needs_latent(g16, psi):
    with pytest.raises(ValueError, match="truncation_latent"):
        g16.make_wplus(normal([2, D]), truncation=psi)


def test_make_wplus_wplus_passes_through(g16):
    wp = normal([2, g16.n_latent, D], 1)
    eq(g16.make_wplus(wp, input_is_latent=True), wp)
    eq(g16.make_wplus([wp], input_is_latent=True), wp)


def test_make_wplus_rejects_bad_shapes(g16):
    with pytest.raises(ValueError):
        g16.make_wplus(normal([2, D + 1]))
    with pytest.raises(ValueError):
        g16.make_wplus(normal([2, g16.n_latent + 1, D]), input_is_latent=True)
    with pytest.raises(ValueError):
        g16.make_wplus([normal([2, D])] * 3)


@pytest.mark.parametrize("k", [1, 4])
def test_make_wplus_put_latent(g16, k):
    """FreezeSG: rows < k from the source's W+ (put_latent), the rest from mapping(first z)."""
    z1, z2 = normal([2, D], 1), normal([2, D], 2)
    source = normal([2, g16.n_latent, D], 3).numpy()
    w1 = g16.mapping(z1).numpy()
    got = g16.make_wplus([z1, z2], put_latent=source, inject_index=k).numpy()
    for r in range(g16.n_latent):
        eq(got[:, r], source[:, r] if r < k else w1)


def test_make_wplus_freeze_fc(g16):
    z1, z2 = normal([2, D], 1), normal([2, D], 2)
    fc = normal([2, g16.n_latent, D], 3)
    eq(g16.make_wplus([z1, z2], freeze_fc=fc, inject_index=2), fc)


# ---------------------------------------------------------------------------
# Mapping, mean latent
# ---------------------------------------------------------------------------

def test_mapping_3d_is_row_wise(g16):
    z = normal([2, 3, D], 1)
    got = g16.mapping(z).numpy()
    assert got.shape == (2, 3, D)
    for r in range(3):
        close(got[:, r], g16.mapping(z[:, r]), atol=1e-6)


def test_mapping_network_config_round_trip():
    m = MappingNetwork(D, 3, 0.01)
    m2 = MappingNetwork.from_config(m.get_config())
    assert [v.shape for v in m2.weights] == [v.shape for v in m.weights]
    m2.set_weights(m.get_weights())
    z = normal([2, D], 1)
    eq(m(z), m2(z))


def test_mean_latent(g16):
    a, b = g16.mean_latent(256, seed=3), g16.mean_latent(256, seed=3)
    assert a.shape == (1, D)
    eq(a, b)
    assert not np.array_equal(a.numpy(), g16.mean_latent(256, seed=4).numpy())


# ---------------------------------------------------------------------------
# Synthesis: noise
# ---------------------------------------------------------------------------

def test_synthesis_noise_modes(g16):
    wp = g16.make_wplus(normal([2, D], 1))
    fixed = g16.synthesis(wp, randomize_noise=False).image
    eq(g16.synthesis(wp, randomize_noise=False).image, fixed)
    r1, r2 = g16.synthesis(wp).image, g16.synthesis(wp, randomize_noise=True).image
    assert not np.allclose(r1.numpy(), r2.numpy())
    assert not np.allclose(r1.numpy(), fixed.numpy())
    # explicit stored buffers == randomize_noise=False (and randomize_noise is ignored then)
    eq(g16.synthesis(wp, noise=g16.stored_noise(), randomize_noise=True).image, fixed)
    eq(g16.synthesis(wp, noise=[v.value for v in g16.noise_buffers]).image, fixed)
    # per-sample explicit noise: sample i gets map i
    maps = [normal([2, v.shape[1], v.shape[2], 1], 10 + i) for i, v in enumerate(g16.noise_buffers)]
    both = g16.synthesis(wp, noise=maps).image.numpy()
    for i in range(2):  # (close, not equal: oneDNN may block a batch of 2 differently from 1)
        close(both[i], g16.synthesis(wp[i:i + 1], noise=[m[i:i + 1] for m in maps]).image.numpy()[0])


def test_synthesis_wrong_noise_length(g16):
    wp = g16.make_wplus(normal([1, D], 1))
    with pytest.raises(ValueError, match="noise"):
        g16.synthesis(wp, noise=g16.stored_noise()[:-1])
    with pytest.raises(ValueError, match="noise"):
        g16.synthesis(wp, noise=g16.stored_noise() + [None])


def test_wplus_slot_table(g16):
    """Which layers each W+ row feeds (reference-behaviour.md): slot 0 -> conv1, 1 -> to_rgb1
    and convs.0; block b: 2b+1 -> convs.2b, 2b+2 -> convs.2b+1, 2b+3 -> to_rgbs.b. Hence
    feature L (after convs.2L-1) depends on rows 0..2L, and skip i (to_rgb1, to_rgbs.0, ...)
    on rows 0..2i+1. Perturbing one row changes exactly those outputs."""
    taps = tuple(range(1, g16.n_blocks + 1))
    wp = g16.make_wplus(normal([1, D], 1)).numpy()
    base = g16.synthesis(wp, randomize_noise=False, tap_layers=taps, return_skips=True)
    assert len(base.skips) == g16.n_blocks + 1
    for r in range(g16.n_latent):
        moved = wp.copy()
        moved[:, r] += 1.0
        out = g16.synthesis(moved, randomize_noise=False, tap_layers=taps, return_skips=True)
        for L in taps:
            changed = not np.array_equal(out.features[L].numpy(), base.features[L].numpy())
            assert changed == (r <= 2 * L), (r, L)
        for i, (a, b) in enumerate(zip(out.skips, base.skips)):
            changed = not np.array_equal(a.numpy(), b.numpy())
            assert changed == (r <= 2 * i + 1), (r, i)
        assert not np.array_equal(out.image.numpy(), base.image.numpy())


# ---------------------------------------------------------------------------
# Synthesis: taps, swaps
# ---------------------------------------------------------------------------

def test_tap_layers_shapes(g16):
    wp = g16.make_wplus(normal([2, D], 1))
    out = g16.synthesis(wp, randomize_noise=False, tap_layers=range(1, g16.n_blocks + 1))
    assert sorted(out.features) == list(range(1, g16.n_blocks + 1))
    for L, f in out.features.items():
        res = 2 ** (L + 2)
        assert f.shape == (2, res, res, g16.channels[res])
    assert out.skips == []


def test_swap_own_feature_is_identity(g16):
    wp = g16.make_wplus(normal([2, D], 1))
    base = g16.synthesis(wp, randomize_noise=False, tap_layers=(1, 2))
    for L in (1, 2):
        out = g16.synthesis(wp, randomize_noise=False, swap_layer=L, swap_feature=base.features[L])
        eq(out.image, base.image)


def test_swap_foreign_feature_changes_only_downstream(g16, g16_other):
    wp = g16.make_wplus(normal([2, D], 1)).numpy()
    base = g16.synthesis(wp, randomize_noise=False, tap_layers=(1, 2), return_skips=True)
    src = g16_other.synthesis(wp, randomize_noise=False, tap_layers=(1,)).features[1]
    out = g16.synthesis(wp, randomize_noise=False, tap_layers=(1, 2), swap_layer=1, swap_feature=src,
                        return_skips=True)
    eq(out.features[1], base.features[1])  # tapped before the swap
    eq(out.skips[0], base.skips[0])  # to_rgb1: below the swap
    assert not np.allclose(out.features[2].numpy(), base.features[2].numpy())
    assert not np.allclose(out.image.numpy(), base.image.numpy())
    # Row 2 feeds only convs.1, whose output the swap replaces: no effect on the image.
    moved = wp.copy()
    moved[:, 2] += 1.0
    eq(g16.synthesis(moved, randomize_noise=False, swap_layer=1, swap_feature=src).image, out.image)
    # Row 0 feeds conv1 (below the swap): it still reaches the image through the target's own
    # lower skip RGB (to_rgb1), which to_rgbs.0 adds to the swapped branch.
    moved = wp.copy()
    moved[:, 0] += 1.0
    assert not np.allclose(g16.synthesis(moved, randomize_noise=False, swap_layer=1, swap_feature=src).image.numpy(),
                           out.image.numpy())


def test_stop_after_layer(g16):
    wp = g16.make_wplus(normal([2, D], 1))
    full = g16.synthesis(wp, randomize_noise=False, tap_layers=(1,))
    out = g16.synthesis(wp, randomize_noise=False, tap_layers=(1,), stop_after_layer=1)
    assert out.image is None
    eq(out.features[1], full.features[1])
    # with return_skips: the skips up to that block as well
    full = g16.synthesis(wp, randomize_noise=False, return_skips=True)
    out = g16.synthesis(wp, randomize_noise=False, return_skips=True, stop_after_layer=1)
    assert out.image is None and len(out.skips) == 2
    for a, b in zip(out.skips, full.skips[:2]):
        eq(a, b)


@pytest.mark.parametrize("bad", [0, 3, -1, 1.5, "1"])
def test_invalid_swap_layer(g16, bad):
    wp = g16.make_wplus(normal([1, D], 1))
    feat = tf.zeros([1, 8, 8, 8])
    with pytest.raises(ValueError, match="1..2"):
        g16.synthesis(wp, swap_layer=bad, swap_feature=feat)
    with pytest.raises(ValueError, match="1..2"):
        g16.synthesis(wp, stop_after_layer=bad)
    if isinstance(bad, int):  # (tap_layers entries go through int() first)
        with pytest.raises(ValueError, match="1..2"):
            g16.synthesis(wp, tap_layers=(bad,))


def test_wrong_swap_feature_shape(g16):
    wp = g16.make_wplus(normal([1, D], 1))
    for shape in ([1, 16, 16, 6], [1, 8, 8, 7], [8, 8, 8]):
        with pytest.raises(ValueError, match="swap_feature"):
            g16.synthesis(wp, swap_layer=1, swap_feature=tf.zeros(shape))
    with pytest.raises(ValueError, match="together"):
        g16.synthesis(wp, swap_layer=1)
    with pytest.raises(ValueError, match="together"):
        g16.synthesis(wp, swap_feature=tf.zeros([1, 8, 8, 8]))


# ---------------------------------------------------------------------------
# call()
# ---------------------------------------------------------------------------

def test_call_return_latents(g16):
    z1, z2 = normal([2, D], 1), normal([2, D], 2)
    img, wp = g16([z1, z2], inject_index=2, randomize_noise=False, return_latents=True)
    eq(wp, g16.make_wplus([z1, z2], inject_index=2))
    eq(img, g16.synthesis(wp, randomize_noise=False).image)
    eq(g16([z1, z2], inject_index=2, randomize_noise=False), img)


def test_call_swap_layer(g16, g16_other):
    z = normal([2, D], 1)
    plain = g16(z, randomize_noise=False)
    img, feat = g16(z, randomize_noise=False, swap_layer=1)
    eq(img, plain)  # no feature given: nothing swapped, the layer's feature is returned
    assert feat.shape == (2, 8, 8, g16.channels[8])
    _, src = g16_other(z, randomize_noise=False, swap_layer=1)
    swapped, own = g16(z, randomize_noise=False, swap_layer=1, swap_feature=src)
    eq(own, feat)  # the feature BEFORE the swap
    assert not np.allclose(swapped.numpy(), plain.numpy())
    wp = g16.make_wplus(z)
    eq(swapped, g16.synthesis(wp, randomize_noise=False, swap_layer=1, swap_feature=src).image)


def test_fused_modconv_setter(g16):
    wp = g16.make_wplus(normal([2, D], 1))
    convs = [g16.conv1, g16.to_rgb1, *g16.convs, *g16.to_rgbs]
    assert not g16.fused_modconv and not any(c.conv.fused for c in convs)
    base = g16.synthesis(wp, randomize_noise=False).image
    try:
        g16.fused_modconv = True
        assert all(c.conv.fused for c in convs)
        assert g16.get_config()["fused_modconv"] is True
        close(g16.synthesis(wp, randomize_noise=False).image, base, atol=1e-5)
    finally:
        g16.fused_modconv = False
    assert not any(c.conv.fused for c in convs)
    eq(g16.synthesis(wp, randomize_noise=False).image, base)


# ---------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------

def test_discriminator_outputs(d16):
    x = normal([4, 16, 16, 3], 1)
    logits, acts = d16(x, return_activations=True)
    assert logits.shape == (4, 1)
    assert list(acts) == ["convs.0", "convs.1", "convs.2", "final_conv"]
    assert acts["convs.0"].shape == (4, 16, 16, CHANNELS[16])
    assert acts["convs.1"].shape == (4, 8, 8, CHANNELS[8])
    assert acts["convs.2"].shape == (4, 4, 4, CHANNELS[4])
    assert acts["final_conv"].shape == (4, 4, 4, CHANNELS[4])
    eq(d16(x), logits)


@pytest.mark.parametrize("shape", [[2, 3, 16, 16], [2, 8, 8, 3], [16, 16, 3], [2, 16, 16, 4]])
def test_discriminator_wrong_shape(d16, shape):
    with pytest.raises(ValueError, match="NHWC"):
        d16(tf.zeros(shape))


def test_discriminator_batch_coupling_only_through_stddev(d16):
    x = normal([4, 16, 16, 3], 2)
    logits, acts = d16(x, return_activations=True)
    singles = [d16(x[i:i + 1], return_activations=True) for i in range(4)]
    # Everything before the minibatch-stddev layer is per sample ...
    last = f"convs.{len(d16.convs) - 1}"
    for i, (_, a) in enumerate(singles):
        close(acts[last][i], a[last][0], atol=1e-5)
    # ... but the logits are not: the stddev channel is used.
    single_logits = np.concatenate([s[0].numpy() for s in singles])
    assert np.abs(logits.numpy() - single_logits).max() > 1e-4
    # Exactly through the stddev: 4 copies of one image have zero group variance, the same
    # stddev channel (sqrt(1e-8)) as a batch of one, hence the same logits.
    for i in range(4):
        close(d16(tf.repeat(x[i:i + 1], 4, axis=0)), np.repeat(single_logits[i:i + 1], 4, axis=0), atol=1e-5)


def test_discriminator_batch_not_divisible(d16):
    with pytest.raises(ValueError, match="divisible"):
        d16(tf.zeros([6, 16, 16, 3]))


# ---------------------------------------------------------------------------
# Gradients (R1 and path-length style)
# ---------------------------------------------------------------------------

def _r1(d, x):
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            out = tf.reduce_sum(d(x))
        gx = inner.gradient(out, x)
        penalty = tf.reduce_sum(tf.square(gx))
    return gx, outer.gradient(penalty, d.trainable_variables)


def test_discriminator_r1_grads():
    d = tiny_discriminator(8, seed=8)
    x = normal([2, 8, 8, 3], 3)
    eager = _r1(d, x)
    xla = tf.function(lambda x: _r1(d, x), jit_compile=True)(x)
    last_bias = d.final_linear[1].bias  # the only variable dD/dx does not depend on
    for name, (gx, grads) in {"eager": eager, "xla": xla}.items():
        assert np.all(np.isfinite(gx.numpy())) and np.abs(gx.numpy()).max() > 0, name
        for v, g in zip(d.trainable_variables, grads):
            if v is last_bias:
                assert g is None, name
                continue
            assert g is not None, (name, v.path)
            assert np.all(np.isfinite(g.numpy())), (name, v.path)
            if len(v.shape) > 1:  # every kernel gets a non-zero second-order gradient
                assert np.abs(g.numpy()).max() > 0, (name, v.path)
    close(xla[0], eager[0], atol=1e-5, rtol=1e-4)
    for a, b in zip(xla[1], eager[1]):
        if b is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3,
                                       atol=1e-4 * max(1.0, np.abs(b.numpy()).max()))


@pytest.mark.parametrize("mode,recompute", [("eager", True), ("function", True), ("function", 1)])
@pytest.mark.slow
def test_recompute_same_values_and_gradients(g16, d16, mode, recompute):
    """Gradient checkpointing (recompute=True) against the plain networks: the same image, tapped features,
    RGB skips, logits and first-order gradients for every G and D variable; with noise=None it draws one
    set of fresh noise and the recomputation reuses it (else the gradient would not match its forward)."""
    wp = g16.make_wplus(normal([2, D], 5))
    maps = [normal([2, v.shape[1], v.shape[2], 1], 20 + i) for i, v in enumerate(g16.noise_buffers)]
    variables = g16.trainable_variables + d16.trainable_variables

    def run(recompute, noise):
        with tf.GradientTape() as tape:
            out = g16.synthesis(wp, noise, tap_layers=(1, 2), return_skips=True, recompute=recompute)
            logits = d16(out.image, recompute=recompute)
            loss = tf.reduce_sum(logits ** 2) + tf.reduce_sum(out.features[1] ** 2) + tf.reduce_sum(out.skips[1])
        return out, logits, tape.gradient(loss, variables)

    f = run if mode == "eager" else tf.function(run, autograph=False)
    (o0, l0, g0), (o1, l1, g1) = f(False, maps), f(recompute, maps)
    close(o1.image, o0.image)
    close(l1, l0)
    for L in (1, 2):
        close(o1.features[L], o0.features[L])
    for a, b in zip(o0.skips, o1.skips):
        close(b, a)
    assert sum(g is not None for g in g0) > 0.8 * len(variables)
    for v, a, b in zip(variables, g0, g1):
        assert (a is None) == (b is None), v.path
        if a is not None:
            close(b, a, atol=1e-5, rtol=1e-4)
    # fresh noise: the gradient of a recomputed G is still the gradient of the image it returned
    keras.utils.set_random_seed(7)
    with tf.GradientTape() as tape:
        tape.watch(wp)
        img = g16.synthesis(wp, recompute=True).image
        y = tf.reduce_sum(img * normal(img.shape, 9))
    gw = tape.gradient(y, wp)
    eps = 1e-2 * normal(wp.shape, 11)
    lhs = float(tf.reduce_sum(gw * eps))
    # the same fresh noise again: reseed and replay the draw order
    keras.utils.set_random_seed(7)
    img_plus = g16.synthesis(wp + eps, recompute=True).image
    keras.utils.set_random_seed(7)
    img_minus = g16.synthesis(wp - eps, recompute=True).image
    w_img = normal(img.shape, 9)
    rhs = float(tf.reduce_sum((img_plus - img_minus) * w_img)) / 2
    np.testing.assert_allclose(lhs, rhs, rtol=2e-2, atol=1e-3)


@pytest.mark.slow
def test_generator_path_length_grads(g8):
    wp = tf.Variable(g8.make_wplus(normal([2, D], 1)))
    noise = normal([2, 8, 8, 3], 2) / math.sqrt(8 * 8)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            img = g8.synthesis(wp, randomize_noise=False).image
            out = tf.reduce_sum(img * noise)
        gw = inner.gradient(out, wp)
        path = tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(gw), axis=2) + 1e-8))
    grads = outer.gradient(path, g8.trainable_variables)
    assert gw.shape == wp.shape and np.all(np.isfinite(gw.numpy()))
    assert np.all(np.abs(gw.numpy()).max(axis=2) > 0)  # every W+ row matters
    # Not involved: the mapping (W+ is the input) and the RGB biases (additive, so dimg/dW+
    # does not depend on them); every other variable is connected.
    unconnected = {id(v) for v in g8.style.variables} | {id(t.bias) for t in [g8.to_rgb1, *g8.to_rgbs]}
    for v, g in zip(g8.trainable_variables, grads):
        assert (g is None) == (id(v) in unconnected), v.path
    nonzero = {id(v) for v, g in zip(g8.trainable_variables, grads)
               if g is not None and np.all(np.isfinite(g.numpy())) and np.abs(g.numpy()).max() > 0}
    # modulated conv kernels and modulation weights of every layer carry second-order signal
    for layer in [g8.conv1, g8.to_rgb1, *g8.convs, *g8.to_rgbs]:
        assert id(layer.conv.kernel) in nonzero, layer.name
        assert id(layer.conv.modulation.kernel) in nonzero, layer.name


# ---------------------------------------------------------------------------
# Keras integration
# ---------------------------------------------------------------------------

def test_generator_from_config(g16):
    g2 = Generator.from_config(g16.get_config())
    assert g2.get_config() == g16.get_config()
    assert [tuple(v.shape) for v in g2.variables] == [tuple(v.shape) for v in g16.variables]
    g2.set_weights(g16.get_weights())
    wp = g16.make_wplus(normal([2, D], 1))
    eq(g2.synthesis(wp, randomize_noise=False).image, g16.synthesis(wp, randomize_noise=False).image)


def test_discriminator_from_config(d16):
    d2 = Discriminator.from_config(d16.get_config())
    assert d2.get_config() == d16.get_config()
    assert [tuple(v.shape) for v in d2.variables] == [tuple(v.shape) for v in d16.variables]
    d2.set_weights(d16.get_weights())
    x = normal([2, 16, 16, 3], 1)
    eq(d2(x), d16(x))


@pytest.mark.parametrize("size,n_mlp", [(8, 1), (16, 2), (32, 3)])
def test_generator_parameter_count(size, n_mlp):
    g = tiny_generator(size, seed=9, n_mlp=n_mlp)
    table = [row for row in generator_table(g) if row[2] != "buffer"]  # fixed FIR kernels: not variables
    noise_rows = [key for key, _, _ in table if key.startswith("noises.")]
    assert len(noise_rows) == g.num_layers
    assert len(g.trainable_variables) == len(table) - len(noise_rows)
    # the formula: mapping 2 per layer; input; conv1 5 (weight, modulation w/b, noise, bias);
    # to_rgb1 4 (weight, modulation w/b, bias); per block 2 StyledConvs + 1 ToRGB.
    assert len(g.trainable_variables) == 2 * n_mlp + 1 + 5 + 4 + g.n_blocks * (2 * 5 + 4)
    # the table names every variable once, and only the noise buffers are not trainable
    assert {id(v) for _, v, _ in table} == {id(v) for v in g.variables}
    assert len(table) == len(g.variables)
    assert {id(v) for v in g.non_trainable_variables} == {id(v) for v in g.noise_buffers}


def test_partial_recompute_checkpoints_only_the_highest_resolution_blocks(g16, d16):
    """recompute=k wraps the k highest-resolution G blocks (+ ToRGBs) and D blocks (D's first one with the
    from-RGB conv) in tf.recompute_grad, and nothing else; True wraps every block."""
    from tf_cartoon import networks
    wrapped = []
    real = networks.recompute_blocks

    def spy(fn, recompute):
        wrapped.append(bool(recompute))
        return real(fn, recompute)

    wp = g16.make_wplus(normal([2, D], 5))
    try:
        networks.recompute_blocks = spy
        for k, expect_g, expect_d in [(0, 0, 0), (1, 2, 1), (True, 2 * g16.n_blocks, len(d16.convs) - 1)]:
            wrapped.clear()
            g16.synthesis(wp, recompute=k)
            assert sum(wrapped) == expect_g, k  # one conv pair + one ToRGB per block
            wrapped.clear()
            d16(tf.zeros([2, 16, 16, 3]), recompute=k)
            assert sum(wrapped) == expect_d, k  # convs[0] goes with convs[1] into one wrapper
    finally:
        networks.recompute_blocks = real
    with pytest.raises(ValueError, match="block count"):
        g16.synthesis(wp, recompute=-1)
