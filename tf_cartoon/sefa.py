"""Closed-form factorization of latent semantics (SeFa, Shen & Zhou 2021) and edits along its directions.

    python -m tf_cartoon.sefa --source SOURCE --out sefa.npz
    python -m tf_cartoon.sefa --source SOURCE --out sefa.npz --render --target TARGET \\
        --index 0-4 --degrees 5 --steps 7 --seeds 0-3 --truncation 0.7 --out_dir sefa

SOURCE / TARGET: a reference .pt, a converted directory, a training workdir or builtin:<name>
(``--ckpt`` is an older spelling of ``--source`` here: SeFa factorizes the source).

The style modulations are affine maps of w; SeFa's directions are the unit
vectors that these maps change most: the eigenvectors of ``A^T A``, ``A`` the
modulation weights stacked row-wise. As the reference does, ``A`` stacks the
modulation weights of conv1, to_rgb1 and every convs.* (not to_rgbs.*), in the
reference layout ``[in_channels, style_dim]`` concatenated along the
in-channel axis -> ``[sum(in), style_dim]``, unscaled (the stored weights, no
equalised-lr factor, no row normalisation). Directions are sorted by eigenvalue,
descending (= the right singular vectors of ``A``), each signed so that its
largest-magnitude entry is positive.

The npz holds ``eigvec`` [style_dim, style_dim] (column i = direction i, as
the reference's ``eigvec[:, i]``), ``eigval`` [style_dim] and ``layers`` (the
stacked weights' reference keys).

Editing (``--render``), as the reference's apply-factor demo: w = the
SOURCE's mapping of the seed's z; for each degree d in linspace(-D, D, steps)
the edited latent ``w + d * v_i`` goes to the source and, unchanged, to the
target, each truncating it toward its own mean latent (so the step in the
truncated latent is ``psi * d``). One PNG per direction, ``direction_III.png``:
a row per seed, a column per degree, each cell source | target (| target with
the source's feature swapped in at each --swap_layer). With --video also
``direction_III.mp4``: the same cells (a row per seed) sweeping from -D to +D and
back in --video_frames steps each way (GIF without imageio-ffmpeg).
Progress (rate, ETA per direction) goes to stderr; --quiet drops it. ``--precision bf16`` renders in
bfloat16 (the factorization reads the float32 weights, so the npz is the same in either precision).
"""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.images import make_grid, parse_range, parse_seeds, save_animation, save_png, to_uint8
from tf_cartoon.progress import Progress, stage


class Factorization(NamedTuple):
    eigvec: np.ndarray  # [style_dim, style_dim] float32, column i = direction i
    eigval: np.ndarray  # [style_dim] float32, descending
    layers: tuple  # reference keys of the stacked weights, in stacking order


def modulation_weights(g) -> list[tuple[str, np.ndarray]]:
    """(reference key, weight [in_channels, style_dim]) of conv1, to_rgb1 and convs.0.. (no to_rgbs)."""
    layers = [("conv1", g.conv1), ("to_rgb1", g.to_rgb1)] + [(f"convs.{i}", c) for i, c in enumerate(g.convs)]
    # Our modulation kernel is [style_dim, in_channels]: the transpose of the reference's weight.
    return [(f"{name}.conv.modulation.weight", np.asarray(layer.conv.modulation.kernel).T) for name, layer in layers]


def stacked_weights(g) -> np.ndarray:
    """The matrix SeFa factorizes: modulation weights stacked along the in axis, [sum(in), style_dim]."""
    return np.concatenate([w for _, w in modulation_weights(g)], axis=0).astype(np.float32)


def factorize(weight, layers=()) -> Factorization:
    """Eigenvectors of ``W^T W`` (right singular vectors of W), eigenvalue descending.

    Computed in float64 with a full SVD, so a W with fewer rows than columns still
    gets a complete orthonormal basis (the extra eigenvalues are 0).
    """
    a = np.asarray(weight, np.float64)
    if a.ndim != 2:
        raise ValueError(f"weight must be a matrix [rows, style_dim], got shape {a.shape}")
    _, s, vt = np.linalg.svd(a, full_matrices=True)
    v = vt.T  # columns
    eigval = np.zeros(a.shape[1])
    eigval[:len(s)] = s ** 2
    order = np.argsort(-eigval, kind="stable")  # already descending; keep it explicit
    v, eigval = v[:, order], eigval[order]
    idx = np.argmax(np.abs(v), axis=0)
    v = v * np.where(v[idx, np.arange(v.shape[1])] < 0, -1.0, 1.0)[None, :]
    return Factorization(v.astype(np.float32), eigval.astype(np.float32), tuple(layers))


def closed_form_factorization(g) -> Factorization:
    """SeFa directions of a generator."""
    mods = modulation_weights(g)
    return factorize(np.concatenate([w for _, w in mods], axis=0), [k for k, _ in mods])


def save_factorization(path, fac: Factorization, ckpt: str = "") -> str:
    """Write ``eigvec``, ``eigval``, ``layers`` (and ``ckpt``) to an npz, atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"output must be a .npz file, got {path}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp.npz")
    np.savez(tmp, eigvec=fac.eigvec, eigval=fac.eigval, layers=np.array(fac.layers, dtype=str),
             ckpt=np.array(str(ckpt)))
    os.replace(tmp, path)
    return path


def load_factorization(path) -> Factorization:
    with np.load(path) as f:
        return Factorization(f["eigvec"], f["eigval"], tuple(str(k) for k in f["layers"]))


# ---------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------

def edit_latents(w, direction, degrees) -> np.ndarray:
    """``w + d * direction`` for each w row and degree: [N, len(degrees), D] float32."""
    w = np.asarray(w, np.float32)
    d = np.asarray(degrees, np.float32)
    v = np.asarray(direction, np.float32)
    return w[:, None, :] + d[None, :, None] * v[None, None, :]


def render_direction(source, direction, seeds, degrees, truncation: float = 0.7, target=None, swap_layers=(),
                     source_mean=None, target_mean=None, truncation_samples: int = 4096, batch: int = 8):
    """Images along one direction.

    Returns a list of [N, S, H, W, 3] float arrays (N seeds, S degrees): the source's,
    then (with a target) the target's and one per swap layer.
    """
    from tf_cartoon import generate as gen

    degrees = list(degrees)
    w = gen.latents(source, seeds, truncation=1.0)  # the source's untruncated w
    edited = edit_latents(w, direction, degrees).reshape([-1, source.style_dim])
    panels = gen.render_pair(source, edited, truncation, target, swap_layers, source_mean, target_mean,
                             truncation_samples, batch)
    n, s = len(w), len(degrees)
    return [p.reshape([n, s, *p.shape[1:]]) for p in panels]


def direction_grid(panels, pad: int = 0) -> np.ndarray:
    """HWC uint8: a row per seed, a column per degree; each cell the panels side by side."""
    cells = np.concatenate([to_uint8(p) for p in panels], axis=3)  # [N, S, H, W * P, 3]
    return make_grid(list(cells), pad=pad)


def sweep_frames(panels, pad: int = 0) -> list[np.ndarray]:
    """Video frames of :func:`render_direction`'s panels: frame j is degree j's column, a row per seed."""
    return [direction_grid([p[:, j:j + 1] for p in panels], pad) for j in range(panels[0].shape[1])]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.sefa", __doc__)
    cli.add_role(p, "source", "--ckpt", required=True,
                 help="source (pretrained) generator to factorize: reference .pt, converted dir, workdir or "
                      "builtin:<name>")
    cli.add_role(p, "out", default="sefa.npz", help="where to write the factorization (default sefa.npz)")
    p.add_argument("--render", action="store_true", help="render edits along the directions")
    cli.add_role(p, "target", default=None, help="target (fine-tuned) generator rendered beside the source")
    p.add_argument("--index", default="0-4", help="directions to render (default 0-4)")
    p.add_argument("--degrees", type=float, default=5.0, help="edit from -degrees to +degrees (default 5)")
    p.add_argument("--steps", type=int, default=7, help="edit strengths per direction (default 7)")
    p.add_argument("--seeds", default="0-3", help="seeds to edit (default 0-3)")
    cli.add_truncation(p)
    p.add_argument("--swap_layer", default=None, help="also render the layer-swapped target at these layers")
    p.add_argument("--out_dir", default="sefa", help="where --render writes direction_III.png (default sefa)")
    p.add_argument("--batch", type=int, default=8, help="images per synthesis call")
    p.add_argument("--pad", type=int, default=0, help="pixels between grid cells")
    cli.add_video(p, "with --render, direction_III.mp4 sweeping each direction", 32, "from -degrees to +degrees")
    cli.add_precision(p)
    cli.add_quiet(p)
    return p


def _prepare(args):
    indices = parse_range(args.index, "direction indices", 0)
    seeds = parse_seeds(args.seeds)
    layers = parse_range(args.swap_layer, "swap layers") if args.swap_layer is not None else ()
    if not args.render and (args.target is not None or args.swap_layer is not None):
        raise ValueError("--target and --swap_layer only apply with --render")
    if layers and args.target is None:
        raise ValueError("--swap_layer needs --target")
    if args.video and not args.render:
        raise ValueError("--video renders the sweeps: it needs --render")
    if args.video and args.video_frames < 2:
        raise ValueError(f"--video_frames must be >= 2, got {args.video_frames}")
    cli.check_at_least(args, 1, "steps", "batch", "truncation_samples", "frame_ms")
    cli.check_at_least(args, 0, "pad")
    cli.check_finite(args, "degrees", "truncation")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must name a .npz file, got {args.out}")
    precision = cli.resolve_precision(args.precision)  # of the renders: the factorization reads float32 weights
    source = cli.load_generator(args.source, cli.flag(args, "source"), precision=precision)
    target = cli.load_generator(args.target, "--target", precision=precision) if args.target is not None else None
    if target is not None:
        latent.check_pair(source, target, layers, "--target")
    if args.render:
        bad = [i for i in indices if i >= source.style_dim]
        if bad:
            raise ValueError(f"direction indices must be in 0..{source.style_dim - 1}, got {bad}")
        os.makedirs(args.out_dir, exist_ok=True)
    return indices, seeds, layers, source, target


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():
        indices, seeds, layers, source, target = _prepare(args)
    from tf_cartoon import generate as gen

    fac = closed_form_factorization(source)
    save_factorization(args.out, fac, ckpt=args.source)
    top = ", ".join(f"{v:.4g}" for v in fac.eigval[:5])
    print(f"wrote {args.out}: {fac.eigvec.shape[1]} directions from {len(fac.layers)} modulation weights "
          f"{stacked_weights(source).shape}; top eigenvalues {top}")
    if args.render:
        psi = args.truncation
        with stage(f"mean latent ({args.truncation_samples} samples)", quiet=args.quiet or psi == 1.0):
            s_mean, t_mean = gen.mean_latents(psi, args.truncation_samples, source, target)
        degrees = np.linspace(-args.degrees, args.degrees, args.steps)
        progress = Progress("sefa", len(indices), unit="directions", quiet=args.quiet)
        videos = []
        for i in indices:
            panels = render_direction(source, fac.eigvec[:, i], seeds, degrees, psi, target, layers, s_mean, t_mean,
                                      batch=args.batch)
            save_png(os.path.join(args.out_dir, f"direction_{i:03d}.png"), direction_grid(panels, args.pad))
            if args.video:
                panels = render_direction(source, fac.eigvec[:, i], seeds,
                                          np.linspace(-args.degrees, args.degrees, args.video_frames), psi, target,
                                          layers, s_mean, t_mean, batch=args.batch)
                videos.append(save_animation(os.path.join(args.out_dir, f"direction_{i:03d}"),
                                             sweep_frames(panels, args.pad), args.frame_ms, video=True, bounce=True))
            progress.advance()
        progress.finish()
        kinds = {os.path.splitext(v)[1][1:].upper() for v in videos}
        print(f"wrote {len(indices)} direction grids to {args.out_dir} ({len(seeds)} seeds x {args.steps} degrees)"
              + (f" and {len(videos)} {'/'.join(sorted(kinds))} sweeps ({args.video_frames} frames each way)"
                 if videos else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
