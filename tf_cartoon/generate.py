"""Sample images from a (fine-tuned) generator, with layer swapping, style mixing and interpolation.

    python -m tf_cartoon.generate --target TARGET --seeds 0-15 --out samples
    python -m tf_cartoon.generate --target TARGET --source SOURCE --swap_layer 1,2 --seeds 0-7 --out swap
    python -m tf_cartoon.generate --target TARGET --mixing --mix_rows 0-3 --mix_cols 4-7 --mix_layers 0-3 --out mix
    python -m tf_cartoon.generate --target TARGET --source SOURCE --interpolate --frames 30 --seeds 0-3 --out walk

TARGET / SOURCE: a reference .pt, a converted directory, a training workdir or builtin:<name>
(``--ckpt`` is an older spelling of ``--target``).

Determinism: the latent of seed s is ``np.random.RandomState(s).randn(style_dim)``
(as StyleGAN's generate scripts draw it), the noise inputs are the generator's
stored buffers, and each generator truncates toward ITS OWN mean latent, the
mean of its mapping over ``truncation_samples`` z drawn from a fixed seed. The
same flags therefore give the same PNG bytes on every run.

Layer swapping at l (1..n_blocks; Cartoon-StyleGAN2's inference trick): the
source runs up to convs.{2l-1}; that feature replaces the target's own feature
there, and the target's to_rgbs.{l-1} (on top of its own lower-resolution RGB
skip) and all higher blocks finish the image. The latents pair as --pairing
says (shared_w: the seed's z through the source's mapping, that w to both;
own_z: each generator maps the same z itself); each truncates toward its own
mean. No weights are merged.

Outputs under --out DIR: ``seedNNNN.png`` (target), ``grid.png`` (rows: target,
or source | target | swap_l{l}... with --source; one column per seed),
``source/`` and ``swap_l{l}/`` per-seed images with --source, ``mixing.png``
with --mixing, ``interpolation.gif`` with --interpolate (``interpolation.mp4``
with --video as well). Progress (rate, ETA) goes to stderr; --quiet drops it.
``--precision bf16`` runs the networks in bfloat16 (float32 weights; README "bf16 quality"); latents stay
float32 and the images are written the same way in either precision.

The library functions (:func:`sample`, :func:`swap_images`, :func:`style_mixing`,
:func:`interpolation_frames`, ...) return float images in about [-1, 1] (NHWC)
unless said; :mod:`tf_cartoon.images` turns them into files. The module itself
imports no TensorFlow (the generators bring it), so flag errors come back fast.
"""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.images import make_grid, parse_range, parse_seeds, save_animation, save_png, to_uint8
from tf_cartoon.progress import Progress, stage

MEAN_LATENT_SEED = 0  # seed of the z batch behind every generator's mean latent
DEFAULT_SWAP_LAYERS = (1, 2)  # what the paper's demos use (clipped to n_blocks)


# ---------------------------------------------------------------------------
# Latents
# ---------------------------------------------------------------------------

def seed_z(seeds, z_dim: int) -> np.ndarray:
    """z for each seed: ``np.random.RandomState(seed).randn(z_dim)``, float32 [N, z_dim] (z_dim is style_dim
    for the reference's networks)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        return np.zeros([0, int(z_dim)], np.float32)
    return np.stack([np.random.RandomState(s).randn(int(z_dim)) for s in seeds]).astype(np.float32)


def mean_latent(g, truncation_samples: int = 4096) -> np.ndarray:
    """The generator's own mean latent over ``truncation_samples`` z from a fixed seed, [1, style_dim]."""
    n = int(truncation_samples)
    if n < 1:
        raise ValueError(f"truncation_samples must be >= 1, got {n}")
    return np.asarray(g.mean_latent(n, seed=MEAN_LATENT_SEED), np.float32)


def mean_latents(truncation: float, truncation_samples: int, *gens) -> list:
    """:func:`mean_latent` of each generator, or None where a generator is None or ``truncation`` is 1
    (nothing to truncate toward)."""
    return [mean_latent(g, truncation_samples) if g is not None and truncation != 1.0 else None for g in gens]


def truncate(g, w, truncation: float = 0.7, truncation_latent=None, truncation_samples: int = 4096) -> np.ndarray:
    """``mean + psi * (w - mean)`` toward ``g``'s own mean (computed when not given); psi 1 returns w."""
    w = np.asarray(w, np.float32)
    psi = float(truncation)
    if not np.isfinite(psi):
        raise ValueError(f"truncation must be finite, got {truncation}")
    if psi == 1.0:
        return w
    t = mean_latent(g, truncation_samples) if truncation_latent is None else np.asarray(truncation_latent)
    return latent.truncate(w, t, psi)


def latents(g, seeds, truncation: float = 0.7, truncation_latent=None, truncation_samples: int = 4096) -> np.ndarray:
    """Truncated w of each seed through ``g``'s own mapping, float32 [N, style_dim]."""
    z = seed_z(seeds, g.z_dim)
    w = np.asarray(g.mapping(z), np.float32) if len(z) else np.zeros_like(z)
    return truncate(g, w, truncation, truncation_latent, truncation_samples)


# How a source and a target render the same seed (``--pairing``):
#   shared_w  z through the SOURCE's mapping, that w to both generators, each truncated toward its own mean
#             latent: what the reference's demos do (run.py, the notebooks, apply_factor.py feed the source's
#             W with input_is_latent=True); the target's own mapping is not used.
#   own_z     each generator maps the seed's z itself (the same for FreezeSG, whose mapping stays frozen;
#             different for models whose mapping trained, e.g. FreezeD or the structure loss).
PAIRINGS = ("shared_w", "own_z")


def paired_latents(source, target, seeds, truncation: float = 0.7, source_mean=None, target_mean=None,
                   truncation_samples: int = 4096, pairing: str = "shared_w") -> tuple[np.ndarray, np.ndarray]:
    """(source w, target w) of each seed, each truncated toward its own generator's mean (``PAIRINGS``)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if pairing == "own_z":  # one z through both mappings
        latent.check_pair(source, target, (), "--pairing own_z", same_z=True)
    src_w = latents(source, seeds, 1.0)
    tgt_w = src_w if pairing == "shared_w" else latents(target, seeds, 1.0)
    return (truncate(source, src_w, truncation, source_mean, truncation_samples),
            truncate(target, tgt_w, truncation, target_mean, truncation_samples))


def to_wplus(g, w) -> np.ndarray:
    """w [N, D] -> ``g``'s W+ [N, n_latent, D] (every slot the same), float32; W+ passes through."""
    return latent.to_wplus(np.asarray(w, np.float32), g.n_latent, g.style_dim)


def lerp_path(w, frames: int, closed: bool = True) -> np.ndarray:
    """Linear walk through the rows of ``w`` ([K, ...]), ``frames`` steps per consecutive pair.

    closed: also walk from the last row back to the first (a seamless loop):
    K * frames points. Open: (K - 1) * frames + 1 points ending on the last row.
    """
    w = np.asarray(w, np.float32)
    frames = int(frames)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if len(w) < 2:
        raise ValueError(f"interpolation needs at least two seeds, got {len(w)}")
    t = (np.arange(frames, dtype=np.float32) / frames).reshape([-1] + [1] * (w.ndim - 1))
    ends = np.concatenate([w[1:], w[:1]]) if closed else w[1:]
    path = [a[None] + t * (b - a)[None] for a, b in zip(w, ends)]
    if not closed:
        path.append(w[-1:])
    return np.concatenate(path).astype(np.float32)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

class Rendered(NamedTuple):
    images: np.ndarray  # [N, H, W, 3] float32 in about [-1, 1]
    features: dict  # swap index L -> [N, h, w, C] float32, for the tapped layers


def render(g, wplus, batch: int = 8, tap_layers=(), swap_layer=None, swap_feature=None) -> Rendered:
    """W+ (or w) -> images with the stored noise, ``batch`` samples per synthesis call.

    tap_layers / swap_layer / swap_feature: as :meth:`Generator.synthesis` (swap_feature [N, ...]).
    """
    wplus = to_wplus(g, wplus)
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    tap_layers = tuple(int(t) for t in tap_layers)
    images, features = [], {t: [] for t in tap_layers}
    for i in range(0, len(wplus), batch):
        kw = {}
        if swap_layer is not None:
            kw = dict(swap_layer=int(swap_layer), swap_feature=swap_feature[i:i + batch])
        out = g.synthesis(wplus[i:i + batch], randomize_noise=False, tap_layers=tap_layers, **kw)
        # float32 whatever the networks compute in (bf16 generators): what the tools write is the same either way
        images.append(np.asarray(out.image, np.float32))
        for t in tap_layers:
            features[t].append(np.asarray(out.features[t], np.float32))
    if not images:
        raise ValueError("nothing to render (no seeds)")
    return Rendered(np.concatenate(images), {t: np.concatenate(f) for t, f in features.items()})


def sample(g, seeds, truncation: float = 0.7, truncation_latent=None, truncation_samples: int = 4096,
           batch: int = 8) -> np.ndarray:
    """Images of ``seeds`` from ``g`` (stored noise, truncation toward ``g``'s own mean), [N, H, W, 3]."""
    w = latents(g, seeds, truncation, truncation_latent, truncation_samples)
    return render(g, w, batch).images


# ---------------------------------------------------------------------------
# Layer swapping
# ---------------------------------------------------------------------------

class SwapImages(NamedTuple):
    source: np.ndarray  # [N, H, W, 3]
    target: np.ndarray  # [N, H, W, 3]
    swapped: dict  # swap layer l -> [N, H, W, 3]


def default_swap_layers(g) -> list[int]:
    """DEFAULT_SWAP_LAYERS, those ``g`` has."""
    return [layer for layer in DEFAULT_SWAP_LAYERS if layer <= g.n_blocks]


def swap_from_w(source, target, source_w, target_w, layers, batch: int = 8) -> SwapImages:
    """Source, target and layer-swapped images for given (already truncated) latents.

    source_w / target_w: [N, D] w or [N, n_latent, D] W+ of each generator.
    """
    layers = latent.check_pair(source, target, layers)
    src = render(source, source_w, batch, tap_layers=layers)
    target_wplus = to_wplus(target, target_w)
    tgt = render(target, target_wplus, batch).images
    swapped = {l: render(target, target_wplus, batch, swap_layer=l, swap_feature=src.features[l]).images
               for l in layers}
    return SwapImages(src.images, tgt, swapped)


def swap_images(source, target, seeds, layers=DEFAULT_SWAP_LAYERS, truncation: float = 0.7, source_mean=None,
                target_mean=None, truncation_samples: int = 4096, batch: int = 8,
                pairing: str = "shared_w") -> SwapImages:
    """For each seed: the source image, the target image and the target with the source's feature at
    each swap layer. The latents pair as ``pairing`` says (``PAIRINGS``); each generator truncates toward its
    own mean latent (``source_mean`` / ``target_mean`` when given)."""
    layers = latent.check_pair(source, target, layers)
    src_w, tgt_w = paired_latents(source, target, seeds, truncation, source_mean, target_mean, truncation_samples,
                                  pairing)
    return swap_from_w(source, target, src_w, tgt_w, layers, batch)


def swap_grid_rows(result: SwapImages) -> list[np.ndarray]:
    """Grid rows: source, target, then one per swap layer (ascending)."""
    return [result.source, result.target, *(result.swapped[l] for l in sorted(result.swapped))]


def render_pair(source, w, truncation: float = 0.7, target=None, layers=(), source_mean=None, target_mean=None,
                truncation_samples: int = 4096, batch: int = 8) -> list[np.ndarray]:
    """Image rows of the same untruncated latents ``w`` ([N, D] or W+): the source's, then with a target the
    target's and one per swap layer (:func:`swap_grid_rows`); each generator truncates toward its own mean."""
    src_w = truncate(source, w, truncation, source_mean, truncation_samples)
    if target is None:
        return [render(source, src_w, batch).images]
    tgt_w = truncate(target, w, truncation, target_mean, truncation_samples)
    return swap_grid_rows(swap_from_w(source, target, src_w, tgt_w, layers, batch))


# ---------------------------------------------------------------------------
# Style mixing
# ---------------------------------------------------------------------------

class Mixing(NamedTuple):
    row_images: np.ndarray  # [R, H, W, 3]
    col_images: np.ndarray  # [C, H, W, 3]
    mixed: np.ndarray  # [R, C, H, W, 3]: row r's W+ with the mix_layers slots from column c's w


def style_mixing(g, row_seeds, col_seeds, mix_layers, truncation: float = 0.7, truncation_latent=None,
                 truncation_samples: int = 4096, batch: int = 8) -> Mixing:
    """StyleGAN's style-mixing figure: each row seed's W+ with slots ``mix_layers`` replaced by each
    column seed's w (all truncated toward ``g``'s own mean)."""
    from_cols = latent.row_mask(latent.check_rows(mix_layers, g.n_latent, g.size), g.n_latent)
    if truncation != 1.0 and truncation_latent is None:
        truncation_latent = mean_latent(g, truncation_samples)
    w_rows = latents(g, row_seeds, truncation, truncation_latent)
    w_cols = latents(g, col_seeds, truncation, truncation_latent)
    n_rows, n_cols = len(w_rows), len(w_cols)
    wplus = latent.mix(to_wplus(g, w_rows)[:, None], w_cols[None, :, None, :], from_cols)  # [R, C, n_latent, D]
    mixed = render(g, wplus.reshape([n_rows * n_cols, g.n_latent, g.style_dim]), batch).images
    return Mixing(render(g, w_rows, batch).images, render(g, w_cols, batch).images,
                  mixed.reshape([n_rows, n_cols, *mixed.shape[1:]]))


def mixing_figure(m: Mixing, pad: int = 0) -> np.ndarray:
    """HWC uint8: the top row holds a blank cell then the column images; each further row the row
    image then its mixes. (R + 1) x (C + 1) cells."""
    blank = np.full((1, *m.row_images.shape[1:]), 255, np.uint8)
    rows = [np.concatenate([blank, to_uint8(m.col_images)])]
    rows += [np.concatenate([to_uint8(m.row_images[r:r + 1]), to_uint8(m.mixed[r])]) for r in range(len(m.mixed))]
    return make_grid(rows, pad=pad, pad_value=255)


# ---------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------

def interpolation_frames(target, seeds, frames: int = 30, truncation: float = 0.7, source=None, layers=(),
                         source_mean=None, target_mean=None, truncation_samples: int = 4096,
                         batch: int = 8, pairing: str = "shared_w", progress=None) -> list[np.ndarray]:
    """HWC uint8 frames walking linearly in W from seed to seed and back to the first
    (``frames`` per pair, ``frames * len(seeds)`` in all). With a source, each frame is
    source | target | swap_l{l}... side by side (the seeds' latents paired as ``pairing`` says).
    progress: optional ``fn(frames done)`` after each batch."""
    layers = latent.check_pair(source, target, layers) if source is not None else ()
    if source is None:
        tgt_path, src_path = lerp_path(latents(target, seeds, truncation, target_mean, truncation_samples),
                                       frames), None
    else:
        src_w, tgt_w = paired_latents(source, target, seeds, truncation, source_mean, target_mean,
                                      truncation_samples, pairing)
        src_path, tgt_path = lerp_path(src_w, frames), lerp_path(tgt_w, frames)
    out = []
    for i in range(0, len(tgt_path), int(batch)):
        if source is None:
            cells = [render(target, tgt_path[i:i + batch], batch).images]
        else:
            cells = swap_grid_rows(swap_from_w(source, target, src_path[i:i + batch], tgt_path[i:i + batch],
                                               layers, batch))
        out.extend(to_uint8(np.concatenate(cells, axis=2)))
        if progress is not None:
            progress(len(out))
    return out


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.generate", __doc__)
    cli.add_role(p, "target", "--ckpt", required=True,
                 help="target (fine-tuned) generator: reference .pt, converted dir, workdir or builtin:<name>")
    cli.add_role(p, "source", default=None, help="source (pretrained) generator, e.g. ffhq256.pt, for layer swapping")
    cli.add_role(p, "out", required=True, help="output directory")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-15 or 0-3,7 (default 0-7)")
    cli.add_truncation(p)
    p.add_argument("--pairing", choices=PAIRINGS, default="shared_w",
                   help="with --source: shared_w (default, as the reference's demos): the seed's z through the "
                        "source's mapping, that w to both; own_z: each generator maps z itself")
    p.add_argument("--swap_layer", default=None,
                   help="swap layers in 1..n_blocks, e.g. 1,2 (needs --source; default 1,2 where valid)")
    p.add_argument("--mixing", action="store_true", help="also write a style-mixing grid mixing.png")
    p.add_argument("--mix_rows", default="0-3", help="row seeds of the mixing grid")
    p.add_argument("--mix_cols", default="4-7", help="column seeds of the mixing grid")
    p.add_argument("--mix_layers", default="0-3", help="W+ slots taken from the column seeds")
    p.add_argument("--interpolate", action="store_true", help="also write interpolation.gif through --seeds")
    cli.add_video(p, "the interpolation as interpolation.mp4 instead of the GIF", None)
    p.add_argument("--frames", type=int, default=30, help="interpolation frames per pair of seeds")
    p.add_argument("--batch", type=int, default=8, help="images per synthesis call")
    p.add_argument("--pad", type=int, default=0, help="pixels between grid cells")
    cli.add_precision(p)
    cli.add_quiet(p)
    return p


def _prepare(args):
    """Parse and validate everything that can fail on the user's input; load the generators."""
    seeds = parse_seeds(args.seeds)
    mix = (parse_seeds(args.mix_rows), parse_seeds(args.mix_cols), parse_range(args.mix_layers, "mix layers"))
    layers = parse_range(args.swap_layer, "swap layers") if args.swap_layer is not None else None
    cli.check_at_least(args, 1, "batch", "frames", "frame_ms", "truncation_samples")
    cli.check_at_least(args, 0, "pad")
    cli.check_finite(args, "truncation")
    if layers is not None and args.source is None:
        raise ValueError("--swap_layer needs --source (the generator whose features are swapped in)")
    if args.interpolate and len(seeds) < 2:
        raise ValueError("--interpolate needs at least two seeds")
    if args.video and not args.interpolate:
        raise ValueError("--video writes the interpolation: it needs --interpolate")
    precision = cli.resolve_precision(args.precision)
    target = cli.load_generator(args.target, cli.flag(args, "target"), precision=precision)
    source = None
    if args.source is not None:
        source = cli.load_generator(args.source, "--source", precision=precision)
        if layers is None:
            layers = default_swap_layers(target)
        layers = latent.check_pair(source, target, layers, "--source")
    if args.mixing:
        latent.check_rows(mix[2], target.n_latent, target.size)
    os.makedirs(args.out, exist_ok=True)
    return seeds, mix, layers, source, target


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():
        seeds, (mix_rows, mix_cols, mix_layers), layers, source, target = _prepare(args)

    out, psi, quiet = args.out, args.truncation, args.quiet
    with stage(f"mean latent ({args.truncation_samples} samples)", quiet=quiet or psi == 1.0):
        t_mean, s_mean = mean_latents(psi, args.truncation_samples, target, source)
    written = []
    # A batch of seeds at a time, so that the progress line moves; each seed's images depend on its seed only.
    progress = Progress("generate", len(seeds), unit="seeds", quiet=quiet)
    parts = []  # SwapImages per batch of seeds (source and swapped empty without --source)
    for i in range(0, len(seeds), args.batch):
        chunk = seeds[i:i + args.batch]
        if source is None:
            images = sample(target, chunk, psi, t_mean, batch=args.batch)
            parts.append(SwapImages(images[:0], images, {}))
        else:
            parts.append(swap_images(source, target, chunk, layers, psi, s_mean, t_mean, batch=args.batch,
                                     pairing=args.pairing))
        progress.advance(len(chunk))
    progress.finish()
    result = SwapImages(*(np.concatenate([getattr(r, k) for r in parts]) for k in ("source", "target")),
                        {l: np.concatenate([r.swapped[l] for r in parts]) for l in parts[0].swapped})
    images, rows = result.target, [result.target]
    if source is not None:
        rows = swap_grid_rows(result)
        for s, image in zip(seeds, result.source):
            save_png(os.path.join(out, "source", f"seed{s:04d}.png"), image)
        for l, batch_images in sorted(result.swapped.items()):
            for s, image in zip(seeds, batch_images):
                save_png(os.path.join(out, f"swap_l{l}", f"seed{s:04d}.png"), image)
        written += ["source/", *(f"swap_l{l}/" for l in sorted(result.swapped))]
    for s, image in zip(seeds, images):
        save_png(os.path.join(out, f"seed{s:04d}.png"), image)
    save_png(os.path.join(out, "grid.png"), make_grid(rows, pad=args.pad))
    written += [f"{len(seeds)} seed PNGs", "grid.png"]
    if args.mixing:
        with stage("style mixing", quiet=quiet):
            m = style_mixing(target, mix_rows, mix_cols, mix_layers, psi, t_mean, batch=args.batch)
        save_png(os.path.join(out, "mixing.png"), mixing_figure(m, pad=args.pad))
        written.append("mixing.png")
    if args.interpolate:
        progress = Progress("interpolation", len(seeds) * args.frames, unit="frames", quiet=quiet)
        frames = interpolation_frames(target, seeds, args.frames, psi, source, layers or (), s_mean, t_mean,
                                      batch=args.batch, pairing=args.pairing, progress=progress.update)
        progress.finish()
        path = save_animation(os.path.join(out, "interpolation"), frames, args.frame_ms, video=args.video)
        written.append(f"{os.path.basename(path)} ({len(frames)} frames)")
    print(f"wrote {out}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
