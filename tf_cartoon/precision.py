"""Compute precision: one name per choice for every tool (``--precision fp32|bf16|fp16|auto``).

- ``fp32``: float32 everywhere (the reference's precision; the parity tests run in it).
- ``bf16``: bfloat16 compute with float32 variables (Keras ``mixed_bfloat16``). bfloat16 keeps float32's
  exponent range, so training needs no loss scaling; losses, R1 / path-length maths, EMA and optimizer state
  stay float32. Fast only where the CPU computes bfloat16 natively (AVX512_BF16 or AMX); elsewhere oneDNN
  emulates it and it is slower than fp32.
- ``fp16``: float16 compute with float32 variables (Keras ``mixed_float16``), training with dynamic loss
  scaling. GPUs only (CPUs have no fast float16 convolutions).
- ``auto``: ``bf16`` on a CPU with native bfloat16 (and no GPU), else ``fp32``.

This module imports neither TensorFlow nor Keras at import time (the command-line layer reads it before TF
starts); :func:`policy` imports Keras when it is entered.
"""

from __future__ import annotations

import contextlib
import functools

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


def resolve(precision: str, gpu: bool = False, cpu_bf16: bool | None = None) -> str:
    """``precision`` (one of PRECISIONS) as the concrete ``fp32`` / ``bf16`` / ``fp16`` it runs in.

    ``gpu``: whether the computation runs on a GPU; ``cpu_bf16``: the CPU's native bfloat16 (default: this
    CPU's, :func:`cpu_has_bf16`). Raises ValueError for an unknown name (callers name their flag)."""
    if precision not in PRECISIONS:
        raise ValueError(f"must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if gpu:
        return "fp32"
    return "bf16" if (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"


def of_layer(layer) -> str:
    """The concrete precision (fp32 / bf16 / fp16) a built Keras layer or model computes in."""
    return {dtype: name for name, dtype in COMPUTE_DTYPE.items()}[layer.compute_dtype]


@contextlib.contextmanager
def policy(precision: str):
    """Keras' global dtype policy for ``precision`` (concrete: fp32 / bf16 / fp16) while models are built.

    Layers take their compute dtype when they are created, so build (or load) the networks inside this
    block; the previous global policy comes back on exit."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
