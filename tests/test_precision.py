"""tf_cartoon.precision and --precision in the generating tools: auto's choice, networks built in the policy, every
tool's bf16 run against its fp32 run, the bf16 quality report.

How close a bf16 image must stay to the fp32 one: bfloat16 keeps 8 significant bits, so each rounding moves a
value by up to 2^-9 of itself (half a unit in the last place). An image value near 1 is 127.5 grey levels, so
one rounding at the output is up to 0.25 levels and a random walk over the ~20 roundings per pixel of these tiny
generators (mapping, modulation, demodulation, conv, noise, bias, ToRGB, skips, ...) some ~1 level; measured on
the 16 px fixtures and the shipped 32 px model: mean 0.7-0.8, max 10-11 levels over 8-16 seeds (the max is a
pixel where the errors line up through the normalisations). MEAN_BOUND and MAX_BOUND leave room for other seeds
and sizes, yet catch a wrong cast: a network left in fp32 gives 0 (so the bf16 run must differ), and images
computed from, say, bf16 truncated to 4 bits, an unnormalised demodulation or a missing cast back to float32
before uint8 are tens of levels off on average.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from tests.helpers import one_line_error
from tf_cartoon import cli, precision

MEAN_BOUND = 2.5  # grey levels (0-255): mean |fp32 - bf16| over every pixel and channel
MAX_BOUND = 32  # grey levels: the largest single difference
N_MEAN = 64  # truncation samples: small keeps the tests quick
BUILTIN = "builtin:source_synthetic"


def fake_cpuinfo(path, flags: str) -> str:
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu {flags}\n")
    return str(path)


@pytest.fixture
def cpu_bf16(monkeypatch, tmp_path):
    """``cpu_bf16(True)``: precision.cpu_has_bf16 reads a fake /proc/cpuinfo that has avx512_bf16 (False: one
    without), so that auto's choice is tested on any machine."""
    def use(native: bool):
        path = fake_cpuinfo(tmp_path / "cpuinfo", "avx512f avx512_bf16" if native else "avx512f")
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: bool(precision.cpu_bf16_flags(path)))
    return use


def assert_bf16_close(fp32, bf16):
    """Two uint8 images (or sets) of the same seeds in fp32 and bf16: different, and close (module docstring)."""
    fp32, bf16 = np.asarray(fp32), np.asarray(bf16)
    assert fp32.dtype == bf16.dtype == np.uint8 and fp32.shape == bf16.shape
    d = np.abs(fp32.astype(np.int64) - bf16.astype(np.int64))
    assert d.max() > 0, "the bf16 run computed exactly what fp32 did: the networks did not run in bfloat16"
    assert d.mean() <= MEAN_BOUND and d.max() <= MAX_BOUND, (d.mean(), d.max())


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------
# auto, the policy, the loaders
# ---------------------------------------------------------------------------

def test_auto_follows_the_cpuinfo_flags(tmp_path):
    with_bf16 = fake_cpuinfo(tmp_path / "a", "avx512f avx512_bf16 amx_bf16")
    without = fake_cpuinfo(tmp_path / "b", "avx512f avx512_vnni")
    assert precision.cpu_bf16_flags(with_bf16) == ("avx512_bf16", "amx_bf16")
    assert precision.cpu_bf16_flags(without) == () == precision.cpu_bf16_flags(tmp_path / "missing")
    assert precision.resolve("auto", cpu_bf16=bool(precision.cpu_bf16_flags(with_bf16))) == "bf16"
    assert precision.resolve("auto", cpu_bf16=bool(precision.cpu_bf16_flags(without))) == "fp32"
    assert precision.resolve("auto", gpu=True, cpu_bf16=True) == "fp32"
    assert precision.resolve("bf16", cpu_bf16=False) == "bf16" and precision.resolve("fp32", cpu_bf16=True) == "fp32"


def test_cli_resolve_precision(cpu_bf16):
    cpu_bf16(True)
    assert cli.resolve_precision("auto") == "bf16"
    cpu_bf16(False)
    assert cli.resolve_precision("auto") == "fp32" and cli.resolve_precision("bf16") == "bf16"
    with pytest.raises(cli.UsageError, match=r"^--precision must be one of auto, fp32, bf16, fp16, not 'x'"):
        cli.resolve_precision("x")


def test_load_generator_builds_every_layer_in_the_precision(ckpts, cpu_bf16):
    before = keras.mixed_precision.global_policy().name
    g = cli.load_generator(ckpts[0], "--source", precision="bf16")
    layers = list(g._flatten_layers())
    assert len(layers) > 10 and {layer.compute_dtype for layer in layers} == {"bfloat16"}
    assert g.convs[0].compute_dtype == "bfloat16" and precision.of_layer(g) == "bf16"
    assert {v.dtype for v in g.variables} == {"float32"}  # float32 weights, bfloat16 compute
    assert keras.mixed_precision.global_policy().name == before  # the process-wide policy is left as it was
    image = g.synthesis(np.zeros([1, g.n_latent, g.style_dim], np.float32), randomize_noise=False).image
    assert image.dtype == "bfloat16"
    assert g.mean_latent(N_MEAN, seed=0).dtype == "float32"  # summed in float32 whatever the compute dtype
    fp32 = cli.load_generator(ckpts[0], "--source")
    assert {layer.compute_dtype for layer in fp32._flatten_layers()} == {"float32"}
    cpu_bf16(True)
    assert precision.of_layer(cli.load_generator(ckpts[0], "--source", precision="auto")) == "bf16"
    full = cli.load_checkpoint(ckpts[0], "--ckpt", precision="bf16")
    assert full.d.compute_dtype == "bfloat16" and full.g.compute_dtype == "bfloat16"


# ---------------------------------------------------------------------------
# Every tool: --precision bf16 runs, close to fp32; auto is the tool's choice; a bad value is one line
# ---------------------------------------------------------------------------

def test_generate(ckpts, tmp_path, cpu_bf16):
    from tf_cartoon import generate as gen

    argv = ["--target", ckpts[1], "--source", ckpts[0], "--swap_layer", "1", "--seeds", "0-3",
            "--truncation_samples", str(N_MEAN), "--quiet"]
    runs = {}
    for name, flag, native in (("fp32", "fp32", False), ("bf16", "bf16", False), ("auto_bf16", "auto", True),
                               ("auto_fp32", "auto", False)):
        cpu_bf16(native)
        assert gen.main(argv + ["--precision", flag, "--out", str(tmp_path / name)]) == 0
        runs[name] = png(tmp_path / name / "grid.png")  # rows source | target | swap_l1
    assert_bf16_close(runs["fp32"], runs["bf16"])
    np.testing.assert_array_equal(runs["auto_bf16"], runs["bf16"])  # auto with native bf16: the bf16 run
    np.testing.assert_array_equal(runs["auto_fp32"], runs["fp32"])
    # latents stay float32 and the images come back as float32 whatever the networks compute in
    g = cli.load_generator(ckpts[1], "--target", precision="bf16")
    assert gen.latents(g, [0, 1], 0.7, truncation_samples=N_MEAN).dtype == np.float32
    assert gen.mean_latent(g, N_MEAN).dtype == np.float32
    assert gen.sample(g, [0], 0.7, truncation_samples=N_MEAN).dtype == np.float32


def test_sefa(ckpts, tmp_path):
    from tf_cartoon import sefa

    runs = {}
    for p in ("fp32", "bf16"):
        argv = ["--source", ckpts[0], "--target", ckpts[1], "--out", str(tmp_path / f"{p}.npz"), "--render",
                "--index", "0", "--steps", "3", "--seeds", "0-1", "--truncation_samples", str(N_MEAN),
                "--out_dir", str(tmp_path / p), "--precision", p, "--quiet"]
        assert sefa.main(argv) == 0
        runs[p] = png(tmp_path / p / "direction_000.png")
    assert_bf16_close(runs["fp32"], runs["bf16"])
    with np.load(tmp_path / "fp32.npz") as a, np.load(tmp_path / "bf16.npz") as b:  # the weights' factorization
        np.testing.assert_array_equal(a["eigvec"], b["eigvec"])


@pytest.mark.slow  # two optimisations, each traced anew (about a minute on 2 busy cores)
def test_styleclip(ckpts, tmp_path):
    from tests import tiny_clip as tc
    from tf_cartoon import styleclip as sc

    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    runs = {}
    for p in ("fp32", "bf16"):
        argv = ["--source", ckpts[0], "--target", ckpts[1], "--text", "a smiling face", "--clip", clip_dir,
                "--steps", "3", "--n_alpha", "2", "--truncation_samples", str(N_MEAN), "--log_every", "0",
                "--precision", p, "--quiet", "--out", str(tmp_path / p)]
        assert sc.main(argv) == 0
        with np.load(tmp_path / p / "latents.npz") as f:
            runs[p] = {k: f[k] for k in ("w_init", "w_opt", "history", "precision")}
        runs[p]["sweep"] = png(tmp_path / p / "sweep.png")
    assert str(runs["fp32"]["precision"]) == "fp32" and str(runs["bf16"]["precision"]) == "bf16"
    for p in ("fp32", "bf16"):  # the optimisation stays float32: latents and losses
        assert runs[p]["w_opt"].dtype == np.float32 and np.isfinite(runs[p]["history"]).all()
    # the start latent comes from the bf16 mapping; the edit itself moves the latent by the same lr schedule
    np.testing.assert_allclose(runs["bf16"]["w_init"], runs["fp32"]["w_init"], rtol=0.02, atol=0.02)
    np.testing.assert_allclose(runs["bf16"]["history"][:, 2], runs["fp32"]["history"][:, 2], rtol=0.05, atol=0.01)
    assert_bf16_close(runs["fp32"]["sweep"], runs["bf16"]["sweep"])


@pytest.mark.slow  # two projections, each traced anew
def test_project(ckpts, tmp_path):
    from tf_cartoon import project as pj
    from tf_cartoon.data import synthetic

    Image.fromarray(synthetic.draw("faces", 7, 1, 16)[0]).save(tmp_path / "face.png")
    runs = {}
    for p in ("fp32", "bf16"):
        argv = [str(tmp_path / "face.png"), "--source", ckpts[0], "--target", ckpts[1], "--swap_layer", "1",
                "--step", "4", "--n_mean_latent", str(N_MEAN), "--precision", p, "--quiet", "--out", str(tmp_path / p)]
        assert pj.main(argv) == 0
        wplus, noises, settings = pj.load_projection(tmp_path / p / "face.npz")
        assert settings["precision"] == p and wplus.dtype == np.float32 and noises[0].dtype == np.float32
        assert np.isfinite(settings["final"]["mse"])
        runs[p] = png(tmp_path / p / "face.png")[:, 16:]  # source | target | swap_l1 (the photo is the same)
    assert_bf16_close(runs["fp32"], runs["bf16"])


@pytest.mark.slow  # two projections of the 32 px model, each traced anew
def test_toonify(tmp_path):
    from tf_cartoon import project as pj
    from tf_cartoon import toonify
    from tf_cartoon.data import synthetic

    Image.fromarray(synthetic.draw("faces", 1234, 1, 32)[0]).save(tmp_path / "face.png")
    runs = {}
    for p in ("fp32", "bf16"):
        argv = [str(tmp_path / "face.png"), "--target", BUILTIN, "--steps", "2", "--swap_layers", "2", "--align",
                "none", "--precision", p, "--quiet", "--out", str(tmp_path / p)]
        assert toonify.main(argv) == 0
        _, _, settings = pj.load_projection(tmp_path / p / "face.npz")
        assert settings["precision"] == p
        with np.load(tmp_path / p / "face.npz") as f:
            runs[p] = f["reconstruction"]
    assert_bf16_close(runs["fp32"], runs["bf16"])


def test_studio(ckpts, tmp_path, cpu_bf16):
    from tf_cartoon import studio as st

    draws = {}
    for p in ("fp32", "bf16"):
        pair = [cli.load_generator(c, "--x", precision=p) for c in ckpts]
        studio = st.Studio(*pair, truncation_samples=N_MEAN)
        assert studio.info()["precision"] == p
        draws[p] = np.stack([image for _, image in studio.draw(3, 0.7, 1) + studio.sefa(3, 0, 2.0, 0.7, 1)])
    assert_bf16_close(draws["fp32"], draws["bf16"])
    cpu_bf16(True)  # the command line: --precision auto loads the pair in bf16 where the CPU has it
    args = st._parser().parse_args(["--source", ckpts[0], "--target", ckpts[1]])
    source, target, _ = st._prepare(args)
    assert precision.of_layer(source) == precision.of_layer(target) == "bf16"


def test_optimisations_stay_float32_around_a_bf16_generator(ckpts):
    """project's and styleclip's objectives (eager: no trace) take float32 latents and give float32 losses with a
    bf16 generator, close to the fp32 generator's; project.toonify renders float32 images. (The optimisations'
    float32 gradients and Adam: the slow CLI tests above.)"""
    import tensorflow as tf

    from tests import tiny_clip as tc
    from tf_cartoon import generate as gen
    from tf_cartoon import project as pj
    from tf_cartoon import styleclip as sc

    model, _ = tc.tiny_clip(seed=0)
    photo = np.random.RandomState(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    cfg = pj.ProjectConfig(steps=1, n_mean_latent=N_MEAN)
    got = {}
    for p in ("fp32", "bf16"):
        source, target = (cli.load_generator(c, "--x", precision=p) for c in ckpts)
        problem = pj._Projector(source, photo, cfg, None)
        out, image = problem.losses(problem.w)
        assert image.dtype == tf.float32 and all(v.dtype == tf.float32 for v in out.values())
        objective = sc.Objective(source, sc.ClipLoss(model, "a smiling face", 16), 0.7, gen.mean_latent(source, N_MEAN))
        w0 = sc.start_latent(source, 3)
        terms = objective.terms(tf.constant(w0[None] + 0.1), tf.constant(w0[None]), tf.constant(0.004))
        assert w0.dtype == np.float32 and all(t.dtype == tf.float32 for t in terms)
        sw = pj.toonify(source, target, problem.w.numpy(), [n.numpy() for n in problem.noises], (1,))
        assert {a.dtype for a in (sw.source, sw.target, sw.swapped[1])} == {np.dtype(np.float32)}
        got[p] = (float(out["mse"][0]), float(terms[1]), sw)
    assert got["bf16"][0] == pytest.approx(got["fp32"][0], rel=0.02)
    assert got["bf16"][1] == pytest.approx(got["fp32"][1], rel=0.05, abs=0.01)
    from tf_cartoon.images import to_uint8

    assert_bf16_close(to_uint8(got["fp32"][2].target), to_uint8(got["bf16"][2].target))


@pytest.mark.parametrize("tool", ["generate", "sefa", "styleclip", "project", "toonify", "studio"])
def test_bad_precision_is_one_line(tool, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"tf_cartoon.{tool}")
    argv = {"generate": ["--target", "t", "--out", str(tmp_path)], "sefa": ["--source", "s"],
            "styleclip": ["--source", "s", "--text", "x", "--out", str(tmp_path)],
            "project": ["p.png", "--source", "s", "--out", str(tmp_path)],
            "toonify": ["p.png", "--target", "t", "--out", str(tmp_path)], "studio": []}[tool]
    with pytest.raises(SystemExit) as e:
        module.main(argv + ["--precision", "fp8"])
    assert e.value.code == 2
    assert "--precision" in one_line_error(capsys)


# ---------------------------------------------------------------------------
# The quality report
# ---------------------------------------------------------------------------

def test_image_difference():
    a = np.zeros([2, 4, 4, 3], np.uint8)
    b = a.copy()
    b[0, 0, 0, 0], b[1, 2, 2, 1] = 10, 3  # mean |d| = 13 / 96; mse = 109 / 96
    d = precision.image_difference(a, b)
    assert d["max_abs"] == 10 and d["mean_abs"] == pytest.approx(13 / 96, abs=1e-4)
    assert d["psnr_db"] == pytest.approx(10 * np.log10(255 ** 2 * 96 / 109), abs=0.01)
    assert precision.image_difference(a, a) == {"max_abs": 0, "mean_abs": 0.0, "psnr_db": None}
    with pytest.raises(ValueError):
        precision.image_difference(a, b[:1])


def test_quality_report(ckpts, tmp_path, capsys):
    from tf_cartoon import generate as gen
    from tf_cartoon.images import to_uint8

    argv = ["--ckpt", ckpts[0], "--target", ckpts[1], "--seeds", "0-5", "--truncation_samples", str(N_MEAN)]
    assert precision.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    report = json.loads(out)
    assert report["what"] == "bf16_quality" and report["n"] == 6 and report["ckpt"] == os.path.abspath(ckpts[0])
    assert report["cpu_bf16"] == bool(report["cpu_bf16_flags"]) and report["auto"] in ("fp32", "bf16")
    # the pixel figures, recomputed here from the two precisions' renders
    images = {}
    for p in ("fp32", "bf16"):
        s, t = (cli.load_generator(c, "--x", precision=p) for c in ckpts)
        r = gen.swap_images(s, t, range(6), (), 0.7, truncation_samples=N_MEAN)
        images[p] = {"ckpt": to_uint8(r.source), "target": to_uint8(r.target)}
    for role in ("ckpt", "target"):
        got = report["fp32_vs_bf16"][role]
        assert_bf16_close(images["fp32"][role], images["bf16"][role])
        expected = precision.image_difference(images["fp32"][role], images["bf16"][role])
        assert {k: got[k] for k in expected} == expected
        judged = got["judge"]
        assert set(judged) == {"domain_prob_fp32", "domain_prob_bf16", "domain_rate_fp32", "domain_rate_bf16",
                               "judge_fd_fp32_bf16", "structure_error_fp32_bf16", "judge_fd_fp32_other_seeds"}
        assert judged["judge_fd_fp32_bf16"] >= 0 and 0 <= judged["structure_error_fp32_bf16"] < 0.5

    assert precision.main(["--ckpt", str(tmp_path / "nothing"), "--no_judge"]) == 2
    assert "--ckpt" in one_line_error(capsys)
    assert precision.main(["--ckpt", ckpts[0], "--seeds", "3-1"]) == 2
    assert "seeds" in one_line_error(capsys)
