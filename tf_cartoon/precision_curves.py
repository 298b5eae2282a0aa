"""Loss curves of a short fine-tuning run in fp32 and in bf16: the same training twice, side by side.

    python -m tf_cartoon.precision curves --flagfile=configs/quickstart.cfg --iter=300 --out runs/precision_curves

Every flag other than the ones below goes to ``python -m tf_cartoon.train`` unchanged (``--flagfile``,
``--iter``, ...), so both runs share every flag and the seed; curves adds ``--precision=fp32`` / ``--precision=bf16``
(and ``--nomixed_precision``), ``--workdir=OUT/fp32`` / ``OUT/bf16``, ``--log_every`` (default 1: a point per
step) and ``--noexport_on_finish``. Each run is a subprocess logging to ``OUT/<precision>.log``; rerunning resumes
an unfinished run and reuses a finished one (raise ``--iter`` to continue both).

Reads each run's TensorBoard scalars back from its event files and writes:

- ``OUT/curves.json``: per metric (the losses, R1, scores, ADA's p: every training scalar both runs logged, not
  speed or learning rates) the steps, the fp32 values, the bf16 values and a summary: ``mean_abs_diff`` (mean
  |bf16 - fp32| over the steps), ``fp32_step_noise`` (mean |change| between fp32's consecutive values: how much
  the metric moves from one point to the next anyway; repeats of a lazy regulariser's held value are left out),
  their ratio, the last quarter's means and ``last_quarter_rel_diff`` ((bf16 - fp32) / |fp32| of those means);
  per run the precision it asked for, what its networks computed in (the trainer's ``compute_dtype`` record) and
  its median images/s.
- ``OUT/curves.png``: one panel per loss (d_loss, g_loss, r1, path_penalty, structure_loss: those logged), fp32
  and bf16 lines.
- one JSON line on stdout: the summary (curves.json without the per-step values).

bfloat16 is fast only where the CPU computes it natively (AVX512_BF16 / AMX, tf_cartoon.precision); elsewhere oneDNN
emulates it and the bf16 run is slower than the fp32 one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tf_cartoon import cli

RUNS = ("fp32", "bf16")
COLOURS = {"fp32": (31, 119, 180), "bf16": (214, 39, 40)}
# The flags curves sets per run (given on the command line they would be overridden: refused instead).
OWN_TRAIN_FLAGS = ("workdir", "precision", "mixed_precision")
# Scalars that are the run's bookkeeping (speed, schedules, skipped files, fp16's loss scales, evaluation), not
# values of the training the precision could change; the rest are compared.
BOOKKEEPING = ("images_per_s", "sec_per_kimg", "lr_g", "lr_d", "data_skipped_files")
BOOKKEEPING_PREFIXES = ("eval/", "loss_scale/", "skipped/")
LOSSES = ("d_loss", "g_loss", "r1", "path_penalty", "structure_loss")
COMPUTE_TAG = "compute_dtype"  # the trainer's TensorBoard text of G's and D's compute dtypes


def run_flags(train_argv, out: str, precision: str, log_every: int) -> list[str]:
    """The training flags of one run: the user's, then what curves sets (later flags win in absl)."""
    return [*train_argv, f"--log_every={log_every}", "--noexport_on_finish", f"--precision={precision}",
            "--nomixed_precision", f"--workdir={os.path.join(out, precision)}"]


def _own_flag(token: str) -> str | None:
    name = token.lstrip("-").split("=", 1)[0]
    for own in OWN_TRAIN_FLAGS:
        if token.startswith("-") and name in (own, "no" + own):
            return own
    return None


def check_train_flags(train_argv, out: str, log_every: int):
    """Each run's TrainConfig, validated before anything trains (the train tool's own one-line errors)."""
    from tf_cartoon import train
    from tf_cartoon.training.config import check_data, validate

    for token in train_argv:
        own = _own_flag(token)
        if own is not None:
            raise cli.UsageError(f"--{own}: curves sets it for each run (--workdir OUT/fp32 and OUT/bf16 "
                                 "of --out OUT, --precision fp32 and bf16)")
    cfgs = {}
    for precision in RUNS:
        cfg = train.parse_flags(run_flags(train_argv, out, precision, log_every))
        validate(cfg)
        cfgs[precision] = cfg
    check_data(cfgs[RUNS[0]])
    return cfgs


# ---------------------------------------------------------------------------
# TensorBoard event files
# ---------------------------------------------------------------------------

def read_events(logdir: str) -> tuple[dict, dict]:
    """A TensorBoard log directory's scalars {tag: {step: value}} and texts {tag: text}. Where a resumed run
    logged a step again, the later write (by wall time) counts; a text is its latest write."""
    import glob

    import tensorflow as tf

    scalars, texts = {}, {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(record)
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    value = float(v.simple_value)
                elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "scalars":
                    value = float(tf.make_ndarray(v.tensor))
                elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "text":
                    text = tf.make_ndarray(v.tensor)
                    texts[v.tag] = max(texts.get(v.tag, (-1.0, "")), (event.wall_time, text.flat[0].decode()))
                    continue
                else:
                    continue
                seen = scalars.setdefault(v.tag, {})
                if event.step not in seen or seen[event.step][0] <= event.wall_time:
                    seen[event.step] = (event.wall_time, value)
    return ({tag: {step: v for step, (_, v) in sorted(by_step.items())} for tag, by_step in scalars.items()},
            {tag: text for tag, (_, text) in texts.items()})


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------

def compared(tag: str) -> bool:
    return tag not in BOOKKEEPING and not tag.startswith(BOOKKEEPING_PREFIXES)


def _sig(x, digits: int = 6):
    return None if x is None else float(f"{x:.{digits}g}")


def step_noise(values) -> float:
    """Mean |change| between consecutive values, consecutive repeats (a lazy regulariser's held value, logged
    again at every step until it runs next) counted once; 0 with fewer than two distinct values."""
    distinct = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    if len(distinct) < 2:
        return 0.0
    return sum(abs(b - a) for a, b in zip(distinct, distinct[1:])) / (len(distinct) - 1)


def summarize(fp32, bf16) -> dict:
    """How far one metric's bf16 values are from its fp32 values at the same steps (module docstring)."""
    n = len(fp32)
    diff = sum(abs(b - a) for a, b in zip(fp32, bf16)) / n
    noise = step_noise(fp32)
    q = max(1, n // 4)
    mean_a, mean_b = sum(fp32[-q:]) / q, sum(bf16[-q:]) / q
    return {"points": n, "mean_abs_diff": _sig(diff), "fp32_step_noise": _sig(noise),
            "mean_abs_diff_over_noise": _sig(diff / noise if noise else None),
            "last_quarter_points": q, "last_quarter_mean_fp32": _sig(mean_a), "last_quarter_mean_bf16": _sig(mean_b),
            "last_quarter_rel_diff": _sig((mean_b - mean_a) / abs(mean_a) if mean_a else None)}


def curves(scalars: dict) -> dict:
    """{metric: {"steps", "fp32", "bf16", "summary"}} of every compared metric both runs logged, at the steps
    both logged it (``scalars``: {precision: {tag: {step: value}}})."""
    a, b = scalars["fp32"], scalars["bf16"]
    out = {}
    for tag in sorted(set(a) & set(b)):
        steps = sorted(set(a[tag]) & set(b[tag]))
        if not compared(tag) or not steps:
            continue
        fp32, bf16 = [a[tag][s] for s in steps], [b[tag][s] for s in steps]
        out[tag] = {"steps": steps, "fp32": fp32, "bf16": bf16, "summary": summarize(fp32, bf16)}
    return out


def run_record(precision: str, workdir: str, scalars: dict, texts: dict) -> dict:
    """What one run was: the precision asked for (its flags.json), what G and D computed in (the trainer's
    compute_dtype record), its last logged step and its median images/s."""
    import statistics

    try:
        with open(os.path.join(workdir, "flags.json"), encoding="utf-8") as f:
            asked = json.load(f).get("precision")
    except (OSError, ValueError):
        asked = None
    compute = json.loads(texts[COMPUTE_TAG]) if COMPUTE_TAG in texts else None
    speed = list(scalars.get("images_per_s", {}).values())
    steps = [s for by_step in scalars.values() for s in by_step]
    return {"workdir": workdir, "precision": asked, "compute_dtype": compute, "last_step": max(steps, default=0),
            "images_per_s_median": _sig(statistics.median(speed), 4) if speed else None}


def figure(metrics: dict):
    """curves.png: one panel per loss logged (LOSSES; every compared metric where none is), fp32 and bf16."""
    from tf_cartoon.plots import line_panels

    tags = [t for t in LOSSES if t in metrics] or sorted(metrics)
    panels = [(tag, [(p, COLOURS[p], metrics[tag]["steps"], metrics[tag][p]) for p in RUNS]) for tag in tags]
    points = max(len(metrics[t]["steps"]) for t in tags)
    return line_panels(panels, smooth=max(1, points // 20)), tags


def report(out: str, workdirs: dict, seconds: dict | None = None) -> dict:
    """Read both runs' events; write curves.json and curves.png into ``out``; returns the summary."""
    from tf_cartoon.images import atomic_save, save_png
    from tf_cartoon.precision import cpu_bf16_flags

    read = {p: read_events(os.path.join(workdirs[p], "tensorboard")) for p in RUNS}
    metrics = curves({p: read[p][0] for p in RUNS})
    if not metrics:
        raise cli.UsageError(f"no training scalars logged by both runs in {', '.join(workdirs.values())}")
    runs = {p: run_record(p, workdirs[p], *read[p]) for p in RUNS}
    for p in RUNS:
        if seconds and p in seconds:
            runs[p]["wall_s_this_call"] = round(seconds[p], 1)
    image, panels = figure(metrics)
    paths = {"curves_json": os.path.join(out, "curves.json"), "curves_png": os.path.join(out, "curves.png")}
    summary = {"what": "precision_curves", "out": os.path.abspath(out), "cpu_bf16_flags": list(cpu_bf16_flags()),
               "runs": runs, "panels": panels, "metrics": {t: m["summary"] for t, m in metrics.items()}, **paths}
    payload = json.dumps({**summary, "metrics": metrics}, indent=1) + "\n"
    atomic_save(paths["curves_json"], lambda f: f.write(payload.encode()))
    save_png(paths["curves_png"], image)
    return summary


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser():
    # allow_abbrev off: an abbreviation must not swallow a training flag (--o for --out)
    p = cli.ArgumentParser(prog="python -m tf_cartoon.precision curves", description=__doc__, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/precision_curves",
                   help="output folder: the runs' workdirs OUT/fp32 and OUT/bf16, curves.json, curves.png "
                        "(default runs/precision_curves; rerun resumes)")
    p.add_argument("--log_every", type=int, default=1, help="steps between logged points of both runs (default 1)")
    return p


@cli.command(setup="none")
def main(argv=None) -> int:
    p = _parser()
    args, train_argv = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    with cli.user_input():
        cli.check_at_least(args, 1, "log_every")
    cfgs = check_train_flags(train_argv, args.out, args.log_every)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    from tf_cartoon import train

    os.makedirs(args.out, exist_ok=True)
    seconds = {}
    for i, precision in enumerate(RUNS):
        flags = run_flags(train_argv, args.out, precision, args.log_every)
        log_path = os.path.join(args.out, f"{precision}.log")
        log(f"[{i + 1}/{len(RUNS)}] training {precision}: {' '.join(train.command(flags)[1:])} (log: {log_path})")
        seconds[precision] = train.run_logged(flags, log_path, precision)
        log(f"    done in {seconds[precision]:.0f} s")
    start = time.time()
    summary = report(args.out, {p: cfgs[p].workdir for p in RUNS}, seconds)
    print(json.dumps(summary), flush=True)
    log(f"wrote {summary['curves_json']}, {summary['curves_png']} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
