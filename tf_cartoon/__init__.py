"""tf_cartoon: Cartoon-StyleGAN2 (fine-tuning StyleGAN2 for cartoon faces) in TensorFlow 2 / Keras 3.

    import tf_cartoon
    ckpt = tf_cartoon.load("ffhq256.pt")        # a reference .pt, or a converted directory
    images = ckpt.g_ema(z, truncation=0.7, truncation_latent=ckpt.g_ema.mean_latent(4096))  # NHWC

The package's public face is :func:`load`; the rest lives in its modules
(ops, layers, networks, io, ...; see README.md for the map).
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# TF 2.21 turns its oneDNN kernels on by default only on CPUs with AVX-512 features; on AVX2 machines
# (e.g. AMD EPYC) our bench measured them clearly faster for this network's matmuls and convolutions, so
# we ask for them unless the user decided (any value of TF_ENABLE_ONEDNN_OPTS is kept). It only takes
# effect when tf_cartoon is imported before TensorFlow, as the command-line tools are.
if "tensorflow" not in _sys.modules:
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def load(path, models=("g_ema", "g", "d"), fused_modconv=False):
    """Load a reference ``.pt`` checkpoint, a converted directory or a training workdir.

    Returns a :class:`tf_cartoon.io.store.Checkpoint` with ready Keras models
    ``g_ema``, ``g``, ``d`` (None where the file has none), ``args`` (dict),
    ``ada_aug_p``, ``config`` and ``optimizer_states``.
    """
    from tf_cartoon.io.store import load as _load

    return _load(path, models=models, fused_modconv=fused_modconv)


def use_pooled_cpu_allocator():
    """Make TF's CPU allocator keep freed memory for reuse (TF_CPU_ALLOCATOR_USE_BFC=true, unless set).

    With TF's default CPU allocator, every large tensor of a forward pass is page-faulted in afresh on every
    call (measured for a batch-4 256 px generator forward: ~600k page faults, 1.8 s of kernel CPU time and
    ~1 s of wall-clock per call); TF's BFC allocator (its GPU allocator, offered for the CPU by this switch)
    reuses freed memory. The generating command-line tools call this first thing; training does not (its
    peak RSS measured 0.1 GB higher with it, and its steps are long enough that the faults cost a few percent). Read
    when TF creates its CPU allocator (at its first op): call it before any TF computation.
    Returns whether the pooled allocator is asked for."""
    _os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    return pooled_cpu_allocator_requested()


def pooled_cpu_allocator_requested():
    """Whether TF_CPU_ALLOCATOR_USE_BFC asks TF for its BFC allocator on the CPU."""
    return _os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").strip().lower() in ("1", "true")


TRAINING_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = TRAINING_MALLOC_ARENAS):
    """Cap the C library's malloc arenas (glibc M_ARENA_MAX; elsewhere nothing happens). TF's thread pools
    otherwise get up to 8 per core, each keeping its own freed memory: a training step's peak RSS measured
    0.12-0.15 GB lower with 2 and the step no slower. The training entry points call it before TF starts
    its threads (arenas that already exist stay). Returns whether it was applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False
