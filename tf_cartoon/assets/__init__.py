"""Checkpoints shipped inside the package, addressed as ``builtin:<name>`` wherever a checkpoint path goes.

    python -m tf_cartoon.train --ckpt=builtin:source_synthetic ...   # configs/quickstart.cfg
    tf_cartoon.load("builtin:source_synthetic")

Each built-in is a converted directory (tf_cartoon/io/store.py format: config.json + weights/) in this
folder, installed with the package (setup.py package_data). Shipped:

  source_synthetic   32 px StyleGAN2 (g_ema and d; a fine-tuning run starts its g from g_ema) trained
                     from scratch on synthetic:faces by configs/source_synthetic.cfg; the source of
                     the CPU demo (configs/quickstart.cfg).

Written (after retraining: rewritten) from the training workdir with
``python -m tf_cartoon.convert runs/source_synthetic tf_cartoon/assets/source_synthetic --models g_ema,d
--overwrite``.
This module imports no TensorFlow: flag validation resolves names before any graph is built.
"""

from __future__ import annotations

import os

BUILTIN_PREFIX = "builtin:"
ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))


def available() -> list[str]:
    """Names of the shipped checkpoints (folders here holding a config.json)."""
    return sorted(n for n in os.listdir(ASSETS_DIR)
                  if os.path.isfile(os.path.join(ASSETS_DIR, n, "config.json")))


def is_builtin(path) -> bool:
    return isinstance(path, str) and path.startswith(BUILTIN_PREFIX)


def resolve(path):
    """``builtin:<name>`` -> the shipped directory; any other path is returned unchanged.

    An unknown name is a FileNotFoundError listing the known ones."""
    if not is_builtin(path):
        return path
    name = path[len(BUILTIN_PREFIX):]
    known = available()
    if name not in known:
        listing = ", ".join(BUILTIN_PREFIX + n for n in known) or "(none installed)"
        raise FileNotFoundError(f"unknown built-in checkpoint {path!r}; known: {listing}")
    return os.path.join(ASSETS_DIR, name)
