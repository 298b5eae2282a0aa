"""Architecture facts without TensorFlow: image sizes, block / W+ row / noise counts, channel tables, FIR kernels.

Everything here is plain Python / numpy, so that flag validation and checkpoint reading (which map a file
onto these facts before any network is built) never start TensorFlow: a bad file or flag is answered
before TensorFlow prints its start-up lines. networks.py, ops/ and io/ import them from here.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SIZE, MAX_SIZE = 8, 1024
STDDEV_GROUP = 4  # the discriminator's minibatch-stddev group (the reference's stddev_group)


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """The reference's channel table (config-f at channel_multiplier 2)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}


def log2_size(size) -> int:
    size = int(size)
    log = int(round(math.log2(size))) if size > 0 else -1
    if size <= 0 or 2 ** log != size or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be a power of two between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    return log


def is_power_of_two(n) -> bool:
    n = int(n)
    return n > 0 and n & (n - 1) == 0


def is_valid_size(size) -> bool:
    """A power of two between MIN_SIZE and MAX_SIZE: an image size the networks are built for."""
    return is_power_of_two(size) and MIN_SIZE <= int(size) <= MAX_SIZE


def resolutions(size) -> list[int]:
    """The feature resolutions 4, 8, ..., size of a ``size`` px network."""
    return [2 ** i for i in range(2, log2_size(size) + 1)]


def n_blocks(size) -> int:
    """Synthesis blocks above 4x4 (8 px .. size px): the swap layers are 1..n_blocks."""
    return log2_size(size) - 2


def n_latent(size) -> int:
    """W+ rows: one per styled conv and ToRGB (conv1, to_rgb1, then three per block, sharing one)."""
    return 2 * log2_size(size) - 2


def num_noise(size) -> int:
    """Noise inputs: conv1's, then two per block."""
    return 2 * n_blocks(size) + 1


def noise_resolution(i: int) -> int:
    """Resolution of noise input i (4, 8, 8, 16, 16, ...)."""
    return 2 ** ((int(i) + 5) // 2)


def swap_resolution(layer: int) -> int:
    """Resolution of the feature swapped at layer L (the output of convs.{2L-1}): 2^(L+2)."""
    return 2 ** (int(layer) + 2)


def resolve_channels(size, channel_multiplier=2, channels=None) -> dict[int, int]:
    """Channel per resolution 4..size; an explicit map overrides the default table."""
    log = log2_size(size)
    table = default_channels(channel_multiplier)
    if channels:
        given = {int(k): int(v) for k, v in channels.items()}
        missing = [2 ** i for i in range(2, log + 1) if 2 ** i not in given]
        if missing:
            raise ValueError(f"channel map {channels} has no entry for resolution(s) {missing} "
                             f"(a {size} px network needs 4..{size})")
        table.update(given)
    out = {}
    for i in range(2, log + 1):
        r = 2 ** i
        if r not in table or table[r] <= 0:
            raise ValueError(f"channel map has no positive entry for resolution {r}: {channels}")
        out[r] = table[r]
    return out


def make_kernel(k, gain: float = 1.0) -> np.ndarray:
    """Normalised 2-D FIR kernel (float32) from a 1-D or 2-D list.

    A 1-D ``k`` becomes the outer product ``k k^T``. The kernel is normalised to
    sum 1 and multiplied by ``gain`` (the reference uses ``factor ** 2`` when
    upsampling so that zero insertion keeps the signal's magnitude).
    """
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2:
        raise ValueError(f"FIR kernel must be 1-D or 2-D, got shape {k.shape}")
    k = k / k.sum()
    return (k * gain).astype(np.float32)
