"""Dynamic loss scaling for float16 training (``--precision fp16``): one scale per phase of the trainer.

float16 keeps about 3.3 decimal digits over a range of 6e-8 (subnormal) .. 65504, so backward passes through
float16 layers lose small gradients to underflow unless the loss is multiplied by a scale first. The scale is
dynamic, as Keras' LossScaleOptimizer does it: a step whose gradients are not all finite is skipped and the
scale halves; after ``growth_interval`` finite steps in a row it doubles.

Each phase (D_main, D_r1, G_main, G_path_length) has its own scale: their losses differ by orders of magnitude
(R1's weight times d_reg_every, the path-length weight times g_reg_every), so one scale would be too small for
some and overflow others. R1 and path length take a gradient of a gradient (the inner one with
``create_graph``): their phases scale each of the two backward passes by the phase's scale ``s``. The inner
gradient is taken of ``s * sum(...)`` and divided by ``s`` in float32 (so its float16 backward pass sees scaled
values), and the outer loss is multiplied by ``s ** 2``: the division by ``s`` takes one factor away again
from the adjoints of the inner pass's tensors, leaving them (and the forward tensors' adjoints, ``s ** 2``)
scaled. Such a phase starts at about ``sqrt(INITIAL_SCALE)`` (2 ** 8), so its outer factor starts about where a
one-pass phase's does.

Other choices exist: StyleGAN2-ADA (stylegan2-ada-pytorch) uses no loss scale; it computes only the 4
highest-resolution blocks in float16, clamps their conv outputs to +-256, takes R1's and path length's inner
gradients unscaled, and replaces non-finite parameter gradients (NaN -> 0, +-inf -> +-1e5) before each
optimizer step instead of skipping it. Here the whole network computes in float16 (Keras' mixed_float16
policy), hence the scales.
"""

from __future__ import annotations

import tensorflow as tf

INITIAL_SCALE = 2.0 ** 15  # Keras' LossScaleOptimizer starts there too
GROWTH_INTERVAL = 2000  # finite steps in a row before the scale doubles (Keras' LossScaleOptimizer default)
# Below this the scaled float16 gradients are no better than unscaled ones: a phase that keeps overflowing at
# a scale of 1 has diverged (e.g. NaN weights, or activations beyond float16's range in the forward pass).
MIN_SCALE = 1.0


def all_finite(grads) -> tf.Tensor:
    """Whether every entry of every gradient (None: none) is finite; a scalar bool."""
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class DynamicLossScale:
    """The loss scale of one phase: ``scale`` (float32) and ``good_steps`` (finite steps since the last
    change), both checkpointed. ``passes``: the backward passes its losses go through (1, or 2 for R1 and
    path length); the loss is multiplied by ``factor() == scale ** passes``."""

    def __init__(self, name: str, passes: int = 1, growth_interval: int = GROWTH_INTERVAL,
                 initial: float | None = None):
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, not {growth_interval}")
        self.name, self.passes, self.growth_interval = name, passes, int(growth_interval)
        if initial is None:  # a power of two whose passes-th power is at most INITIAL_SCALE (float16 max: 65504)
            initial = 2.0 ** (15 // passes)
        self.scale = tf.Variable(float(initial), dtype=tf.float32, trainable=False, name=f"loss_scale_{name}")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name=f"loss_scale_good_steps_{name}")

    def factor(self, scale) -> tf.Tensor:
        return scale ** self.passes if self.passes != 1 else scale

    def update(self, finite) -> None:
        """After a step: halve on non-finite gradients, double after ``growth_interval`` finite steps."""
        good = self.good_steps + 1
        grow = tf.logical_and(finite, good >= self.growth_interval)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), self.scale * 0.5))
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), good,
                                        tf.zeros_like(good)))

    def state(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(scale=self.scale, good_steps=self.good_steps)
