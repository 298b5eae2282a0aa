"""tf_cartoon.metrics: Frechet distance / KID against closed forms and brute force, the FID Inception and LPIPS
against test-side torch mirrors of pytorch-fid / lpips (random weights), PPL's sampling and filtering."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from tf_cartoon.io import torch_pickle
from tf_cartoon.metrics import stats
from tf_cartoon.metrics import ppl as ppl_mod


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------

def _random_spd(rng, d, scale=1.0):
    a = rng.randn(d, d) * scale
    return a @ a.T + 0.1 * np.eye(d)


def _sqrtm_denman_beavers(m, iters=100):
    """Principal square root of a matrix with positive real eigenvalues (Denman-Beavers iteration)."""
    y, z = m.astype(np.float64), np.eye(len(m))
    for _ in range(iters):
        y_next, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
        done = np.abs(y_next - y).max() <= 1e-14 * np.abs(y).max()
        y = y_next
        if done:
            break
    return y


def test_frechet_1d_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    got = stats.frechet_distance([0.5], [[4.0]], [-1.0], [[0.25]])
    assert got == pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_commuting_covariances():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert stats.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_trace_sqrt_2d_closed_form():
    # for a 2x2 matrix with non-negative eigenvalues, tr(sqrt(M)) = sqrt(tr(M) + 2 sqrt(det(M)))
    rng = np.random.RandomState(0)
    for _ in range(5):
        s1, s2 = _random_spd(rng, 2), _random_spd(rng, 2, 2.0)
        m = s1 @ s2
        want = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
        assert stats.trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-10)


def test_trace_sqrt_3d_and_singular_against_iteration():
    rng = np.random.RandomState(1)
    for d in (3, 6):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 0.5)
        want = np.trace(_sqrtm_denman_beavers(s1 @ s2))
        assert stats.trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-9)
    # rank-deficient covariances (fewer samples than dimensions): S1 = A'A, S2 = B'B, and the trace is the
    # nuclear norm of A B' (the square roots of the non-zero eigenvalues of S1 S2)
    x, y = rng.randn(3, 5), rng.randn(4, 5)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    a, b = (x - x.mean(0)) / np.sqrt(2), (y - y.mean(0)) / np.sqrt(3)
    want = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    assert stats.trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-6)


def test_fid_from_features_paths_agree():
    rng = np.random.RandomState(2)
    for n1, n2, d in ((6, 9, 16), (40, 50, 8)):  # low-rank (SVD of samples) and covariance paths
        x = rng.randn(n1, d) @ rng.randn(d, d) * 0.5 + 1.0
        y = rng.randn(n2, d) * 0.8
        want = stats.frechet_distance(*stats.feature_stats(x), *stats.feature_stats(y))
        # (the covariance path takes square roots of rounding-level eigenvalues of singular matrices: ~1e-8)
        assert stats.fid_from_features(x, y) == pytest.approx(want, rel=1e-7)
    # identical sets: zero
    assert stats.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------

def _mmd2_brute(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_full_subsets_equal_brute_force_mmd():
    # subsets of all rows are permutations, and the unbiased MMD^2 does not depend on the order
    rng = np.random.RandomState(3)
    real, fake = rng.randn(7, 3), rng.randn(7, 3) * 1.5 + 0.3
    got = stats.kid_from_features(real, fake, num_subsets=5, max_subset_size=1000, seed=9)
    assert got == pytest.approx(_mmd2_brute(fake, real), rel=1e-10)


def test_kid_subsets_as_stylegan2_ada():
    rng = np.random.RandomState(4)
    real, fake = rng.randn(12, 4), rng.randn(9, 4) + 0.5
    m, subsets = 5, 3
    draw = np.random.RandomState(11)
    want = 0.0
    for _ in range(subsets):  # fake rows first, then real rows, without replacement
        x = fake[draw.choice(len(fake), m, replace=False)]
        y = real[draw.choice(len(real), m, replace=False)]
        want += _mmd2_brute(x, y)
    got = stats.kid_from_features(real, fake, num_subsets=subsets, max_subset_size=m, seed=11)
    assert got == pytest.approx(want / subsets, rel=1e-10)


def test_kid_errors():
    with pytest.raises(ValueError, match="at least 2"):
        stats.kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        stats.kid_from_features(np.zeros((4, 3)), np.zeros((4, 2)))


# ---------------------------------------------------------------------------
# FID Inception
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception():
    from tf_cartoon.metrics.inception import get_inception

    return get_inception(None)


def test_inception_matches_torch_reference(inception, tmp_path):
    torch = pytest.importorskip("torch")
    from tests.metrics_reference import FIDInceptionRef, nchw, random_inception_state_dict

    path = str(tmp_path / "pt_inception_random.pth")
    torch.save(random_inception_state_dict(0), path)  # written by torch, read by our allow-list reader
    inception.load(path)
    ref = FIDInceptionRef().eval()
    ref.load_state_dict(torch.load(path))
    rng = np.random.RandomState(0)
    feats = {}
    for side, size, n in (("a", 75, 4), ("b", 299, 2), ("c", 75, 4)):
        x = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
        if side == "c":
            x = np.clip(x * 0.5 + 0.2, -1, 1)
        ours = inception(x)
        with torch.no_grad():
            theirs = ref(nchw((x + 1) / 2)).numpy()  # pytorch-fid takes [0, 1]
        assert ours.shape == (n, 2048)
        assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
        feats[side] = (ours, theirs)
    fid_ours = stats.fid_from_features(feats["a"][0], feats["c"][0])
    fid_ref = stats.fid_from_features(feats["a"][1], feats["c"][1])
    assert fid_ours == pytest.approx(fid_ref, rel=1e-3)


def test_inception_refuses_other_state_dicts(inception, tmp_path):
    from tf_cartoon.metrics.inception import InceptionWeightsError

    path = str(tmp_path / "other.pth")
    torch_pickle.save({"conv.weight": np.zeros((3, 3, 1, 1), np.float32)}, path)
    with pytest.raises(InceptionWeightsError, match="keys missing"):
        inception.load(path)
    sd = {k: np.zeros(s, np.float32) for k, s in inception.expected.items()}
    sd["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    torch_pickle.save(sd, path)
    with pytest.raises(InceptionWeightsError, match="wrong shapes"):
        inception.load(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InceptionWeightsError):
        inception.load(str(tmp_path / "junk.pth"))


# ---------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------

def _random_vgg_state_dict(rng):
    from tf_cartoon.metrics.lpips import TORCHVISION_CONV_INDICES

    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    sd = {}
    for i, idx in enumerate(TORCHVISION_CONV_INDICES):
        cin, cout = chans[i], chans[i + 1]
        sd[f"features.{idx}.weight"] = (rng.randn(cout, cin, 3, 3) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        sd[f"features.{idx}.bias"] = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
    return sd


def _random_lins(rng):
    from tf_cartoon.metrics.lpips import LIN_CHANNELS

    return {f"lin{i}.model.1.weight": rng.uniform(0, 0.1, (1, c, 1, 1)).astype(np.float32)
            for i, c in enumerate(LIN_CHANNELS)}


def _lpips_numpy(feats_a, feats_b, lins):
    total = 0.0
    for fa, fb, w in zip(feats_a, feats_b, lins):
        fa = fa / (np.sqrt((fa.astype(np.float64) ** 2).sum(-1, keepdims=True)) + 1e-10)
        fb = fb / (np.sqrt((fb.astype(np.float64) ** 2).sum(-1, keepdims=True)) + 1e-10)
        total = total + ((fa - fb) ** 2 * w.reshape(-1)).sum(-1).mean(axis=(1, 2))
    return total


def test_lpips_matches_torch_reference(tmp_path):
    torch = pytest.importorskip("torch")
    from tests.metrics_reference import nchw, random_lpips
    from tf_cartoon.metrics.lpips import LPIPS

    net, vgg, lins = random_lpips(0)
    torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, tmp_path / "vgg16.pth")
    torch.save({k: torch.from_numpy(v) for k, v in lins.items()}, tmp_path / "vgg.pth")
    lp = LPIPS(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth"))
    assert lp.exact
    rng = np.random.RandomState(1)
    a = rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.randn(*a.shape), -1, 1).astype(np.float32)
    ours = lp(a, b)
    with torch.no_grad():
        theirs = net(nchw(a), nchw(b)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max(), (ours, theirs)
    assert np.allclose(lp(a, a), 0.0, atol=1e-7)


@pytest.mark.parametrize("kind", ["torchvision", "keras_h5"])
def test_lpips_formula_on_feature_maps(tmp_path, kind):
    import keras

    from tf_cartoon.metrics.lpips import LPIPS, load_lin_weights

    rng = np.random.RandomState(2)
    torch_pickle.save(_random_lins(rng), str(tmp_path / "vgg.pth"))
    if kind == "torchvision":
        vgg_path = str(tmp_path / "vgg16.pth")
        torch_pickle.save(_random_vgg_state_dict(rng), vgg_path)
    else:
        keras.utils.set_random_seed(0)
        vgg_path = str(tmp_path / "vgg16_notop.weights.h5")
        keras.applications.VGG16(weights=None, include_top=False).save_weights(vgg_path)
    lp = LPIPS(vgg_path, str(tmp_path / "vgg.pth"))
    assert lp.exact == (kind == "torchvision")
    a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    fa = [np.asarray(f) for f in lp.taps(lp._prep(a))]
    fb = [np.asarray(f) for f in lp.taps(lp._prep(b))]
    want = _lpips_numpy(fa, fb, load_lin_weights(str(tmp_path / "vgg.pth")))
    np.testing.assert_allclose(lp(a, b), want, rtol=1e-5)
    if kind == "torchvision":  # LPIPS' scaling layer
        want_in = (a - np.array([-.030, -.088, -.188], np.float32)) / np.array([.458, .448, .450], np.float32)
        np.testing.assert_allclose(np.asarray(lp._prep(a)), want_in, rtol=1e-6)


def test_lpips_weight_errors(tmp_path):
    from tf_cartoon.metrics.lpips import LPIPSWeightsError, load_lin_weights

    torch_pickle.save({"lin0.model.1.weight": np.zeros((1, 3, 1, 1), np.float32)}, str(tmp_path / "bad.pth"))
    with pytest.raises(LPIPSWeightsError, match="v0.1"):
        load_lin_weights(str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError):
        load_lin_weights(str(tmp_path / "missing.pth"))


def test_find_lpips_weights_in_package_without_importing_it(tmp_path, monkeypatch):
    from tf_cartoon.metrics import lpips as ours

    pkg = tmp_path / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    (pkg / "weights" / "v0.1" / "vgg.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    importlib.invalidate_caches()
    assert ours.find_lpips_weights() == str(pkg / "weights" / "v0.1" / "vgg.pth")
    assert "lpips" not in sys.modules


# ---------------------------------------------------------------------------
# PPL
# ---------------------------------------------------------------------------

def test_ppl_helpers():
    assert ppl_mod.batch_sizes(10, 4) == [4, 4, 2]
    assert ppl_mod.batch_sizes(8, 4) == [4, 4]  # the reference's empty last batch is skipped
    img = np.arange(2 * 16 * 16 * 3).reshape(2, 16, 16, 3)
    np.testing.assert_array_equal(ppl_mod.crop_face(img), img[:, 6:14, 4:12])
    d = np.concatenate([np.linspace(0, 1, 198), [-50.0, 80.0]])
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    assert ppl_mod.filtered_mean(d) == pytest.approx(d[(d >= lo) & (d <= hi)].mean())
    assert ppl_mod.filtered_mean(d) == pytest.approx(np.linspace(0, 1, 198).mean(), rel=0.02)


class _LinearG:
    """A stand-in generator: image = tanh-free linear map of w plus the first noise map."""

    style_dim, n_latent, num_layers, size = 4, 3, 2, 8

    def __init__(self):
        rng = np.random.RandomState(5)
        self.a = rng.randn(self.style_dim, self.size * self.size * 3).astype(np.float32) * 0.1
        self.calls = []

    def noise_resolution(self, i):
        return 4 if i == 0 else 8

    def mapping(self, z):
        return np.asarray(z, np.float32) * 2.0

    def synthesis(self, wplus, noise=None, randomize_noise=True):
        import types

        wplus = np.asarray(wplus)
        assert wplus.shape[1:] == (self.n_latent, self.style_dim)
        assert all(np.shape(n)[0] == 1 for n in noise)  # one noise map per layer, shared by the batch
        img = (wplus[:, 0] @ self.a).reshape(-1, self.size, self.size, 3) + float(np.asarray(noise[1])[0, 0, 0, 0])
        self.calls.append(len(wplus))
        return types.SimpleNamespace(image=img)


def test_ppl_end_points_and_scaling():
    g = _LinearG()
    sq = lambda x, y: ((np.asarray(x, np.float64) - y) ** 2).sum(axis=(1, 2, 3))  # noqa: E731
    eps = 1e-2
    got = ppl_mod.path_distances(g, sq, n=5, batch=2, eps=eps, seed=3)
    assert g.calls == [4, 4, 2]  # pairs interleaved: 2 images per path
    # independent: the same draws (per batch: noise maps, z [2b], t [b]); the images of w(t) and w(t + eps)
    # differ by eps * (w1 - w0) A, so distance / eps^2 = |(w1 - w0) A|^2
    rng, want = np.random.RandomState(3), []
    for b in (2, 2, 1):
        rng.randn(1, 4, 4, 1), rng.randn(1, 8, 8, 1)
        z = rng.randn(2 * b, 4).astype(np.float32)
        rng.rand(b)
        w = z * 2.0
        want.append((((w[1::2] - w[0::2]) @ g.a).astype(np.float64) ** 2).sum(-1))
    np.testing.assert_allclose(got, np.concatenate(want), rtol=2e-3)
    assert ppl_mod.ppl(_LinearG(), sq, n=5, batch=2, eps=eps, seed=3) == pytest.approx(
        ppl_mod.filtered_mean(got))


def test_reads_the_lpips_wheels_own_weights():
    # the shipped file is a legacy torch pickle with CUDA storages; our reader takes it without torch
    from tf_cartoon.metrics.lpips import LIN_CHANNELS, find_lpips_weights, load_lin_weights

    path = find_lpips_weights()
    if path is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    lins = load_lin_weights(path)
    assert [w.shape for w in lins] == [(c,) for c in LIN_CHANNELS]
    assert all(np.all(w >= 0) and w.sum() > 0 for w in lins)  # LPIPS clamps its linear weights at 0
    try:
        import torch
    except ImportError:
        return
    sd = torch.load(path, map_location="cpu")
    for i, w in enumerate(lins):
        np.testing.assert_array_equal(w, sd[f"lin{i}.model.1.weight"].numpy().reshape(-1))
