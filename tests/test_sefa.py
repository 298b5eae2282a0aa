"""tf_cartoon.sefa: closed-form factorization against the reference checkpoint, edits and the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import tf_cartoon
from tf_cartoon import generate as gen
from tf_cartoon import sefa
from tf_cartoon.images import to_uint8
from tf_cartoon.io import torch_pickle
from tests.helpers import REFERENCE_PT, one_line_error

N_MEAN = 64


@pytest.fixture(scope="module")
def reference():
    """(reference-layout stacked matrix from the .pt's own state-dict keys, our g_ema of the same file)."""
    sd = torch_pickle.load(REFERENCE_PT)["g_ema"]
    n_convs = len({k.split(".")[1] for k in sd if k.startswith("convs.")})
    keys = ["conv1.conv.modulation.weight", "to_rgb1.conv.modulation.weight",
            *(f"convs.{i}.conv.modulation.weight" for i in range(n_convs))]
    stacked = np.concatenate([np.asarray(sd[k], np.float32) for k in keys], axis=0)
    return stacked, keys, tf_cartoon.load(REFERENCE_PT, models=("g_ema",)).g_ema


def test_stacked_weights_match_reference_state_dict(reference):
    stacked, keys, g = reference
    assert stacked.shape == (64 + 64 + 64 + 48 + 48 + 32 + 32 + 24, 64)  # conv1, to_rgb1, convs.0-5 (in x style)
    np.testing.assert_array_equal(sefa.stacked_weights(g), stacked)
    assert [k for k, _ in sefa.modulation_weights(g)] == keys
    assert not any("to_rgbs" in k for k in keys)


def test_directions_match_numpy_svd(reference):
    stacked, keys, g = reference
    fac = sefa.closed_form_factorization(g)
    v, lam = fac.eigvec, fac.eigval
    assert v.shape == (64, 64) and lam.shape == (64,) and fac.layers == tuple(keys)
    np.testing.assert_allclose(v.T @ v, np.eye(64), atol=1e-5)  # orthonormal
    assert np.all(np.diff(lam) <= 0)  # descending
    _, s, vt = np.linalg.svd(stacked.astype(np.float64))  # independent: right singular vectors
    np.testing.assert_allclose(lam, s ** 2, rtol=1e-5)
    assert np.min(np.diff(s) / s[:-1]) < -1e-4  # distinct, so each vector is defined up to sign
    np.testing.assert_allclose(np.abs(np.sum(vt.T * v, axis=0)), 1.0, atol=1e-5)
    np.testing.assert_allclose(stacked.T @ stacked @ v, v * lam, rtol=1e-3, atol=1e-3 * lam[0])  # eigenvectors
    np.testing.assert_allclose(np.abs(v).max(axis=0), v.max(axis=0))  # sign convention


def test_factorize_wide_matrix_gives_full_basis():
    w = np.random.RandomState(0).randn(3, 5)
    fac = sefa.factorize(w)
    assert fac.eigvec.shape == (5, 5)
    np.testing.assert_allclose(fac.eigvec.T @ fac.eigvec, np.eye(5), atol=1e-6)
    np.testing.assert_allclose(fac.eigval[3:], 0, atol=1e-6)
    np.testing.assert_allclose(fac.eigval[:3], np.linalg.svd(w, compute_uv=False) ** 2, rtol=1e-5)


def test_render_direction_edits_w(ckpts):
    source, target = (tf_cartoon.load(p, models=("g_ema",)).g_ema for p in ckpts)
    v = sefa.closed_form_factorization(source).eigvec[:, 0]
    panels = sefa.render_direction(source, v, [2, 5], [-3.0, 0.0, 3.0], 0.7, target, [1],
                                   truncation_samples=N_MEAN)
    assert len(panels) == 3 and all(p.shape == (2, 3, 16, 16, 3) for p in panels)
    # degree 0: plain samples of the source; the target gets the SOURCE's w, truncated to its own mean
    np.testing.assert_allclose(panels[0][:, 1], gen.sample(source, [2, 5], 0.7, truncation_samples=N_MEAN),
                               atol=1e-5, rtol=1e-5)
    w = gen.latents(source, [2, 5], truncation=1.0)
    m_t = target.mean_latent(N_MEAN, seed=gen.MEAN_LATENT_SEED)
    expected = target([w + 3.0 * v[None]], input_is_latent=True, truncation=0.7, truncation_latent=m_t,
                      randomize_noise=False)
    np.testing.assert_allclose(panels[1][:, 2], np.asarray(expected), atol=1e-5, rtol=1e-5)
    assert np.abs(panels[0][:, 0] - panels[0][:, 2]).max() > 1e-3  # the edit changes the image
    grid = sefa.direction_grid(panels)
    assert grid.shape == (2 * 16, 3 * 3 * 16, 3)
    np.testing.assert_array_equal(grid[16:, 48:64], to_uint8(panels[0][1, 1]))
    np.testing.assert_array_equal(grid[16:, 64:80], to_uint8(panels[1][1, 1]))


def test_cli_writes_npz_and_renders(ckpts, tmp_path, capsys):
    source, target = ckpts
    out, out_dir = tmp_path / "f.npz", tmp_path / "render"
    argv = ["--ckpt", source, "--out", str(out), "--render", "--target", target, "--index", "0,2", "--degrees", "4",
            "--steps", "3", "--seeds", "0-1", "--truncation_samples", str(N_MEAN), "--out_dir", str(out_dir)]
    assert sefa.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    fac = sefa.load_factorization(out)
    expected = sefa.closed_form_factorization(tf_cartoon.load(source, models=("g_ema",)).g_ema)
    np.testing.assert_array_equal(fac.eigvec, expected.eigvec)
    np.testing.assert_array_equal(fac.eigval, expected.eigval)
    assert fac.layers[0] == "conv1.conv.modulation.weight" and len(fac.layers) == 2 + 4
    assert sorted(os.listdir(out_dir)) == ["direction_000.png", "direction_002.png"]
    assert Image.open(out_dir / "direction_002.png").size == (3 * 2 * 16, 2 * 16)  # 3 degrees x (src|tgt), 2 seeds


def test_cli_video_sweeps_and_progress(ckpts, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    from tests.helpers import decode_mp4, tool_lines

    source, target = ckpts
    out_dir = tmp_path / "render"
    argv = ["--ckpt", source, "--out", str(tmp_path / "f.npz"), "--render", "--target", target, "--index", "1",
            "--degrees", "4", "--steps", "3", "--seeds", "0-1", "--truncation_samples", str(N_MEAN),
            "--out_dir", str(out_dir), "--video", "--video_frames", "3", "--frame_ms", "100"]
    assert sefa.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].endswith("and 1 MP4 sweeps (3 frames each way)")
    assert "sefa: 1/1 directions (100%), " in err
    assert sorted(os.listdir(out_dir)) == ["direction_001.mp4", "direction_001.png"]
    frames, fps = decode_mp4(out_dir / "direction_001.mp4")
    assert frames.shape == (4, 2 * 16, 2 * 16, 3) and fps == pytest.approx(10.0)  # degrees -4, 0, 4, 0
    # --video_frames 3 walks the --steps 3 degrees: frame j is the grid's column j (2 seeds x source | target)
    grid = np.asarray(Image.open(out_dir / "direction_001.png")).astype(float)
    for frame, column in zip(frames, (0, 1, 2, 1)):
        expected = grid[:, column * 32:(column + 1) * 32].mean((0, 1))
        assert np.abs(frame.astype(float).mean((0, 1)) - expected).max() < 3
    assert sefa.main(argv + ["--quiet", "--out_dir", str(tmp_path / "q")]) == 0
    assert tool_lines(capsys.readouterr().err) == []


@pytest.mark.parametrize("extra, message", [
    (["--video"], "needs --render"),
    (["--render", "--video", "--video_frames", "1"], "--video_frames must be >= 2"),
    (["--render", "--index", "8"], "0..7"),
    (["--render", "--seeds", "1-0"], "backwards"),
    (["--render", "--swap_layer", "1"], "needs --target"),
    (["--target", "SOURCE"], "only apply with --render"),
    (["--render", "--target", "/nonexistent"], "--target: checkpoint not found: /nonexistent"),
    (["--out", "x.txt"], ".npz"),
])
def test_cli_errors_exit_2(ckpts, tmp_path, capsys, extra, message):
    extra = [ckpts[0] if e == "SOURCE" else e for e in extra]
    argv = ["--ckpt", ckpts[0], "--out", str(tmp_path / "f.npz"), "--out_dir", str(tmp_path / "r"), *extra]
    assert sefa.main(argv) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "f.npz").exists()
