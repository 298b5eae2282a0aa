"""Projection of aligned face photos into a source generator's W+ ("toonify": photo -> cartoon).

    python -m tf_cartoon.project face.png --source ffhq256.pt --out out/project
    python -m tf_cartoon.project a.png b.jpg --source ffhq256.pt --target runs/freezeSG --swap_layer 1,2 \\
        --vgg16_weights vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --out out/toonify

--source / --target take anything ``tf_cartoon.load`` reads (a reference .pt, a
converted directory, a training workdir, builtin:<name>). Photos must be aligned and cropped
the way the source's training faces were (FFHQ: README "Photo projection"):
the projector only centre-crops to a square and resizes to the generator's size.

What is optimised, per photo (the facts and defaults of Cartoon-StyleGan2's projector.py, built on
rosinality/stylegan2-pytorch's):
  * w [style_dim], the same for every layer (``--w_plus``: W+ [n_latent, style_dim], one w per layer),
    initialised at the source's mean latent (mean of its
    mapping over ``--n_mean_latent`` N(0, 1) z). Each step adds N(0, 1) noise to it,
    scaled by ``latent_std * --noise * max(0, 1 - t / --noise_ramp) ** 2``, t = step / steps,
    latent_std = sqrt(sum over the z samples and dims of (w - mean)^2 / n_mean_latent).
  * The noise maps (one per noise input, [R, R]), initialised N(0, 1), pushed toward
    white noise by the regulariser (weight ``--noise_regularize``): at every scale,
    down to 8x8 by 2x2 averaging, the squared mean autocorrelation with a one-pixel
    circular shift along x and along y; after every step each map is renormalised
    to mean 0, std 1 (unbiased std).
  * Adam (betas 0.9, 0.999, eps 1e-8) with lr ``--lr * ramp(t)``: a cosine ramp-down
    over the last ``--lr_rampdown`` of the steps times a linear ramp-up over the
    first ``--lr_rampup``.
  * Loss = ``--mse`` * MSE(image, photo) + ``--vgg`` * perceptual + ``--noise_regularize``
    * regulariser. Both images are average-pooled to 256 px first when the generator
    is larger (as the reference). The perceptual term needs ``--vgg16_weights``: a
    LOCAL keras.applications VGG16 weights file (.h5 / .weights.h5, include_top=False
    layout, e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5); nothing is
    downloaded. It is LPIPS's distance without the learned per-channel weights (the
    "baseline" variant): features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3,
    each unit-normalised over channels, squared differences summed over channels,
    averaged over space, summed over layers. Images go in with Keras' VGG16
    preprocessing (BGR, ImageNet channel means subtracted, 0..255 scale). Without
    weights the loss is MSE (+ regulariser) only, and the log says so.
Where we differ on purpose: each photo is optimised on its own (the loss is a
sum over photos and the regulariser / renormalisation are per photo; the
reference pools them over the batch, so its result depends on which photos share
a batch), and the MSE weight defaults to 1 (Cartoon-StyleGan2's projector always
adds an MSE term of weight 1; rosinality's defaults to 0).

Outputs under --out DIR, per photo ``<name>`` (the file's stem; repeated stems get
``_2``, ``_3`` ...):
  <name>.npz  w_plus [n_latent, style_dim] float32, noise_0 .. noise_{K-1}
              [1, R, R, 1] float32 (NHWC, ready for ``Generator.synthesis(noise=...)``),
              photo [H, W, 3] uint8 (the cropped, resized input), reconstruction uint8,
              settings (a JSON string: flags, checkpoints, precision, final losses). Read it with
              :func:`load_projection`.
  <name>.png  photo | source reconstruction [| target | swap_l{l} ...] side by side
  grid.png    those rows stacked, one per photo
  <name>.mp4  with --video: photo | source reconstruction as the optimisation goes (--video_frames
              frames, the first at the start latent, the last the final result; GIF without imageio-ffmpeg)
Progress (steps, rate, ETA, MSE) goes to stderr; --quiet drops it and the log lines.
``--precision bf16`` runs the generators in bfloat16; the latent, the noise maps, the losses and Adam stay
float32.
The target renders the projected W+ with the projected noise maps
(``--target_noise stored``: its own stored buffers); the swapped images put the
source's feature at layer l into the target (tf_cartoon.generate's layer swapping).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.images import atomic_save, make_grid, parse_range, save_animation, save_png, to_uint8
from tf_cartoon.progress import Progress

LOSS_MAX_SIZE = 256  # images larger than this are average-pooled to it before the losses (as the reference)
VGG_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")  # relu_k_l
VGG_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications' "caffe" preprocessing of VGG16
NORM_EPS = 1e-10  # LPIPS's feature normalisation epsilon


class ProjectConfig(NamedTuple):
    steps: int = 1000
    lr: float = 0.01  # Cartoon-StyleGan2's projector.py (rosinality's: 0.1)
    w_plus: bool = False  # optimise one w per layer (W+); default one w for all layers, as projector.py
    lr_rampup: float = latent.LR_RAMPUP
    lr_rampdown: float = latent.LR_RAMPDOWN
    noise: float = 0.05
    noise_ramp: float = 0.75
    noise_regularize: float = 1e5
    mse: float = 1.0
    vgg: float = 1.0
    n_mean_latent: int = 10000
    seed: int = 0


class Projection(NamedTuple):
    wplus: np.ndarray  # [B, n_latent, style_dim] float32
    noises: list  # num_layers arrays [B, R, R, 1] float32 (NHWC)
    image: np.ndarray  # [B, H, W, 3] reconstruction (final W+, final noise, no latent noise), about [-1, 1]
    history: list  # dicts: step, lr, and per-photo lists mse, perceptual, noise_reg, loss
    initial: dict  # per-photo losses of the starting point (mean W+, initial noise), before any step
    final: dict  # per-photo losses of the result


# ---------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------

def load_photo(path, size: int) -> np.ndarray:
    """Read an image file (any PIL mode; EXIF rotation applied) -> centre square crop -> ``size`` px.

    Returns float32 [size, size, 3] in [-1, 1]. A missing, unreadable or corrupt
    file raises OSError / ValueError naming it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"photo {path} does not exist or is not a file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits first
                a = np.asarray(im, np.float64)
                im = Image.fromarray(np.clip(a / max(a.max(), 1.0) * 255.0, 0, 255).astype(np.uint8))
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"photo {path} is not a readable image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError(f"photo {path} is empty ({w}x{h})")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.LANCZOS)
    return (np.asarray(im, np.float32) / 127.5 - 1.0).astype(np.float32)


def photo_names(paths) -> list[str]:
    """File stems, made unique (``a``, ``a_2``, ...) so outputs never overwrite each other."""
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(os.fspath(p)))[0] or "photo"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        name = stem if n == 1 else f"{stem}_{n}"
        while name in names:
            n += 1
            name = f"{stem}_{n}"
        names.append(name)
    return names


# ---------------------------------------------------------------------------
# Latent noise and the noise regulariser
# ---------------------------------------------------------------------------

def latent_noise_strength(t: float, latent_std: float, noise: float = 0.05, noise_ramp: float = 0.75) -> float:
    """Std of the noise added to W+ at progress t: quadratic decay to 0 at t = noise_ramp."""
    if noise_ramp <= 0:
        return 0.0
    return float(latent_std) * noise * max(0.0, 1.0 - t / noise_ramp) ** 2


def noise_regularizer(noises):
    """Per-image regulariser [B] of noise maps, each [B, R, R, 1] (NHWC).

    For each map and each scale R, R/2, ... (2x2 averages) down to the first one
    <= 8 px: (mean(n * roll(n, 1, x)))^2 + (mean(n * roll(n, 1, y)))^2, means per image.
    """
    import tensorflow as tf

    total = 0.0
    for n in noises:
        n = tf.convert_to_tensor(n)
        size = int(n.shape[1])
        while True:
            total += tf.square(tf.reduce_mean(n * tf.roll(n, 1, axis=2), axis=[1, 2, 3]))
            total += tf.square(tf.reduce_mean(n * tf.roll(n, 1, axis=1), axis=[1, 2, 3]))
            if size <= 8:
                break
            n = tf.nn.avg_pool2d(n, 2, 2, "VALID")
            size //= 2
    return total


def normalized_noise(n):
    """Each image's map shifted and scaled to mean 0, unbiased std 1 ([B, R, R, 1])."""
    import tensorflow as tf

    count = tf.cast(tf.reduce_prod(tf.shape(n)[1:]), n.dtype)
    mean = tf.reduce_mean(n, axis=[1, 2, 3], keepdims=True)
    var = tf.reduce_sum(tf.square(n - mean), axis=[1, 2, 3], keepdims=True) / (count - 1.0)
    return (n - mean) / tf.sqrt(var)


def loss_resolution(images):
    """Average-pool NHWC images above LOSS_MAX_SIZE down to it (the reference's loss resolution)."""
    import tensorflow as tf

    size = int(images.shape[1])
    if size <= LOSS_MAX_SIZE:
        return images
    factor = size // LOSS_MAX_SIZE
    return tf.nn.avg_pool2d(images, factor, factor, "VALID")


def latent_stats(g, n: int = 10000, seed: int = 0, chunk: int = 4096):
    """Mean of ``g``'s mapping over n stateless N(0, 1) z ([style_dim]) and the scalar spread
    sqrt(sum((w - mean)^2) / n) that scales the latent noise.

    Not ``g.mean_latent``: the spread must come from the same samples as the mean, and the reference's
    projector starts from this mapped mean even where a checkpoint stores a truncation centre (w_avg)."""
    import tensorflow as tf

    n = int(n)
    if n < 1:
        raise ValueError(f"n_mean_latent must be >= 1, got {n}")
    z = tf.random.stateless_normal([n, g.z_dim], seed=[int(seed), 1])
    w = np.concatenate([np.asarray(g.mapping(z[i:i + chunk]), np.float64) for i in range(0, n, chunk)])
    mean = w.mean(axis=0)
    std = math.sqrt(float(np.square(w - mean).sum()) / n)
    return mean.astype(np.float32), std


# ---------------------------------------------------------------------------
# Perceptual distance on VGG16 features
# ---------------------------------------------------------------------------

class VGGPerceptual:
    """LPIPS-style distance ("baseline": no learned channel weights) on keras.applications VGG16 features.

    ``weights``: a local VGG16 weights file (include_top=False layout; .h5 or .weights.h5).
    Call ``features(images)`` once for the fixed photos and ``distance(features, images)``
    in the loop; images are NHWC in [-1, 1] (any size >= 1 px; the net is fully convolutional).
    """

    def __init__(self, weights):
        import keras

        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--vgg16_weights {weights} does not exist or is not a file")
        if not weights.endswith(".h5"):
            raise ValueError(f"--vgg16_weights {weights}: expected a Keras weights file ending in .h5 or "
                             ".weights.h5 (keras.applications VGG16, include_top=False)")
        vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
        try:
            vgg.load_weights(weights)
        except Exception as e:  # h5py / Keras raise many types for a wrong or corrupt file
            raise ValueError(f"--vgg16_weights {weights} could not be loaded as keras.applications VGG16 "
                             f"(include_top=False) weights: {type(e).__name__}: {' '.join(str(e).split())}") from None
        vgg.trainable = False
        self.path = weights
        self.model = keras.Model(vgg.input, [vgg.get_layer(name).output for name in VGG_LAYERS])

    @staticmethod
    def preprocess(images):
        """[-1, 1] RGB -> Keras VGG16 input: BGR, 0..255 minus the ImageNet channel means."""
        import tensorflow as tf

        x = (tf.convert_to_tensor(images, tf.float32) + 1.0) * 127.5
        return x[..., ::-1] - tf.constant(VGG_BGR_MEAN, tf.float32)

    def features(self, images):
        """Unit-normalised (over channels) features of each tapped layer, a list of NHWC tensors."""
        import tensorflow as tf

        out = []
        for f in self.model(self.preprocess(images), training=False):
            norm = tf.sqrt(tf.reduce_sum(tf.square(f), axis=-1, keepdims=True))
            out.append(f / (norm + NORM_EPS))
        return out

    def distance(self, ref_features, images):
        """Per-image distance [B] to ``ref_features`` (from :meth:`features`)."""
        import tensorflow as tf

        total = 0.0
        for a, b in zip(ref_features, self.features(images)):
            total += tf.reduce_mean(tf.reduce_sum(tf.square(a - b), axis=-1), axis=[1, 2])
        return total

    def __call__(self, a, b):
        return self.distance(self.features(a), b)


# ---------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------

def check_config(cfg: ProjectConfig, perceptual=None) -> None:
    if cfg.steps < 1:
        raise ValueError(f"--step must be >= 1, got {cfg.steps}")
    if cfg.n_mean_latent < 1:
        raise ValueError(f"--n_mean_latent must be >= 1, got {cfg.n_mean_latent}")
    for name in ("lr", "lr_rampup", "lr_rampdown", "noise", "noise_ramp", "noise_regularize", "mse", "vgg"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
    if cfg.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.mse == 0 and (perceptual is None or cfg.vgg == 0):
        raise ValueError("nothing matches the photo: --mse is 0 and there is no perceptual loss "
                         "(give --vgg16_weights and --vgg > 0, or --mse > 0)")


def describe_loss(cfg: ProjectConfig, perceptual=None) -> str:
    terms = []
    if cfg.mse > 0:
        terms.append(f"{cfg.mse:g} * MSE")
    if perceptual is not None and cfg.vgg > 0:
        terms.append(f"{cfg.vgg:g} * VGG16 perceptual ({perceptual.path})")
    terms.append(f"{cfg.noise_regularize:g} * noise regulariser")
    text = "loss = " + " + ".join(terms)
    if perceptual is None:
        text += " (no --vgg16_weights: MSE only, no perceptual loss)"
    elif cfg.vgg == 0:
        text += " (--vgg 0: perceptual loss off)"
    return text


class _Projector:
    """What a projection optimises: the latent (one w, or with ``w_plus`` one W+, per photo, starting at the
    mean latent), the noise maps (every photo starts from the same draw) and their Adam states.

    :meth:`losses` gives each photo's loss terms, :meth:`step` one Adam update at a given learning rate and
    latent noise; :func:`project` runs the schedule."""

    def __init__(self, g, photos, cfg: ProjectConfig, perceptual: VGGPerceptual | None):
        import tensorflow as tf

        self.g, self.cfg, self.b = g, cfg, len(photos)
        self.perceptual = perceptual if perceptual is not None and cfg.vgg > 0 else None
        self.target = loss_resolution(tf.constant(photos))
        self.target_feats = ([tf.constant(f) for f in self.perceptual.features(self.target)]
                             if self.perceptual is not None else None)
        mean, self.latent_std = latent_stats(g, cfg.n_mean_latent, cfg.seed)
        self.rows = g.n_latent if cfg.w_plus else 1  # one w per layer, or one w broadcast to every layer
        self.w = tf.Variable(np.broadcast_to(mean, (self.b, self.rows, g.style_dim)).copy(),
                             name="w_plus" if cfg.w_plus else "w")
        # Every photo starts from the same noise maps and gets the same latent noise at a step: a photo's
        # result depends on (seed, photo) only, not on the batch it is projected in.
        rng = np.random.RandomState(cfg.seed)
        self.noises = [tf.Variable(np.repeat(rng.standard_normal((1, r, r, 1)).astype(np.float32), self.b, axis=0),
                                   name=f"noise_{i}")
                       for i, r in enumerate(g.noise_resolution(i) for i in range(g.num_layers))]
        self.params = [self.w, *self.noises]
        self.m = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.v = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.step = tf.function(self._step, autograph=False, reduce_retracing=True)
        self.evaluate = tf.function(lambda: self.losses(self.w), autograph=False)

    def losses(self, w):
        """({mse, perceptual, noise_reg, loss}: each [B], one value per photo; the image) at latent ``w``."""
        import tensorflow as tf

        cfg = self.cfg
        # the losses in float32 whatever the generator computes in (bf16: only the network is bfloat16)
        image = tf.cast(self.g.synthesis(latent.to_wplus(w, self.g.n_latent), noise=list(self.noises),
                                         randomize_noise=False).image, tf.float32)
        x = loss_resolution(image)
        out = {"mse": tf.reduce_mean(tf.square(x - self.target), axis=[1, 2, 3]),
               "perceptual": (self.perceptual.distance(self.target_feats, x) if self.perceptual is not None
                              else tf.zeros([self.b])),
               "noise_reg": noise_regularizer(self.noises)}
        out["loss"] = cfg.mse * out["mse"] + cfg.vgg * out["perceptual"] + cfg.noise_regularize * out["noise_reg"]
        return out, image

    def _step(self, lr, strength, count, seed):
        import tensorflow as tf

        noise = tf.random.stateless_normal([1, self.rows, self.g.style_dim], seed=seed) * strength
        with tf.GradientTape() as tape:
            out, _ = self.losses(self.w + noise)
            total = tf.reduce_sum(out["loss"])  # a sum over photos: each photo's gradients are its own
        for p, grad, m, v in zip(self.params, tape.gradient(total, self.params), self.m, self.v):
            if grad is None:  # a noise input the image does not depend on
                grad = tf.zeros_like(p)
            latent.adam_update(p, grad, m, v, lr, count)
        for n in self.noises:
            n.assign(normalized_noise(n))
        return out


def _as_lists(out) -> dict:
    return {k: [float(x) for x in np.asarray(val)] for k, val in out.items()}


def project(g, photos, cfg: ProjectConfig = ProjectConfig(), perceptual: VGGPerceptual | None = None,
            log=None, log_every: int = 100, progress=None, snapshot=None, snapshots: int = 0) -> Projection:
    """Optimise W+ and the noise maps of ``g`` so that its image matches each photo.

    photos: [B, size, size, 3] float in [-1, 1] (NHWC, the generator's size).
    perceptual: a :class:`VGGPerceptual` (or None: MSE only).
    log: optional ``fn(str)`` for progress lines every ``log_every`` steps.
    progress: optional ``fn(steps done, text)`` after every step.
    snapshot: optional ``fn(step, images [B, H, W, 3])``: the current images (latent without its step noise)
      at ``snapshots`` steps spread evenly from 0 (the start) to the last.
    """
    import tensorflow as tf

    check_config(cfg, perceptual)
    photos = np.asarray(photos, np.float32)
    if photos.ndim != 4 or photos.shape[1:] != (g.size, g.size, 3):
        raise ValueError(f"photos must be [B, {g.size}, {g.size}, 3] for a {g.size} px generator, got {photos.shape}")
    problem = _Projector(g, photos, cfg, perceptual)
    shots = set(np.linspace(0, cfg.steps, int(snapshots)).round().astype(int)) if snapshot is not None else set()
    initial = _as_lists(problem.evaluate()[0])
    history = []
    t0 = time.perf_counter()
    if 0 in shots:
        snapshot(0, np.asarray(problem.evaluate()[1]))
    for i in range(cfg.steps):
        t = i / cfg.steps
        lr = latent.lr_at(t, cfg.lr, cfg.lr_rampup, cfg.lr_rampdown)
        strength = latent_noise_strength(t, problem.latent_std, cfg.noise, cfg.noise_ramp)
        out = problem.step(tf.constant(lr, tf.float32), tf.constant(strength, tf.float32),
                           tf.constant(i + 1, tf.float32), tf.constant([cfg.seed, i], tf.int32))
        if (i + 1) % max(1, log_every) == 0 or i == 0 or i + 1 == cfg.steps:
            rec = {"step": i + 1, "lr": lr, **_as_lists(out)}
            history.append(rec)
            if log is not None:
                percept = f", perceptual {np.mean(rec['perceptual']):.5f}" if problem.perceptual is not None else ""
                log(f"step {i + 1}/{cfg.steps} ({time.perf_counter() - t0:.1f} s): lr {lr:.4g}, "
                    f"mse {np.mean(rec['mse']):.5f}{percept}, noise_reg {np.mean(rec['noise_reg']):.3g}")
        if progress is not None:
            progress(i + 1, f"mse {float(np.mean(out['mse'])):.5f}")
        if i + 1 in shots:
            snapshot(i + 1, np.asarray(problem.evaluate()[1]))
    final, image = problem.evaluate()
    wplus = latent.to_wplus(problem.w.numpy(), g.n_latent)
    return Projection(wplus, [n.numpy() for n in problem.noises], np.asarray(image), history, initial,
                      _as_lists(final))


# ---------------------------------------------------------------------------
# Rendering the projection through source and target
# ---------------------------------------------------------------------------

def toonify(source, target, wplus, noises, layers=(), target_noise: str = "projected"):
    """Source reconstruction, target image and layer-swapped targets for projected W+ and noise.

    Returns tf_cartoon.generate.SwapImages (float NHWC images in about [-1, 1]).
    """
    from tf_cartoon import generate as gen

    layers = latent.check_pair(source, target, layers)
    if target_noise not in ("projected", "stored"):
        raise ValueError(f"--target_noise must be 'projected' or 'stored', got {target_noise!r}")
    wplus = gen.to_wplus(source, wplus)
    src = source.synthesis(wplus, noise=list(noises), randomize_noise=False, tap_layers=layers)
    t_noise = list(noises) if target_noise == "projected" else None
    tgt = np.asarray(target.synthesis(wplus, noise=t_noise, randomize_noise=False).image, np.float32)
    swapped = {l: np.asarray(target.synthesis(wplus, noise=t_noise, randomize_noise=False, swap_layer=l,
                                              swap_feature=src.features[l]).image, np.float32) for l in layers}
    return gen.SwapImages(np.asarray(src.image, np.float32), tgt, swapped)


def save_projection(path, wplus, noises, photo=None, reconstruction=None, settings=None) -> str:
    """One photo's projection as .npz (module docstring), atomically."""
    arrays = {"w_plus": np.asarray(wplus, np.float32)}
    for i, n in enumerate(noises):
        n = np.asarray(n, np.float32)
        arrays[f"noise_{i}"] = n.reshape((1, *n.shape[-3:])) if n.ndim == 4 else n.reshape((1, *n.shape, 1))
    if photo is not None:
        arrays["photo"] = to_uint8(photo)
    if reconstruction is not None:
        arrays["reconstruction"] = to_uint8(reconstruction)
    arrays["settings"] = np.array(json.dumps(settings or {}, sort_keys=True))
    return atomic_save(path, lambda f: np.savez(f, **arrays))


def load_projection(path):
    """-> (w_plus [n_latent, style_dim], noises: list of [1, R, R, 1], settings dict)."""
    with np.load(os.fspath(path)) as f:
        count = sum(1 for k in f.files if k.startswith("noise_"))
        return f["w_plus"], [f[f"noise_{i}"] for i in range(count)], json.loads(str(f["settings"]))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    d = ProjectConfig()
    p = cli.parser("python -m tf_cartoon.project", __doc__)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="aligned face photos (any format PIL reads)")
    cli.add_role(p, "source", required=True, help="source (pretrained) generator to project into: reference .pt, "
                                                  "converted dir, training workdir or builtin:<name>")
    cli.add_role(p, "target", default=None, help="target (fine-tuned) generator rendering the projected W+")
    p.add_argument("--swap_layer", default=None, help="layer swapping at these layers, e.g. 1,2 (needs --target; "
                                                      "default 1,2 where valid)")
    cli.add_role(p, "out", required=True, help="output directory")
    p.add_argument("--vgg16_weights", default=None,
                   help="local keras.applications VGG16 weights (include_top=False, .h5 / .weights.h5) for the "
                        "perceptual loss; without: MSE only")
    p.add_argument("--step", "--steps", dest="steps", type=int, default=d.steps, help="optimisation steps")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default 0.01, as the reference)")
    p.add_argument("--w_plus", action="store_true", help="optimise one w per layer (W+) instead of one w")
    p.add_argument("--lr_rampup", type=float, default=d.lr_rampup, help="fraction of steps ramping the lr up")
    p.add_argument("--lr_rampdown", type=float, default=d.lr_rampdown, help="fraction of steps ramping it down")
    p.add_argument("--noise", type=float, default=d.noise, help="initial latent noise (x latent std)")
    p.add_argument("--noise_ramp", type=float, default=d.noise_ramp, help="fraction of steps it decays over")
    p.add_argument("--noise_regularize", type=float, default=d.noise_regularize, help="noise regulariser weight")
    p.add_argument("--mse", type=float, default=d.mse, help="MSE weight")
    p.add_argument("--vgg", type=float, default=d.vgg, help="perceptual loss weight (with --vgg16_weights)")
    p.add_argument("--n_mean_latent", type=int, default=d.n_mean_latent, help="z samples for the mean latent")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the mean latent, initial and latent noise")
    p.add_argument("--batch", type=int, default=4, help="photos optimised together (results do not depend on it)")
    p.add_argument("--target_noise", choices=("projected", "stored"), default="projected",
                   help="noise maps the target renders with")
    p.add_argument("--log_every", type=int, default=100, help="log line with the losses every N steps")
    p.add_argument("--pad", type=int, default=0, help="pixels between grid cells")
    cli.add_video(p, "<name>.mp4: photo | reconstruction as the optimisation goes", 100, "over the optimisation")
    cli.add_precision(p)
    cli.add_quiet(p)
    return p


def _prepare(args):
    from tf_cartoon import generate as gen

    cfg = ProjectConfig(**{k: getattr(args, k) for k in ProjectConfig._fields})
    layers = parse_range(args.swap_layer, "swap layers") if args.swap_layer is not None else None
    if layers is not None and args.target is None:
        raise ValueError("--swap_layer needs --target (the generator the source's features are swapped into)")
    cli.check_at_least(args, 1, "batch", "log_every", "frame_ms")
    cli.check_at_least(args, 0, "pad")
    if args.video and args.video_frames < 2:
        raise ValueError(f"--video_frames must be >= 2, got {args.video_frames}")
    check_config(cfg, perceptual=args.vgg16_weights)  # weights are loaded below; here only the numbers
    for path in args.photos:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"photo {path} does not exist or is not a file")
    if args.vgg16_weights is not None and not os.path.exists(args.vgg16_weights):
        raise FileNotFoundError(f"--vgg16_weights {args.vgg16_weights} does not exist")
    args.precision = cli.resolve_precision(args.precision)  # the generators'; latents, losses, Adam stay float32
    source = cli.load_generator(args.source, "--source", precision=args.precision)
    photos = np.stack([load_photo(p, source.size) for p in args.photos])
    target = None
    if args.target is not None:
        target = cli.load_generator(args.target, "--target", precision=args.precision)
        if layers is None:
            layers = gen.default_swap_layers(target)
        layers = latent.check_pair(source, target, layers, "--target")
    perceptual = VGGPerceptual(args.vgg16_weights) if args.vgg16_weights is not None else None
    os.makedirs(args.out, exist_ok=True)
    return cfg, photos, source, target, layers or (), perceptual


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():
        cfg, photos, source, target, layers, perceptual = _prepare(args)

    progress = None  # the running Progress: log lines go above its terminal line

    def log(msg):
        if progress is not None:
            progress.write(msg)
        elif not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    log(f"projecting {len(photos)} photo(s) into {args.source} ({source.size} px, W+ {source.n_latent} x "
        f"{source.style_dim}, {args.precision}), {cfg.steps} steps; {describe_loss(cfg, perceptual)}")
    names = photo_names(args.photos)
    rows, videos = [], []
    for start in range(0, len(photos), args.batch):
        chunk = slice(start, start + args.batch)
        label = "project"
        if len(photos) > args.batch:
            label = f"project photos {start + 1}..{min(start + args.batch, len(photos))} of {len(photos)}"
        frames = []  # per snapshot: [B, H, 2 W, 3] uint8, photo | reconstruction

        def snapshot(step, images, chunk=chunk, frames=frames):
            frames.append(np.concatenate([to_uint8(photos[chunk]), to_uint8(images)], axis=2))

        progress = Progress(label, cfg.steps, unit="steps", quiet=args.quiet)
        res = project(source, photos[chunk], cfg, perceptual, log=log, log_every=args.log_every,
                      progress=progress.update, snapshot=snapshot if args.video else None,
                      snapshots=args.video_frames)
        progress.finish()
        progress = None
        panels = [photos[chunk], res.image]
        if target is not None:
            sw = toonify(source, target, res.wplus, res.noises, layers, args.target_noise)
            panels += [sw.target, *(sw.swapped[l] for l in sorted(sw.swapped))]
        for j, name in enumerate(names[chunk]):
            settings = {**cfg._asdict(), "photo": os.path.abspath(args.photos[start + j]),
                        "source": cli.checkpoint_record(args.source),
                        "target": cli.checkpoint_record(args.target) if args.target else None,
                        "swap_layers": list(layers), "target_noise": args.target_noise,
                        "precision": args.precision,
                        "vgg16_weights": os.path.abspath(args.vgg16_weights) if perceptual else None,
                        "panels": ["photo", "source"] + (["target"] + [f"swap_l{l}" for l in sorted(layers)]
                                                         if target is not None else []),
                        "initial": {k: v[j] for k, v in res.initial.items()},
                        "final": {k: v[j] for k, v in res.final.items()}}
            save_projection(os.path.join(args.out, f"{name}.npz"), res.wplus[j], [n[j:j + 1] for n in res.noises],
                            photos[start + j], res.image[j], settings)
            row = np.concatenate([to_uint8(p[j]) for p in panels], axis=1)
            save_png(os.path.join(args.out, f"{name}.png"), row)
            if args.video:
                videos.append(save_animation(os.path.join(args.out, name), [f[j] for f in frames], args.frame_ms,
                                             video=True))
            rows.append(row)
            log(f"{name}: mse {res.initial['mse'][j]:.5f} -> {res.final['mse'][j]:.5f}")
    save_png(os.path.join(args.out, "grid.png"), make_grid([r[None] for r in rows], pad=args.pad))
    cols = "photo | source" + (" | target | " + " | ".join(f"swap_l{l}" for l in sorted(layers))
                               if target is not None else "")
    if target is not None and not layers:
        cols = "photo | source | target"
    kind = os.path.splitext(videos[0])[1] if videos else ""
    print(f"wrote {args.out}: {len(rows)} x (<name>.npz, <name>.png{', <name>' + kind if videos else ''}), "
          f"grid.png ({cols})")
    return 0


if __name__ == "__main__":
    cli.run(main)
