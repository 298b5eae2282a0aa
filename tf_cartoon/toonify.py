"""Your photo as a cartoon in one command: align, project into the source, render the target and the swaps.

    python -m tf_cartoon.toonify me.jpg --target runs/freezeSG --source ffhq256.pt --out out/toonify
    python -m tf_cartoon.toonify face.png --target runs/quickstart --out out/demo --fast    # built-in demo

Per photo:
  1. alignment (--align): ``mtcnn`` finds the face and five landmarks and cuts FFHQ's oriented crop at the
     generator's size (tf_cartoon.align; needs MTCNN's weights: pip install --no-deps facenet-pytorch);
     ``none`` takes the centred square, resized; ``auto`` (default) takes the image as it is when it is
     already a square at the generator's size (e.g. a rendered synthetic:faces image: at 32 px MTCNN finds
     no face), else ``mtcnn``.
  2. projection into the SOURCE generator (tf_cartoon.project): one w per layer (W+) and the noise maps are
     optimised so that the source reproduces the aligned photo. Default 1000 steps; ``--fast`` 150 steps
     (seconds at 32 px, a rough likeness at 256 px); ``--steps`` sets the count. ``--vgg16_weights`` adds
     the perceptual loss (a local keras.applications VGG16 file); without it the loss is MSE.
  3. the TARGET renders the same W+ and noise maps, and so does the target with the source's feature
     swapped in at each --swap_layers layer (layer swapping: the source's structure, the target's rendering).

Outputs under --out DIR, per photo ``<name>`` (the file's stem, made unique):
  <name>.png  the sheet: aligned | reconstruction | target | swap l=... side by side, labelled
  <name>.npz  w_plus [n_latent, style_dim], noise_0.., photo (aligned), reconstruction, settings
              (tf_cartoon.project.load_projection reads it)
A photo without a face is reported on one line and skipped; the exit status is 2 when no photo went through.
The projection's progress (steps, rate, ETA, MSE) goes to stderr; --quiet drops it and the loss lines.

Library use (e.g. a web page): :func:`toonify_photo` on a uint8 array with loaded generators.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.align import ALIGN_MODES, NoFaceError  # noqa: F401  (NoFaceError: part of this module's API)
from tf_cartoon.progress import Progress

DEFAULT_SOURCE = "builtin:source_synthetic"
FULL_STEPS = 1000  # the projector's default (Cartoon-StyleGan2's projector.py)
FAST_STEPS = 150
SHEET_MIN_PANEL = 128  # panels smaller than this are enlarged (nearest) so that the labels fit


@dataclasses.dataclass
class ToonifyResult:
    aligned: np.ndarray  # uint8 [H, W, 3]: the photo as the generator's input
    reconstruction: np.ndarray  # uint8: the source rendering the projected W+
    target: np.ndarray  # uint8: the target rendering it
    swapped: dict  # layer -> uint8: the target with the source's feature at that layer
    w_plus: np.ndarray  # float32 [n_latent, w_dim]
    noises: list = dataclasses.field(default_factory=list)  # the projected noise maps, [1, R, R, 1] each
    mse: float = float("nan")  # the reconstruction's MSE to the aligned photo (images in [-1, 1])


def project_config(fast: bool = True, steps: int | None = None, seed: int = 0):
    """The projection settings toonify uses: the projector's defaults with one w per layer (W+), which
    reconstructs closer than one shared w (measured with the built-in models, 1000 steps, MSE only: 0.007 vs
    0.013 on a synthetic:faces image, 0.05 vs 0.12 on astronaut.png) and gives the target no worse a cartoon;
    ``fast`` fewer steps."""
    from tf_cartoon.project import ProjectConfig

    steps = (FAST_STEPS if fast else FULL_STEPS) if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return ProjectConfig(steps=steps, w_plus=True, seed=seed)


def toonify_photo(photo: np.ndarray, source_g, target_g, *, fast: bool = True, swap_layers=(1, 2),
                  align: str = "auto", steps: int | None = None, perceptual=None, log=None,
                  progress=None) -> ToonifyResult:
    """One photo (uint8 [H, W, 3]) -> aligned, source reconstruction, target, layer-swapped targets, W+.

    ``swap_layers`` outside the generators' 1..n_blocks are dropped (the default (1, 2) suits every size);
    a pair that cannot swap raises tf_cartoon.cli.IncompatiblePairError. ``align``: auto | mtcnn | none
    (module docstring). Raises :class:`NoFaceError` when alignment finds no face. ``perceptual``: an
    optional tf_cartoon.project.VGGPerceptual; ``log``: optional ``fn(str)`` for the loss lines;
    ``progress``: optional ``fn(steps done, text)`` after each projection step (tf_cartoon.project.project).
    """
    from tf_cartoon import align as align_mod
    from tf_cartoon import project as proj
    from tf_cartoon.images import to_uint8

    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    layers = latent.check_pair(source_g, target_g, [int(l) for l in swap_layers if 1 <= int(l) <= target_g.n_blocks])
    cfg = project_config(fast, steps)
    aligned = align_mod.align_photo(photo, source_g.size, align)
    x = (aligned.astype(np.float32) / 127.5 - 1.0)[None]
    res = proj.project(source_g, x, cfg, perceptual, log=log, log_every=max(1, cfg.steps // 5), progress=progress)
    sw = proj.toonify(source_g, target_g, res.wplus, res.noises, layers)
    return ToonifyResult(aligned=aligned, reconstruction=to_uint8(res.image[0]), target=to_uint8(sw.target[0]),
                         swapped={l: to_uint8(sw.swapped[l][0]) for l in layers},
                         w_plus=np.asarray(res.wplus[0], np.float32), noises=[n[0:1] for n in res.noises],
                         mse=float(res.final["mse"][0]))


def panels(result: ToonifyResult) -> list[tuple[str, np.ndarray]]:
    """(label, image) of a sheet, left to right."""
    return [("aligned", result.aligned), ("reconstruction", result.reconstruction), ("target", result.target),
            *((f"swap l={l}", result.swapped[l]) for l in sorted(result.swapped))]


def sheet(result: ToonifyResult, pad: int = 4) -> np.ndarray:
    """The panels side by side on white, each labelled above (uint8 [H, W, 3])."""
    from PIL import Image, ImageDraw, ImageFont

    items = panels(result)
    side = result.aligned.shape[0]
    scale = max(1, -(-SHEET_MIN_PANEL // side))  # integer enlargement keeps the pixels square
    cell = side * scale
    font = ImageFont.load_default()
    label_h = 14
    canvas = Image.new("RGB", (len(items) * (cell + pad) + pad, cell + label_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(items):
        x = pad + i * (cell + pad)
        draw.text((x, pad), label, fill=(0, 0, 0), font=font)
        im = Image.fromarray(image, "RGB")
        if scale > 1:
            im = im.resize((cell, cell), Image.NEAREST)
        canvas.paste(im, (x, pad + label_h))
    return np.asarray(canvas, np.uint8)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser():
    p = cli.parser("python -m tf_cartoon.toonify", __doc__)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos (any format PIL reads), unaligned is fine")
    cli.add_role(p, "target", required=True, help="target (fine-tuned) generator: reference .pt, .pkl, converted "
                                                  "dir, training workdir or builtin:<name>")
    cli.add_role(p, "source", default=DEFAULT_SOURCE,
                 help=f"source (pretrained) generator the target was fine-tuned from (default {DEFAULT_SOURCE})")
    cli.add_role(p, "out", required=True, help="output directory")
    p.add_argument("--fast", action="store_true", help=f"{FAST_STEPS} projection steps instead of {FULL_STEPS}")
    p.add_argument("--steps", "--step", dest="steps", type=int, default=None, help="projection steps (overrides)")
    p.add_argument("--swap_layers", "--swap_layer", dest="swap_layers", default="1,2",
                   help="layer swapping at these layers (default 1,2; those above the generator's blocks are "
                        "dropped; '' for none)")
    p.add_argument("--align", choices=ALIGN_MODES, default="auto",
                   help="auto (default): the image as it is when already a square at the generator's size (a "
                        "rendered image, too small for MTCNN), else mtcnn; mtcnn: FFHQ's crop around the face "
                        "MTCNN finds; none: the centred square, resized")
    p.add_argument("--vgg16_weights", default=None,
                   help="local keras.applications VGG16 weights (.h5) for the perceptual loss; without: MSE only")
    cli.add_precision(p)
    cli.add_quiet(p)
    return p


def _prepare(args):
    from tf_cartoon import align as align_mod
    from tf_cartoon.images import parse_range

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    layers = parse_range(args.swap_layers, "--swap_layers", lo=1) if args.swap_layers.strip() else []
    for path in args.photos:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"photo {path} does not exist or is not a file")
    if args.vgg16_weights is not None and not os.path.isfile(args.vgg16_weights):
        raise FileNotFoundError(f"--vgg16_weights {args.vgg16_weights} does not exist or is not a file")
    if args.align == "mtcnn" and align_mod.weights_dir() is None:
        align_mod.MTCNNNets.load()  # raises the install hint
    args.precision = cli.resolve_precision(args.precision)  # the generators'; the projection stays float32
    source = cli.load_generator(args.source, cli.flag(args, "source"), precision=args.precision)
    target = cli.load_generator(args.target, cli.flag(args, "target"), precision=args.precision)
    too_high = [l for l in layers if l > target.n_blocks]
    if too_high:
        print(f"note: swap layers {too_high} are above the {target.size} px generator's {target.n_blocks} blocks; "
              "dropped", file=sys.stderr)
    layers = latent.check_pair(source, target, [l for l in layers if l <= target.n_blocks], cli.flag(args, "target"))
    perceptual = None
    if args.vgg16_weights is not None:
        from tf_cartoon.project import VGGPerceptual

        perceptual = VGGPerceptual(args.vgg16_weights)
    os.makedirs(args.out, exist_ok=True)
    return source, target, layers, perceptual


@cli.command(setup="generate")
def main(argv=None) -> int:
    from tf_cartoon import align as align_mod
    from tf_cartoon.images import save_png
    from tf_cartoon.project import photo_names, save_projection

    args = _parser().parse_args(argv)
    with cli.user_input():
        source, target, layers, perceptual = _prepare(args)

    progress = None  # the running projection's Progress: loss lines go above its terminal line

    def log(msg):
        if progress is not None:
            progress.write(f"  {msg}")
        elif not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    cfg = project_config(args.fast, args.steps)
    done = 0
    for path, name in zip(args.photos, photo_names(args.photos)):
        try:
            photo = align_mod.read_photo(path)
            if not args.quiet:
                print(f"{path}: projecting into {args.source} ({cfg.steps} steps, {args.precision})", file=sys.stderr,
                      flush=True)
            progress = Progress(f"toonify {name}", cfg.steps, unit="steps", quiet=args.quiet)
            res = toonify_photo(photo, source, target, fast=args.fast, swap_layers=layers, align=args.align,
                                steps=cfg.steps, perceptual=perceptual, log=log, progress=progress.update)
            progress.finish()
        except (NoFaceError, ValueError, OSError) as e:
            progress = None
            if isinstance(e, align_mod.AlignUnavailable):
                raise
            print(f"skipped {path}: {cli.one_line(e)}", file=sys.stderr, flush=True)
            continue
        progress = None
        settings = {**cfg._asdict(), "photo": os.path.abspath(path), "source": args.source, "target": args.target,
                    "swap_layers": list(layers), "align": args.align, "final_mse": res.mse,
                    "precision": args.precision,
                    "vgg16_weights": os.path.abspath(args.vgg16_weights) if perceptual else None,
                    "panels": [label for label, _ in panels(res)]}
        save_projection(os.path.join(args.out, f"{name}.npz"), res.w_plus, res.noises, res.aligned,
                        res.reconstruction, settings)
        out = save_png(os.path.join(args.out, f"{name}.png"), sheet(res))
        print(f"{path} -> {out} (reconstruction mse {res.mse:.4f})", file=sys.stderr, flush=True)
        done += 1
    if not done:
        raise cli.UsageError(f"no photo toonified (of {len(args.photos)})")
    print(f"wrote {args.out}: {done} of {len(args.photos)} photo(s): <name>.png (aligned | reconstruction | "
          f"target{''.join(f' | swap l={l}' for l in layers)}), <name>.npz")
    return 0


if __name__ == "__main__":
    cli.run(main)
