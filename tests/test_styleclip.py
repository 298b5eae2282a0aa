"""tf_cartoon.styleclip: the reference's schedule, loss and resize, the optimisation, the strength sweep, the CLI.

A tiny randomly initialised CLIP (tests/tiny_clip.py) and tiny generators stand in for ViT-B/32 and
the 256 px models; expected values come from hand-computed formulas, numpy re-computations and the
generator's own reference-style forward.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tf_cartoon
from tests import tiny_clip as tc
from tests.helpers import REFERENCE_PT as SOURCE_PT, REFERENCE_TARGET_PT as TARGET_PT, one_line_error
from tests.tiny_models import make_tiny_checkpoint
from tf_cartoon import generate as gen
from tf_cartoon import latent
from tf_cartoon import styleclip as sc

N_MEAN = 64
STEPS = 20


@pytest.fixture(scope="module")
def setup(ckpts):
    """A 16 px source and target, a tiny CLIP (32 px input) and one compiled objective for the source."""
    source, target = (tf_cartoon.load(p, models=("g_ema",)).g_ema for p in ckpts)
    model, _ = tc.tiny_clip(seed=0)
    mean = gen.mean_latent(source, N_MEAN)
    objective = sc.Objective(source, sc.ClipLoss(model, "a smiling face", source.size), 0.7, mean)
    return source, target, objective, sc.start_latent(source, 3)


@pytest.fixture(scope="module")
def runs(setup):
    """Optimisations from the same start with the reference's lambda, none and a huge one."""
    _, _, objective, w0 = setup
    return {lam: sc.optimize(objective, w0, STEPS, 0.1, lam) for lam in (0.008, 0.0, 1e4)}


def test_resize_is_upsample_by_7_then_average_pool():
    """The reference's Upsample(scale 7, nearest) + AvgPool2d(size // 32) for 256 px -> 224, and the
    general rule elsewhere (16 px -> 32 = nearest x2; 32 px -> 224 = nearest x7)."""
    rng = np.random.RandomState(0)
    for size, clip_size, up, k in ((256, 224, 7, 8), (32, 224, 7, 1), (16, 32, 2, 1)):
        x = rng.randn(size, size)
        big = np.repeat(np.repeat(x, up, 0), up, 1)
        pooled = big.reshape(clip_size, k, clip_size, k).mean(axis=(1, 3))
        a = sc.clip_resize_matrix(size, clip_size)
        assert a.shape == (clip_size, size)
        np.testing.assert_allclose(a @ x @ a.T, pooled, rtol=1e-5, atol=1e-5)


def test_clip_loss_is_one_minus_cosine(setup):
    _, _, objective, _ = setup
    loss = objective.clip_loss
    images = np.random.RandomState(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    model = loss.clip
    f = np.asarray(model.encode_image(np.repeat(np.repeat(images, 2, 1), 2, 2)), np.float64)
    t = np.asarray(model.encode_text(model.tokenize("a smiling face")), np.float64)[0]
    expected = 1 - f @ t / np.linalg.norm(f, axis=1) / np.linalg.norm(t)
    np.testing.assert_allclose(np.asarray(loss(images)), expected, rtol=1e-5, atol=1e-5)


def test_optimisation_lowers_the_objective(runs):
    h = runs[0.008].history
    assert h.shape == (STEPS, 4)
    assert h[0, 0] == 0.0 and h[0, 3] == 0.0 and h[0, 1] == h[0, 2]  # step 0: lr 0, at w_init
    np.testing.assert_array_equal(h[1, 1:], h[0, 1:])  # ... so step 1 still sees w_init
    assert h[-1, 1] < h[0, 1] - 0.02  # the objective goes down ...
    assert h[-1, 2] < h[0, 2] - 0.02  # ... through the CLIP term
    assert h[-1, 3] > 0


def test_adam_steps_as_torch(setup):
    """Step 0 (lr 0) only fills the moments; step 1 moves every coordinate by lr_1 * g / (|g| + eps)."""
    _, _, objective, w0 = setup
    r = sc.optimize(objective, w0, 2, 0.1, 0.008)
    m, v = objective.m.numpy()[0], objective.v.numpy()[0]
    g = m / 0.19  # the same gradient twice: m = (0.9 * 0.1 + 0.1) g
    np.testing.assert_allclose(v, 0.001999 * g ** 2, rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(r.history[:, 0], [latent.lr_at(i / 2, 0.1) for i in range(2)])  # the ramp
    lr1 = latent.lr_at(1 / 2, 0.1)
    np.testing.assert_allclose(r.w_opt - w0, -lr1 * g / (np.abs(g) + 1e-8), rtol=1e-4, atol=1e-6)


def test_large_lambda_keeps_w_near_w_init(runs, setup):
    w0 = setup[3]
    free = np.abs(runs[0.0].w_opt - w0).max()
    held = np.abs(runs[1e4].w_opt - w0).max()
    assert free > 0.5 and held < 0.05 * free
    assert np.abs(runs[0.008].w_opt - w0).max() < free  # the reference's lambda lies in between


def test_sweep_is_linear_in_alpha(runs):
    r = runs[0.008]
    coeff = sc.sweep_coefficients(1.5, 4)
    np.testing.assert_array_equal(coeff, np.float32([0, 0.5, 1.0, 1.5]))
    sweep = sc.strength_sweep(r.w_init, r.w_opt, 1.5, 4)
    assert sweep.shape == (4, *r.w_init.shape)
    for j in range(4):
        np.testing.assert_array_equal(sweep[j], r.w_init + np.float32(1.5 * j / 3) * (r.w_opt - r.w_init))
    np.testing.assert_array_equal(sweep[0], r.w_init)
    np.testing.assert_allclose(sc.strength_sweep(r.w_init, r.w_opt, 1.0, 3)[-1], r.w_opt, atol=1e-6)
    double = sc.strength_sweep(r.w_init, r.w_opt, 3.0, 4)
    np.testing.assert_allclose(double - r.w_init, 2 * (sweep - r.w_init), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_alpha must be >= 2"):
        sc.sweep_coefficients(1.0, 1)


def test_render_sweep_rows(setup, runs):
    source, target, _, _ = setup
    r = runs[0.008]
    sweep = sc.strength_sweep(r.w_init, r.w_opt, 1.0, 3)
    s_mean, t_mean = gen.mean_latent(source, N_MEAN), gen.mean_latent(target, N_MEAN)
    rows = sc.render_sweep(source, sweep, 0.7, target, (1,), s_mean, t_mean)
    assert len(rows) == 3 and all(row.shape == (3, 16, 16, 3) for row in rows)
    # each generator renders the same untruncated W+ truncated toward its own mean (reference forward)
    for g, mean, row in ((source, s_mean, rows[0]), (target, t_mean, rows[1])):
        expected = g([sweep], input_is_latent=True, truncation=0.7, truncation_latent=mean, randomize_noise=False)
        np.testing.assert_allclose(row, np.asarray(expected), rtol=1e-5, atol=1e-5)
    _, feature = source([sweep], input_is_latent=True, truncation=0.7, truncation_latent=s_mean,
                        randomize_noise=False, swap_layer=1)
    swapped, _ = target([sweep], input_is_latent=True, truncation=0.7, truncation_latent=t_mean,
                        randomize_noise=False, swap_layer=1, swap_feature=feature)
    np.testing.assert_allclose(rows[2], np.asarray(swapped), rtol=1e-5, atol=1e-5)
    assert np.abs(rows[1][0] - rows[1][-1]).max() > 1e-3  # the edit changes the target's image


def test_start_latents(setup, tmp_path):
    source = setup[0]
    w0 = sc.start_latent(source, 3)
    expected = np.asarray(source.mapping(np.random.RandomState(3).randn(1, source.style_dim).astype(np.float32)))
    np.testing.assert_allclose(w0, np.repeat(expected, source.n_latent, 0), rtol=1e-6)
    np.save(tmp_path / "w.npy", expected[0])
    np.testing.assert_array_equal(sc.load_latent(source, str(tmp_path / "w.npy")), w0)
    np.savez(tmp_path / "run.npz", w_init=w0, w_opt=w0 + 1)
    np.testing.assert_array_equal(sc.load_latent(source, str(tmp_path / "run.npz")), w0 + 1)
    np.save(tmp_path / "bad.npy", np.zeros([3, source.style_dim]))
    with pytest.raises(ValueError, match=r"--latent .*bad.npy: shape \(3, 8\)"):
        sc.load_latent(source, str(tmp_path / "bad.npy"))


@pytest.mark.slow
def test_cli_end_to_end_on_reference_checkpoints(tmp_path, capsys):
    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    out = tmp_path / "out"
    argv = ["--source", SOURCE_PT, "--target", TARGET_PT, "--text", "a smiling face", "--clip", clip_dir,
            "--seed", "5", "--steps", "4", "--alpha", "2", "--n_alpha", "3", "--swap_layer", "1",
            "--truncation_samples", str(N_MEAN), "--out", str(out), "--log_every", "2",
            "--precision", "fp32"]  # compared below with the float32 library calls
    assert sc.main(argv) == 0
    text = capsys.readouterr().out
    assert "step 1/4" in text and "wrote" in text
    assert Image.open(out / "sweep.png").size == (3 * 32, 3 * 32)  # 3 strengths x (source, target, swap_l1)
    with np.load(out / "latents.npz") as f:
        w_init, w_opt, sweep = f["w_init"], f["w_opt"], f["sweep"]
        assert f["history"].shape == (4, 4) and str(f["text"]) == "a smiling face" and int(f["seed"]) == 5
        np.testing.assert_array_equal(f["coefficients"], np.float32([0, 1, 2]))
    source = tf_cartoon.load(SOURCE_PT, models=("g_ema",)).g_ema
    assert w_init.shape == (source.n_latent, source.style_dim) == (8, 64)
    np.testing.assert_allclose(w_init, sc.start_latent(source, 5), rtol=1e-6)
    assert np.abs(w_opt - w_init).max() > 0
    np.testing.assert_array_equal(sweep, sc.strength_sweep(w_init, w_opt, 2.0, 3))


@pytest.mark.slow
def test_cli_progress_and_video(ckpts, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    from tests.helpers import decode_mp4

    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    argv = ["--source", ckpts[0], "--target", ckpts[1], "--text", "a smiling face", "--clip", clip_dir, "--steps", "3",
            "--n_alpha", "2", "--truncation_samples", str(N_MEAN), "--log_every", "0", "--video", "--video_frames",
            "3", "--out", str(tmp_path / "a")]
    assert sc.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'a'}: sweep.png (3 rows x 2 strengths up to alpha 1.5), sweep.mp4, ")
    assert "\nstyleclip: 3/3 steps (100%), " in err and "; loss " in err
    frames, _ = decode_mp4(tmp_path / "a" / "sweep.mp4")
    assert frames.shape == (4, 3 * 16, 16, 3)  # start, alpha / 2, alpha, alpha / 2; rows source | target | swap_l1
    sweep = np.asarray(Image.open(tmp_path / "a" / "sweep.png")).astype(float)  # columns: start, alpha
    for frame, column in ((frames[0], 0), (frames[2], 1)):
        assert np.abs(frame.astype(float).mean((0, 1)) - sweep[:, 16 * column:16 * (column + 1)].mean((0, 1))).max() < 3


def test_cli_without_clip_weights_says_how_to_get_them(tmp_path, capsys):
    argv = ["--source", "unused.pt", "--text", "a smiling face", "--out", str(tmp_path / "o")]
    assert sc.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --clip is required") and "\n" not in err
    assert "keras-hub preset" in err and "huggingface-cli download openai/clip-vit-base-patch32" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--swap_layer", "1"], "--swap_layer needs --target"),
    (["--n_alpha", "1"], "--n_alpha must be >= 2"),
    (["--clip", "/nonexistent/clip"], "--clip /nonexistent/clip does not exist"),
    (["--lr", "nan"], "--lr must be finite"),
    (["--text", "hi " * 20], "20 tokens, more than the 14"),
])
def test_cli_errors_exit_2(tmp_path, capsys, extra, message):
    ckpt = make_tiny_checkpoint(tmp_path / "g")
    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    argv = ["--source", ckpt, "--text", "a smiling face", "--clip", clip_dir, "--out", str(tmp_path / "o"), *extra]
    assert sc.main(argv) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_defaults_are_the_reference_demos():
    """run.py's generate_using_styleclip: 300 steps, lr 0.1, l2_lambda 0.004, truncation 0.7, strength 1.5
    over 5 columns, the target swapped at layer 1."""
    args = sc._parser().parse_args(["--source", "s.pt", "--target", "t.pt", "--text", "x", "--out", "o"])
    assert (args.steps, args.lr, args.l2_lambda, args.truncation, args.alpha, args.n_alpha) == \
        (300, 0.1, 0.004, 0.7, 1.5, 5)
    assert sc.swap_layers_of(args.swap_layer, True) == (1,)
    assert sc.swap_layers_of(None, False) == () and sc.swap_layers_of("none", True) == ()
    assert sc.swap_layers_of("1,2", True) == (1, 2)
