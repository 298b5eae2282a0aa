"""Freeze options -> the variables that train. Nothing else decides this.

Semantics are the reference's (Cartoon-StyleGAN2 train.py):
  freezeG = N >= 0: only the N highest-resolution synthesis blocks train: for j < N,
      convs[num_convs - 1 - 2j], convs[num_convs - 2 - 2j] and to_rgbs[n_blocks - 1 - j]
      (reference: convs.{num_layers-2-2j}, convs.{num_layers-3-2j}, to_rgbs.{log_size-3-j});
      the mapping, constant input, conv1, to_rgb1 and lower blocks stay frozen. N larger
      than the number of blocks trains every block but still freezes those.
  freezeD = N >= 0: only the N ResBlocks nearest the output (D convs.{log_size-2-j}) plus
      final_conv and final_linear train.
  freezeStyle / freezeFC / structure_loss freeze nothing (they change latents and losses).
Values <= 0 mean "off": everything trains (the reference, recorded in the fixtures, trains
every G parameter at freezeG=0 while still switching path-length regularisation off;
freezeD=0 is treated the same way).
The noise buffers are never trainable.
"""

from __future__ import annotations


def generator_trainable(g, freeze_g: int = -1) -> list:
    """The generator variables that receive gradients under ``freezeG``."""
    if freeze_g is None or freeze_g <= 0:
        return list(g.trainable_variables)
    layers = []
    for j in range(min(int(freeze_g), g.n_blocks)):
        b = g.n_blocks - 1 - j
        layers += [g.convs[2 * b], g.convs[2 * b + 1], g.to_rgbs[b]]
    return _variables(layers)


def discriminator_trainable(d, freeze_d: int = -1) -> list:
    """The discriminator variables that receive gradients under ``freezeD``."""
    if freeze_d is None or freeze_d <= 0:
        return list(d.trainable_variables)
    n = len(d.convs)
    blocks = [d.convs[n - 1 - j] for j in range(min(int(freeze_d), n))]
    return _variables(blocks + [d.final_conv, *d.final_linear])


def _variables(layers) -> list:
    seen, out = set(), []
    for layer in layers:
        for v in layer.trainable_variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out
