"""Is a TF checkpoint whole? Verification, the newest good checkpoint of a folder, moving torn ones aside.

A TF2 checkpoint ``<prefix>`` is an index file ``<prefix>.index`` (an SSTable of BundleEntryProto: dtype,
shape, shard, offset, size and CRC of every tensor) and data shards ``<prefix>.data-SSSSS-of-NNNNN``.
A copy cut short, a full disk or a storage hiccup leaves a data file shorter than its index says (TF then
fails deep inside restore with ``IndexError: Read less bytes than requested``) or an index without its
footer.

``verify_checkpoint`` checks what is cheap and catches those cases: TF opens the index (footer, block
checksums), every shard named by the header exists, and each shard is at least as long as the furthest
byte the index points at. The index is parsed here (LevelDB table layout, uncompressed blocks, which is
what TF's BundleWriter writes), so the data files are never read: on a 256 px fine-tuning checkpoint
(~0.8 GB) the check takes milliseconds. A flipped bit inside a tensor passes this check; restoring then
fails with TF's checksum error, which the callers treat like a failed verification.
"""

from __future__ import annotations

import logging
import os
import re
import struct

log = logging.getLogger("tf_cartoon.io")

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48


def one_line(e: BaseException | str) -> str:
    """The first line of an error message, whitespace collapsed (TF messages span lines)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- the index
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _block(data: bytes, offset: int, size: int) -> bytes:
    if offset + size + 5 > len(data):
        raise ValueError("index block past the end of the index file")
    if data[offset + size] != 0:  # trailer: compression type (0 = none), then a CRC
        raise NotImplementedError("compressed index block")
    return data[offset:offset + size]


def _entries(block: bytes):
    """(key, value) of one table block (prefix-compressed keys, restart array at the end)."""
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def index_extents(prefix: str) -> tuple[int, dict[int, int]]:
    """(number of data shards, {shard: bytes the index needs it to hold}) from ``<prefix>.index``."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    with open(prefix + ".index", "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_LEN or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise ValueError("the index file is cut short (no table footer)")
    footer = data[-_FOOTER_LEN:]
    _, pos = _varint(footer, 0)  # metaindex offset
    _, pos = _varint(footer, pos)  # metaindex size
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    num_shards, needed = 1, {}
    for _, handle in _entries(_block(data, index_offset, index_size)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _entries(_block(data, offset, size)):
            if key == b"":  # the header entry
                header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                num_shards = header.num_shards or 1
                continue
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
            pieces = [entry] if not entry.slices else []  # sliced variables: their slices are own entries
            for e in pieces:
                needed[e.shard_id] = max(needed.get(e.shard_id, 0), e.offset + e.size)
    return num_shards, needed


def data_files(prefix: str, num_shards: int) -> list[str]:
    return [f"{prefix}.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def verify_checkpoint(prefix: str, read_tensors: bool = False) -> str | None:
    """None when the checkpoint ``prefix`` is whole, else a short reason (naming the file at fault).

    ``read_tensors``: also read (and so CRC-check) every tensor, which costs a full read of the data.
    """
    import tensorflow as tf

    index = prefix + ".index"
    if not os.path.exists(index):
        return f"{index} is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
    except Exception as e:  # noqa: BLE001 - whatever TF makes of a torn index, it is not usable
        return f"{index} is unreadable ({one_line(e)})"
    try:
        num_shards, needed = index_extents(prefix)
    except (NotImplementedError, ValueError, IndexError, struct.error) as e:
        if "cut short" in str(e):
            return f"{index} is {e}"
        read_tensors = True  # an index layout this parser does not know: let TF read everything instead
        num_shards, needed = None, {}
    except OSError as e:
        return f"{index} is unreadable ({e.strerror or e})"
    if num_shards is not None:
        for shard, path in enumerate(data_files(prefix, num_shards)):
            try:
                have = os.path.getsize(path)
            except OSError:
                return f"{path} is missing"
            if have < needed.get(shard, 0):
                return f"{path} is cut short ({have} of {needed[shard]} bytes)"
    if read_tensors:
        for name in names:
            try:
                reader.get_tensor(name)
            except Exception as e:  # noqa: BLE001
                return f"{prefix}: tensor {name} is unreadable ({one_line(e)})"
    return None


# ------------------------------------------------------------------------------------- checkpoint folders
def candidates(directory: str) -> list[str]:
    """Checkpoint prefixes of a CheckpointManager folder, newest first.

    From the ``checkpoint`` state file; where it is missing or unreadable, from the index files present.
    """
    import tensorflow as tf

    paths: list[str] = []
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as e:  # noqa: BLE001 - a torn state file: fall back to what is on disk
        log.warning("%s is unreadable (%s); looking for checkpoints by their files",
                    os.path.join(directory, "checkpoint"), one_line(e))
        state = None
    if state is not None:
        paths = list(state.all_model_checkpoint_paths)
        if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
    elif os.path.isdir(directory):
        found = [m for n in os.listdir(directory) if (m := re.fullmatch(r"(.+)-(\d+)\.index", n))]
        found.sort(key=lambda m: int(m.group(2)))
        paths = [os.path.join(directory, f"{m.group(1)}-{m.group(2)}") for m in found]
    # Both branches give paths under ``directory`` already (get_checkpoint_state joins a relative entry to it):
    # joining again would double a relative directory (runs/x/checkpoints/runs/x/checkpoints/ckpt-1).
    return list(reversed(paths))


def newest_good(directory: str, warn: bool = True) -> tuple[str | None, list[tuple[str, str]]]:
    """(the newest checkpoint of ``directory`` that verifies, [(newer torn prefix, reason)])."""
    bad = []
    for prefix in candidates(directory):
        reason = verify_checkpoint(prefix)
        if reason is None:
            return prefix, bad
        if warn:
            log.warning("skipping checkpoint %s: %s", prefix, reason)
        bad.append((prefix, reason))
    return None, bad


def _files_of(prefix: str) -> list[str]:
    folder, base = os.path.split(prefix)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n == base + ".index" or n.startswith(base + ".data-") or n == base + "_temp")


def quarantine(prefix: str, reason: str) -> str:
    """Move the files of checkpoint ``prefix`` into ``<folder>/corrupt-<N>/`` (never deleted) with the reason
    in REASON.txt; returns that folder."""
    folder, base = os.path.split(prefix)
    m = re.fullmatch(r".*-(\d+)", base)
    stem = f"corrupt-{m.group(1) if m else base}"
    dest, i = os.path.join(folder, stem), 1
    while os.path.exists(dest):
        i += 1
        dest = os.path.join(folder, f"{stem}-{i}")
    os.makedirs(dest)
    for path in _files_of(prefix):
        os.replace(path, os.path.join(dest, os.path.basename(path)))
    with open(os.path.join(dest, "REASON.txt"), "w") as f:
        f.write(f"{prefix}: {reason}\n")
    return dest


def drop_from_state(directory: str, prefixes) -> None:
    """Remove ``prefixes`` from the ``checkpoint`` state file so that CheckpointManager never picks them."""
    import tensorflow as tf
    from tensorflow.python.checkpoint import checkpoint_management

    drop = {os.path.abspath(p) for p in prefixes}
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - an unreadable state file is rewritten from the checkpoints present
        state = None
    if state is not None:
        pairs = list(zip(state.all_model_checkpoint_paths,
                         state.all_model_checkpoint_timestamps or [None] * len(state.all_model_checkpoint_paths)))
        last_preserved = state.last_preserved_timestamp
    else:
        pairs = [(p, None) for p in reversed(candidates(directory))]
        last_preserved = None
    keep = [(p, t) for p, t in pairs
            if os.path.abspath(p if os.path.isabs(p) else os.path.join(directory, p)) not in drop]
    state_file = os.path.join(directory, "checkpoint")
    if not keep:
        if os.path.exists(state_file):
            os.replace(state_file, state_file + ".corrupt")  # kept for inspection, ignored by TF
        return
    timestamps = [t for _, t in keep] if all(t is not None for _, t in keep) else None
    checkpoint_management.update_checkpoint_state_internal(
        directory, model_checkpoint_path=keep[-1][0], all_model_checkpoint_paths=[p for p, _ in keep],
        all_model_checkpoint_timestamps=timestamps, last_preserved_timestamp=last_preserved,
        save_relative_paths=True)


def discard_partial(prefix: str) -> None:
    """Remove what a failed save of ``prefix`` left (its ``_temp`` folder, a torn index or data file).

    Only called for a prefix the state file does not list, so a good checkpoint is never touched."""
    import shutil

    for path in _files_of(prefix):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------ write errors
_STORAGE_ERRNOS = {28, 122, 5, 30}  # ENOSPC, EDQUOT, EIO, EROFS
_STORAGE_WORDS = ("no space left", "disk quota", "quota exceeded", "input/output error", "read-only file system")


def is_storage_failure(e: BaseException) -> bool:
    """True for a write that failed because of the storage: OSError ENOSPC / EDQUOT / EIO / EROFS, or TF's
    error for the same (TF maps ENOSPC and EDQUOT to ResourceExhaustedError "No space left on device")."""
    if isinstance(e, OSError):
        return e.errno in _STORAGE_ERRNOS
    text = str(e).lower()
    return any(w in text for w in _STORAGE_WORDS)
