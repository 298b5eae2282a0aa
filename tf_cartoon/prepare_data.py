"""Pack a folder of images into TFRecord shards for training.

    python -m tf_cartoon.prepare_data SRC_DIR OUT_DIR --size 256 --shards 8 [--workers W] [--format png|jpg]

SRC_DIR is scanned recursively for .jpg/.jpeg/.png/.webp/.bmp (any case). Every image goes through exactly
the preprocessing of the folder pipeline (tf_cartoon.data.load_image: RGB with alpha composited on white,
short side LANCZOS-resized to --size, centre crop), is encoded (PNG, lossless, by default; or JPEG quality
--quality, 4:4:4) and written to OUT_DIR/data-00000-of-0000N.tfrecord ... in a seeded shuffled order,
round-robin over the shards. Decoding/encoding runs in a pool of --workers processes. Unreadable files are
skipped and reported once each; progress (images, rate, ETA) goes to stderr, --quiet drops it. Each shard
is written under a temporary name and renamed when complete.
Train with:  make_dataset("OUT_DIR", size, batch)  or  make_dataset("OUT_DIR/*.tfrecord", ...).

Exit status: 0 done; 1 nothing could be read / write failure; 2 bad arguments or a missing / empty SRC_DIR.
"""

from __future__ import annotations

import argparse
import glob
import io
import multiprocessing
import os
import random
import sys

import numpy as np

from tf_cartoon import arch, cli
from tf_cartoon.data.folder import load_image, scan_images
from tf_cartoon.progress import Progress

SHARD_NAME = "data-{index:05d}-of-{count:05d}.tfrecord"


def shard_path(out_dir: str, index: int, count: int) -> str:
    return os.path.join(out_dir, SHARD_NAME.format(index=index, count=count))


def encode(arr: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _process(job):
    """Worker: (index, path, rel, size, fmt, quality) -> (index, rel, encoded bytes | None, reason | None)."""
    index, path, rel, size, fmt, quality = job
    try:
        return index, rel, encode(load_image(path, size), fmt, quality), None
    except Exception as e:  # noqa: BLE001 - one bad file never stops the run
        return index, rel, None, f"{type(e).__name__}: {e}"


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.prepare_data", __doc__)
    p.add_argument("src", metavar="SRC_DIR", help="folder of images (searched recursively)")
    p.add_argument("out", metavar="OUT_DIR", help="folder for the .tfrecord shards (created)")
    p.add_argument("--size", type=int, default=256, help="output resolution, a power of two >= 8 (default 256)")
    p.add_argument("--shards", type=int, default=1, help="number of shards N >= 1 (default 1)")
    p.add_argument("--workers", type=int, default=None, help="decode/encode processes (default os.cpu_count())")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="record encoding (default png, lossless)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for --format jpg (default 95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the file order (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the .tfrecord files already in OUT_DIR (otherwise their presence is an error)")
    cli.add_quiet(p)
    return p


def _check_args(a) -> str | None:
    if a.size < arch.MIN_SIZE or not arch.is_power_of_two(a.size):
        return f"--size must be a power of two >= {arch.MIN_SIZE}, got {a.size}"
    if a.shards < 1:
        return f"--shards must be >= 1, got {a.shards}"
    if a.workers is not None and a.workers < 1:
        return f"--workers must be >= 1, got {a.workers}"
    if not 1 <= a.quality <= 100:
        return f"--quality must be in [1, 100], got {a.quality}"
    if not os.path.exists(a.src):
        return f"{a.src}: SRC_DIR does not exist"
    if not os.path.isdir(a.src):
        return f"{a.src}: SRC_DIR is not a directory"
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        return f"{a.out}: OUT_DIR exists and is not a directory"
    if os.path.isdir(a.out) and not a.overwrite:
        old = [n for n in os.listdir(a.out) if n.lower().endswith((".tfrecord", ".tfrec"))]
        if old:
            return f"{a.out} already holds {len(old)} TFRecord file(s) (pass --overwrite to replace them)"
    return None


def _process_many(jobs):
    return [_process(j) for j in jobs]


def _results(jobs, workers: int):
    """``_process`` over ``jobs``, in order; a process pool when workers > 1 (a bounded window of chunks in
    flight, so finished results never pile up in memory)."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield _process(job)
        return
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(jobs))
    size = max(1, min(32, len(jobs) // (workers * 8)))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    done = 0
    # spawn: workers start clean (this process may already run TensorFlow threads) and import no TensorFlow.
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = deque()
        for chunk in chunks:
            pending.append(ex.submit(_process_many, chunk))
            if len(pending) >= 4 * workers:
                for r in pending.popleft().result():
                    done += 1
                    yield r
        while pending:
            for r in pending.popleft().result():
                done += 1
                yield r
    except BrokenProcessPool as e:  # e.g. workers cannot start from this __main__; finish in this process
        print(f"[prepare_data] worker pool failed ({e}); continuing in this process", file=sys.stderr, flush=True)
        for job in jobs[done:]:
            yield _process(job)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _write_shards(args, jobs, workers: int, finals: list[str]) -> tuple[int, int, list[int]]:
    """Encode ``jobs`` round-robin into the shards ``finals``, each written under a temporary name and moved
    into place only when every shard is complete (nothing is left behind on failure). Returns (written,
    skipped, records per shard)."""
    import tensorflow as tf  # noqa: E402 - only the writer needs it

    from tf_cartoon.data.tfrecord import make_example

    n = len(finals)
    temps = [f"{p}.tmp-{os.getpid()}" for p in finals]
    written = skipped = 0
    per_shard = [0] * n
    writers = []
    ok = False
    try:
        writers = [tf.io.TFRecordWriter(t) for t in temps]
        progress = Progress("[prepare_data]", len(jobs), unit="images", quiet=args.quiet)
        for done, (_, rel, data, reason) in enumerate(_results(jobs, workers), 1):
            if data is None:
                skipped += 1
                # always shown (a warning, not progress), above a terminal's progress line
                message = f"[prepare_data] skipping unreadable image {os.path.join(args.src, rel)} ({reason})"
                if progress.quiet:
                    print(message, file=sys.stderr, flush=True)
                else:
                    progress.write(message)
            else:
                k = written % n
                writers[k].write(make_example(data, args.size, rel))
                per_shard[k] += 1
                written += 1
            progress.update(done, extra=f"written {written}, skipped {skipped}")
        progress.finish()
        for w in writers:
            w.close()
        writers = []
        if written == 0:  # data with no usable image: a user error like an empty folder
            raise cli.UsageError(f"none of the {len(jobs)} image file(s) in {args.src} could be read; "
                                 "no shard written")
        for t, f in zip(temps, finals):
            os.replace(t, f)
        ok = True
    finally:
        for w in writers:
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass
        if not ok:
            for t in temps:
                if os.path.exists(t):
                    os.remove(t)
    return written, skipped, per_shard


def _remove_stale(out_dir: str, finals: list[str]) -> None:
    """Delete the TFRecord files in ``out_dir`` other than ``finals`` (an earlier run's, with another --shards)."""
    keep = set(os.path.abspath(f) for f in finals)
    for old in glob.glob(os.path.join(out_dir, "*")):
        if old.lower().endswith((".tfrecord", ".tfrec")) and os.path.abspath(old) not in keep:
            os.remove(old)


@cli.command(setup="none")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    err = _check_args(args)
    if err:
        raise cli.UsageError(err)
    with cli.user_input():  # missing folder, no image file in it
        files = scan_images(args.src)

    random.Random(args.seed).shuffle(files)  # mixes subfolders across shards
    src = os.path.abspath(args.src)
    jobs = [(i, f, os.path.relpath(os.path.abspath(f), src).replace(os.sep, "/"), args.size, args.format,
             args.quality) for i, f in enumerate(files)]
    workers = args.workers or os.cpu_count() or 1
    n = args.shards
    os.makedirs(args.out, exist_ok=True)
    finals = [shard_path(args.out, i, n) for i in range(n)]
    if not args.quiet:
        print(f"[prepare_data] {len(files)} image file(s) in {args.src} -> {n} shard(s) in {args.out} "
              f"(size {args.size}, {args.format}, {workers} worker(s))", file=sys.stderr, flush=True)
    written, skipped, per_shard = _write_shards(args, jobs, workers, finals)
    if args.overwrite:
        _remove_stale(args.out, finals)
    empty = per_shard.count(0)
    print(f"wrote {written} image(s) to {n} shard(s) in {args.out} (size {args.size}, {args.format}); "
          f"skipped {skipped} unreadable file(s)" + (f"; {empty} shard(s) are empty" if empty else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
