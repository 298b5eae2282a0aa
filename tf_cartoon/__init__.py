"""tf_cartoon: Cartoon-StyleGAN2 (fine-tuning StyleGAN2 for cartoon faces) in TensorFlow 2 / Keras 3.

    import tf_cartoon
    ckpt = tf_cartoon.load("ffhq256.pt")        # a reference .pt, or a converted directory
    images = ckpt.g_ema(z, truncation=0.7, truncation_latent=ckpt.g_ema.mean_latent(4096))  # NHWC

The package's public face is :func:`load`; the rest lives in its modules
(ops, layers, networks, io, ...; see README.md for the map).
"""

__version__ = "0.1.0"


def load(path, models=("g_ema", "g", "d"), fused_modconv=False):
    """Load a reference ``.pt`` checkpoint, a converted directory or a training workdir.

    Returns a :class:`tf_cartoon.io.store.Checkpoint` with ready Keras models
    ``g_ema``, ``g``, ``d`` (None where the file has none), ``args`` (dict),
    ``ada_aug_p``, ``config`` and ``optimizer_states``.
    """
    from tf_cartoon.io.store import load as _load

    return _load(path, models=models, fused_modconv=fused_modconv)
