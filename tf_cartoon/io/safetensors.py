"""Read and write ``.safetensors`` files with numpy only (no safetensors / torch packages).

The format (Hugging Face's, https://github.com/huggingface/safetensors):

    8 bytes        N, the header length, unsigned little-endian
    N bytes        a UTF-8 JSON object: for each tensor name
                   {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
                   plus an optional "__metadata__": {str: str}
    rest           the data buffer; offsets are relative to its start, tensors are
                   C-contiguous little-endian and together cover the buffer exactly

Nothing in it is executable, so reading is safe by construction; we still check
every offset, size and dtype before touching the data, and report the file and
tensor name on any inconsistency. bfloat16 tensors are returned as float32
(numpy has no bfloat16).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

__all__ = ["SafetensorsError", "load", "save"]

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_ITEMSIZE = {"BF16": 2}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if v is not None}


class SafetensorsError(ValueError):
    """A malformed .safetensors file (the message names the file and the tensor)."""


def _itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(dtype) or np.dtype(_DTYPES[dtype]).itemsize


def read_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data buffer), validated."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a safetensors file ({size} bytes, no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: not a safetensors file (header length {n} does not fit the "
                                   f"{size}-byte file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise SafetensorsError(f"{path}: __metadata__ is not an object")
    start = 8 + n
    buffer = size - start
    spans = []
    for name, e in header.items():
        if not (isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)
                and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2):
            raise SafetensorsError(f"{path}: tensor {name!r}: entry needs dtype, shape and data_offsets [begin, end]")
        if e["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r}: unsupported dtype {e['dtype']!r} "
                                   f"(supported: {', '.join(_DTYPES)})")
        shape, (b, end) = e["shape"], e["data_offsets"]
        if not all(type(d) is int and d >= 0 for d in shape) or not all(type(o) is int for o in (b, end)):
            raise SafetensorsError(f"{path}: tensor {name!r}: bad shape {shape} or offsets {[b, end]}")
        want = int(np.prod(shape, dtype=np.int64)) * _itemsize(e["dtype"])
        if not 0 <= b <= end <= buffer or end - b != want:
            raise SafetensorsError(f"{path}: tensor {name!r}: offsets {[b, end]} do not hold {e['dtype']} "
                                   f"{shape} ({want} bytes) inside the {buffer}-byte data buffer (truncated file?)")
        spans.append((b, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    return header, meta, start


def load(path, names=None) -> dict[str, np.ndarray]:
    """All tensors (or those in ``names``) as numpy arrays, in header order."""
    path = os.fspath(path)
    header, _, start = read_header(path)
    if names is not None:
        missing = sorted(set(names) - set(header))
        if missing:
            raise SafetensorsError(f"{path}: no tensor named {missing[0]!r}")
    out = {}
    with open(path, "rb") as f:
        for name, e in header.items():
            if names is not None and name not in names:
                continue
            b, end = e["data_offsets"]
            f.seek(start + b)
            raw = f.read(end - b)
            if e["dtype"] == "BF16":  # the high half of a float32
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(_DTYPES[e["dtype"]]).newbyteorder("<")).astype(
                    _DTYPES[e["dtype"]])
            out[name] = arr.reshape(e["shape"]).copy()
    return out


def save(tensors: dict, path, metadata: dict | None = None) -> str:
    """Write ``{name: array}`` as safetensors (C order, little-endian), atomically."""
    path = os.fspath(path)
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)  # (not ascontiguousarray: it turns a 0-d array into shape [1])
        if arr.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[str(name)] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                             "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data buffer starts 8-byte aligned, as the reference writer does
    from tf_cartoon.images import _atomic_save  # temp file beside the target, renamed into place

    def save(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)

    return _atomic_save(path, save)
