"""Compute precision: one name per choice for every tool (``--precision fp32|bf16|fp16|auto``).

- ``fp32``: float32 everywhere (the reference's precision; the parity tests run in it).
- ``bf16``: bfloat16 compute with float32 variables (Keras ``mixed_bfloat16``). bfloat16 keeps float32's
  exponent range, so training needs no loss scaling; losses, R1 / path-length maths, EMA and optimizer state
  stay float32. Fast only where the CPU computes bfloat16 natively (AVX512_BF16 or AMX); elsewhere oneDNN
  emulates it and it is slower than fp32.
- ``fp16``: float16 compute with float32 variables (Keras ``mixed_float16``), training with dynamic loss
  scaling. GPUs only (CPUs have no fast float16 convolutions).
- ``auto``: ``bf16`` on a CPU with native bfloat16 (and no GPU), else ``fp32``.

The generating tools (generate, sefa, styleclip, project, toonify, studio) take ``--precision auto|fp32|bf16``
(tf_cartoon.cli.add_precision) and load their generators with ``cli.load_generator(..., precision=...)``, which
builds them inside :func:`policy`; what they write (latents, images, metadata) is float32 / uint8 either way.

The bf16 quality report, one JSON line: the same seeds rendered in fp32 and in bf16, their max / mean absolute
grey-level difference and PSNR, and the judge's view of both sets (tf_cartoon.metrics.judge):

    python -m tf_cartoon.precision --ckpt builtin:source_synthetic --seeds 0-15 [--target CKPT]

and the loss curves of the same short fine-tuning run in fp32 and in bf16 (tf_cartoon.precision_curves):

    python -m tf_cartoon.precision curves --flagfile=configs/quickstart.cfg --iter=300 --out runs/precision_curves

This module imports neither TensorFlow nor Keras at import time (the command-line layer reads it before TF
starts); :func:`policy` imports Keras when it is entered.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import itertools

from tf_cartoon import cli as _cli  # imports neither numpy nor TensorFlow

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KERAS_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# The compute dtype of each concrete precision's layers (Keras' policy.compute_dtype).
COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# /proc/cpuinfo flags of native bfloat16 arithmetic (AVX512_BF16 dot products, AMX bf16 tiles).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bfloat16 flags (BF16_CPU_FLAGS) this CPU reports; () where none or no /proc/cpuinfo."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in BF16_CPU_FLAGS if flag in present)
    except OSError:
        pass
    return ()


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX)."""
    return bool(cpu_bf16_flags())


def resolve(precision: str, gpu: bool | None = None, cpu_bf16: bool | None = None) -> str:
    """``precision`` (one of PRECISIONS) as the concrete ``fp32`` / ``bf16`` / ``fp16`` it runs in.

    ``gpu``: whether the computation runs on a GPU (default: whether TensorFlow sees one; asked only for
    ``auto``, so the other names start no TensorFlow); ``cpu_bf16``: the CPU's native bfloat16 (default: this
    CPU's, :func:`cpu_has_bf16`). Raises ValueError for an unknown name (callers name their flag)."""
    if precision not in PRECISIONS:
        raise ValueError(f"must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_logical_devices("GPU"))
    if gpu:
        return "fp32"
    return "bf16" if (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"


def of_layer(layer) -> str:
    """The concrete precision (fp32 / bf16 / fp16) a built Keras layer or model computes in."""
    return {dtype: name for name, dtype in COMPUTE_DTYPE.items()}[layer.compute_dtype]


@contextlib.contextmanager
def policy(precision: str, frozen: bool = False):
    """Keras' global dtype policy for ``precision`` (concrete: fp32 / bf16 / fp16) while models are built.

    Layers take their compute dtype when they are created, so build (or load) the networks inside this
    block; the previous global policy comes back on exit. fp32 before Keras is imported needs nothing (the
    default policy is float32): reading a file that turns out bad then starts no TensorFlow.
    frozen: variables in the compute dtype too (Keras' plain "bfloat16" / "float16" policy), for networks
    that never train: every layer casts its weights to the compute dtype where it reads them, so storing
    them rounded computes the same values in half the memory."""
    if precision == "fp32" and "keras" not in sys.modules:
        yield
        return
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(COMPUTE_DTYPE[precision] if frozen else KERAS_POLICY[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ---------------------------------------------------------------------------
# The bf16 quality report: python -m tf_cartoon.precision --ckpt CKPT --seeds 0-15 [--target CKPT]
# ---------------------------------------------------------------------------

def image_difference(a, b) -> dict:
    """How far two uint8 image sets of the same shape are apart, in grey levels (0-255): the max and mean absolute
    difference over every pixel and channel, and the PSNR in dB (None where they are identical: infinite)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"two uint8 image sets of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(d * d))
    return {"max_abs": int(np.abs(d).max()), "mean_abs": round(float(np.abs(d).mean()), 4),
            "psnr_db": round(10.0 * np.log10(255.0 ** 2 / mse), 2) if mse > 0 else None}


def judge_comparison(judge, fp32, bf16, other=None) -> dict:
    """The judge's view of the same seeds in both precisions (uint8 sets): each set's domain score (mean
    P(cartoon)) and rate (share judged cartoon), the Frechet distance between the two sets' judge features, and
    the structure error between each seed's two images (tf_cartoon.metrics.judge; 0: the same faces, about 1:
    unrelated ones). ``other``: fp32 images of as many other seeds, whose judge_fd to the fp32 set is the scale
    of judge_fd at this sample size (two draws of the same model)."""
    from tf_cartoon.metrics import judge as judges

    a, b = judge(fp32), judge(bf16)
    out = {"domain_prob_fp32": round(float(a.domain_prob.mean()), 6),
           "domain_prob_bf16": round(float(b.domain_prob.mean()), 6),
           "domain_rate_fp32": judges.domain_rate(a), "domain_rate_bf16": judges.domain_rate(b),
           "judge_fd_fp32_bf16": round(judges.judge_fd(a, b), 4),
           "structure_error_fp32_bf16": round(judges.structure_error(a, b, judge.spreads)[0], 4)}
    if other is not None:
        out["judge_fd_fp32_other_seeds"] = round(judges.judge_fd(a, judge(other)), 4)
    return out


def _report_parser():
    p = _cli.parser("python -m tf_cartoon.precision", "The bf16 quality report: the same seeds rendered in fp32 and "
                   "in bf16, compared (one JSON line on stdout). 'python -m tf_cartoon.precision curves --help': the "
                   "loss curves of one fine-tuning run in fp32 and in bf16.")
    p.add_argument("--ckpt", required=True, help="generator to render (any checkpoint spec, e.g. "
                                                 "builtin:source_synthetic)")
    _cli.add_role(p, "target", default=None, help="also a fine-tuned generator, rendering --ckpt's w of each seed "
                                                 "(as generate --source CKPT --target TARGET does)")
    p.add_argument("--seeds", default="0-15", help="seeds (default 0-15)")
    _cli.add_truncation(p)
    p.add_argument("--batch", type=int, default=8, help="images per synthesis call")
    p.add_argument("--no_judge", action="store_true", help="leave out the judge's figures")
    return p


def _render(spec, flag_name, target_spec, seeds, args, precision):
    """uint8 images of ``seeds``: {"ckpt": ..., and with a target "target": ...}, computed in ``precision``."""
    from tf_cartoon import generate as gen
    from tf_cartoon.images import to_uint8

    g = _cli.load_generator(spec, flag_name, precision=precision)
    psi, n = args.truncation, args.truncation_samples
    if target_spec is None:
        return {"ckpt": to_uint8(gen.sample(g, seeds, psi, truncation_samples=n, batch=args.batch))}
    t = _cli.load_generator(target_spec, "--target", precision=precision)
    r = gen.swap_images(g, t, seeds, (), psi, truncation_samples=n, batch=args.batch)
    return {"ckpt": to_uint8(r.source), "target": to_uint8(r.target)}


@_cli.command(setup="generate")
def main(argv=None) -> int:
    import json

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["curves"]:
        from tf_cartoon import precision_curves

        return precision_curves.main(argv[1:])
    args = _report_parser().parse_args(argv)
    with _cli.user_input():
        from tf_cartoon.images import parse_seeds

        seeds = parse_seeds(args.seeds)
        _cli.check_at_least(args, 1, "batch", "truncation_samples")
        _cli.check_finite(args, "truncation")
        rendered = {p: _render(args.ckpt, "--ckpt", args.target, seeds, args, p) for p in ("fp32", "bf16")}
    judge = None
    if not args.no_judge:
        from tf_cartoon.metrics import judge as judges

        try:
            judge = judges.load()
        except (OSError, ValueError):  # no shipped judge in this installation: the pixel figures alone
            judge = None
    if judge is not None:  # judge_fd's scale: the first as many seeds not among --seeds, in fp32
        taken = set(seeds)
        others = list(itertools.islice((s for s in itertools.count() if s not in taken), len(seeds)))
        rendered["other"] = _render(args.ckpt, "--ckpt", args.target, others, args, "fp32")
    import tensorflow as tf

    gpu = bool(tf.config.list_logical_devices("GPU"))
    out = {"what": "bf16_quality", "ckpt": _cli.checkpoint_record(args.ckpt),
           "target": _cli.checkpoint_record(args.target) if args.target else None,
           "seeds": args.seeds, "n": len(seeds), "truncation": args.truncation,
           "cpu_bf16_flags": list(cpu_bf16_flags()), "cpu_bf16": cpu_has_bf16(), "gpu": gpu,
           "auto": resolve("auto", gpu=gpu)}
    out["fp32_vs_bf16"] = {}
    for role, fp32 in rendered["fp32"].items():
        bf16 = rendered["bf16"][role]
        out["fp32_vs_bf16"][role] = {**image_difference(fp32, bf16), "judge": judge_comparison(
            judge, fp32, bf16, rendered["other"][role]) if judge is not None else None}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    _cli.run(main)
