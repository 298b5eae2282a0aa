"""tf_cartoon.images and tf_cartoon.generate: determinism, layer swapping, mixing, interpolation, CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tf_cartoon
from tf_cartoon import generate as gen
from tf_cartoon.images import make_grid, parse_range, parse_seeds, save_gif, save_png, to_uint8
from tests.helpers import REFERENCE_PT, ROOT as REPO, one_line_error
from tests.tiny_models import make_tiny_checkpoint
N_MEAN = 64  # truncation_samples: small keeps the tests quick


@pytest.fixture(scope="module")
def gens(ckpts):
    return tuple(tf_cartoon.load(p, models=("g_ema",)).g_ema for p in ckpts)


# ---------------------------------------------------------------------------
# images.py
# ---------------------------------------------------------------------------

def test_to_uint8_rounds_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 191, 255, 255])
    u = np.arange(6, dtype=np.uint8)
    assert to_uint8(u) is u


def test_make_grid_layout_and_padding():
    a = np.full((3, 4, 5, 3), -1.0, np.float32)  # black
    b = np.full((2, 4, 5, 3), 1.0, np.float32)  # white
    grid = make_grid([a, b], pad=1, pad_value=7)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 4 + 3, 3 * 5 + 4, 3)
    assert (grid[1:5, 1:6] == 0).all() and (grid[6:10, 7:12] == 255).all()
    assert (grid[6:10, 13:18] == 7).all()  # the short row's missing cell
    assert (grid[0] == 7).all() and (grid[:, 0] == 7).all()
    np.testing.assert_array_equal(make_grid([a]), np.concatenate(list(to_uint8(a)), axis=1))
    with pytest.raises(ValueError):
        make_grid([a, np.zeros((1, 5, 5, 3), np.uint8)])


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(" 5 ") == [5]
    assert parse_seeds("2, 0-1") == [2, 0, 1]
    assert parse_range("1,2", "swap layers") == [1, 2]
    for bad in ["", "a", "1-", "3-1", "1,,2", "-1", "0-3;7", "1.5", str(2 ** 32)]:
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_save_png_and_gif(tmp_path):
    img = np.random.RandomState(0).randint(0, 256, (6, 7, 3)).astype(np.uint8)
    path = save_png(tmp_path / "sub" / "a.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    frames = [np.full((4, 4, 3), v, np.uint8) for v in (0, 80, 160, 240)]
    gif = save_gif(tmp_path / "a.gif", frames, duration_ms=30)
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.info["loop"] == 0 and im.info["duration"] == 30
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "sub"]  # no temp files left behind


# ---------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------

def test_seed_z_is_numpy_randomstate():
    z = gen.seed_z([3, 0], 8)
    assert z.dtype == np.float32 and z.shape == (2, 8)
    np.testing.assert_array_equal(z[0], np.random.RandomState(3).randn(8).astype(np.float32))


def _api_images(source, target, z, layer, psi=0.7, pairing="shared_w"):
    """Independent computation through the Generator's own forward (call with swap options). shared_w: the
    reference's demos, ``target([source.style(z)], input_is_latent=True, truncation toward the target's mean)``;
    own_z: the target maps z itself."""
    m_s = source.mean_latent(N_MEAN, seed=gen.MEAN_LATENT_SEED)
    m_t = target.mean_latent(N_MEAN, seed=gen.MEAN_LATENT_SEED)
    src_img, feat = source(z, truncation=psi, truncation_latent=m_s, randomize_noise=False, swap_layer=layer)
    styles, is_w = (source.mapping(z), True) if pairing == "shared_w" else (z, False)
    tgt_img = target(styles, input_is_latent=is_w, truncation=psi, truncation_latent=m_t, randomize_noise=False)
    swapped, _ = target(styles, input_is_latent=is_w, truncation=psi, truncation_latent=m_t, randomize_noise=False,
                        swap_layer=layer, swap_feature=feat)
    return np.asarray(src_img), np.asarray(tgt_img), np.asarray(swapped)


@pytest.mark.parametrize("pairing", ["shared_w", "own_z"])
def test_swap_rows_match_generator_api(gens, pairing):
    source, target = gens
    seeds = [0, 5, 9]
    result = gen.swap_images(source, target, seeds, [1, 2], truncation=0.7, truncation_samples=N_MEAN, batch=2,
                             pairing=pairing)
    assert sorted(result.swapped) == [1, 2] and result.source.shape == (3, 16, 16, 3)
    z = gen.seed_z(seeds, source.style_dim)
    for layer in (1, 2):
        src, tgt, swapped = _api_images(source, target, z, layer, pairing=pairing)
        np.testing.assert_allclose(result.source, src, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(result.target, tgt, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(result.swapped[layer], swapped, atol=1e-5, rtol=1e-5)
        assert np.abs(swapped - tgt).max() > 1e-3  # the swap does something
    alone = gen.sample(target, seeds, 0.7, truncation_samples=N_MEAN)  # the target's own mapping
    if pairing == "own_z":
        np.testing.assert_allclose(alone, result.target, atol=1e-5, rtol=1e-5)
    else:  # these test generators' mappings differ, so the paired target row is not the target's own sample
        assert np.abs(alone - result.target).max() > 1e-3


def test_swapping_own_feature_is_identity(gens):
    _, target = gens
    result = gen.swap_images(target, target, [1, 2, 3], [1, 2], truncation=0.7, truncation_samples=N_MEAN)
    np.testing.assert_array_equal(result.source, result.target)
    for layer in (1, 2):
        np.testing.assert_array_equal(result.swapped[layer], result.target)


def test_swap_checks(gens, tmp_path):
    source, target = gens
    for bad in (0, 3):
        with pytest.raises(ValueError, match="1..2"):
            gen.swap_images(source, target, [0], [bad], truncation_samples=N_MEAN)
    narrow = tf_cartoon.load(make_tiny_checkpoint(tmp_path / "narrow", seed=2, channels={4: 8, 8: 5, 16: 4}),
                             models=("g_ema",)).g_ema
    with pytest.raises(ValueError, match="channels"):
        gen.swap_images(narrow, target, [0], [1], truncation_samples=N_MEAN)
    gen.swap_images(narrow, target, [0], [2], truncation_samples=N_MEAN)  # 16 px has 4 channels in both


def test_style_mixing(gens):
    _, g = gens
    rows, cols = [0, 1, 2], [3, 4]
    everything = gen.style_mixing(g, rows, cols, range(g.n_latent), 0.7, truncation_samples=N_MEAN, batch=4)
    assert everything.mixed.shape == (3, 2, 16, 16, 3)
    for seeds, images in ((cols, everything.col_images), (rows, everything.row_images)):
        np.testing.assert_allclose(images, gen.sample(g, seeds, 0.7, truncation_samples=N_MEAN), atol=1e-5, rtol=1e-5)
    for r in range(3):  # all slots from the column seed: the column image
        np.testing.assert_allclose(everything.mixed[r], everything.col_images, atol=1e-5, rtol=1e-5)
    coarse = gen.style_mixing(g, rows, cols, [0, 1, 2], 0.7, truncation_samples=N_MEAN)
    assert np.abs(coarse.mixed[:, 0] - everything.col_images[0]).max() > 1e-3
    assert np.abs(coarse.mixed[0] - coarse.row_images[0]).max() > 1e-3
    fig = gen.mixing_figure(coarse)
    assert fig.shape == (4 * 16, 3 * 16, 3) and (fig[:16, :16] == 255).all()
    np.testing.assert_array_equal(fig[16:32, :16], to_uint8(coarse.row_images[0]))
    np.testing.assert_array_equal(fig[:16, 16:32], to_uint8(coarse.col_images[0]))
    with pytest.raises(ValueError, match="slots"):
        gen.style_mixing(g, rows, cols, [g.n_latent], truncation_samples=N_MEAN)


def test_interpolation_frames(gens):
    source, target = gens
    seeds = [4, 7, 1]
    frames = gen.interpolation_frames(target, seeds, frames=3, truncation=0.7, truncation_samples=N_MEAN, batch=4)
    assert len(frames) == 9 and frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    samples = to_uint8(gen.sample(target, seeds, 0.7, truncation_samples=N_MEAN))
    for k in range(3):  # every 3rd frame sits on a seed
        assert np.abs(frames[3 * k].astype(int) - samples[k]).max() <= 1
    swap = gen.interpolation_frames(target, seeds[:2], frames=2, source=source, layers=[1], truncation=0.7,
                                    truncation_samples=N_MEAN, pairing="own_z")
    assert len(swap) == 4 and swap[0].shape == (16, 3 * 16, 3)
    np.testing.assert_array_equal(swap[0][:, 16:32], frames[0])
    # shared_w (the default): the target's cell of a seed's frame is the paired swap grid's target image
    shared = gen.interpolation_frames(target, seeds[:2], frames=2, source=source, layers=[1], truncation=0.7,
                                      truncation_samples=N_MEAN)
    paired = gen.swap_images(source, target, seeds[:1], [1], 0.7, truncation_samples=N_MEAN)
    assert np.abs(shared[0][:, 16:32].astype(int) - to_uint8(paired.target)[0]).max() <= 1
    path = gen.lerp_path(np.eye(2, dtype=np.float32), 4, closed=False)
    np.testing.assert_allclose(path[:, 0], [1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ValueError, match="two seeds"):
        gen.interpolation_frames(target, [1], frames=3, truncation_samples=N_MEAN)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _read_tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


@pytest.mark.slow
def test_cli_outputs_are_deterministic(ckpts, gens, tmp_path, capsys):
    source, target = ckpts
    argv = ["--ckpt", target, "--source", source, "--seeds", "0-2,9", "--swap_layer", "1,2", "--mixing",
            "--mix_rows", "0-1", "--mix_cols", "2-4", "--mix_layers", "0-2", "--interpolate", "--frames", "2",
            "--truncation_samples", str(N_MEAN), "--batch", "4", "--precision", "fp32"]  # as gen.swap_images below
    for run in ("a", "b"):
        assert gen.main(argv + ["--out", str(tmp_path / run)]) == 0
    a, b = _read_tree(tmp_path / "a"), _read_tree(tmp_path / "b")
    assert a == b
    names = [f"seed{s:04d}.png" for s in (0, 1, 2, 9)]
    expected = {*names, "grid.png", "mixing.png", "interpolation.gif",
                *(os.path.join(d, n) for d in ("source", "swap_l1", "swap_l2") for n in names)}
    assert set(a) == expected
    out = tmp_path / "a"
    assert Image.open(out / "grid.png").size == (4 * 16, 4 * 16)  # 4 seeds x (source, target, swap 1, swap 2)
    assert Image.open(out / "mixing.png").size == (4 * 16, 3 * 16)
    with Image.open(out / "interpolation.gif") as im:
        assert im.n_frames == 8 and im.size == (4 * 16, 16)
    grid = np.asarray(Image.open(out / "grid.png"))
    np.testing.assert_array_equal(grid[16:32, 48:64], np.asarray(Image.open(out / "seed0009.png")))
    np.testing.assert_array_equal(grid[32:48, :16], np.asarray(Image.open(out / "swap_l1" / "seed0000.png")))
    swap = gen.swap_images(*gens, [0, 1, 2, 9], [1, 2], 0.7, truncation_samples=N_MEAN)
    assert np.abs(grid[48:64].astype(int) - np.concatenate(list(to_uint8(swap.swapped[2])), axis=1)).max() <= 1
    assert "wrote" in capsys.readouterr().out


def test_cli_target_only(ckpts, tmp_path):
    assert gen.main(["--ckpt", ckpts[1], "--seeds", "3,1", "--truncation", "1", "--out", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "seed0001.png", "seed0003.png"]
    assert Image.open(tmp_path / "grid.png").size == (2 * 16, 16)


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "4-2"], "backwards"),
    (["--seeds", "x"], "seeds"),
    (["--swap_layer", "1"], "needs --source"),
    (["--source", "TARGET", "--swap_layer", "3"], "1..2"),
    (["--source", "TARGET", "--swap_layer", "0"], "1..2"),
    (["--source", REFERENCE_PT], "--source: source and target differ in image size"),
    (["--source", "/nonexistent/ckpt.pt"], "--source: checkpoint not found: /nonexistent/ckpt.pt"),
    (["--mixing", "--mix_layers", "0-6"], "0..5"),
    (["--interpolate", "--seeds", "3"], "two seeds"),
])
def test_cli_errors_exit_2(ckpts, tmp_path, capsys, extra, message):
    extra = [ckpts[1] if e == "TARGET" else e for e in extra]
    assert gen.main(["--ckpt", ckpts[1], "--out", str(tmp_path / "o"), "--truncation_samples", "8", *extra]) == 2
    assert message in one_line_error(capsys)


def test_cli_missing_ckpt_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tf_cartoon.generate", "--ckpt", str(tmp_path / "missing.pt"),
                           "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    # (TensorFlow's own start-up lines may come first: the loader imports it)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --ckpt: checkpoint not found: {tmp_path / 'missing.pt'}"], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_progress_video_and_quiet(ckpts, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    from tests.helpers import decode_mp4, tool_lines

    argv = ["--ckpt", ckpts[1], "--source", ckpts[0], "--swap_layer", "1", "--seeds", "0-2", "--interpolate",
            "--frames", "2", "--video", "--truncation_samples", str(N_MEAN), "--batch", "2"]
    assert gen.main(argv + ["--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert out == f"wrote {tmp_path / 'a'}: source/, swap_l1/, 3 seed PNGs, grid.png, interpolation.mp4 (6 frames)\n"
    lines = tool_lines(err)  # not a terminal: the end line of each stage and of each count
    assert len(lines) == 3 and lines[0].startswith(f"mean latent ({N_MEAN} samples): ")
    assert lines[1].startswith("generate: 3/3 seeds (100%), ")
    assert lines[2].startswith("interpolation: 6/6 frames (100%), ")
    frames, fps = decode_mp4(tmp_path / "a" / "interpolation.mp4")
    assert frames.shape == (6, 16, 3 * 16, 3) and fps == pytest.approx(25.0)
    assert not (tmp_path / "a" / "interpolation.gif").exists()
    grid = np.asarray(Image.open(tmp_path / "a" / "grid.png"))  # rows source | target | swap_l1; frame 0 = seed 0
    first = np.concatenate([grid[:16, :16], grid[16:32, :16], grid[32:48, :16]], axis=1)
    assert np.abs(frames[0].astype(float).mean((0, 1)) - first.mean((0, 1))).max() < 3

    assert gen.main(argv + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert tool_lines(err) == [] and out.startswith("wrote ")
    assert gen.main(["--ckpt", ckpts[1], "--video", "--out", str(tmp_path / "c")]) == 2
    assert "--video writes the interpolation: it needs --interpolate" in one_line_error(capsys)
