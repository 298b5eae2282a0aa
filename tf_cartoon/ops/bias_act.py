"""Bias + activation, the reference's ``fused_leaky_relu``.

``fused_leaky_relu(x, b) = leaky_relu(x + b, 0.2) * sqrt(2)`` with ``b`` added
along the LAST axis (channels in NHWC, features in ``[N, F]``).

The ``"ref"`` path spells the definition with ``tf.where``; the ``"tf"`` (= ``"xla"``) path
uses ``tf.nn.leaky_relu`` (one fused kernel, XLA fuses both) with a backward pass that keeps a
bool mask of the pre-activation's sign, not the pre-activation. Both are plain TF and
differentiable to any order (R1 and path length need grad-of-grad). ``"custom"`` is the
compiled op (custom_ops/bias_act.cc / .cu: one pass over memory), with registered
gradients to any order; ``"auto"`` picks through tf_cartoon/ops/dispatch.py.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_cartoon.ops.dispatch import choose, register

# `python -m tf_cartoon.bench --what ops`, lrelu [4, 256, 256, 64] float32, forward / forward + backward:
# compiled 46 / 124 ms, plain TF 106 / 165 ms, XLA 49 / 82 ms (2-core shared CPU, approximate). Whole models
# barely move, as the 3x3 convolutions dominate. GPU: not measured, so the pure-TF path stays auto there.
register("bias_act", ("tf", "ref", "custom"), {"CPU": "custom", "GPU": "tf"})

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
    if act == "lrelu" and path != "ref":
        return _lrelu_keeping_sign(x, bias, alpha, gain)
    if bias is not None:
        x = x + bias
    if act == "lrelu":
        x = tf.where(x >= 0, x, x * alpha)
    if gain != 1.0:
        x = x * tf.cast(gain, x.dtype)
    return x


def _lrelu_keeping_sign(x, bias, alpha, gain):
    """leaky_relu(x + bias, alpha) * gain whose backward pass keeps only the sign of the pre-activation, as a
    bool mask (a quarter of a float32 tensor), not the pre-activation itself as TF's LeakyReluGrad would.
    A discriminator layer's output is kept anyway only where the next conv needs its weight gradient (the
    D step); in the G step (gradients reach the image only) each layer then keeps a mask, not a float map.
    The backward pass is plain TF, so it is differentiable again (R1, path length)."""
    def forward(x, bias):
        z = x if bias is None else x + bias
        out = tf.nn.leaky_relu(z, alpha)
        return (out * tf.cast(gain, out.dtype) if gain != 1.0 else out), z > 0

    def dz_from(dy, positive, b=None):
        slope = tf.cast(alpha, dy.dtype)
        if b is not None:
            # The bias reaches the input gradient only through the mask (zero derivative), but R1 must still
            # give every bias a (zero) gradient, as the compiled op and TF's LeakyReluGrad do; a scalar tie
            # costs nothing (the multiply is there anyway), unlike keeping the pre-activation.
            slope = slope + tf.cast(0.0, dy.dtype) * tf.reduce_sum(b)
        return tf.where(positive, dy, dy * slope) * tf.cast(gain, dy.dtype)

    if bias is None:
        @tf.custom_gradient
        def act(x):
            out, positive = forward(x, None)
            return out, lambda dy: dz_from(dy, positive)

        return act(x)

    @tf.custom_gradient
    def act_bias(x, b):
        out, positive = forward(x, b)

        def grad(dy):
            dz = dz_from(dy, positive, b)
            return dz, tf.reduce_sum(dz, axis=list(range(dz.shape.rank - 1)))

        return out, grad

    return act_bias(x, tf.convert_to_tensor(bias))


def fused_leaky_relu(x, bias, negative_slope: float = 0.2, scale: float = SQRT2, impl: str = "auto"):
    """The reference's name for ``bias_act(x, bias, "lrelu")``."""
    return bias_act(x, bias, "lrelu", alpha=negative_slope, gain=scale, impl=impl)
