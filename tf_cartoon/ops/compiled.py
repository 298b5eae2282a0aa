"""The fast paths' compiled passes: ``tf.function(jit_compile=True)`` functions that compute in float32.

The fast paths (Winograd transforms, phase_fir, the one-pass epilogue, scale_grads) hand their elementwise and
reduction passes to XLA, which fuses each into few passes over memory. XLA's CPU backend computes bfloat16 op
by op with conversions around each, several times slower than the same pass in float32 (phase_fir's adjoint
most of all). So :func:`compiled` casts bfloat16 tensor arguments to float32 as the compiled function's
first step and its float32 results back as its last: XLA fuses both casts into the passes, memory traffic
stays in bfloat16, and the arithmetic between them runs (and rounds once) in float32. float16 (GPUs, where
the fast paths step aside for cuDNN) keeps computing in float16: its loss-scaled gradients are checked as
they are (tests/test_fp16.py).

`python -m tf_cartoon.bench --what g_forward --precision bf16` (256 px, batch 4, a CPU with AVX512_BF16) went
from 1205-1276 to 895-999 ms with it (two runs each), `--what train_step` from 17.9 to 14.8-17.1 s (README,
"bf16 speed").
"""

from __future__ import annotations

import functools

import tensorflow as tf


def _has_bfloat16(args) -> bool:
    return any(isinstance(a, (tf.Tensor, tf.Variable)) and a.dtype == tf.bfloat16 for a in tf.nest.flatten(args))


def _cast_tensors(structure, source, target):
    return tf.nest.map_structure(
        lambda a: tf.cast(a, target) if isinstance(a, (tf.Tensor, tf.Variable)) and a.dtype == source else a,
        structure)


def in_float32(fn):
    """fn computing in float32 where its tensor arguments are bfloat16: those arguments are cast up first, fn's
    float32 results cast down to bfloat16 after. Without bfloat16 arguments fn runs as is."""
    @functools.wraps(fn)
    def body(*args, **kwargs):
        if not _has_bfloat16((args, kwargs)):
            return fn(*args, **kwargs)
        out = fn(*_cast_tensors(args, tf.bfloat16, tf.float32), **_cast_tensors(kwargs, tf.bfloat16, tf.float32))
        return _cast_tensors(out, tf.float32, tf.bfloat16)

    return body


def compiled(fn):
    """``tf.function(in_float32(fn), jit_compile=True, autograph=False)``: one XLA-compiled pass."""
    return tf.function(in_float32(fn), jit_compile=True, autograph=False)
