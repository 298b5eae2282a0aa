"""Standard GAN metrics: FID and KID (FID Inception features), PPL (LPIPS-VGG); see tf_cartoon.evaluate.

    from tf_cartoon.metrics import FIDInception, fid_from_features, kid_from_features, LPIPS
    from tf_cartoon.metrics.ppl import ppl
    feats = FIDInception("pt_inception-2015-12-05-6726825d.pth")(images)   # NHWC in [-1, 1] -> [N, 2048]

Modules: ``stats`` (Frechet distance, KID; numpy only), ``inception`` (the FID Inception in Keras),
``lpips`` (LPIPS-VGG), ``ppl`` (perceptual path length), ``judge`` (the built-in domains' judge and its
structure_error / domain_rate / judge_fd). This package imports TensorFlow only when a network is built.
"""

from tf_cartoon.metrics.stats import (feature_stats, fid_from_features, frechet_distance, kid_from_features,
                                      trace_sqrt_product)


def __getattr__(name):
    if name in ("FIDInception", "get_inception"):
        from tf_cartoon.metrics import inception

        return getattr(inception, name)
    if name in ("LPIPS", "find_lpips_weights"):
        from tf_cartoon.metrics import lpips

        return getattr(lpips, name)
    raise AttributeError(name)


__all__ = ["feature_stats", "fid_from_features", "frechet_distance", "kid_from_features", "trace_sqrt_product",
           "FIDInception", "get_inception", "LPIPS", "find_lpips_weights"]
