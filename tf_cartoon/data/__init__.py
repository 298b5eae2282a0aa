"""Training data: one entry point, ``make_dataset(spec, size, batch_size, ...)``.

    from tf_cartoon import data
    ds = data.make_dataset("/data/faces", 256, 8)                 # a folder of images (recursive)
    ds = data.make_dataset("/data/shards/*.tfrecord", 256, 8)     # shards from python -m tf_cartoon.prepare_data
    ds = data.make_dataset("synthetic:faces", 64, 8)              # a registered synthetic domain
                                                                  # (built in: faces, cartoon, blobs)
    data.stats().skipped                                          # unreadable files skipped so far

Every spec yields float32 NHWC batches ``[batch_size, size, size, 3]`` in [-1, 1] (``x / 127.5 - 1``).

Modules: ``folder`` (scanning, the shared decode/resize/crop ``load_image``, bad-file stats), ``tfrecord``
(record format + reader), ``synthetic`` (the domain registry, ``blobs``). This package does not import
TensorFlow until a dataset is built.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from tf_cartoon.data.folder import (IMAGE_EXTENSIONS, DataStats, load_image, reset_stats, scan_images,
                                    stats)
from tf_cartoon.data.synthetic import (SYNTHETIC_EPOCH_IMAGES, SYNTHETIC_PREFIX, available_synthetic,
                                       get_synthetic, register_synthetic)
from tf_cartoon.data.tfrecord import TFRECORD_EXTENSIONS, resolve_tfrecord_files

importlib.import_module("tf_cartoon.data.faces")  # for its side effect: it registers synthetic:faces / :cartoon

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["make_dataset", "resolve_spec", "stats", "reset_stats", "DataStats", "register_synthetic",
           "available_synthetic", "get_synthetic", "load_image", "scan_images", "IMAGE_EXTENSIONS",
           "TFRECORD_EXTENSIONS", "SYNTHETIC_EPOCH_IMAGES", "AUTOTUNE"]

AUTOTUNE = -1  # == tf.data.AUTOTUNE (kept as a literal so importing this package does not import TensorFlow)

_ELEMENT_SHUFFLE_BYTES = 64 << 20


def resolve_spec(spec: str) -> tuple[str, object]:
    """Classify ``spec``: ("synthetic", name) | ("tfrecord", [files]) | ("folder", path).

    Raises ValueError for an unknown synthetic name, FileNotFoundError for a missing path or a pattern that
    matches nothing, ValueError for a plain file that is neither a TFRecord nor a folder.
    """
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise ValueError(f"bad dataset spec {spec!r} (a folder, a TFRecord file/pattern or synthetic:NAME)")
    spec = os.fspath(spec)
    if spec.startswith(SYNTHETIC_PREFIX):
        name = spec[len(SYNTHETIC_PREFIX):]
        get_synthetic(name)
        return "synthetic", name
    files = resolve_tfrecord_files(spec)
    if files is not None:
        return "tfrecord", files
    if os.path.isfile(spec):
        raise ValueError(f"{spec}: a single file is not a dataset; pass a folder of images "
                         f"({', '.join(IMAGE_EXTENSIONS)}), a TFRecord file/pattern "
                         f"({'/'.join(TFRECORD_EXTENSIONS)}) or synthetic:NAME")
    return "folder", spec  # scan_images raises the missing / empty errors


def _pipeline_seed(seed: int, pipeline_id: int) -> int:
    return (int(seed) * 1000003 + int(pipeline_id) * 7919) % (1 << 31)


def make_dataset(spec: str, size: int, batch_size: int, *, shuffle: bool = True, flip: bool = True,
                 repeat: bool = True, seed: int = 0, input_context: "tf.distribute.InputContext | None" = None,
                 num_parallel: int = AUTOTUNE, start_batch: int = 0) -> "tf.data.Dataset":
    """Float32 NHWC batches ``[batch_size, size, size, 3]`` in [-1, 1] from ``spec``.

    spec:
      * a folder of images, searched recursively for .jpg/.jpeg/.png/.webp/.bmp (any case). Every image is
        decoded with PIL in a parallel ``tf.numpy_function`` map, converted to RGB (alpha composited on
        WHITE, 16-bit scaled to 8-bit), its short side LANCZOS-resized to ``size`` and centre-cropped
        (``tf_cartoon.data.load_image``). Unreadable files are skipped, logged once each (WARNING, logger
        "tf_cartoon.data") and counted in ``stats()``; a folder where nothing decodes is a ValueError at
        build time. A missing path is FileNotFoundError, a folder without images ValueError.
      * TFRecords from ``python -m tf_cartoon.prepare_data``: a glob (``/data/shards/*.tfrecord``), a
        .tfrecord/.tfrec file, or a directory holding such files. Files are interleaved in parallel; records
        stored at another resolution are resized on the fly (one WARNING).
      * ``synthetic:NAME``: a domain of ``register_synthetic`` (built in: ``faces`` and ``cartoon``, the
        parameter-sharing photo/cartoon face pair of data/faces.py, and ``blobs``), drawn per batch by seed;
        infinite, or SYNTHETIC_EPOCH_IMAGES images when ``repeat=False``. ``shuffle`` does not apply.

    batch_size: images per batch of THIS input pipeline. Under ``strategy.distribute_datasets_from_function``
      pass ``input_context.get_per_replica_batch_size(global_batch_size)``, the per-replica batch.
    shuffle: shuffle the file list (each epoch; for folders a stateless permutation seeded by (seed, epoch))
      plus a moderate element buffer (decoded images for folders, encoded records for TFRecords). With
      shuffle on, the parallel maps run non-deterministically (order is not bit-reproducible); with it off
      the order is the sorted file order (folders) / file order (TFRecords).
    flip: random horizontal flip per image (p = 0.5), reproducible from ``seed``.
    repeat: loop forever (else one pass; the last partial batch is dropped, shapes are static).
    seed: seeds the shuffles, the flips and the synthetic draws.
    input_context: ``tf.distribute.InputContext``; the data is sharded with
      ``dataset.shard(num_input_pipelines, input_pipeline_id)`` so input pipelines (workers) read disjoint
      data: folders by file, TFRecords by file when there are at least as many files as pipelines (else by
      record), synthetic domains by seed.
    num_parallel: parallelism of the decode maps and the interleave (default AUTOTUNE, i.e. tf.data.AUTOTUNE).
    start_batch: resume the stream at batch index ``start_batch`` (a resumed training run passes its step)
      instead of ``ds.skip(start_batch)``, which would decode / draw every skipped batch. The flip of batch
      ``i`` is always seeded by its ABSOLUTE index ``start_batch + i``. Per source:
      * synthetic: the batch index simply starts at ``start_batch``, nothing skipped is drawn; the result is
        bit-identical to ``make_dataset(...).skip(start_batch)`` (same seed, input_context, flip).
      * folders: ``start_batch * batch_size`` FILE NAMES are skipped before decoding: whole epochs
        arithmetically (each epoch's seeded file order is a pure function of (seed, epoch)), then the rest
        within the current epoch. Files found unreadable later are not accounted for (they shift the
        original stream). Exact (== ``.skip(start_batch)``) with ``shuffle=False`` and no unreadable file;
        with ``shuffle=True`` the resumed run is at the same file-order position of the same epoch, but the
        element shuffle buffer starts empty and the decode map is non-deterministic, so it is NOT a
        bit-exact reproduction.
      * TFRecords: records per file are unknown, so this falls back to skipping ``start_batch * batch_size``
        ENCODED records (after the record shuffle, before parsing/decoding): the skipped records are still
        read (I/O cost, no decode cost). Exact with ``shuffle=False`` and no corrupt record; with shuffle
        the same non-determinism caveats as above apply.
      With ``repeat=False`` a ``start_batch`` past the end gives an empty dataset. Must be >= 0.
    """
    size, batch_size = int(size), int(batch_size)
    if size < 1 or batch_size < 1:
        raise ValueError(f"size and batch_size must be >= 1, got size={size}, batch_size={batch_size}")
    n_pipes, pipe = _pipeline_of(input_context)
    seed, start_batch = int(seed), int(start_batch)
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    pseed = _pipeline_seed(seed, pipe)
    ds = _batches(spec, size, batch_size, shuffle=shuffle, repeat=repeat, seed=seed, pseed=pseed,
                  n_pipes=n_pipes, pipe=pipe, num_parallel=num_parallel, start_batch=start_batch)
    return _finish(ds, size, batch_size, flip=flip, pseed=pseed, start_batch=start_batch,
                   num_parallel=num_parallel, sharded=input_context is not None)


def _pipeline_of(input_context) -> tuple[int, int]:
    """(number of input pipelines, this pipeline's id) of a ``tf.distribute.InputContext`` (None: (1, 0))."""
    if input_context is None:
        return 1, 0
    n_pipes, pipe = int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)
    if not 0 <= pipe < n_pipes:
        raise ValueError(f"input_pipeline_id {pipe} not in [0, {n_pipes})")
    return n_pipes, pipe


def _batches(spec, size, batch_size, *, shuffle, repeat, seed, pseed, n_pipes, pipe, num_parallel, start_batch):
    """uint8 batches of ``spec``'s source for pipeline ``pipe`` (of ``n_pipes``), resumed at ``start_batch``."""
    kind, target = resolve_spec(spec)
    if kind == "synthetic":
        from tf_cartoon.data.synthetic import synthetic_dataset

        return synthetic_dataset(target, size, batch_size, repeat=repeat, seed=seed, pipeline_id=pipe,
                                 num_parallel=num_parallel, start_batch=start_batch)
    skip_items = start_batch * batch_size
    if kind == "tfrecord":
        from tf_cartoon.data.tfrecord import tfrecord_dataset

        ds, n_items = tfrecord_dataset(target, size, shuffle=shuffle, repeat=repeat, seed=seed,
                                       num_pipelines=n_pipes, pipeline_id=pipe, num_parallel=num_parallel,
                                       label=spec, skip_records=skip_items)
    else:
        from tf_cartoon.data.folder import folder_dataset

        ds, n_items = folder_dataset(target, size, shuffle=shuffle, repeat=repeat, seed=pseed,
                                     num_pipelines=n_pipes, pipeline_id=pipe, num_parallel=num_parallel,
                                     skip_files=skip_items)
    if shuffle and kind == "folder":  # (TFRecords shuffle their encoded records instead, in tfrecord.py)
        # a moderate buffer (the file list is already shuffled): <= 64 MiB and <= one pipeline's epoch
        buf = int(min(512, n_items, max(8, _ELEMENT_SHUFFLE_BYTES // (size * size * 3))))
        ds = ds.shuffle(buf, seed=pseed + 17, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True)


def _finish(ds, size, batch_size, *, flip, pseed, start_batch, num_parallel, sharded):
    """The steps every source shares: the flips (seeded by the absolute batch index), floats in [-1, 1], static
    shapes, prefetch; a dataset ``sharded`` here is never sharded again by tf.distribute."""
    import tensorflow as tf

    flip_seed = tf.constant(pseed, tf.int64)

    def finish(index, x):
        if flip:
            mirror = tf.random.stateless_uniform([batch_size], seed=tf.stack([flip_seed, index])) < 0.5
            x = tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x)
        x = tf.cast(x, tf.float32) / 127.5 - 1.0
        return tf.ensure_shape(x, [batch_size, size, size, 3])

    ds = ds.enumerate(start=start_batch).map(finish, num_parallel_calls=num_parallel, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if sharded:
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(opts)
    return ds
