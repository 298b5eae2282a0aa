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
