"""tf_cartoon.latent: truncation, the W+ broadcast, style mixing, pairing and the latent-optimisation schedule,
each checked against the formula written out in numpy (and the TensorFlow path against the numpy one)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon import arch, cli, latent

RNG = np.random.default_rng(0)
N, ROWS, D = 3, 6, 5  # a 16 px generator has 6 W+ rows


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mean_shape", [(D,), (1, D)])
def test_truncate_w_and_wplus(mean_shape):
    mean = _rand(*mean_shape)
    w, wp = _rand(N, D), _rand(N, ROWS, D)
    m = mean.reshape(D)
    np.testing.assert_array_equal(latent.truncate(w, mean, 0.7), m + np.float32(0.7) * (w - m))
    got = latent.truncate(wp, mean, 0.7)
    assert got.shape == (N, ROWS, D) and got.dtype == np.float32
    for r in range(ROWS):
        np.testing.assert_array_equal(got[:, r], m + np.float32(0.7) * (wp[:, r] - m))


def test_truncate_per_sample_psi():
    mean, wp, psi = _rand(1, D), _rand(N, ROWS, D), np.array([0.0, 0.5, 1.0], np.float32)
    got = latent.truncate(wp, mean, psi)
    for i in range(N):
        np.testing.assert_allclose(got[i], mean + psi[i] * (wp[i] - mean), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[0], np.broadcast_to(mean, (ROWS, D)), atol=1e-7)  # psi 0: the centre
    np.testing.assert_allclose(got[2], wp[2], atol=1e-6)  # psi 1: w


def test_truncate_tf_matches_numpy():
    mean, wp, psi = _rand(1, D), _rand(N, ROWS, D), np.array([0.2, 0.7, 1.3], np.float32)
    got = latent.truncate(tf.constant(wp), tf.constant(mean), tf.constant(psi))
    assert tf.is_tensor(got)
    np.testing.assert_array_equal(got.numpy(), latent.truncate(wp, mean, psi))
    # mixed: a numpy centre with a tensor w answers in TensorFlow
    assert tf.is_tensor(latent.truncate(tf.constant(wp), mean, 0.5))


# ---------------------------------------------------------------------------
# W+ broadcast
# ---------------------------------------------------------------------------

def test_to_wplus_broadcasts_w_and_passes_wplus():
    w, wp = _rand(N, D), _rand(N, ROWS, D)
    got = latent.to_wplus(w, ROWS, D)
    assert got.shape == (N, ROWS, D)
    for r in range(ROWS):
        np.testing.assert_array_equal(got[:, r], w)
    np.testing.assert_array_equal(latent.to_wplus(w[:, None], ROWS), got)  # one row [N, 1, D]
    assert latent.to_wplus(wp, ROWS, D) is wp
    np.testing.assert_array_equal(latent.to_wplus(tf.constant(w), ROWS).numpy(), got)


def test_to_wplus_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"W\+ must be \[N, 6, 5\]"):
        latent.to_wplus(_rand(N, 4, D), ROWS, D)
    with pytest.raises(ValueError, match=r"w must be \[N, 5\]"):
        latent.to_wplus(_rand(N, D + 1), ROWS, D)
    with pytest.raises(ValueError, match="w must be"):
        latent.to_wplus(_rand(D), ROWS, D)


# ---------------------------------------------------------------------------
# Style mixing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cutoff", [1, 3, ROWS - 1])
def test_mix_at_a_cutoff(cutoff):
    a, b = _rand(N, ROWS, D), _rand(N, ROWS, D)
    want = np.concatenate([a[:, :cutoff], b[:, cutoff:]], axis=1)
    np.testing.assert_array_equal(latent.mix(a, b, latent.cutoff_rows(ROWS, cutoff)), want)
    tf_mask = latent.cutoff_rows(ROWS, tf.constant(cutoff))
    np.testing.assert_array_equal(latent.mix(tf.constant(a), tf.constant(b), tf_mask).numpy(), want)


def test_mix_chosen_rows_broadcasts():
    """The style-mixing figure: each row seed's W+ with the chosen rows from each column seed's w."""
    rows, cols = _rand(2, ROWS, D), _rand(4, D)
    chosen = latent.check_rows([0, 2, 5], ROWS, 16)
    got = latent.mix(rows[:, None], cols[None, :, None, :], latent.row_mask(chosen, ROWS))
    assert got.shape == (2, 4, ROWS, D)
    for r in range(2):
        for c in range(4):
            want = rows[r].copy()
            want[list(chosen)] = cols[c]
            np.testing.assert_array_equal(got[r, c], want)
    for bad in (-1, ROWS, 1.0, True):
        with pytest.raises(ValueError, match="0..5"):
            latent.check_rows([bad], ROWS, 16)


def test_random_cutoff_covers_1_to_n_minus_1():
    u = np.linspace(0, 1, 1000, endpoint=False)
    got = {latent.random_cutoff(x, ROWS) for x in u}
    assert got == set(range(1, ROWS))
    t = latent.random_cutoff(tf.constant(u.astype(np.float32)), ROWS).numpy()
    np.testing.assert_array_equal(t, 1 + np.floor(u.astype(np.float32) * (ROWS - 1)).astype(int))


# ---------------------------------------------------------------------------
# Pairing: the one rule of a source / target pair
# ---------------------------------------------------------------------------

def _g(size=16, style_dim=8, channels=None, n_mlp=2, z_dim=8):
    channels = channels or {4: 8, 8: 6, 16: 4}
    return SimpleNamespace(size=size, style_dim=style_dim, n_latent=arch.n_latent(size), n_blocks=arch.n_blocks(size),
                           channels=channels, n_mlp=n_mlp, z_dim=z_dim)


def test_check_pair_rule():
    t = _g()
    assert latent.check_pair(_g(), t, [1, 2]) == (1, 2)
    # what each generator computes for itself may differ: mapping depth, the 4 px input's channels, z width
    assert latent.check_pair(_g(n_mlp=5, channels={4: 3, 8: 6, 16: 4}, z_dim=3), t, "all") == (1, 2)
    # channels may differ only where something is swapped
    narrow = _g(channels={4: 8, 8: 5, 16: 4})
    assert latent.check_pair(narrow, t, [2]) == (2,)
    with pytest.raises(cli.IncompatiblePairError, match="layer 1: source has 5 channels at 8 px, target 6"):
        latent.check_pair(narrow, t, [1])
    with pytest.raises(cli.IncompatiblePairError, match="layer 1"):
        latent.check_pair(narrow, t, "all")  # export serves every layer
    with pytest.raises(cli.IncompatiblePairError, match="^--source: source and target differ in image size"):
        latent.check_pair(_g(size=32, channels={4: 8, 8: 6, 16: 4, 32: 2}), t, (), "--source")
    with pytest.raises(cli.IncompatiblePairError, match="style_dim: 4 vs 8"):
        latent.check_pair(_g(style_dim=4), t)
    with pytest.raises(cli.IncompatiblePairError, match="n_latent"):
        latent.check_pair(SimpleNamespace(**{**vars(_g()), "n_latent": 7}), t)
    for bad in (0, 3, 1.5, True):
        with pytest.raises(cli.UsageError, match="1..2"):
            latent.check_pair(_g(), t, [bad])
    assert issubclass(cli.IncompatiblePairError, ValueError)  # library callers catching ValueError still do


def test_check_pair_same_z():
    """Training and --pairing own_z map one z with both generators: the z widths must agree too."""
    assert latent.check_pair(_g(), _g(), [1], same_z=True) == (1,)
    with pytest.raises(cli.IncompatiblePairError, match="^--ckpt: .*z_dim.*: 3 vs 8"):
        latent.check_pair(_g(z_dim=3), _g(), [1], "--ckpt", same_z=True)


def test_swap_resolution_and_counts():
    """2^(L+2) px at swap layer L; a 2^k px generator: k-2 blocks, 2k-2 W+ rows, 2k-3 noise maps."""
    assert [arch.swap_resolution(L) for L in (1, 2, 3)] == [8, 16, 32]
    for k in range(3, 11):
        size = 2 ** k
        assert (arch.n_blocks(size), arch.n_latent(size), arch.num_noise(size)) == (k - 2, 2 * k - 2, 2 * k - 3)
        assert arch.resolutions(size) == [2 ** i for i in range(2, k + 1)]
    assert [arch.noise_resolution(i) for i in range(5)] == [4, 8, 8, 16, 16]
    assert [s for s in range(1, 2049) if arch.is_valid_size(s)] == [8, 16, 32, 64, 128, 256, 512, 1024]


# ---------------------------------------------------------------------------
# Latent optimisation: learning-rate ramp, Adam
# ---------------------------------------------------------------------------

def test_lr_ramp():
    lr = 0.1
    assert latent.lr_at(0.0, lr) == 0.0  # ramp-up starts at 0
    assert latent.lr_at(0.025, lr) == pytest.approx(0.05)  # half way up the linear ramp (0.05 long)
    assert latent.lr_at(0.05, lr) == pytest.approx(lr) and latent.lr_at(0.5, lr) == pytest.approx(lr)
    assert latent.lr_at(1 - 0.125, lr) == pytest.approx(lr * 0.5)  # half way down the cosine (0.25 long)
    assert latent.lr_at(1 - 0.25 * (1 / 3), lr) == pytest.approx(lr * (0.5 - 0.5 * math.cos(math.pi / 3)))
    assert latent.lr_at(0.9, lr) == pytest.approx(lr * (0.5 - 0.5 * math.cos(math.pi * 0.1 / 0.25)))
    assert latent.lr_at(0.3, lr, rampup=0, rampdown=0) == lr  # no ramps


def test_adam_update_is_torchs():
    """Two steps against torch.optim.Adam's update written out in numpy (float64)."""
    p0, grads = _rand(4), [_rand(4), _rand(4)]
    p, m, v = (tf.Variable(x) for x in (p0, np.zeros(4, np.float32), np.zeros(4, np.float32)))
    want, mm, vv = p0.astype(np.float64), np.zeros(4), np.zeros(4)
    (b1, b2), eps = latent.ADAM_BETAS, latent.ADAM_EPS
    for t, (g, lr) in enumerate(zip(grads, (0.1, 0.05)), start=1):
        latent.adam_update(p, tf.constant(g), m, v, lr, tf.constant(float(t)))
        mm, vv = b1 * mm + (1 - b1) * g, b2 * vv + (1 - b2) * g.astype(np.float64) ** 2
        want = want - lr / (1 - b1 ** t) * mm / (np.sqrt(vv) / math.sqrt(1 - b2 ** t) + eps)
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-5, atol=1e-6)
