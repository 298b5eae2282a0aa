"""Perceptual path length in W (Karras et al. 2019), as rosinality's ``ppl.py`` (stylegan2-pytorch) computes it.

Per batch of ``b`` pairs (the reference's defaults: ``--space w``, no ``--crop``, eps 1e-4):

* fresh noise maps, one [1, r, r, 1] per noise input, shared by the whole batch (``g.make_noise()``);
* z [2b, style_dim] ~ N(0, 1) mapped to w (no truncation); w0, w1 = the even and odd rows;
* t ~ U(0, 1) per pair; the images of lerp(w0, w1, t) and lerp(w0, w1, t + eps) (rows interleaved);
* with ``crop``, rows 3/8..7/8 and columns 2/8..6/8 of the image (the face region, c = H // 8);
* images larger than 2 x 256 (``H // 256 > 1``) are resized to 256x256 (bilinear, half-pixel centres);
* distance = LPIPS-VGG(image(t), image(t + eps)) / eps^2.

The batch sizes are ``[batch] * (n // batch) + [n % batch]`` (an empty last batch is skipped). The result is
the mean of the distances between their 1st percentile (numpy "lower") and 99th percentile ("higher").
Random numbers come from ``np.random.RandomState(seed)`` (noise, then z, then t, per batch), so a run is
reproducible; they are not torch's streams, so single values differ from the reference's by sampling only.
"""

from __future__ import annotations

import numpy as np

from tf_cartoon.latent import to_wplus

PPL_EPS = 1e-4
PPL_N = 5000  # the reference's --n_sample
PPL_RESIZE = 256


def batch_sizes(n: int, batch: int) -> list[int]:
    n, batch = int(n), int(batch)
    if n < 1 or batch < 1:
        raise ValueError(f"PPL needs n >= 1 and batch >= 1, got n={n}, batch={batch}")
    sizes = [batch] * (n // batch) + [n % batch]
    return [b for b in sizes if b > 0]


def crop_face(images: np.ndarray) -> np.ndarray:
    """The reference's --crop on NHWC: rows c*3:c*7, columns c*2:c*6 with c = H // 8."""
    c = images.shape[1] // 8
    return images[:, c * 3:c * 7, c * 2:c * 6, :]


def filtered_mean(distances) -> float:
    """Mean of the distances within [1st percentile (lower), 99th percentile (higher)]."""
    d = np.asarray(distances, np.float64).ravel()
    lo = np.percentile(d, 1, method="lower")
    hi = np.percentile(d, 99, method="higher")
    return float(d[(lo <= d) & (d <= hi)].mean())


def path_distances(g, distance, n: int = PPL_N, batch: int = 64, eps: float = PPL_EPS, crop: bool = False,
                   seed: int = 0, progress=None) -> np.ndarray:
    """The n per-pair distances / eps^2 (float64) of generator ``g`` under ``distance(a, b) -> [N]``.

    ``g``: a tf_cartoon Generator (``mapping``, ``synthesis``, ``num_layers``, ``noise_resolution``,
    ``n_latent``, ``style_dim``); ``progress(done, total)`` is called after each batch."""
    import tensorflow as tf

    rng = np.random.RandomState(seed)
    sizes = batch_sizes(n, batch)
    out, done = [], 0
    for b in sizes:
        noise = [tf.constant(rng.randn(1, g.noise_resolution(i), g.noise_resolution(i), 1).astype(np.float32))
                 for i in range(g.num_layers)]
        z = rng.randn(2 * b, g.style_dim).astype(np.float32)
        t = rng.rand(b).astype(np.float32)[:, None]
        w = np.asarray(g.mapping(z), np.float32)
        w0, w1 = w[0::2], w[1::2]
        e0 = w0 + (w1 - w0) * t
        e1 = w0 + (w1 - w0) * (t + np.float32(eps))
        latent = np.stack([e0, e1], 1).reshape(w.shape)
        wplus = to_wplus(latent, g.n_latent)
        images = g.synthesis(wplus, noise=noise, randomize_noise=False).image
        images = np.asarray(images, np.float32)
        if crop:
            images = crop_face(images)
        if images.shape[1] // PPL_RESIZE > 1:
            images = np.asarray(tf.image.resize(images, [PPL_RESIZE, PPL_RESIZE], method="bilinear",
                                                antialias=False), np.float32)
        d = np.asarray(distance(images[0::2], images[1::2]), np.float64) / (eps ** 2)
        out.append(d)
        done += b
        if progress is not None:
            progress(done, n)
    return np.concatenate(out)


def ppl(g, distance, n: int = PPL_N, batch: int = 64, eps: float = PPL_EPS, crop: bool = False, seed: int = 0,
        progress=None) -> float:
    """PPL in W with end-point sampling (see the module doc)."""
    return filtered_mean(path_distances(g, distance, n, batch, eps, crop, seed, progress))
