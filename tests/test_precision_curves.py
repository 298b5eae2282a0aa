"""python -m tf_cartoon.precision curves: one training in fp32 and in bf16, its loss curves side by side.

The report is checked on event files written here with known values (the summary's maths recomputed with numpy);
a 3-step run of a tiny model checks the command end to end against what its event files say (read with
TensorBoard's own reader, tests.helpers.event_scalars)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import event_scalars, one_line_error
from tf_cartoon import precision, precision_curves as pc

PANEL_HEIGHT, PANEL_WIDTH = 220, 720  # plots.line_panels' default size


def _write_run(workdir, asked: str, compute: str, values: dict, rewrite: dict | None = None):
    """A workdir as the trainer leaves it: flags.json and TensorBoard scalars (``values``: {tag: [value per step
    1..n]}) plus the compute_dtype text; ``rewrite`` ({tag: {step: value}}) is logged again by a second writer,
    as a run resumed from an earlier checkpoint does."""
    import tensorflow as tf

    os.makedirs(workdir)
    with open(os.path.join(workdir, "flags.json"), "w") as f:
        json.dump({"precision": asked}, f)
    logdir = os.path.join(workdir, "tensorboard")
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.text(pc.COMPUTE_TAG, json.dumps({"d": compute, "g": compute}), step=0)
        for tag, series in values.items():
            for step, v in enumerate(series, 1):
                tf.summary.scalar(tag, v, step=step)
    writer.close()
    if rewrite:
        writer = tf.summary.create_file_writer(logdir, filename_suffix=".resumed")
        with writer.as_default():
            for tag, by_step in rewrite.items():
                for step, v in by_step.items():
                    tf.summary.scalar(tag, v, step=step)
        writer.close()


def test_report_from_event_files(tmp_path):
    rng = np.random.default_rng(0)
    n = 8
    held = [0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.2, 0.2]  # r1: a lazy regulariser's value, held between its runs
    fp32 = {"d_loss": rng.normal(1.2, 0.1, n), "g_loss": rng.normal(0.8, 0.1, n), "r1": held,
            "real_score": rng.normal(0, 1, n), "images_per_s": rng.uniform(20, 30, n), "lr_g": [0.002] * n}
    bf16 = {k: np.asarray(v) + rng.normal(0, 0.01, n) for k, v in fp32.items()}
    bf16["r1"] = [0.51, 0.51, 0.51, 0.29, 0.29, 0.29, 0.22, 0.22]
    bf16.pop("real_score")  # logged by one run only: not compared
    _write_run(tmp_path / "fp32", "fp32", "float32", fp32)
    _write_run(tmp_path / "bf16", "bf16", "bfloat16", bf16, rewrite={"d_loss": {n: 7.0}})
    bf16["d_loss"][-1] = 7.0  # the resumed write is the later one: it counts

    summary = pc.report(str(tmp_path), {p: str(tmp_path / p) for p in pc.RUNS})
    saved = json.loads((tmp_path / "curves.json").read_text())
    assert {k: v for k, v in saved.items() if k != "metrics"} == {k: v for k, v in summary.items() if k != "metrics"}
    metrics = saved["metrics"]
    assert sorted(metrics) == ["d_loss", "g_loss", "r1"]  # speed and learning rates are bookkeeping
    for tag, m in metrics.items():
        assert m["steps"] == list(range(1, n + 1))
        for p, values in (("fp32", fp32), ("bf16", bf16)):
            assert m[p] == [float(np.float32(v)) for v in values[tag]], (tag, p)  # scalars are float32
        a, b = np.asarray(m["fp32"]), np.asarray(m["bf16"])
        distinct = a[np.r_[True, a[1:] != a[:-1]]]
        want = {"points": n, "mean_abs_diff": np.abs(b - a).mean(), "fp32_step_noise": np.abs(np.diff(distinct)).mean(),
                "last_quarter_points": 2, "last_quarter_mean_fp32": a[-2:].mean(),
                "last_quarter_mean_bf16": b[-2:].mean()}
        want["mean_abs_diff_over_noise"] = want["mean_abs_diff"] / want["fp32_step_noise"]
        want["last_quarter_rel_diff"] = (b[-2:].mean() - a[-2:].mean()) / abs(a[-2:].mean())
        assert m["summary"] == pytest.approx(want, rel=1e-5), tag
        assert summary["metrics"][tag] == m["summary"]
    assert len(distinct) == 3  # r1's held values count once in its noise

    runs = saved["runs"]
    assert runs["fp32"]["precision"] == "fp32" and runs["bf16"]["precision"] == "bf16"
    assert runs["fp32"]["compute_dtype"] == {"g": "float32", "d": "float32"}
    assert runs["bf16"]["compute_dtype"] == {"g": "bfloat16", "d": "bfloat16"}
    assert runs["fp32"]["images_per_s_median"] == pytest.approx(np.median(np.float32(fp32["images_per_s"])), rel=1e-3)
    assert runs["bf16"]["last_step"] == n

    assert summary["panels"] == ["d_loss", "g_loss", "r1"]  # the losses logged, in LOSSES' order
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size == (PANEL_WIDTH, 3 * PANEL_HEIGHT) and im.mode == "RGB"


def test_no_common_scalars_is_one_error(tmp_path):
    _write_run(tmp_path / "fp32", "fp32", "float32", {"d_loss": [1.0, 2.0]})
    _write_run(tmp_path / "bf16", "bf16", "bfloat16", {"g_loss": [1.0, 2.0]})
    with pytest.raises(ValueError, match="no training scalars logged by both runs"):
        pc.report(str(tmp_path), {p: str(tmp_path / p) for p in pc.RUNS})


def test_run_flags_override_what_the_flagfile_sets():
    from tf_cartoon import train

    flags = pc.run_flags(["--flagfile=configs/quickstart.cfg", "--iter=7", "--mixed_precision"], "o", "fp32", 3)
    cfg = train.parse_flags(flags)
    assert (cfg.workdir, cfg.precision, cfg.mixed_precision, cfg.log_every) == (os.path.join("o", "fp32"), "fp32",
                                                                                False, 3)
    assert cfg.compute_precision() == "fp32" and not cfg.export_on_finish and cfg.iter == 7
    assert cfg.ckpt == "builtin:source_synthetic"  # the rest is the flagfile's


@pytest.mark.parametrize("argv, flag", [
    (["--flagfile=configs/tiny_cpu.cfg", "--bogus=1"], "bogus"),
    (["--flagfile=configs/tiny_cpu.cfg", "--workdir=x"], "--workdir"),
    (["--flagfile=configs/tiny_cpu.cfg", "--precision", "fp16"], "--precision"),
    (["--flagfile=configs/tiny_cpu.cfg", "--nomixed_precision"], "--mixed_precision"),
    (["--flagfile=configs/tiny_cpu.cfg", "--log_every", "0"], "--log_every"),
    (["--flagfile=configs/tiny_cpu.cfg", "--iter=0"], "--iter"),
    (["--flagfile=configs/no_such.cfg"], "no_such.cfg"),
])
def test_bad_flags_are_one_line_and_status_2(argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    assert precision.main(["curves", *argv, "--out", str(out)]) == 2
    assert flag in one_line_error(capsys)
    assert not out.exists()


def test_bad_curves_flag_value_is_argparse_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        precision.main(["curves", "--log_every", "x", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "--log_every" in one_line_error(capsys)


@pytest.mark.slow  # two training processes, then the same two again (about a minute on 2 busy cores)
def test_curves_of_a_tiny_run_in_both_precisions(tmp_path, capsys):
    from tests.tiny_models import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", seed=3)
    out = tmp_path / "curves"
    argv = ["curves", f"--ckpt={ckpt}", "--data=synthetic:blobs", "--batch=4", "--iter=3", "--swap_layers=1",
            "--structure_loss=1", "--sample_every=1000", "--ckpt_every=1000", "--seed=1", "--out", str(out)]
    assert precision.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "curves.json").read_text())
    assert printed["metrics"] == {t: m["summary"] for t, m in saved["metrics"].items()}

    # each run computed in its precision: the trainer's record, and the flags it was given
    runs = saved["runs"]
    assert runs["fp32"]["compute_dtype"] == {"g": "float32", "d": "float32"}
    assert runs["bf16"]["compute_dtype"] == {"g": "bfloat16", "d": "bfloat16"}
    for p in pc.RUNS:
        flags = json.loads((out / p / "flags.json").read_text())
        assert (flags["precision"], flags["mixed_precision"], flags["iter"]) == (p, False, 3)
        assert runs[p]["workdir"] == str(out / p) and runs[p]["last_step"] == 3

    # the curves are the event files' numbers, at the same steps for both runs
    events = {p: event_scalars(out / p / "tensorboard") for p in pc.RUNS}
    assert set(pc.LOSSES) <= set(saved["metrics"])
    assert set(saved["metrics"]) == {t for t in set(events["fp32"]) & set(events["bf16"]) if pc.compared(t)}
    for tag, m in saved["metrics"].items():
        assert m["steps"] == [1, 2, 3], tag
        for p in pc.RUNS:
            assert m[p] == [events[p][tag][s] for s in m["steps"]], (tag, p)
    # the same data and seed: step 1's losses differ only by bf16's rounding, yet differ (a run left in fp32
    # would give the fp32 numbers exactly)
    d1 = {p: saved["metrics"]["d_loss"][p][0] for p in pc.RUNS}
    assert d1["bf16"] == pytest.approx(d1["fp32"], rel=0.05) and d1["bf16"] != d1["fp32"]
    assert printed["panels"] == ["d_loss", "g_loss", "r1", "path_penalty", "structure_loss"]  # path length is on
    with Image.open(out / "curves.png") as im:
        assert im.size == (PANEL_WIDTH, 5 * PANEL_HEIGHT)

    # a rerun reuses both finished runs (nothing trains again) and writes the same curves
    before = (out / "curves.json").read_text()
    assert precision.main(argv) == 0
    for p in pc.RUNS:
        assert "already finished: step 3 of 3" in (out / f"{p}.log").read_text()
    assert json.loads((out / "curves.json").read_text())["metrics"] == json.loads(before)["metrics"]
