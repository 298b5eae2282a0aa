"""Latent maths, each rule once: truncation, the W+ broadcast, style mixing, source / target pairing,
and the learning-rate ramp and Adam update of latent optimisation (projection, StyleCLIP).

W+ is [N, n_latent, style_dim]: one w per style input of the synthesis network (tf_cartoon.networks says
which row feeds which layer). Every array function takes numpy arrays or TensorFlow tensors and answers
in the same kind: the generator's graph (networks, export, trainer) and the tools' numpy code (generate,
sefa, styleclip, project, metrics) compute the same formula. The module imports no TensorFlow: a tensor
can only reach it once TensorFlow is loaded, so numpy callers (and flag validation) never start it.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from tf_cartoon import arch
from tf_cartoon.cli import IncompatiblePairError, UsageError

# torch.optim.Adam's defaults, which the reference's projector and StyleCLIP use
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
LR_RAMPUP, LR_RAMPDOWN = 0.05, 0.25  # the reference's get_lr (projector.py, StyleCLIP's run_optimization.py)


def _tf(*xs):
    """The tensorflow module when any of ``xs`` is a TF tensor or variable, else None (numpy)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and any(tf.is_tensor(x) for x in xs):
        return tf
    return None


def _rank(x) -> int:
    return len(x.shape)


# ---------------------------------------------------------------------------
# Truncation and the W+ broadcast
# ---------------------------------------------------------------------------

def truncate(w, mean, psi):
    """``mean + psi * (w - mean)``: ``w`` pulled toward the truncation centre ``mean`` (psi 1: w itself, up to
    rounding; callers that want w exactly skip the call).

    w: w [N, D] or W+ [N, n_latent, D]; mean: [D], [1, D] or [1, 1, D]; psi: a number, or [N] (one per
    sample). mean and psi take w's dtype."""
    tf = _tf(w, mean, psi)
    if tf is None:
        w = np.asarray(w)
        mean, psi = np.asarray(mean, w.dtype), np.asarray(psi, w.dtype)
    else:
        w = tf.convert_to_tensor(w)
        mean, psi = tf.cast(mean, w.dtype), tf.cast(psi, w.dtype)
    if _rank(psi) == 1:  # per sample: [N] -> [N, 1(, 1)]
        psi = psi[(slice(None),) + (None,) * (_rank(w) - 1)]
    if _rank(w) == 3 and _rank(mean) == 2:
        mean = mean[:, None, :]
    return mean + psi * (w - mean)


def to_wplus(w, n_latent: int, style_dim: int | None = None):
    """w [N, D] (or one row [N, 1, D]) -> W+ [N, n_latent, D], every row the same; W+ passes through.

    With ``style_dim`` the (statically known) shape is checked: ValueError otherwise."""
    tf = _tf(w)
    w = np.asarray(w) if tf is None else tf.convert_to_tensor(w)
    n = int(n_latent)
    shape = tuple(w.shape)
    width = "D" if style_dim is None else int(style_dim)
    if _rank(w) == 3 and shape[1] not in (1, n, None):
        raise ValueError(f"W+ must be [N, {n_latent}, {width}], got {shape}")
    if _rank(w) not in (2, 3) or (style_dim is not None and shape[-1] not in (style_dim, None)):
        raise ValueError(f"w must be [N, {width}] or W+ [N, {n_latent}, {width}], got {shape}")
    if _rank(w) == 3 and shape[1] != 1:
        return w
    rows = w[:, None, :] if _rank(w) == 2 else w
    return np.repeat(rows, n, axis=1) if tf is None else tf.tile(rows, [1, n, 1])


# ---------------------------------------------------------------------------
# Style mixing
# ---------------------------------------------------------------------------

def cutoff_rows(n_latent: int, cutoff):
    """Boolean [n_latent]: the rows at or after ``cutoff`` (an int or an int tensor), which style mixing at
    that cutoff (the reference's inject_index) takes from the second latent."""
    tf = _tf(cutoff)
    if tf is None:
        return np.arange(int(n_latent)) >= int(cutoff)
    return tf.range(int(n_latent)) >= tf.cast(cutoff, tf.int32)


def random_cutoff(u, n_latent: int):
    """A mixing cutoff in 1..n_latent - 1 from a uniform draw ``u`` in [0, 1): ``1 + floor(u (n_latent - 1))``."""
    tf = _tf(u)
    if tf is None:
        return 1 + int(math.floor(float(u) * (int(n_latent) - 1)))
    return 1 + tf.cast(tf.floor(u * (int(n_latent) - 1)), tf.int32)


def check_rows(rows, n_latent: int, size: int) -> tuple[int, ...]:
    """W+ row indices as ints in 0..n_latent - 1, else ValueError."""
    out = []
    for r in rows:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < n_latent:
            raise ValueError(f"mix layers are W+ slots in 0..{n_latent - 1} for a {size} px generator, got {r!r}")
        out.append(int(r))
    return tuple(out)


def row_mask(rows, n_latent: int) -> np.ndarray:
    """Boolean [n_latent], True at ``rows``."""
    mask = np.zeros([int(n_latent)], bool)
    mask[list(rows)] = True
    return mask


def mix(first, second, from_second):
    """W+ whose rows where ``from_second`` (boolean [n_latent]) is true come from ``second``, the others
    from ``first``. first / second: W+ [..., n_latent, D], or anything that broadcasts to it (e.g. w as
    [..., 1, D])."""
    tf = _tf(first, second, from_second)
    if tf is None:
        return np.where(np.asarray(from_second)[:, None], second, first)
    return tf.where(tf.convert_to_tensor(from_second)[:, None], second, first)


# ---------------------------------------------------------------------------
# Layers and pairs
# ---------------------------------------------------------------------------

def check_layers(layers, n_blocks: int, size: int, what: str = "swap layer") -> tuple[int, ...]:
    """Swap (or tap) layers as ints in 1..n_blocks, else ValueError naming ``what``."""
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not hasattr(layer, "__index__") or not 1 <= int(layer) <= n_blocks:
            raise ValueError(f"{what} must be in 1..{n_blocks} for a {size} px generator, got {layer!r}")
        out.append(int(layer))
    return tuple(out)


def check_pair(source, target, layers=(), flag_name: str | None = None, same_z: bool = False) -> tuple[int, ...]:
    """Whether ``source`` and ``target`` work together; returns the swap layers as ints.

    The rule is what the tools do with a pair: both render the same W / W+ latents (same ``style_dim`` and
    ``n_latent``; z goes through the source's mapping, see tf_cartoon.generate.PAIRINGS), render the same
    image size, and at each swap layer L in ``layers`` the target takes the source's feature after
    convs.{2L-1} (same channels at 2^(L+2) px). ``same_z``: both also map the same z (training, whose
    source sees the trained generator's z, and ``--pairing own_z``), so their z widths must agree.
    Channels elsewhere, the mapping depth and the 4 px input may differ: each generator computes those
    for itself. ``layers="all"`` checks every layer 1..n_blocks (a SavedModel's swap signature serves
    any of them). Raises IncompatiblePairError (prefixed with ``flag_name`` when given) or UsageError for
    a layer outside 1..n_blocks.
    """
    prefix = f"{flag_name}: " if flag_name else ""
    checked = (("size", "image size"), ("style_dim", "style_dim"), ("n_latent", "n_latent (W+ rows)"))
    for attr, what in checked + ((("z_dim", "z width (z_dim)"),) if same_z else ()):
        a, b = getattr(source, attr), getattr(target, attr)
        if a != b:
            raise IncompatiblePairError(f"{prefix}source and target differ in {what}: {a} vs {b}; layer swapping "
                                        "and shared latents need the same")
    n_blocks = int(target.n_blocks)
    if isinstance(layers, str) and layers == "all":
        layers = range(1, n_blocks + 1)
    try:
        layers = check_layers(layers, n_blocks, target.size)
    except ValueError as e:
        raise UsageError(f"{prefix}{e}") from None
    for layer in layers:
        res = arch.swap_resolution(layer)
        if source.channels[res] != target.channels[res]:
            raise IncompatiblePairError(f"{prefix}cannot swap at layer {layer}: source has {source.channels[res]} "
                                        f"channels at {res} px, target {target.channels[res]}")
    return layers


# ---------------------------------------------------------------------------
# Latent optimisation: learning-rate ramp and Adam
# ---------------------------------------------------------------------------

def lr_at(t: float, lr: float, rampup: float = LR_RAMPUP, rampdown: float = LR_RAMPDOWN) -> float:
    """Learning rate at progress t in [0, 1) (step / steps): ``lr`` times a cosine ramp-down over the last
    ``rampdown`` fraction times a linear ramp-up over the first ``rampup`` (the reference's get_lr)."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp *= min(1.0, t / rampup) if rampup > 0 else 1.0
    return lr * ramp


def adam_update(param, grad, m, v, lr, count) -> None:
    """One Adam step on the TF variable ``param`` as torch.optim.Adam computes it (the reference's optimiser):
    m and v with ADAM_BETAS, ``param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, t = ``count``
    (1 at the first step). Keras' Adam puts epsilon elsewhere. m and v are variables shaped like param."""
    import tensorflow as tf

    b1, b2 = ADAM_BETAS
    m.assign(b1 * m + (1.0 - b1) * grad)
    v.assign(b2 * v + (1.0 - b2) * tf.square(grad))
    denom = tf.sqrt(v) / tf.sqrt(1.0 - b2 ** count) + ADAM_EPS
    param.assign_sub(lr / (1.0 - b1 ** count) * m / denom)
