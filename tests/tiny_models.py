"""Tiny StyleGAN2 checkpoints the tests build themselves (no downloads)."""

from __future__ import annotations

import keras

from tf_cartoon.io import store
from tf_cartoon.networks import Discriminator, Generator

TINY = dict(size=16, style_dim=8, n_mlp=2, channels={4: 8, 8: 6, 16: 4})


def make_tiny_checkpoint(path, seed: int = 0, **overrides) -> str:
    """Write a converted directory with random g, g_ema (= g) and d; returns its path."""
    arch = {**TINY, **overrides}
    keras.utils.set_random_seed(seed)
    g = Generator(**arch, name="g")
    g_ema = Generator(**arch, name="g_ema")
    for a, b in zip(g.variables, g_ema.variables):
        b.assign(a)
    d = Discriminator(size=arch["size"], channels=arch["channels"])
    config = {"generator": g.get_config(), "discriminator": d.get_config()}
    ck = store.Checkpoint(config=config, g=g, g_ema=g_ema, d=d, args={"size": arch["size"]})
    return store.write_converted(ck, str(path), overwrite=True)
