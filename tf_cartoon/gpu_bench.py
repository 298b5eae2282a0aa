"""Training speed on a GPU in seconds per thousand images (s/kimg), one prepared command:

  python -m tf_cartoon.gpu_bench --reference /path/to/stylegan2-pytorch --out results.json

measures our trainer at 256 px config-f (style_dim 512, 8 mapping layers, channel multiplier 2, from scratch)
in these rows, then the reference PyTorch code (rosinality/stylegan2-pytorch, the paper code's base) on the same
device:

  row          what
  fp32         float32, no XLA, the ops' auto paths (on a GPU: the pure-TF FIR / bias ops and one conv op)
  fp16         float16 compute with dynamic loss scaling (train --precision fp16), no XLA
  xla          float32, the per-replica forward / backward XLA-compiled (train --xla on)
  ops_tf       float32, TF_CARTOON_OPS_IMPL=tf,direct: the pure-TF path of every op
  ops_custom   float32, TF_CARTOON_OPS_IMPL=custom: the compiled CUDA ops (built first if needed); GPU only
  reference    the reference's train.py iteration in PyTorch (its CUDA ops built by its own op/ loaders)

A training iteration is the trainer's whole ``train_step`` (D, R1 every 16 steps, G, path length every 4
steps, the EMA) on a fixed real batch already on the device: step 0 (every phase due: tracing, compiling) is
timed apart as ``first_step_s``; then ``--kimg`` thousand images are timed (steps 1..N, the lazy regularisers
in their share). The reference's iteration is the same (``reference_step``; its train.py's losses, lazy
intervals, Adam settings and EMA, without the data loader or logging).

``--smoke`` runs the same rows at CPU size (16 px, tiny channels, batch 4, 2 timed steps) where no GPU exists:
the rows that need CUDA (ops_custom) say ``"skipped": "no GPU"``, the reference runs on the CPU with its
native-torch fallbacks, and the rows with auto ops take the paths auto takes on a GPU (``tf,direct``; on a CPU
auto's fast conv paths compile for minutes). CI runs it (tests/test_gpu_bench.py).

Output: one JSON line per row on stdout, then a Markdown table for the README; ``--out`` also writes the rows
as a JSON list. Published anchor: StyleGAN2-ADA at 256 px trains at 21.6-24.2 s/kimg on one V100.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from tf_cartoon import cli, reference_timing

ROWS = ("fp32", "fp16", "xla", "ops_tf", "ops_custom", "reference")
# row -> (precision, xla, TF_CARTOON_OPS_IMPL setting or None for auto, needs CUDA)
TF_ROWS = {"fp32": ("fp32", False, None, False), "fp16": ("fp16", False, None, False),
           "xla": ("fp32", True, None, False), "ops_tf": ("fp32", False, "tf,direct", False),
           "ops_custom": ("fp32", False, "custom", True)}
CONFIG_F = dict(style_dim=512, n_mlp=8, channel_multiplier=2, channels="")
SMOKE = dict(size=16, batch=4, steps=2, style_dim=8, n_mlp=2, channel_multiplier=2, channels="4:8,8:6,16:4")
SMOKE_CPU_AUTO = "tf,direct"  # what the ops' auto picks on a GPU (tf_cartoon.ops.dispatch's preferences)
# The reference's train.py defaults (and the trainer's): lazy intervals, weights, Adam, EMA, mixing.
PUBLISHED_ANCHOR = "StyleGAN2-ADA, 256 px: 21.6-24.2 s/kimg on one V100 (Karras et al. 2020, Table 3)"


def gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _steps(args) -> int:
    return args.steps if args.steps else max(1, round(args.kimg * 1000 / args.batch))


def _row_base(args, row: str) -> dict:
    return {"what": "gpu_bench", "row": row, "size": args.size, "batch": args.batch, "smoke": args.smoke}


def time_trainer(args, row: str) -> dict:
    """One of TF_ROWS: build the trainer from scratch, step 0 untimed, then ``_steps`` timed iterations."""
    import numpy as np
    import tensorflow as tf

    from tf_cartoon.ops import dispatch
    from tf_cartoon.training.config import TrainConfig
    from tf_cartoon.training.trainer import Trainer

    precision, xla, impl, needs_cuda = TF_ROWS[row]
    out = {**_row_base(args, row), "precision": precision, "xla": xla, "ops": impl or "auto"}
    gpu = gpu_present()
    if needs_cuda and not gpu:
        return {**out, "skipped": "no GPU"}
    if impl is None and args.smoke and not gpu:
        # auto's paths as on a GPU (the pure-TF ops, one conv op): on a CPU auto takes the fast conv paths,
        # whose nested XLA-compiled passes take minutes to compile in a training step
        impl = out["ops"] = SMOKE_CPU_AUTO
    dispatch.set_default_impl(impl)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(size=args.size, batch=args.batch, latent=args.style_dim, n_mlp=args.n_mlp,
                              channel_multiplier=args.channel_multiplier, channels=args.channels,
                              data="synthetic:blobs", workdir=os.path.join(tmp, "run"), precision=precision,
                              xla="on" if xla else "off", seed=args.seed)
            trainer = Trainer(cfg)
            try:
                real = tf.constant(np.random.default_rng(args.seed).uniform(-1, 1, [args.batch, args.size,
                                                                                    args.size, 3]), tf.float32)
                dist = trainer.strategy.experimental_distribute_values_from_function(lambda ctx: real)
                t0 = time.perf_counter()
                trainer.train_step(dist, 0)  # every phase is due at step 0: all of them traced here
                first = time.perf_counter() - t0
                steps = _steps(args)
                t0 = time.perf_counter()
                metrics = {}
                for step in range(1, steps + 1):
                    metrics = trainer.train_step(dist, step)  # (returns host floats: each step has finished)
                elapsed = time.perf_counter() - t0
            finally:
                trainer.release_workdir()
    finally:
        dispatch.set_default_impl(None)
    images = steps * args.batch
    out.update(device="GPU" if gpu else "CPU", steps=steps, first_step_s=round(first, 2),
               sec_per_kimg=round(elapsed * 1000 / images, 3), images_per_s=round(images / elapsed, 2),
               d_loss=metrics.get("d_loss"), g_loss=metrics.get("g_loss"))
    if trainer.loss_scales is not None:
        out["loss_scales"] = {k: float(v.scale.numpy()) for k, v in trainer.loss_scales.items()}
    return out


def time_reference(args) -> dict:
    """The reference row: this module's ``--reference_child`` mode in its own Python (torch alone there)."""
    out = {**_row_base(args, "reference"), "precision": "fp32", "xla": False, "ops": "reference"}
    if not args.reference:
        return {**out, "skipped": "no --reference"}
    cmd = [sys.executable, "-m", "tf_cartoon.gpu_bench", "--reference_child", "--reference", args.reference,
           "--size", str(args.size), "--batch", str(args.batch), "--steps", str(_steps(args)),
           "--style_dim", str(args.style_dim), "--n_mlp", str(args.n_mlp),
           "--channel_multiplier", str(args.channel_multiplier), "--seed", str(args.seed)]
    if args.smoke:
        out["note"] = "the reference's own channel table (512 up to 64 px): not comparable with the smoke rows"
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}").splitlines()
        return {**out, "error": lines[-1]}
    return {**out, **json.loads(r.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------------------------
# the reference, in the child process
# ----------------------------------------------------------------------------------------------

def reference_step(torch, G, D, G_ema, g_opt, d_opt, real, step: int, state: dict, latent: int, rng):
    """One iteration of the reference's train.py loop (tf_cartoon.reference_timing's steps): D, R1 every
    D_REG_EVERY, G, path length every G_REG_EVERY, EMA. ``state`` holds the path-length mean."""
    rt = reference_timing

    def noise(n=real.shape[0]):
        return rt.mixing_noise(torch, n, latent, rng, device=real.device)

    d_loss = rt.reference_d_step(torch, G, D, d_opt, real, noise, r1_due=step % rt.D_REG_EVERY == 0)
    g_loss = rt.reference_g_step(torch, G, D, g_opt, noise, real.shape[0],
                                 path_state=state if step % rt.G_REG_EVERY == 0 else None)
    rt.reference_ema(torch, G_ema, G)
    return d_loss, g_loss


def reference_child(args) -> int:
    """Time the reference's iteration (``reference_step``) on CUDA if torch sees a GPU, else the CPU; print
    one JSON line."""
    import copy
    import random

    import torch

    cuda = torch.cuda.is_available()
    model = reference_timing.load_model_module(args.reference, build_ops=cuda)
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(args.seed)
    G = model.Generator(args.size, args.style_dim, args.n_mlp, channel_multiplier=args.channel_multiplier).to(device)
    D = model.Discriminator(args.size, channel_multiplier=args.channel_multiplier).to(device)
    G_ema = copy.deepcopy(G).eval()
    g_opt, d_opt = reference_timing.reference_optimizers(torch, G, D)
    rng = random.Random(args.seed)
    real = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    state = {"mean_path_length": 0.0}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    reference_step(torch, G, D, G_ema, g_opt, d_opt, real, 0, state, args.style_dim, rng)
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = (None, None)
    for step in range(1, args.steps + 1):
        losses = reference_step(torch, G, D, G_ema, g_opt, d_opt, real, step, state, args.style_dim, rng)
    sync()
    elapsed = time.perf_counter() - t0
    images = args.steps * args.batch
    print(json.dumps({"device": "GPU" if cuda else "CPU", "steps": args.steps, "first_step_s": round(first, 2),
                      "sec_per_kimg": round(elapsed * 1000 / images, 3), "images_per_s": round(images / elapsed, 2),
                      "d_loss": losses[0], "g_loss": losses[1], "torch_version": torch.__version__}), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# the table, the command line
# ----------------------------------------------------------------------------------------------

def markdown(rows: list[dict]) -> str:
    """The README's table of the rows: s/kimg and the ratio to the reference where both were measured (not in
    --smoke rows: there the reference keeps its own channel table, 512 up to 64 px, ours are tiny)."""
    ref = next((r.get("sec_per_kimg") for r in rows if r["row"] == "reference" and not r.get("smoke")), None)
    lines = ["| row | device | precision | XLA | ops | s/kimg | images/s | vs reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "sec_per_kimg" not in r:
            lines.append(f"| {r['row']} | | {r.get('precision', '')} | {'on' if r.get('xla') else 'off'} | "
                         f"{r.get('ops', '')} | {r.get('skipped') or 'error: ' + r.get('error', '?')} | | |")
            continue
        ratio = f"{ref / r['sec_per_kimg']:.2f}x" if ref and r["row"] != "reference" else ""
        lines.append(f"| {r['row']} | {r['device']} | {r['precision']} | {'on' if r['xla'] else 'off'} | "
                     f"{r['ops']} | {r['sec_per_kimg']:.2f} | {r['images_per_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv):
    p = cli.parser("python -m tf_cartoon.gpu_bench", __doc__)
    p.add_argument("--size", type=int, default=256, help="image size (config-f: 256)")
    p.add_argument("--batch", type=int, default=32, help="global batch (StyleGAN2-ADA's 256 px setting: 32)")
    p.add_argument("--kimg", type=float, default=1.0, help="thousands of images timed per row")
    p.add_argument("--steps", type=int, default=0, help="timed iterations per row (0: from --kimg)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among {', '.join(ROWS)}")
    p.add_argument("--reference", default="", help="a rosinality/stylegan2-pytorch checkout (the reference row)")
    p.add_argument("--out", default="", help="also write the rows as a JSON list to this file")
    p.add_argument("--smoke", action="store_true", help="CPU-sized run of the same rows (16 px, tiny channels, "
                                                        "batch 4, 2 steps); CUDA-only rows say skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference_child", action="store_true", help=argparse_hidden())
    for name, default in CONFIG_F.items():
        p.add_argument(f"--{name}", type=type(default), default=default, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.row_list if r not in ROWS]
    if bad or not args.row_list:
        raise cli.UsageError(f"--rows={args.rows}: rows are among {', '.join(ROWS)}")
    for flag in ("size", "batch"):
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag}={getattr(args, flag)}: must be >= 1")
    if args.kimg <= 0 or args.steps < 0:
        raise cli.UsageError(f"--kimg={args.kimg} / --steps={args.steps}: need kimg > 0 and steps >= 0")
    if args.reference and not os.path.isfile(os.path.join(args.reference, "model.py")):
        raise cli.UsageError(f"--reference {args.reference}: no model.py there (expected a "
                             f"rosinality/stylegan2-pytorch checkout)")
    return args


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


@cli.command(setup="train")
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reference_child:
        return reference_child(args)
    # TensorFlow takes GPU memory as it needs it rather than all of it up front: the reference's child process
    # runs on the same GPU afterwards.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    rows = []
    for row in args.row_list:
        result = time_reference(args) if row == "reference" else time_trainer(args, row)
        rows.append(result)
        print(json.dumps(result), flush=True)
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    cli.run(main)
