"""Folders of images: scanning, the one decode/resize/crop function, bad-file accounting, the tf.data source.

``load_image(path, size)`` is THE image preprocessing of the project: the folder pipeline and
``python -m tf_cartoon.prepare_data`` both call it, so a TFRecord shard holds exactly the pixels the folder
pipeline would produce.

* Decoding is PIL (webp included). EXIF orientation is applied (phone photos come out upright).
* Modes: "RGB" as is; "L", "1", "CMYK", "YCbCr", opaque "P" -> RGB; 16-bit ("I;16*", "I") scaled by
  1/257 (65535 -> 255; PIL's own convert would clip at 255); anything with alpha ("RGBA", "LA", "PA",
  "P"/"L"/"RGB" with a tRNS transparency key, premultiplied "RGBa"/"La") is alpha-COMPOSITED ON WHITE,
  so transparent pixels become white rather than whatever colour happens to sit under them.
* Geometry: the short side is resized to ``size`` and the centre is cropped to ``size x size``. This is done
  in a single PIL LANCZOS resample (antialiased when downscaling) of the centred square box
  ``(x0, y0, x0 + s, y0 + s)``, ``s = min(w, h)``, which is exactly "resize short side, centre-crop"
  with sub-pixel-exact centring (the filter still reads the pixels just outside the box).

Nothing in this module imports TensorFlow at import time (prepare_data's worker processes import it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

log = logging.getLogger("tf_cartoon.data")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION_TAG = 0x0112


# ----------------------------------------------------------------------------------------------- scanning
def is_image_file(name: str) -> bool:
    """True when ``name`` ends with one of IMAGE_EXTENSIONS (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _ext_list() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def scan_images(root: str) -> list[str]:
    """All image files under ``root`` (recursive, symlinks followed once, sorted paths).

    Hidden entries (names starting with ".", e.g. ``.ipynb_checkpoints`` or macOS ``._x.jpg``) are ignored.
    Raises FileNotFoundError for a missing path, NotADirectoryError for a file, ValueError when no file has
    an accepted extension; each message names the path and the accepted extensions.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: no such file or directory (expected a folder of images: {_ext_list()}, "
                                "a TFRecord file/pattern, or synthetic:NAME)")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: not a directory (expected a folder of images: {_ext_list()})")
    found = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink cycle
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f))
    if not found:
        raise ValueError(f"{root}: no image files found (searched recursively for extensions {_ext_list()}, "
                         "case-insensitive)")
    found.sort()
    return found


# ------------------------------------------------------------------------------------------ decode / crop
def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> "RGB" (alpha composited on white, 16-bit scaled to 8-bit)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64)
        if mode != "I" or a.max(initial=0.0) > 255.0:  # "I" holding 8-bit values stays as it is
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and crop the centre ``size x size`` (one LANCZOS resample)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    s = min(w, h)
    x0, y0 = (w - s) / 2.0, (h - s) / 2.0
    return im.resize((size, size), Image.Resampling.LANCZOS, box=(x0, y0, x0 + s, y0 + s))


def load_image(path: str, size: int) -> np.ndarray:
    """Decode ``path`` with PIL and return uint8 ``[size, size, 3]`` (see the module docstring).

    Raises whatever PIL raises for unreadable / corrupt / truncated files (callers catch and count).
    """
    with Image.open(path) as im:
        im.load()  # truncated / corrupt data fails here, not lazily later
        try:
            if im.getexif().get(_ORIENTATION_TAG, 1) not in (1, None):
                im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block is not a broken image
            pass
        out = resize_center_crop(to_rgb(im), size)
        arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"decoded to shape {arr.shape}, expected {(size, size, 3)}")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------------- bad-file accounting
class DataUnreadableError(ValueError):
    """The training images cannot be read any more (deleted, replaced, truncated): the stream stops."""


@dataclasses.dataclass(frozen=True)
class DataStats:
    """Snapshot of the data layer's counters (this process, since start or ``reset_stats()``).

    ``skipped``: number of distinct unreadable image files met so far (each also logged once at WARNING);
    ``bad_files``: {path: reason}; ``decoded``: images decoded successfully by folder pipelines.
    """

    skipped: int
    bad_files: dict
    decoded: int


class _Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._bad: dict[str, str] = {}
        self._decoded = 0
        self.failure: str | None = None  # why a folder source stopped its stream (see data_failure)

    def is_bad(self, path: str) -> bool:
        return path in self._bad

    def add_bad(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self._bad:
                return
            self._bad[path] = reason
        log.warning("skipping unreadable image %s (%s)", path, reason)

    def add_decoded(self) -> None:
        with self._lock:
            self._decoded += 1

    def snapshot(self) -> DataStats:
        with self._lock:
            return DataStats(skipped=len(self._bad), bad_files=dict(self._bad), decoded=self._decoded)

    def reset(self) -> None:
        with self._lock:
            self._bad.clear()
            self._decoded = 0
            self.failure = None


_REGISTRY = _Registry()


def stats() -> DataStats:
    """Counters of skipped (unreadable) and decoded images; the trainer logs ``stats().skipped``."""
    return _REGISTRY.snapshot()


def reset_stats() -> None:
    """Forget the counters and the known-bad paths (bad files are then retried and logged again)."""
    _REGISTRY.reset()


def data_failure() -> str | None:
    """Why a folder source stopped its stream (no file readable any more), or None.

    Set by the source just before it raises inside tf.data, where the error reaches the caller wrapped in a
    tf.errors.OpError; the trainer reads it to tell a data failure from other errors."""
    return _REGISTRY.failure


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def try_load(path: str, size: int) -> np.ndarray | None:
    """``load_image`` that counts instead of raising: None for a bad file (registered + logged once)."""
    if _REGISTRY.is_bad(path):
        return None
    try:
        arr = load_image(path, size)
    except Exception as e:  # noqa: BLE001 - any failure of one file must not end a long run
        _REGISTRY.add_bad(path, _reason(e))
        return None
    _REGISTRY.add_decoded()
    return arr


# ---------------------------------------------------------------------------------------- tf.data source
class _Reader:
    """The numpy_function body: path -> (image, ok); errors if nothing decodes for far more than an epoch."""

    def __init__(self, root: str, n_files: int, size: int):
        self.root, self.size = root, size
        self.limit = 2 * n_files + 64  # > any run of failures possible while a single good file exists
        self._lock = threading.Lock()
        self._streak = 0

    def __call__(self, path) -> tuple[np.ndarray, np.bool_]:
        path = os.fsdecode(bytes(path))
        arr = try_load(path, self.size)
        with self._lock:
            self._streak = 0 if arr is not None else self._streak + 1
            streak = self._streak
        if streak > self.limit:
            message = (f"{self.root}: {streak} image files in a row could not be read (were the files removed or "
                       f"corrupted while training? {stats().skipped} unreadable so far; see the warnings above)")
            _REGISTRY.failure = message
            raise DataUnreadableError(message)
        if arr is None:
            return np.zeros((self.size, self.size, 3), np.uint8), np.bool_(False)
        return arr, np.bool_(True)


def file_stream(own: list[str], *, shuffle: bool, repeat: bool, seed: int,
                skip_files: int = 0) -> "tf.data.Dataset":
    """The file-name stream of one input pipeline (``own`` = its files), before any decoding.

    Epoch ``e`` is ``own`` in order (``shuffle=False``) or permuted by the stateless seed ``(seed, -1 - e)``
    (``tf.random.experimental.stateless_shuffle``, Philox), so every epoch's order is a pure function of
    ``(seed, e)``: it does not depend on the global TF seed nor on how many epochs were iterated before.
    ``repeat=False`` is epoch 0 only. ``skip_files`` starts the stream at that position of the infinite
    (or single-epoch) stream WITHOUT producing the skipped names: whole epochs are skipped arithmetically
    (``skip_files // len(own)``), then ``skip_files % len(own)`` names of the current epoch are dropped.
    ``file_stream(..., skip_files=n)`` yields exactly ``file_stream(...).skip(n)``.
    """
    import tensorflow as tf

    n = len(own)
    skip_files = int(skip_files)
    if n < 1 or skip_files < 0:
        raise ValueError(f"file_stream: need >= 1 file and skip_files >= 0, got {n} file(s), {skip_files}")
    names = tf.constant(list(own), tf.string)
    seed_t = tf.constant(int(seed), tf.int64)

    def epoch(e):
        order = names
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(names, seed=tf.stack([seed_t, -1 - e]), alg="philox")
        return tf.data.Dataset.from_tensor_slices(order)

    first_epoch, offset = divmod(skip_files, n)
    if repeat:
        epochs = tf.data.Dataset.counter(start=first_epoch)
    else:
        epochs = tf.data.Dataset.range(min(first_epoch, 1), 1)  # empty once the single epoch is skipped
    ds = epochs.flat_map(epoch)
    return ds.skip(offset) if offset else ds


def folder_dataset(root: str, size: int, *, shuffle: bool, repeat: bool, seed: int, num_pipelines: int,
                   pipeline_id: int, num_parallel: int, skip_files: int = 0) -> tuple["tf.data.Dataset", int]:
    """(uint8 ``[size, size, 3]`` elements from a folder, sharded by file, bad files filtered out;
    the number of files of this pipeline).

    ``skip_files``: start at that position of the file stream (``file_stream``), skipped files are never
    decoded. Equals ``.skip(skip_files)`` of the element stream as long as no file turns out unreadable.
    """
    import tensorflow as tf

    files = scan_images(root)
    own = files[pipeline_id::num_pipelines]
    where = "" if num_pipelines == 1 else f" for input pipeline {pipeline_id} of {num_pipelines}"
    if not own:
        raise ValueError(f"{root}: {len(files)} image file(s) cannot be split over {num_pipelines} input "
                         "pipelines (each needs at least one)")
    # Fail now, with a clear message, rather than loop forever over a folder where nothing decodes.
    # Usually this decodes a single file.
    if not any(try_load(p, size) is not None for p in own):
        first = stats().bad_files
        example = next((f"{p} ({first[p]})" for p in own if p in first), "")
        raise ValueError(f"{root}: none of the {len(own)} image file(s){where} could be read; e.g. {example}")

    reader = _Reader(root, len(own), size)
    _REGISTRY.failure = None  # a new source: an earlier one's failure is not this one's

    def decode(path):
        img, ok = tf.numpy_function(reader, [path], [tf.uint8, tf.bool], name="load_image")
        img = tf.ensure_shape(img, [size, size, 3])
        return img, tf.ensure_shape(ok, [])

    ds = file_stream(own, shuffle=shuffle, repeat=repeat, seed=seed, skip_files=skip_files)
    ds = ds.map(decode, num_parallel_calls=num_parallel, deterministic=not shuffle)
    ds = ds.filter(lambda img, ok: ok)
    return ds.map(lambda img, ok: img), len(own)
