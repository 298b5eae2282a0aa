"""Bias + activation, the reference's ``fused_leaky_relu``.

``fused_leaky_relu(x, b) = leaky_relu(x + b, 0.2) * sqrt(2)`` with ``b`` added
along the LAST axis (channels in NHWC, features in ``[N, F]``).

The ``"ref"`` path spells the definition with ``tf.where``; the ``"tf"`` (= ``"xla"``) path
uses ``tf.nn.leaky_relu`` (one fused kernel, XLA fuses both). Both are plain TF and
differentiable to any order (R1 and path length need grad-of-grad). ``"custom"`` is the
compiled op (custom_ops/bias_act.cc / .cu: one pass over memory), with registered
gradients to any order; ``"auto"`` picks through tf_cartoon/ops/dispatch.py.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_cartoon.ops.dispatch import choose

SQRT2 = math.sqrt(2.0)


def bias_act(x, bias=None, act: str = "lrelu", alpha: float = 0.2, gain: float | None = None,
             impl: str = "auto"):
    """``act(x + bias) * gain``; act is "lrelu" or "linear".

    ``gain`` defaults to sqrt(2) for lrelu and 1 for linear (the reference's values).
    """
    if act not in ("lrelu", "linear"):
        raise ValueError(f"act must be 'lrelu' or 'linear', got {act!r}")
    if gain is None:
        gain = SQRT2 if act == "lrelu" else 1.0
    x = tf.convert_to_tensor(x)
    if bias is not None:
        bias = tf.cast(bias, x.dtype)
        if bias.shape.rank != 1 or (x.shape[-1] is not None and bias.shape[0] != x.shape[-1]):
            raise ValueError(f"bias of shape {bias.shape} does not match the last axis of x {x.shape}")
    unsupported = None
    if x.shape.rank is None or x.shape.rank < 1:
        unsupported = f"x of shape {x.shape} (rank >= 1 needed)"
    elif act == "lrelu" and alpha < 0:
        unsupported = f"alpha={alpha} < 0 (the gradient reads the sign from the output)"
    path = choose("bias_act", impl, x.dtype, unsupported)
    if path == "custom":
        from tf_cartoon.ops import custom
        return custom.bias_act(x, bias, act, alpha, gain)
    if bias is not None:
        x = x + bias
    if act == "lrelu":
        if path == "ref":
            x = tf.where(x >= 0, x, x * alpha)
        else:
            x = tf.nn.leaky_relu(x, alpha)
    if gain != 1.0:
        x = x * tf.cast(gain, x.dtype)
    return x


def fused_leaky_relu(x, bias, negative_slope: float = 0.2, scale: float = SQRT2, impl: str = "auto"):
    """The reference's name for ``bias_act(x, bias, "lrelu")``."""
    return bias_act(x, bias, "lrelu", alpha=negative_slope, gain=scale, impl=impl)
