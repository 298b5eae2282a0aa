"""Convert checkpoints between the reference's .pt format and ours.

    python -m tf_cartoon.convert SRC.pt OUT_DIR            # reference .pt -> converted directory
    python -m tf_cartoon.convert --to-torch TF_DIR OUT.pt  # converted directory -> reference .pt

Reading a .pt needs no torch: tf_cartoon.io.torch_pickle unpickles through an
allow-list and refuses anything else. The written .pt loads with
``torch.load(OUT.pt, weights_only=True)`` and the reference's load_state_dict.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tf_cartoon.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="reference .pt file (or, with --to-torch, a converted directory)")
    p.add_argument("dst", help="output directory (or, with --to-torch, the .pt file to write)")
    p.add_argument("--to-torch", action="store_true", help="convert a converted directory back to a .pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = p.parse_args(argv)

    from tf_cartoon.io import store
    from tf_cartoon.io.reference_keys import CheckpointMismatchError
    from tf_cartoon.io.torch_pickle import CheckpointFormatError, UnsafePickleError

    try:
        if args.to_torch:
            if not os.path.isdir(args.src):
                raise ValueError(f"--to-torch expects a converted directory, got {args.src}")
            if os.path.exists(args.dst) and not args.overwrite:
                raise FileExistsError(f"{args.dst} exists (pass --overwrite)")
            ckpt = store.load(args.src)
            store.write_reference(ckpt, args.dst)
        else:
            if os.path.isdir(args.src):
                raise ValueError(f"{args.src} is a directory; to write a .pt from it use --to-torch")
            ckpt = store.load(args.src)
            store.write_converted(ckpt, args.dst, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointFormatError, UnsafePickleError,
            CheckpointMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = ckpt.config.get("generator") or {}
    print(f"wrote {args.dst}: models {', '.join(sorted(ckpt.models()))}; size {gen.get('size')}, "
          f"style_dim {gen.get('style_dim')}, n_mlp {gen.get('n_mlp')}, channels {gen.get('channels')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
