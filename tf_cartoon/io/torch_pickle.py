"""Read and write PyTorch ``.pt`` checkpoints without PyTorch, safely.

Reads both the zip format and the legacy (pre-1.6) format; writes the zip
format.

Only numpy and the standard library are used; this module never imports torch
or TensorFlow.

The file format (``torch.save`` since torch 1.6)
-----------------------------------------------
A checkpoint is an uncompressed ("stored") zip archive whose records all sit
in one top-level folder.  torch names that folder after the file's stem (or
``archive`` for file objects); the reference fixtures use ``000000``.  Records::

    <folder>/data.pkl               the object tree, a pickle (protocol 2)
    <folder>/data/<key>             raw bytes of one tensor storage
    <folder>/byteorder              "little" or "big" (absent in old files:
                                    little-endian is assumed)
    <folder>/version                "3\\n" (serialization format version;
                                    newer torch may use .data/version)
    <folder>/.format_version        "1"    (torch >= 2.x, optional)
    <folder>/.storage_alignment     "64"   (torch >= 2.x, optional)
    <folder>/.data/serialization_id  random id (torch >= 2.x, optional)

torch starts every record's payload on a 64-byte boundary of the file by
padding the local file header's "extra" field (field id ``FB``), so that the
storages can be memory-mapped.

Inside ``data.pkl`` tensors are not stored inline.  Each storage is a
*persistent id*, pickled with BINPERSID as the tuple::

    ('storage', <storage type global>, key: str, location: str, numel: int)

where the storage type is a global such as ``torch.FloatStorage`` (it fixes
the dtype; ``numel`` counts elements) or, in newer torch for dtypes without a
legacy storage class, ``torch.storage.UntypedStorage`` (``numel`` then counts
bytes and the dtype comes from the rebuild call).  The bytes live in
``<folder>/data/<key>``.  Several tensors may share one storage (views, with an
element offset and element strides).

A tensor is rebuilt by calling (REDUCE) one of::

    torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                                    requires_grad, backward_hooks[, metadata])
    torch._utils._rebuild_tensor_v3(storage, offset, size, stride,
                                    requires_grad, backward_hooks, dtype
                                    [, metadata])          # dtype = torch.uint16 ...
    torch._utils._rebuild_tensor(storage, offset, size, stride)   # old
    torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)
    torch._utils._rebuild_parameter_with_state(tensor, requires_grad,
                                               backward_hooks, state)

``backward_hooks`` is an empty ``collections.OrderedDict``.  A model
``state_dict()`` is an OrderedDict whose ``_metadata`` attribute is restored
with BUILD.  Protocol-2 pickles spell ``bytes`` as
``_codecs.encode(<latin-1 text>, 'latin1')`` and builtins as
``__builtin__.<name>``.

The legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``)
------------------------------------------------------------------------------
One stream of pickles followed by raw storages::

    pickle(0x1950a86a20f9469cfc6c)      magic number
    pickle(1001)                        protocol version
    pickle(sys_info)                    {'little_endian': bool, 'type_sizes': {...}}
    pickle(obj)                         storages as BINPERSID of
        ('storage', <storage type>, key, location, numel, view_metadata)
        view_metadata: None, or (view_key, element offset, element count)
        of a slice of storage ``key``
    pickle(sorted list of storage keys)
    for each key in that order: int64 element count, then the elements' bytes
        (byte order per ``little_endian``)

A ``('module', <class>, source_file, source)`` persistent id marks a whole
``nn.Module`` class saved with the model; it is refused.  :func:`load` reads
both formats into the same result; :func:`sniff` tells them (and plain
pickles) apart by their first bytes.

Why an allow-list
-----------------
A ``.pt`` file *is* a pickle, and unpickling can call any importable function
named in the file (``os.system`` and friends): loading an untrusted
checkpoint with :mod:`pickle` runs whatever code its author chose.  This module
therefore does not use :mod:`pickle`'s loader at all: it runs the pickle in
:mod:`tf_cartoon.io.safe_pickle` (which states the threat model) under a
policy in which a global name is only ever looked up in a fixed table
(``_ALLOWED_GLOBALS``) mapping the permitted names onto our own local
handlers.  No module is imported and no real object is called because a file
names it.  Anything else raises :class:`UnsafePickleError` the moment the name
is read, before any call happens.  BUILD (state restore) is only allowed on
OrderedDict and argparse.Namespace, and only sets plain instance attributes.

Loaded results hold numpy arrays in place of tensors and Parameters (a
C-contiguous copy with the tensor's shape and dtype; bfloat16 becomes
float32), tuples in place of ``torch.Size``, and real ``argparse.Namespace``
and ``OrderedDict`` objects.

:func:`save` writes the same format back, readable by
``torch.load(path, weights_only=True)`` provided the object only holds
dicts/OrderedDicts/lists/tuples/primitives/numpy arrays.  An
``argparse.Namespace`` can be saved too, but torch's ``weights_only=True``
loader refuses it, so callers should store training arguments as a plain
dict (``vars(args)``).
"""

from __future__ import annotations

import argparse
import collections
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tf_cartoon.io.errors import CheckpointFormatError, UnsafePickleError
from tf_cartoon.io.safe_pickle import AllowedGlobal, Policy, unpickle

__all__ = ["CheckpointFormatError", "UnsafePickleError", "load", "load_legacy_bytes", "save", "sniff"]




_ALLOWED_SUMMARY = (
    "only tensors, storages, OrderedDict, dict/list/tuple/primitives and "
    "argparse.Namespace are allowed"
)

# Python 2 module names that protocol < 3 pickles use for builtins.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# pickle of the magic number that starts the legacy (pre-1.6) torch format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
_LEGACY_PROTOCOL = 1001

_ALIGNMENT = 64

# ---------------------------------------------------------------------------
# dtype tables
# ---------------------------------------------------------------------------

# Legacy typed storage class name -> numpy dtype of one element as stored.
# bfloat16 is read as raw uint16 and widened to float32 afterwards.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_DTYPE_TO_STORAGE = {v: k for k, v in _STORAGE_DTYPES.items()}

# torch dtype globals (``torch.float32`` ...) seen in _rebuild_tensor_v3.
_TORCH_DTYPES: dict[str, str] = {
    "float64": "float64", "double": "float64",
    "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64", "cfloat": "complex64",
    "complex128": "complex128", "cdouble": "complex128",
}

# Element size in bytes of each dtype name used above.
_ITEMSIZE = {"bfloat16": 2, "bool": 1}


def _itemsize(dtype_name: str) -> int:
    return _ITEMSIZE.get(dtype_name) or np.dtype(dtype_name).itemsize


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


class _Global(AllowedGlobal):
    """An allow-listed torch-format global; the pickle never sees real objects.

    ``call`` (see :class:`AllowedGlobal`) implements REDUCE / NEWOBJ for the
    name; storage types carry their element dtype and ``torch.<dtype>``
    globals their numpy dtype name, so that the rebuild handlers can read them.
    """

    __slots__ = ("storage_dtype", "torch_dtype")

    def __init__(self, qualname: str, call: Callable[..., Any] | None = None,
                 storage_dtype: str | None = None, torch_dtype: str | None = None):
        super().__init__(qualname, call)
        self.storage_dtype = storage_dtype  # for storage types ("" = untyped)
        self.torch_dtype = torch_dtype      # for torch.<dtype> globals


class _StorageRef:
    """A storage named by a persistent id; its bytes are read on first use.

    ``start`` is a byte offset into the stored bytes of ``key``: legacy files
    may name a view of a storage (a slice of its elements) in the persistent id.
    """

    __slots__ = ("key", "dtype", "nbytes", "reader", "start")

    def __init__(self, key: str, dtype: str | None, nbytes: int, reader: "_TorchPolicy",
                 start: int = 0):
        self.key = key
        self.dtype = dtype  # None for torch.storage.UntypedStorage
        self.nbytes = nbytes
        self.reader = reader
        self.start = start

    def __repr__(self) -> str:
        return f"<storage {self.key!r} dtype={self.dtype} nbytes={self.nbytes}>"


def _fail(reader: "_CheckpointReader", what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{reader.path}: {what}")


def _check_int(reader, value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _fail(reader, f"bad {what} {value!r} in tensor rebuild call")
    return value


def _check_int_seq(reader, value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _fail(reader, f"bad {what} {value!r} in tensor rebuild call")
    return tuple(_check_int(reader, v, what) for v in value)


def _make_tensor(reader, storage, offset, size, stride, dtype_name=None) -> np.ndarray:
    """Turn (storage, offset, size, stride) into a fresh C-contiguous array."""
    if not isinstance(storage, _StorageRef):
        raise _fail(reader, f"tensor rebuild call got {type(storage).__name__}, not a storage")
    dtype_name = dtype_name or storage.dtype
    if dtype_name is None:
        raise _fail(reader, f"untyped storage {storage.key!r} used without a dtype")
    offset = _check_int(reader, offset, "storage offset")
    size = _check_int_seq(reader, size, "size")
    stride = _check_int_seq(reader, stride, "stride")
    if len(size) != len(stride):
        raise _fail(reader, f"size {size} and stride {stride} differ in length")
    itemsize = _itemsize(dtype_name)
    numel = storage.nbytes // itemsize
    out_dtype = "float32" if dtype_name == "bfloat16" else dtype_name
    if 0 in size:
        return np.zeros(size, dtype=out_dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= numel:
        raise _fail(
            reader,
            f"tensor (offset {offset}, size {size}, stride {stride}) reaches element "
            f"{last} but storage {storage.key!r} holds {numel} {dtype_name} elements",
        )
    if storage.reader.dry:
        # First pass over a legacy file: the storage bytes come after the
        # object pickle, so only the layout is checked here.
        return np.empty(0, dtype=out_dtype)
    flat = storage.reader.storage_array(storage, dtype_name)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    arr = np.array(view, order="C", copy=True)
    # (np.asarray: numpy operators turn 0-d arrays into scalars.)
    if dtype_name == "bfloat16":
        arr = np.asarray(arr.astype(np.uint32) << 16).view(np.float32)
    elif dtype_name == "bool":
        arr = np.asarray(arr != 0)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _rebuild_tensor_v2(reader, args):
    if len(args) not in (6, 7):
        raise _fail(reader, f"_rebuild_tensor_v2 expects 6 or 7 arguments, got {len(args)}")
    return _make_tensor(reader, *args[:4])


def _rebuild_tensor_v3(reader, args):
    if len(args) not in (7, 8):
        raise _fail(reader, f"_rebuild_tensor_v3 expects 7 or 8 arguments, got {len(args)}")
    dtype = args[6]
    if not isinstance(dtype, _Global) or dtype.torch_dtype is None:
        raise _fail(reader, f"_rebuild_tensor_v3 got dtype {dtype!r}")
    return _make_tensor(reader, *args[:4], dtype_name=dtype.torch_dtype)


def _rebuild_tensor(reader, args):
    if len(args) != 4:
        raise _fail(reader, f"_rebuild_tensor expects 4 arguments, got {len(args)}")
    return _make_tensor(reader, *args)


def _rebuild_parameter(reader, args):
    # (data, requires_grad, backward_hooks[, state]): a Parameter is just its data here.
    if len(args) not in (3, 4) or not isinstance(args[0], np.ndarray):
        raise _fail(reader, "bad arguments to torch._utils._rebuild_parameter")
    return args[0]


def _make_ordered_dict(reader, args):
    if not args:
        return collections.OrderedDict()
    if len(args) == 1 and isinstance(args[0], (list, tuple, dict)):
        return collections.OrderedDict(args[0])
    raise _fail(reader, "bad arguments to collections.OrderedDict")


def _make_namespace(reader, args):
    if args:
        raise _fail(reader, "argparse.Namespace takes no positional arguments")
    return argparse.Namespace()


def _make_set(kind):
    def make(reader, args):
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset)):
            return kind(args[0])
        raise _fail(reader, f"bad arguments to {kind.__name__}")
    return make


_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _codecs_encode(reader, args):
    # Protocol-2 pickles write bytes as _codecs.encode(text, 'latin1').
    if (len(args) in (1, 2) and type(args[0]) is str
            and (len(args) == 1 or (type(args[1]) is str and args[1].lower() in _LATIN1_NAMES))):
        return args[0].encode("latin-1")
    raise UnsafePickleError(
        f"{reader.path}: refused _codecs.encode call with arguments {args!r}: "
        "only latin-1 encoding of text is allowed"
    )


def _make_bytes(reader, args):
    if not args:
        return b""
    return _codecs_encode(reader, args)


def _make_bytearray(reader, args):
    return bytearray(_make_bytes(reader, args))


def _torch_size(reader, args):
    if len(args) == 1:
        return _check_int_seq(reader, args[0], "torch.Size entry")
    raise _fail(reader, "bad arguments to torch.Size")


def _build_allowed_globals() -> dict[tuple[str, str], _Global]:
    table: dict[tuple[str, str], _Global] = {}

    def add(module, name, call=None, **kw):
        table[(module, name)] = _Global(f"{module}.{name}", call, **kw)

    add("collections", "OrderedDict", _make_ordered_dict)
    add("argparse", "Namespace", _make_namespace)
    add("builtins", "set", _make_set(set))
    add("builtins", "frozenset", _make_set(frozenset))
    add("builtins", "bytes", _make_bytes)
    add("builtins", "bytearray", _make_bytearray)
    add("_codecs", "encode", _codecs_encode)
    add("torch", "Size", _torch_size)
    add("torch._utils", "_rebuild_tensor", _rebuild_tensor)
    add("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2)
    add("torch._utils", "_rebuild_tensor_v3", _rebuild_tensor_v3)
    add("torch._utils", "_rebuild_parameter", _rebuild_parameter)
    add("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter)
    for storage_name, dtype in _STORAGE_DTYPES.items():
        add("torch", storage_name, storage_dtype=dtype)
        add("torch.cuda", storage_name, storage_dtype=dtype)
    add("torch", "UntypedStorage", storage_dtype="")
    add("torch.storage", "UntypedStorage", storage_dtype="")
    for torch_name, dtype in _TORCH_DTYPES.items():
        add("torch", torch_name, torch_dtype=dtype)
    return table


_ALLOWED_GLOBALS = _build_allowed_globals()


class _TorchPolicy(Policy):
    """The allow-list shared by both torch formats; subclasses own the bytes."""

    label = "data.pkl"
    allowed_summary = _ALLOWED_SUMMARY
    build_types = (collections.OrderedDict, argparse.Namespace)
    byteorder = "little"
    # True while a legacy file's object pickle is scanned before its storage
    # bytes are located (see _LegacyReader): tensors are then only checked.
    dry = False

    def __init__(self, path: str):
        self.path = path
        self._refs: dict[tuple, _StorageRef] = {}
        self._arrays: dict[tuple, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> _Global:
        module = _PY2_MODULES.get(module, module)
        entry = _ALLOWED_GLOBALS.get((module, name))
        if entry is not None:
            return entry
        if module in ("torch", "torch.cuda") and name.endswith("Storage"):
            raise _fail(self, f"unsupported tensor storage type {module}.{name} (dtype not supported)")
        if module == "torch" and name.startswith(("float8", "complex32", "qint", "quint")):
            raise _fail(self, f"unsupported tensor dtype {module}.{name}")
        raise UnsafePickleError(
            f"{self.path}: refused to load global '{module}.{name}' from the checkpoint's "
            f"pickle: {_ALLOWED_SUMMARY} (nothing from the file was executed)"
        )

    def _check_pid(self, pid: Any, length: int) -> tuple[str, str | None, int]:
        """Validate a 'storage' persistent id; returns (key, dtype or None, numel)."""
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
            raise UnsafePickleError(
                f"{self.path}: refused a pickled nn.Module class (persistent id 'module'): "
                "whole-model torch files carry classes that would have to be imported; "
                "save a state_dict instead (nothing from the file was executed)"
            )
        if not (isinstance(pid, tuple) and len(pid) == length and pid[0] in ("storage", b"storage")):
            raise _fail(self, f"unsupported persistent id {pid!r} (expected a 'storage' tuple)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _Global) or storage_type.storage_dtype is None:
            raise _fail(self, f"persistent id names {storage_type!r}, not a storage type")
        if type(key) is not str or not key or "/" in key or ".." in key:
            raise _fail(self, f"bad storage key {key!r}")
        if type(numel) is not int or numel < 0:
            raise _fail(self, f"bad storage size {numel!r} for storage {key!r}")
        return key, storage_type.storage_dtype or None, numel

    def raw_bytes(self, key: str) -> bytes | memoryview:
        raise NotImplementedError

    def storage_array(self, ref: _StorageRef, dtype_name: str) -> np.ndarray:
        """1-D read-only array over a storage's bytes, in the file's byte order."""
        cache_key = (ref.key, ref.start, ref.nbytes, dtype_name)
        arr = self._arrays.get(cache_key)
        if arr is None:
            np_name = {"bfloat16": "uint16", "bool": "uint8"}.get(dtype_name, dtype_name)
            dt = np.dtype(np_name).newbyteorder("<" if self.byteorder == "little" else ">")
            arr = np.frombuffer(self.raw_bytes(ref.key), dtype=dt, count=ref.nbytes // dt.itemsize,
                                offset=ref.start)
            self._arrays[cache_key] = arr
        return arr


class _CheckpointReader(_TorchPolicy):
    """Holds the open zip archive and turns persistent ids into storages."""

    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(path)
        self.zf = zf
        self.prefix = prefix
        self.byteorder = byteorder
        self._sizes = {info.filename: info.file_size for info in zf.infolist()}
        self._raw: dict[str, bytes] = {}

    def persistent_load(self, pid: Any) -> _StorageRef:
        key, dtype, numel = self._check_pid(pid, 5)
        ref = self._refs.get((key, dtype))
        if ref is not None:
            return ref
        nbytes = numel * (_itemsize(dtype) if dtype else 1)
        record = f"{self.prefix}data/{key}"
        if record not in self._sizes:
            raise _fail(self, f"missing storage record '{record}'")
        if self._sizes[record] < nbytes:
            raise _fail(
                self,
                f"storage record '{record}' is too small: {self._sizes[record]} bytes, "
                f"{nbytes} expected",
            )
        ref = self._refs[(key, dtype)] = _StorageRef(key, dtype, nbytes, self)
        return ref

    def raw_bytes(self, key: str) -> bytes:
        raw = self._raw.get(key)
        if raw is None:
            raw = self._raw[key] = self.read_record(f"data/{key}")
        return raw

    def read_record(self, name: str) -> bytes:
        full = self.prefix + name
        try:
            return self.zf.read(full)
        except KeyError:
            raise _fail(self, f"missing record '{full}'") from None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise _fail(self, f"cannot read record '{full}' (truncated or corrupt): {exc}") from None


class _LegacyReader(_TorchPolicy):
    """Reads the pre-1.6 format: pickles followed by the raw storages.

    Layout (torch ``_legacy_save``)::

        pickle(MAGIC_NUMBER)  pickle(1001)  pickle(sys_info)
        pickle(obj)           # storages as ('storage', type, key, location,
                              #              numel, view_metadata)
        pickle(sorted storage keys)
        for each key: int64 element count, then count * element-size bytes

    The storage bytes follow the object pickle, and their offsets depend on
    the element size of every earlier storage, which only the object pickle
    tells.  So the object pickle is run twice: first "dry" (persistent ids are
    recorded and tensor layouts checked, no data read), then for real once
    every storage's bytes are located.
    """

    label = "legacy torch pickle"

    def __init__(self, path: str, data: bytes):
        super().__init__(path)
        self.data = data
        self.dry = True
        self._roots: dict[str, tuple[str | None, int]] = {}  # key -> (dtype, numel)
        self._spans: dict[str, tuple[int, int]] = {}          # key -> (start, nbytes)

    def persistent_load(self, pid: Any) -> _StorageRef:
        key, dtype, numel = self._check_pid(pid, 6)
        view = pid[5]
        seen = self._roots.setdefault(key, (dtype, numel))
        if seen != (dtype, numel):
            raise _fail(self, f"storage {key!r} is named as both {seen} and {(dtype, numel)} "
                              "(dtype, element count)")
        itemsize = _itemsize(dtype) if dtype else 1
        start, count, ref_key = 0, numel, (key, dtype)
        if view is not None:
            # (view_key, element offset, element count) of a slice of the storage
            if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int
                    and type(view[2]) is int and 0 <= view[1] and 0 <= view[2]
                    and view[1] + view[2] <= numel):
                raise _fail(self, f"bad storage view {view!r} of storage {key!r} ({numel} elements)")
            start, count, ref_key = view[1] * itemsize, view[2], (key, dtype, view[1], view[2])
        ref = self._refs.get(ref_key)
        if ref is None:
            ref = self._refs[ref_key] = _StorageRef(key, dtype, count * itemsize, self, start)
        return ref

    def raw_bytes(self, key: str) -> memoryview:
        start, nbytes = self._spans[key]
        return memoryview(self.data)[start:start + nbytes]

    def header(self) -> int:
        """Check magic number, protocol version and sys_info; returns the next offset."""
        empty = Policy()
        empty.path, empty.label = self.path, self.label
        magic, pos = unpickle(self.data, empty)
        if magic != _LEGACY_MAGIC:
            raise _fail(self, "not a legacy torch file (bad magic number)")
        version, pos = unpickle(self.data, empty, pos)
        if version != _LEGACY_PROTOCOL:
            raise _fail(self, f"unsupported legacy torch protocol version {version!r} "
                              f"(expected {_LEGACY_PROTOCOL})")
        sys_info, pos = unpickle(self.data, empty, pos)
        if not isinstance(sys_info, dict):
            raise _fail(self, f"bad sys_info record {sys_info!r}")
        little = sys_info.get("little_endian", True)
        if type(little) is not bool:
            raise _fail(self, f"bad sys_info little_endian {little!r}")
        self.byteorder = "little" if little else "big"
        return pos

    def locate_storages(self, pos: int) -> None:
        """Read the sorted key list at ``pos`` and find each storage's bytes."""
        keys, pos = unpickle(self.data, self, pos)
        if not isinstance(keys, list) or not all(type(k) is str for k in keys):
            raise _fail(self, "storage key list is not a list of strings")
        missing = sorted(set(self._roots) - set(keys))
        if missing:
            raise _fail(self, f"storages {missing} are used but not stored")
        order = "little" if self.byteorder == "little" else "big"
        end = len(self.data)
        for key in keys:
            if key not in self._roots:
                raise _fail(self, f"stored storage {key!r} is not used by the object pickle")
            if key in self._spans:
                raise _fail(self, f"storage {key!r} is stored twice")
            dtype, numel = self._roots[key]
            if pos + 8 > end:
                raise _fail(self, f"truncated file: storage {key!r} starts at byte {pos}, "
                                  f"the file has {end} bytes")
            count = int.from_bytes(self.data[pos:pos + 8], order, signed=True)
            if count != numel:
                raise _fail(self, f"storage {key!r} holds {count} elements, the pickle says {numel}")
            nbytes = count * (_itemsize(dtype) if dtype else 1)
            if pos + 8 + nbytes > end:
                raise _fail(self, f"truncated file: storage {key!r} needs bytes {pos + 8}.."
                                  f"{pos + 8 + nbytes}, the file has {end} bytes")
            self._spans[key] = (pos + 8, nbytes)
            pos += 8 + nbytes

    def load(self) -> Any:
        start = self.header()
        obj, end = unpickle(self.data, self, start)
        self.locate_storages(end)
        if not self._roots:
            return obj  # no tensors: the dry result is the result
        self.dry = False
        return unpickle(self.data, self, start)[0]


def load_legacy_bytes(data: bytes, path: str) -> Any:
    """Load an in-memory legacy torch file (e.g. the bytes of a pickled storage).

    ``path`` names the file the bytes came from, for error messages.
    """
    if not data.startswith(b"\x80") or data[2:2 + len(_LEGACY_PREFIX)] != _LEGACY_PREFIX:
        raise CheckpointFormatError(f"{path}: not a legacy torch file (no magic number pickle)")
    return _LegacyReader(path, data).load()


def _read_head(path: str, n: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except IsADirectoryError:
        raise CheckpointFormatError(f"{path}: is a directory, not a PyTorch checkpoint") from None


def _is_legacy(head: bytes) -> bool:
    # torch pickles the magic number first: PROTO n, LONG1 of 10 bytes.
    return head[:1] == b"\x80" and head[2:2 + len(_LEGACY_PREFIX)] == _LEGACY_PREFIX


def sniff(path: str | os.PathLike) -> str | None:
    """Guess a file's format from its first bytes, without parsing it.

    ``'torch_zip'`` (``torch.save`` since 1.6: a zip archive), ``'torch_legacy'``
    (``torch.save`` before 1.6 or with ``_use_new_zipfile_serialization=False``:
    a pickle of torch's magic number), ``'pickle'`` (any other binary pickle,
    e.g. an NVlabs network pickle, read by :mod:`tf_cartoon.io.network_pickle`)
    or ``None``.  Raises OSError if the file cannot be read.
    """
    with open(os.fspath(path), "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        return "torch_zip"
    if _is_legacy(head):
        return "torch_legacy"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _open_archive(path: str, head: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        if head.startswith(b"PK"):
            raise CheckpointFormatError(
                f"{path}: truncated or corrupt zip archive, not a readable PyTorch zip "
                f"checkpoint ({exc})"
            ) from None
        if len(head) > 262 and head[257:262] == b"ustar":
            raise CheckpointFormatError(
                f"{path}: tar-format torch checkpoint (torch < 0.4) not supported: re-save with a newer torch"
            ) from None
        raise CheckpointFormatError(
            f"{path}: not a PyTorch zip checkpoint nor a legacy torch file (no zip signature or "
            "torch magic number)"
        ) from None


def load_state_dict(path, what: str, error=CheckpointFormatError) -> dict:
    """A weights file that is a torch state dict (a dict name -> array), named by the flag ``what``.

    A missing file is a FileNotFoundError; an unreadable, unsafe or non-dict file raises ``error`` with one
    line naming the flag and the file (tools pass their own ValueError subclass)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist or is not a file")
    try:
        sd = load(path)
    except (CheckpointFormatError, UnsafePickleError) as e:
        raise error(f"{what} {path}: not a readable torch state dict: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # some tools save {"state_dict": ...}
    if not isinstance(sd, dict):
        raise error(f"{what} {path}: expected a state dict, got {type(sd).__name__}")
    return sd


def load(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` checkpoint (zip or legacy) into plain Python + numpy objects.

    Tensors and Parameters become C-contiguous numpy arrays (bfloat16 ->
    float32), ``torch.Size`` becomes a tuple, OrderedDict and
    argparse.Namespace are kept.  Both formats give the same result for the
    same saved object.  Raises :class:`UnsafePickleError` if the pickle names
    any global outside the allow-list (nothing is executed) and
    :class:`CheckpointFormatError` for anything malformed.
    """
    path = os.fspath(path)
    head = _read_head(path)
    if not head:
        raise CheckpointFormatError(f"{path}: empty file (0 bytes): not a PyTorch checkpoint")
    if _is_legacy(head):
        with open(path, "rb") as f:
            return _LegacyReader(path, f.read()).load()
    with _open_archive(path, head) as zf:
        return _load_zip(path, zf)


def _load_zip(path: str, zf: zipfile.ZipFile) -> Any:
    try:
        names = zf.namelist()
    except Exception as exc:  # pragma: no cover - zipfile already parsed it
        raise CheckpointFormatError(f"{path}: corrupt zip directory: {exc}") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointFormatError(
            f"{path}: zip archive is not a torch checkpoint: missing '<folder>/data.pkl' record"
        )
    if len(pickles) > 1:
        raise CheckpointFormatError(f"{path}: several data.pkl records: {sorted(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    reader = _CheckpointReader(path, zf, prefix, "little")
    if prefix + "byteorder" in names:
        order = reader.read_record("byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointFormatError(f"{path}: bad byteorder record {order!r}")
        reader.byteorder = order
    data = reader.read_record("data.pkl")
    return unpickle(data, reader)[0]


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


class _PickleWriter:
    """Emits protocol-2 pickle opcodes for the object kinds we allow."""

    def __init__(self):
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self.keep_alive: list[Any] = []
        self.global_memo: dict[tuple[str, str], int] = {}
        self.storages: list[np.ndarray] = []  # contiguous little-endian arrays
        self.in_progress: set[int] = set()

    # -- low level -------------------------------------------------------
    def _put(self) -> int:
        idx = len(self.memo) + len(self.global_memo)
        if idx < 256:
            self.out += b"q" + bytes([idx])
        else:
            self.out += b"r" + struct.pack("<I", idx)
        return idx

    def _get(self, idx: int) -> None:
        if idx < 256:
            self.out += b"h" + bytes([idx])
        else:
            self.out += b"j" + struct.pack("<I", idx)

    def _memoize(self, obj: Any) -> None:
        self.memo[id(obj)] = self._put()
        self.keep_alive.append(obj)

    def _global(self, module: str, name: str) -> None:
        key = (module, name)
        if key in self.global_memo:
            self._get(self.global_memo[key])
            return
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        self.global_memo[key] = self._put()

    def _int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        elif -(2 ** 31) <= value < 2 ** 31:
            self.out += b"J" + struct.pack("<i", value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            if len(raw) < 256:
                self.out += b"\x8a" + bytes([len(raw)]) + raw
            else:
                self.out += b"\x8b" + struct.pack("<i", len(raw)) + raw

    def _str(self, value: str) -> None:
        raw = value.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def _tuple_of(self, items, where) -> None:
        if not items:
            self.out += b")"
            return
        self.out += b"("
        for item in items:
            self.save(item, where)
        self.out += b"t"

    def _float(self, value: float) -> None:
        self.out += b"G" + struct.pack(">d", value)

    # -- objects ---------------------------------------------------------
    def save(self, obj: Any, where: str = "obj") -> None:
        """Append ``obj``'s opcodes: scalars by value, every other object once (a second reference reads the
        memo); ``where`` names the object in errors."""
        kind = type(obj)
        if obj is None or kind is bool:
            self.out += b"N" if obj is None else (b"\x88" if obj else b"\x89")
        elif kind in self._SCALARS:
            self._SCALARS[kind](self, obj)
        elif isinstance(obj, np.generic) and not isinstance(obj, (np.object_, np.void)):
            self.save(obj.item(), where)
        elif id(obj) in self.memo:
            self._get(self.memo[id(obj)])
        elif kind in self._OBJECTS:
            self._OBJECTS[kind](self, obj, where)
        elif isinstance(obj, np.ndarray):
            self._tensor(obj, where)
        else:
            raise TypeError(
                f"cannot save object of type {kind.__module__}.{kind.__qualname__} "
                f"at {where}: only dict/OrderedDict/list/tuple/set, str/int/float/bool/None/"
                "bytes, numpy arrays and argparse.Namespace are supported"
            )

    def _bytes(self, obj, where: str) -> None:
        # Protocol 2 has no bytes opcode: torch (and CPython) use
        # _codecs.encode(latin-1 text, 'latin1'), which weights_only allows.
        self._global("_codecs", "encode")
        self.out += b"("
        self._str(bytes(obj).decode("latin-1"))
        self._str("latin1")
        self.out += b"tR"
        self._memoize(obj)

    def _tuple(self, obj: tuple, where: str) -> None:
        if id(obj) in self.in_progress:
            raise TypeError(f"cannot save recursive tuple at {where}")
        self.in_progress.add(id(obj))
        self._tuple_of([*obj], where)
        self.in_progress.discard(id(obj))
        self._memoize(obj)

    def _list(self, obj: list, where: str) -> None:
        self.out += b"]"
        self._memoize(obj)
        if obj:
            self.out += b"("
            for i, item in enumerate(obj):
                self.save(item, f"{where}[{i}]")
            self.out += b"e"

    def _dict(self, obj: dict, where: str) -> None:
        if type(obj) is dict:
            self.out += b"}"
        else:
            self._global("collections", "OrderedDict")
            self.out += b")R"
        self._memoize(obj)
        self._items(obj, where)
        extra = vars(obj) if type(obj) is collections.OrderedDict else None
        if extra:  # e.g. a state_dict's _metadata attribute
            self.out += b"}"
            self._items(extra, f"{where}.__dict__")
            self.out += b"b"

    def _namespace(self, obj: argparse.Namespace, where: str) -> None:
        self._global("argparse", "Namespace")
        self.out += b")\x81"
        self._memoize(obj)
        self.out += b"}"
        self._items(vars(obj), where)
        self.out += b"b"

    def _set(self, obj, where: str) -> None:
        self._global("__builtin__", type(obj).__name__)
        self.out += b"("
        self.out += b"]"
        if obj:
            self.out += b"("
            for item in obj:
                self.save(item, f"{where}{{item}}")
            self.out += b"e"
        self.out += b"tR"
        self._memoize(obj)

    # the writer of each exact type: a subclass is refused rather than written as its base
    _SCALARS = {int: _int, float: _float, str: _str}
    _OBJECTS = {bytes: _bytes, bytearray: _bytes, tuple: _tuple, list: _list, dict: _dict,
                collections.OrderedDict: _dict, argparse.Namespace: _namespace, set: _set, frozenset: _set}

    def _items(self, mapping: dict, where: str) -> None:
        if not mapping:
            return
        self.out += b"("
        count = 0
        for key, value in mapping.items():
            self.save(key, where)
            self.save(value, f"{where}[{key!r}]")
            count += 1
            if count % 1000 == 0:  # keep MARK groups bounded, like CPython
                self.out += b"u("
        self.out += b"u"

    def _tensor(self, arr: np.ndarray, where: str) -> None:
        dtype_name = arr.dtype.name
        if dtype_name not in _DTYPE_TO_STORAGE or dtype_name == "bfloat16":
            raise TypeError(
                f"cannot save numpy array of dtype {arr.dtype} at {where}: supported dtypes are "
                + ", ".join(sorted(k for k in _DTYPE_TO_STORAGE if k != "bfloat16"))
            )
        # (np.ascontiguousarray would turn 0-d arrays into 1-d ones.)
        data = arr if arr.flags.c_contiguous else np.array(arr, order="C")
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        key = str(len(self.storages))
        self.storages.append(data)
        shape = tuple(int(n) for n in data.shape)
        stride: list[int] = []
        step = 1
        for n in reversed(shape):
            stride.append(step)
            step *= max(n, 1)
        stride.reverse()
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("
        self._str("storage")
        self._global("torch", _DTYPE_TO_STORAGE[dtype_name])
        self._str(key)
        self._str("cpu")
        self._int(int(data.size))
        self.out += b"tQ"  # close the persistent id tuple, BINPERSID
        self._int(0)
        self._tuple_of(shape, where)
        self._tuple_of(tuple(stride), where)
        self.out += b"\x89"  # requires_grad=False
        self._global("collections", "OrderedDict")
        self.out += b")R"  # backward_hooks=OrderedDict()
        self.out += b"tR"
        self._memoize(arr)


def _padding_extra(offset_after_header: int) -> bytes:
    """Extra field ('FB' + size + filler) that pushes the payload to 64 bytes."""
    pad = (-(offset_after_header + 4)) % _ALIGNMENT
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


def _write_record(zf: zipfile.ZipFile, fileobj, name: str, payload) -> None:
    view = memoryview(payload).cast("B")
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = view.nbytes
    zip64 = view.nbytes * 1.05 > zipfile.ZIP64_LIMIT
    try:
        name_len = len(name.encode("ascii"))
    except UnicodeEncodeError:
        name_len = len(name.encode("utf-8"))
    header = 30 + name_len + (20 if zip64 else 0)
    info.extra = _padding_extra(fileobj.tell() + header)
    with zf.open(info, mode="w", force_zip64=zip64) as out:
        if fileobj.tell() % _ALIGNMENT:
            raise RuntimeError(f"internal error: record {name} is not {_ALIGNMENT}-byte aligned")
        chunk = 1 << 24
        for start in range(0, view.nbytes, chunk):
            out.write(view[start:start + chunk])


def save(obj: Any, path: str | os.PathLike, archive_name: str | None = None) -> None:
    """Write ``obj`` as a torch zip checkpoint (``torch.load``-compatible).

    numpy arrays become CPU tensors (float32/float64/float16/int64/int32/
    int16/int8/uint8/bool/complex; written contiguous, little-endian, one
    storage each: views sharing memory are written as separate tensors).
    numpy scalars are saved as Python scalars.  The inner folder is
    ``archive_name`` (default: the file stem).  ``argparse.Namespace`` values
    are written, but ``torch.load(weights_only=True)`` refuses them: store
    arguments as a plain dict instead.

    The file is written to ``<path>.tmp-<pid>`` and moved over ``path`` only
    when complete, so a failure never leaves a truncated file at ``path``.
    Raises ``TypeError`` (before touching the file system) for objects that
    cannot be saved.
    """
    path = os.fspath(path)
    if archive_name is None:
        archive_name = Path(path).stem or "archive"
    if not archive_name or any(c in archive_name for c in "/\\") or archive_name in (".", ".."):
        raise ValueError(f"bad archive_name {archive_name!r}")

    writer = _PickleWriter()
    writer.out += b"\x80\x02"
    writer.save(obj)
    writer.out += b"."

    records: list[tuple[str, Any]] = [
        ("data.pkl", bytes(writer.out)),
        (".format_version", b"1"),
        (".storage_alignment", str(_ALIGNMENT).encode()),
        ("byteorder", b"little"),
    ]
    for key, arr in enumerate(writer.storages):
        records.append((f"data/{key}", arr.reshape(-1).view(np.uint8)))
    records.append(("version", b"3\n"))
    records.append((".data/version", b"3\n"))

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, payload in records:
                    _write_record(zf, f, f"{archive_name}/{name}", payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
