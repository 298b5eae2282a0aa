"""tf_cartoon.project: photo projection into W+ (+ noise), the perceptual path, the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import tf_cartoon
from tf_cartoon import project as pj
from tf_cartoon.images import to_uint8
from tests.helpers import REFERENCE_PT as SOURCE_PT, REFERENCE_TARGET_PT as TARGET_PT

FAST = dict(n_mean_latent=512)


@pytest.fixture(scope="module")
def tiny(ckpts):
    """16 px random generator (its noise strengths are 0: the image depends on W+ only)."""
    return tf_cartoon.load(ckpts[0], models=("g_ema",)).g_ema


def known_wplus(g, n, seed=3):
    """A genuine W+: each photo's mapped w, every row moved a little on its own."""
    rng = np.random.RandomState(seed)
    w = np.asarray(g.mapping(rng.standard_normal((n, g.style_dim)).astype(np.float32)))
    return (np.repeat(w[:, None], g.n_latent, axis=1)
            + 0.05 * rng.standard_normal((n, g.n_latent, g.style_dim)).astype(np.float32))


def render(g, wplus, noise=None):
    return np.asarray(g.synthesis(np.asarray(wplus, np.float32), noise=noise, randomize_noise=False).image)


# ---------------------------------------------------------------------------
# Latent noise, noise regulariser, renormalisation
# ---------------------------------------------------------------------------

def test_latent_noise_strength():
    assert pj.latent_noise_strength(0.0, 2.0, 0.05, 0.75) == pytest.approx(0.1)
    assert pj.latent_noise_strength(0.375, 2.0, 0.05, 0.75) == pytest.approx(0.1 * 0.25)
    assert pj.latent_noise_strength(0.75, 2.0, 0.05, 0.75) == 0.0
    assert pj.latent_noise_strength(0.9, 2.0, 0.05, 0.75) == 0.0


def _numpy_noise_reg(maps):
    """Independent: per image, each scale down to 8 px, squared mean products with 1-px circular shifts."""
    b = maps[0].shape[0]
    out = np.zeros(b, np.float64)
    for m in maps:
        for i in range(b):
            x = m[i, :, :, 0].astype(np.float64)
            while True:
                out[i] += np.mean(x * np.roll(x, 1, axis=1)) ** 2 + np.mean(x * np.roll(x, 1, axis=0)) ** 2
                if x.shape[0] <= 8:
                    break
                r = x.shape[0] // 2
                x = x.reshape(r, 2, r, 2).mean(axis=(1, 3))
    return out


def test_noise_regularizer_matches_numpy():
    rng = np.random.RandomState(0)
    maps = [rng.standard_normal((2, r, r, 1)).astype(np.float32) for r in (4, 8, 16, 32)]
    maps[2][1] += np.linspace(0, 3, 16, dtype=np.float32)[None, :, None]  # a correlated map: larger value
    got = np.asarray(pj.noise_regularizer(maps))
    want = _numpy_noise_reg(maps)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want[1] > 10 * want[0]


def test_normalized_noise_per_image():
    rng = np.random.RandomState(1)
    n = rng.standard_normal((3, 8, 8, 1)).astype(np.float32) * np.array([1, 5, 0.1], np.float32)[:, None, None, None]
    n += np.array([0, 2, -7], np.float32)[:, None, None, None]
    out = np.asarray(pj.normalized_noise(n))
    np.testing.assert_allclose(out.reshape(3, -1).mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(3, -1).std(axis=1, ddof=1), 1, rtol=1e-5)


def test_latent_stats_formula(tiny):
    import tensorflow as tf

    mean, std = pj.latent_stats(tiny, 300, seed=5, chunk=128)
    w = np.asarray(tiny.mapping(tf.random.stateless_normal([300, tiny.style_dim], seed=[5, 1])), np.float64)
    np.testing.assert_allclose(mean, w.mean(0), rtol=1e-5, atol=1e-6)
    assert std == pytest.approx(np.sqrt(((w - w.mean(0)) ** 2).sum() / 300), rel=1e-5)


# ---------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------

def test_projection_recovers_a_generated_image(tiny):
    wplus = known_wplus(tiny, 2)
    photos = render(tiny, wplus)
    res = pj.project(tiny, photos, pj.ProjectConfig(steps=150, lr=0.1, w_plus=True, **FAST))
    mean, _ = pj.latent_stats(tiny, FAST["n_mean_latent"])
    start = render(tiny, np.broadcast_to(mean, wplus.shape))  # noise strengths are 0: noise does not matter
    initial = ((start - photos) ** 2).mean(axis=(1, 2, 3))
    # Independent re-render of the result.
    rec = render(tiny, res.wplus, res.noises)
    final = ((rec - photos) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(rec, res.image, atol=1e-5)
    np.testing.assert_allclose(final, res.final["mse"], rtol=1e-4)
    np.testing.assert_allclose(initial, res.initial["mse"], rtol=1e-4)
    assert (final < 0.1 * initial).all(), (initial, final)
    assert res.wplus.shape == (2, tiny.n_latent, tiny.style_dim)
    assert [n.shape for n in res.noises] == [(2, tiny.noise_resolution(i), tiny.noise_resolution(i), 1)
                                             for i in range(tiny.num_layers)]
    for n in res.noises:  # renormalised after every step
        np.testing.assert_allclose(n.reshape(2, -1).std(axis=1, ddof=1), 1, rtol=1e-4)


def test_default_projection_optimises_one_w_for_every_layer(tiny):
    """The reference's projector.py: one w broadcast to every layer unless --w_plus, lr 0.01."""
    assert pj.ProjectConfig().lr == 0.01 and not pj.ProjectConfig().w_plus
    w = known_wplus(tiny, 1)[:, :1]  # one w, the same in every row
    photos = render(tiny, np.broadcast_to(w, (1, tiny.n_latent, tiny.style_dim)))
    res = pj.project(tiny, photos, pj.ProjectConfig(steps=60, lr=0.1, **FAST))
    assert res.wplus.shape == (1, tiny.n_latent, tiny.style_dim)
    np.testing.assert_array_equal(res.wplus, np.broadcast_to(res.wplus[:, :1], res.wplus.shape))
    np.testing.assert_allclose(render(tiny, res.wplus, res.noises), res.image, atol=1e-5)
    assert res.final["mse"][0] < 0.5 * res.initial["mse"][0]


@pytest.mark.slow
def test_projection_of_a_photo_does_not_depend_on_its_batch(tiny):
    photos = render(tiny, known_wplus(tiny, 2, seed=7))
    cfg = pj.ProjectConfig(steps=25, **FAST)
    both = pj.project(tiny, photos, cfg)
    alone = pj.project(tiny, photos[1:], cfg)
    np.testing.assert_allclose(alone.wplus[0], both.wplus[1], atol=2e-4)
    np.testing.assert_allclose(alone.image[0], both.image[1], atol=2e-4)


def test_config_errors(tiny):
    photos = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="--mse is 0"):
        pj.project(tiny, photos, pj.ProjectConfig(steps=1, mse=0.0))
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 3\]"):
        pj.project(tiny, np.zeros((1, 32, 32, 3), np.float32), pj.ProjectConfig(steps=1))
    with pytest.raises(ValueError, match="--step"):
        pj.project(tiny, photos, pj.ProjectConfig(steps=0))


# ---------------------------------------------------------------------------
# Perceptual loss on VGG16 features
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """A randomly initialised VGG16 (no download) saved as Keras 3 .weights.h5 and in the legacy
    keras.applications .h5 layout (what vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is)."""
    import h5py
    import keras

    root = tmp_path_factory.mktemp("vgg")
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    new = str(root / "vgg16.weights.h5")
    vgg.save_weights(new)
    legacy = str(root / "vgg16_notop.h5")
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in vgg.layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for layer in vgg.layers:
            grp = f.create_group(layer.name)
            names = [f"{layer.name}/{'kernel' if i == 0 else 'bias'}:0" for i in range(len(layer.weights))]
            grp.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.weights):
                grp.create_dataset(n, data=np.asarray(w))
    return vgg, new, legacy


def _lpips_baseline_numpy(vgg, a, b):
    """Independent: keras' own VGG16 preprocessing, features via the layers, numpy normalisation."""
    import keras

    taps = keras.Model(vgg.input, [vgg.get_layer(n).output for n in pj.VGG_LAYERS])

    def feats(x):
        x = keras.applications.vgg16.preprocess_input((np.asarray(x, np.float32) + 1) * 127.5)
        out = []
        for f in taps(x):
            f = np.asarray(f, np.float64)
            out.append(f / (np.sqrt((f ** 2).sum(-1, keepdims=True)) + 1e-10))
        return out

    return sum(((fa - fb) ** 2).sum(-1).mean(axis=(1, 2)) for fa, fb in zip(feats(a), feats(b)))


def test_perceptual_distance_matches_independent_computation(vgg_files):
    vgg, new, legacy = vgg_files
    rng = np.random.RandomState(0)
    a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    p_new, p_legacy = pj.VGGPerceptual(new), pj.VGGPerceptual(legacy)
    want = _lpips_baseline_numpy(vgg, a, b)
    np.testing.assert_allclose(np.asarray(p_new(a, b)), want, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(p_legacy(a, b)), want, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(p_new(a, a)), 0, atol=1e-6)


@pytest.mark.slow
def test_perceptual_projection_lowers_its_loss(tiny, vgg_files):
    _, new, _ = vgg_files
    photos = render(tiny, known_wplus(tiny, 1, seed=11))
    lines = []
    res = pj.project(tiny, photos, pj.ProjectConfig(steps=30, mse=0.0, lr=0.1, w_plus=True, **FAST),
                     perceptual=pj.VGGPerceptual(new),
                     log=lines.append, log_every=10)
    assert res.final["perceptual"][0] < 0.5 * res.initial["perceptual"][0], (res.initial, res.final)
    assert res.history[-1]["step"] == 30 and len(lines) == 4  # steps 1, 10, 20, 30
    assert "perceptual" in pj.describe_loss(pj.ProjectConfig(), pj.VGGPerceptual(new))
    assert "MSE only" in pj.describe_loss(pj.ProjectConfig(), None)


def test_bad_vgg_weights_file(tmp_path):
    bad = tmp_path / "broken.weights.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(ValueError, match="broken.weights.h5"):
        pj.VGGPerceptual(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        pj.VGGPerceptual(str(tmp_path / "missing.h5"))


# ---------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------

def test_load_photo_crops_centre_and_converts_modes(tmp_path):
    # 60 x 20 RGBA: the centre 20 x 20 square is white, the sides black.
    a = np.zeros((20, 60, 4), np.uint8)
    a[..., 3] = 255
    a[:, 20:40, :3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "wide.png")
    x = pj.load_photo(tmp_path / "wide.png", 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=1e-6)
    Image.fromarray(np.full((30, 10), 0, np.uint8), "L").save(tmp_path / "grey.jpg")
    y = pj.load_photo(tmp_path / "grey.jpg", 8)
    assert y.shape == (8, 8, 3) and np.abs(y + 1).max() < 0.05
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).convert("P").save(tmp_path / "pal.gif")
    assert pj.load_photo(tmp_path / "pal.gif", 8).shape == (8, 8, 3)


def test_corrupt_photo_gives_clear_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(ValueError, match="junk.png"):
        pj.load_photo(tmp_path / "junk.png", 16)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])  # truncated mid-stream
    with pytest.raises(ValueError, match="cut.png"):
        pj.load_photo(tmp_path / "cut.png", 16)


def test_photo_names_unique():
    assert pj.photo_names(["a/x.png", "b/x.jpg", "y.png", "c/x.png"]) == ["x", "x_2", "y", "x_3"]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_end_to_end_on_fixtures(tmp_path, capsys):
    source = tf_cartoon.load(SOURCE_PT, models=("g_ema",)).g_ema
    target = tf_cartoon.load(TARGET_PT, models=("g_ema",)).g_ema
    faces = (np.clip(render(source, known_wplus(source, 2)), -1, 1) + 1) * 127.5
    Image.fromarray(faces[0].astype(np.uint8)).resize((48, 48)).save(tmp_path / "face.png")
    Image.fromarray(faces[1].astype(np.uint8)).convert("L").save(tmp_path / "grey.jpg")
    out = tmp_path / "out"
    rc = pj.main([str(tmp_path / "face.png"), str(tmp_path / "grey.jpg"), "--source", SOURCE_PT, "--target",
                  TARGET_PT, "--swap_layer", "1,2", "--out", str(out), "--step", "20", "--n_mean_latent", "256",
                  "--batch", "1", "--log_every", "10", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "MSE only" in err and "mse" in err
    assert sorted(os.listdir(out)) == ["face.npz", "face.png", "grey.npz", "grey.png", "grid.png"]
    for name in ("face", "grey"):
        row = np.asarray(Image.open(out / f"{name}.png"))
        assert row.shape == (32, 5 * 32, 3)  # photo | source | target | swap_l1 | swap_l2
        wplus, noises, settings = pj.load_projection(out / f"{name}.npz")
        assert wplus.shape == (source.n_latent, source.style_dim)
        assert [n.shape for n in noises] == [(1, source.noise_resolution(i), source.noise_resolution(i), 1)
                                             for i in range(source.num_layers)]
        assert settings["panels"] == ["photo", "source", "target", "swap_l1", "swap_l2"]
        assert settings["steps"] == 20 and settings["final"]["mse"] < settings["initial"]["mse"]
        with np.load(out / f"{name}.npz") as f:
            np.testing.assert_array_equal(row[:, :32], f["photo"])
            np.testing.assert_array_equal(row[:, 32:64], f["reconstruction"])
        # The saved latent and noise re-render the panels: source, target, swapped at 2.
        src = source.synthesis(wplus[None], noise=noises, randomize_noise=False, tap_layers=(2,))
        assert np.abs(to_uint8(np.asarray(src.image[0])).astype(int) - row[:, 32:64]).max() <= 1
        tgt = render(target, wplus[None], noises)[0]
        assert np.abs(to_uint8(tgt).astype(int) - row[:, 64:96]).max() <= 1
        sw = target.synthesis(wplus[None], noise=noises, randomize_noise=False, swap_layer=2,
                              swap_feature=src.features[2]).image[0]
        assert np.abs(to_uint8(np.asarray(sw)).astype(int) - row[:, 128:160]).max() <= 1
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (64, 160, 3)


def test_cli_progress_video_and_quiet(ckpts, tiny, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    from tests.helpers import decode_mp4, tool_lines

    face = to_uint8(render(tiny, known_wplus(tiny, 1))[0])
    Image.fromarray(face).save(tmp_path / "face.png")
    argv = [str(tmp_path / "face.png"), "--source", ckpts[0], "--step", "4", "--n_mean_latent", "64", "--log_every",
            "2", "--video", "--video_frames", "3"]
    assert pj.main(argv + ["--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'a'}: 1 x (<name>.npz, <name>.png, <name>.mp4), grid.png")
    lines = tool_lines(err)
    assert lines[0].startswith("projecting 1 photo(s)") and lines[1].startswith("step 1/4 (")
    assert lines[-2].startswith("project: 4/4 steps (100%), ") and "; mse " in lines[-2]
    assert lines[-1].startswith("face: mse ")
    frames, _ = decode_mp4(tmp_path / "a" / "face.mp4")
    assert frames.shape == (3, 16, 32, 3)  # steps 0, 2, 4: photo | reconstruction
    with np.load(tmp_path / "a" / "face.npz") as f:
        photo, final = f["photo"].astype(float), f["reconstruction"].astype(float)
    for frame in frames:
        assert np.abs(frame[:, :16].mean((0, 1)) - photo.mean((0, 1))).max() < 3
    assert np.abs(frames[-1][:, 16:].mean((0, 1)) - final.mean((0, 1))).max() < 3
    start = to_uint8(render(tiny, np.repeat(pj.latent_stats(tiny, 64, 0)[0][None, None], tiny.n_latent, 1)))[0]
    assert np.abs(frames[0][:, 16:].mean((0, 1)) - start.mean((0, 1))).max() < 3  # the start: the mean latent

    assert pj.main(argv + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert tool_lines(err) == [] and out.startswith("wrote ")


def test_cli_errors_name_the_file(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc = pj.main([str(tmp_path / "broken.png"), "--source", SOURCE_PT, "--out", str(tmp_path / "o"), "--step", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    rc = pj.main([str(tmp_path / "nope.png"), "--source", SOURCE_PT, "--out", str(tmp_path / "o")])
    assert rc == 2 and "nope.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    rc = pj.main([str(tmp_path / "ok.png"), "--source", SOURCE_PT, "--swap_layer", "1", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--swap_layer needs --target" in capsys.readouterr().err
    rc = pj.main([str(tmp_path / "ok.png"), "--source", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "none.pt" in capsys.readouterr().err
    rc = pj.main([str(tmp_path / "ok.png"), "--source", SOURCE_PT, "--target", TARGET_PT, "--swap_layer", "9",
                  "--out", str(tmp_path / "o")])
    assert rc == 2 and "swap layer must be in 1..3" in capsys.readouterr().err
    (tmp_path / "vgg.weights.h5").write_bytes(b"nope")
    rc = pj.main([str(tmp_path / "ok.png"), "--source", SOURCE_PT, "--vgg16_weights", str(tmp_path / "vgg.weights.h5"),
                  "--out", str(tmp_path / "o")])
    assert rc == 2 and "vgg.weights.h5" in capsys.readouterr().err
