"""Convert checkpoints between every format we read and ours / the reference's.

    python -m tf_cartoon.convert SRC OUT_DIR            # any checkpoint -> converted directory
    python -m tf_cartoon.convert --to-torch SRC OUT.pt  # any checkpoint -> the reference's .pt
    SRC: a reference .pt (torch zip or legacy format), an NVlabs .pkl (stylegan2-ada-pytorch or TensorFlow
    stylegan2), a training workdir (its latest g, g_ema, d and, with --to-torch, the Adam states), a converted
    directory (with --to-torch) or builtin:<name>.
    --models g_ema,d keeps only those networks (how tf_cartoon/assets/source_synthetic was written).

Reading needs no torch and runs nothing from the file: tf_cartoon.io's readers unpickle through an
allow-list and refuse anything else. Reading and writing report their times on stderr (--quiet: not). The written .pt loads with
``torch.load(OUT.pt, weights_only=True)`` and the reference's load_state_dict.
"""

from __future__ import annotations

import os

from tf_cartoon import cli
from tf_cartoon.progress import stage


@cli.command(setup="none")
def main(argv=None) -> int:
    p = cli.parser("python -m tf_cartoon.convert", __doc__)
    p.add_argument("src", help="reference .pt, NVlabs .pkl, training workdir or builtin:<name> (with --to-torch "
                               "also a converted directory)")
    p.add_argument("dst", help="output directory (or, with --to-torch, the .pt file to write)")
    p.add_argument("--to-torch", action="store_true",
                   help="write the reference's .pt format (from any checkpoint: .pt, NVlabs .pkl, converted "
                        "directory, workdir, builtin:)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--models", default="g_ema,g,d",
                   help="networks to keep, comma-separated among g_ema, g, d (default: all present); e.g. "
                        "g_ema,d for a fine-tuning source (the trainer starts g from g_ema when g is absent)")
    cli.add_quiet(p)
    args = p.parse_args(argv)

    from tf_cartoon.io import store

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not models or set(models) - set(store.MODEL_NAMES):
        raise cli.UsageError(f"--models={args.models!r}: expected a comma list among {', '.join(store.MODEL_NAMES)}")
    if args.to_torch:
        if os.path.exists(args.dst) and not args.overwrite:
            raise FileExistsError(f"{args.dst} exists (pass --overwrite)")
        with stage(f"reading {args.src}", quiet=args.quiet):
            ckpt = cli.load_checkpoint(args.src, "SRC", models=models)
        with stage(f"writing {args.dst}", quiet=args.quiet):
            store.write_reference(ckpt, args.dst)
    else:
        if os.path.isdir(args.src) and not os.path.isfile(os.path.join(args.src, store.WORKDIR_CONFIG)):
            raise cli.UsageError(f"{args.src} is a directory but not a training workdir; to write a .pt from "
                                 "a converted directory use --to-torch")
        with stage(f"reading {args.src}", quiet=args.quiet):
            ckpt = cli.load_checkpoint(args.src, "SRC", models=models)
        with stage(f"writing {args.dst}", quiet=args.quiet):
            store.write_converted(ckpt, args.dst, overwrite=args.overwrite)
    gen = ckpt.config.get("generator") or {}
    print(f"wrote {args.dst}: models {', '.join(sorted(ckpt.models()))}; size {gen.get('size')}, "
          f"style_dim {gen.get('style_dim')}, n_mlp {gen.get('n_mlp')}, channels {gen.get('channels')}")
    return 0


if __name__ == "__main__":
    cli.run(main)
