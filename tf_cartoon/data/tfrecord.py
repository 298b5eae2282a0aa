"""TFRecord shards written by ``python -m tf_cartoon.prepare_data``: the record format and the tf.data source.

A record is a ``tf.train.Example`` with
  ``image``  bytes  - the encoded image (PNG by default, or JPEG), already resized/cropped by
                      ``tf_cartoon.data.folder.load_image``
  ``size``   int64  - its side length
  ``source`` bytes  - its path relative to the source folder (for provenance; unused by training)

Records of another resolution than the one asked for are RESIZED on the fly (short side to ``size``,
centre crop, ``tf.image.resize(method="lanczos3", antialias=True)``), with one WARNING when the dataset
is built. Preparing shards at the training resolution avoids that cost and gives bit-identical pixels to
the folder pipeline. Records that fail to decode are skipped (``Dataset.ignore_errors(log_warning=True)``).

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

TFRECORD_EXTENSIONS = (".tfrecord", ".tfrec")

log = logging.getLogger("tf_cartoon.data")

_GLOB_CHARS = set("*?[")


def is_tfrecord_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in TFRECORD_EXTENSIONS


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def resolve_tfrecord_files(spec: str) -> list[str] | None:
    """The sorted TFRecord files ``spec`` names, or None when ``spec`` is not a TFRecord spec.

    TFRecord specs: a glob (``*``, ``?``, ``[``; always read as TFRecords), a path ending in .tfrecord /
    .tfrec, or a directory holding such files at its top level. Remote paths (``gs://``...) go through
    tf.io.gfile. A spec that is TFRecord-like but matches nothing raises FileNotFoundError.
    """
    remote = "://" in spec
    if _GLOB_CHARS & set(spec):
        files = _gfile().glob(spec) if remote else _glob.glob(spec)
        files = sorted(f for f in files if not (os.path.isdir(f) if not remote else _gfile().isdir(f)))
        if not files:
            raise FileNotFoundError(f"{spec}: the TFRecord pattern matches no file")
        return files
    if is_tfrecord_file(spec):
        exists = _gfile().exists(spec) if remote else os.path.isfile(spec)
        if not exists:
            raise FileNotFoundError(f"{spec}: no such TFRecord file")
        return [spec]
    isdir = _gfile().isdir(spec) if remote else os.path.isdir(spec)
    if isdir:
        names = _gfile().listdir(spec) if remote else os.listdir(spec)
        files = sorted(os.path.join(spec, n) for n in names if is_tfrecord_file(n.rstrip("/")))
        if files:
            return files
        if remote:
            raise ValueError(f"{spec}: remote folders must hold {'/'.join(TFRECORD_EXTENSIONS)} files "
                             "(folders of images are read from local disk only)")
    return None


def feature_spec():
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "size": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "source": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def make_example(image_bytes: bytes, size: int, source: str) -> bytes:
    """Serialized ``tf.train.Example`` of one record (used by prepare_data)."""
    import tensorflow as tf

    feat = tf.train.Feature
    ex = tf.train.Example(features=tf.train.Features(feature={
        "image": feat(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "size": feat(int64_list=tf.train.Int64List(value=[int(size)])),
        "source": feat(bytes_list=tf.train.BytesList(value=[source.encode("utf-8")])),
    }))
    return ex.SerializeToString()


def _peek(files: list[str]):
    """(stored size, serialized length) of the first record found; a clear error for foreign records."""
    import tensorflow as tf

    for f in files[:16]:
        for raw in tf.data.TFRecordDataset(f).take(1):
            try:
                ex = tf.io.parse_single_example(raw, feature_spec())
            except (tf.errors.InvalidArgumentError, ValueError) as e:
                raise ValueError(f"{f}: not a tf_cartoon TFRecord (features image/size/source expected, written "
                                 f"by python -m tf_cartoon.prepare_data): {str(e).splitlines()[0]}") from None
            return int(ex["size"].numpy()), len(raw.numpy())
    return None, None


def _file_size(path: str) -> int:
    try:
        return int(_gfile().stat(path).length)
    except Exception:  # noqa: BLE001 - only an estimate
        return 0


def _fit(img, size: int):
    """uint8 [h, w, 3] -> [size, size, 3]: identity when it already fits, else short side + centre crop."""
    import tensorflow as tf

    h, w = tf.shape(img)[0], tf.shape(img)[1]

    def resize():
        s = tf.minimum(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        square = img[top:top + s, left:left + s]
        r = tf.image.resize(square, [size, size], method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(r), 0.0, 255.0), tf.uint8)

    out = tf.cond(tf.logical_and(tf.equal(h, size), tf.equal(w, size)), lambda: img, resize)
    return tf.ensure_shape(out, [size, size, 3])


def tfrecord_dataset(files: list[str], size: int, *, shuffle: bool, repeat: bool, seed: int, num_pipelines: int,
                     pipeline_id: int, num_parallel: int, label: str = "",
                     skip_records: int = 0) -> tuple["tf.data.Dataset", int]:
    """(uint8 ``[size, size, 3]`` elements from TFRecord shards; an estimate of this pipeline's record count).

    ``skip_records``: drop that many ENCODED records (after the record shuffle buffer, before parsing and
    decoding). Record counts per file are unknown, so the skipped records are still read from disk (and
    pass the shuffle buffer), but none is decoded. Without shuffling and without corrupt records this equals
    ``.skip(skip_records)`` of the element stream.

    Sharding: by FILE when there are at least as many files as input pipelines, else by RECORD (every
    pipeline reads all files in the same seeded order and keeps every n-th record).
    """
    import tensorflow as tf

    label = label or files[0]
    stored, nbytes = _peek(files)
    if stored is not None and stored != size:
        log.warning("%s: records are %s px, resizing them to %d px on the fly (lanczos3, antialiased); prepare "
                    "shards at --size %d to avoid this", label, stored, size, size)
    own_seed = seed * 1000003 + pipeline_id
    by_file = num_pipelines == 1 or len(files) >= num_pipelines
    fds = tf.data.Dataset.from_tensor_slices(files)

    def read(f):
        return tf.data.TFRecordDataset(f, buffer_size=1 << 20)

    if by_file:
        if num_pipelines > 1:
            fds = fds.shard(num_pipelines, pipeline_id)
        n_own = len(files[pipeline_id::num_pipelines])
        if shuffle:
            fds = fds.shuffle(n_own, seed=own_seed, reshuffle_each_iteration=True)
        if repeat:
            fds = fds.repeat()
        rec = fds.interleave(read, cycle_length=max(1, min(n_own, 16)), block_length=1,
                             num_parallel_calls=num_parallel, deterministic=not shuffle)
    else:
        if shuffle:  # the same seed in every pipeline -> the same record order -> disjoint shards
            fds = fds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        rec = fds.interleave(read, cycle_length=max(1, min(len(files), 16)), block_length=1,
                             num_parallel_calls=num_parallel, deterministic=True)
        rec = rec.shard(num_pipelines, pipeline_id)
        if repeat:
            rec = rec.repeat()
    # records of this pipeline, estimated from the file sizes (a buffer larger than that is pointless)
    own_files = files[pipeline_id::num_pipelines] if by_file else files
    own_bytes = sum(_file_size(f) for f in own_files) // (1 if by_file else num_pipelines)
    n_records = max(1, own_bytes // max(1, nbytes or 1))
    if shuffle:  # shuffle the (small) encoded records: ~128 MiB of them, at most ~one pipeline's worth
        buf = int(min(4096, n_records, max(64, (128 << 20) // max(1, nbytes or 1))))
        rec = rec.shuffle(buf, seed=own_seed + 1, reshuffle_each_iteration=True)

    if skip_records:
        rec = rec.skip(int(skip_records))
    spec = feature_spec()

    def decode(raw):
        ex = tf.io.parse_single_example(raw, spec)
        img = tf.io.decode_image(ex["image"], channels=3, dtype=tf.uint8, expand_animations=False)
        return _fit(img, size)

    ds = rec.map(decode, num_parallel_calls=num_parallel, deterministic=not shuffle)
    return ds.ignore_errors(log_warning=True), int(n_records)
