"""Synthetic image domains: ``make_dataset("synthetic:NAME", ...)``.

A domain is ``fn(seed: int, n: int, size: int) -> uint8 numpy [n, size, size, 3]``, deterministic by seed,
registered with ``register_synthetic(NAME, fn)``. ``make_dataset`` calls it once per batch with
``n = batch_size`` and ``seed = batch_seed(seed, input_pipeline_id, batch_index)``, so the stream is
reproducible by seed and different in every input pipeline; ``make_dataset(..., start_batch=k)`` starts the
batch index at ``k`` (a resumed run draws exactly the batches it would have drawn, and none before).

The stream is infinite; with ``repeat=False`` it is one "epoch" of SYNTHETIC_EPOCH_IMAGES images.

Built in: ``blobs`` (2-5 random coloured, rotated ellipses on a random plain background).

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_EPOCH_IMAGES = 1024

SyntheticFn = Callable[[int, int, int], np.ndarray]
_DOMAINS: dict[str, SyntheticFn] = {}


def register_synthetic(name: str, fn: SyntheticFn, *, overwrite: bool = False) -> None:
    """Make ``synthetic:<name>`` available. Re-registering a name needs ``overwrite=True``."""
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"bad synthetic domain name {name!r} (a non-empty string without ':' or surrounding spaces)")
    if not callable(fn):
        raise TypeError(f"synthetic domain {name!r}: fn must be callable, got {type(fn).__name__}")
    if name in _DOMAINS and not overwrite and _DOMAINS[name] is not fn:
        raise ValueError(f"synthetic domain {name!r} is already registered (pass overwrite=True to replace it)")
    _DOMAINS[name] = fn


def available_synthetic() -> list[str]:
    """Sorted names of the registered synthetic domains."""
    return sorted(_DOMAINS)


def get_synthetic(name: str) -> SyntheticFn:
    try:
        return _DOMAINS[name]
    except KeyError:
        avail = ", ".join(SYNTHETIC_PREFIX + n for n in available_synthetic()) or "(none)"
        raise ValueError(f"unknown synthetic dataset {SYNTHETIC_PREFIX}{name!s}; available: {avail}") from None


def batch_seed(seed: int, pipeline_id: int, index: int) -> int:
    """The seed handed to a domain for batch ``index`` of input pipeline ``pipeline_id`` (a uint32)."""
    ss = np.random.SeedSequence([int(seed) % (1 << 64), int(pipeline_id), int(index)])
    return int(ss.generate_state(1, np.uint32)[0])


def draw(name: str, seed: int, n: int, size: int) -> np.ndarray:
    """``fn(seed, n, size)`` with its output checked (uint8, [n, size, size, 3])."""
    out = get_synthetic(name)(int(seed), int(n), int(size))
    out = np.asarray(out)
    if out.dtype != np.uint8 or out.shape != (n, size, size, 3):
        raise ValueError(f"synthetic domain {name!r} returned {out.dtype} {out.shape}; "
                         f"expected uint8 {(n, size, size, 3)}")
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------------ blobs
def blobs(seed: int, n: int, size: int) -> np.ndarray:
    """2-5 random coloured rotated ellipses on a random plain background, per image."""
    rng = np.random.default_rng(int(seed))
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = c[:, None], c[None, :]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0.15, 0.85, 2)
            a, b = rng.uniform(0.08, 0.35, 2)
            th = rng.uniform(0.0, math.pi)
            colour = rng.integers(0, 256, 3, dtype=np.uint8)
            dx, dy = xx - cx, yy - cy
            u = dx * math.cos(th) + dy * math.sin(th)
            v = -dx * math.sin(th) + dy * math.cos(th)
            img[(u / a) ** 2 + (v / b) ** 2 <= 1.0] = colour
        out[i] = img
    return out


register_synthetic("blobs", blobs)


# ---------------------------------------------------------------------------------------- tf.data source
def synthetic_dataset(name: str, size: int, batch_size: int, *, repeat: bool, seed: int, pipeline_id: int,
                      num_parallel: int, start_batch: int = 0) -> "tf.data.Dataset":
    """uint8 ``[batch_size, size, size, 3]`` batches of domain ``name``: batch ``i`` is drawn with
    ``batch_seed(seed, pipeline_id, i)`` for ``i = start_batch, start_batch + 1, ...`` (the skipped batches are
    never drawn); with ``repeat=False`` the stream ends at index SYNTHETIC_EPOCH_IMAGES // batch_size."""
    import tensorflow as tf

    get_synthetic(name)
    draw(name, batch_seed(seed, pipeline_id, 0), 1, size)  # validate the domain now, not mid-training

    def gen(index):
        return draw(name, batch_seed(seed, pipeline_id, int(index)), batch_size, size)

    def make(index):
        x = tf.numpy_function(gen, [index], tf.uint8, name=f"synthetic_{name}")
        return tf.ensure_shape(x, [batch_size, size, size, 3])

    start_batch = int(start_batch)
    idx = tf.data.Dataset.counter(start=start_batch) if repeat else tf.data.Dataset.range(
        start_batch, max(1, SYNTHETIC_EPOCH_IMAGES // batch_size))
    return idx.map(make, num_parallel_calls=num_parallel, deterministic=True)
