"""FID and KID from feature sets (numpy only; float64 throughout).

FID (Heusel et al. 2017, as pytorch-fid's ``calculate_frechet_distance``): the Frechet distance between
the Gaussians fitted to two feature sets,

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),

with ``mu`` the feature mean and ``S`` the unbiased covariance (``np.cov``, N - 1). scipy is not a
dependency of this project's stack (nothing in tensorflow / keras requires it), so the trace of the matrix
square root comes from symmetric eigen-decompositions instead of ``scipy.linalg.sqrtm``:
S1 S2 is similar to the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so tr((S1 S2)^(1/2)) is the sum of the
square roots of that matrix's eigenvalues. This never leaves the reals and needs no offset for singular
covariances (fewer samples than feature dimensions), where scipy's Schur-based sqrtm can lose accuracy.

KID (Binkowski et al. 2018, as StyleGAN2-ADA's ``kernel_inception_distance.py`` computes it): the unbiased
MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over ``num_subsets``
random subsets of ``m = min(n_real, n_fake, max_subset_size)`` rows of each set drawn without replacement.
"""

from __future__ import annotations

import numpy as np

KID_NUM_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D] (float64)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need a feature matrix [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative rounding-error eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2."""
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    root1 = _psd_sqrt(s1)
    m = root1 @ s2 @ root1
    vals = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(vals, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def fid_from_features(real, fake) -> float:
    """FID between two feature sets [N, D] (each N >= 2).

    With fewer samples than dimensions on either side, tr((S1 S2)^(1/2)) comes from the samples instead of
    the D x D covariances: with A = (X1 - mu1) / sqrt(N1 - 1) and B likewise, S1 = A'A and S2 = B'B, and the
    non-zero eigenvalues of S1 S2 are the squared singular values of A B' [N1, N2], so the trace is the sum
    of those singular values (exact, and a small SVD instead of two D x D eigen-decompositions)."""
    mu1, s1 = feature_stats(real)
    mu2, s2 = feature_stats(fake)
    if min(len(real), len(fake)) >= s1.shape[0]:
        return frechet_distance(mu1, s1, mu2, s2)
    a = (np.asarray(real, np.float64) - mu1) / np.sqrt(len(real) - 1)
    b = (np.asarray(fake, np.float64) - mu2) / np.sqrt(len(fake) - 1)
    diff = mu1 - mu2
    tr_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def kid_from_features(real, fake, num_subsets: int = KID_NUM_SUBSETS,
                      max_subset_size: int = KID_MAX_SUBSET_SIZE, seed: int = 0) -> float:
    """KID between two feature sets [N, D]; subsets drawn by ``np.random.RandomState(seed)``.

    Per subset pair (x from fake, y from real, m rows each) the unbiased MMD^2: the mean of k(x, x') and of
    k(y, y') over distinct pairs minus twice the mean of k(x, y); the subsets' estimates are averaged.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need feature matrices [N, D] of one D, got {real.shape} and {fake.shape}")
    n = real.shape[1]
    m = min(len(real), len(fake), int(max_subset_size))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(real)} real and {len(fake)} fake")
    rng = np.random.RandomState(seed)

    def kernel(a, b):
        return (a @ b.T / n + 1.0) ** 3

    total = 0.0
    for _ in range(int(num_subsets)):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx, kyy = kernel(x, x), kernel(y, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kernel(x, y).mean()
    return float(total / int(num_subsets))
