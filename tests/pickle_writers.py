"""Test-side writers of NVlabs-style network pickles, without torch, TensorFlow or NVlabs code.

Writing a pickle runs nothing from it, so these use Python's pure-Python pickler with two extra
object kinds that emit opcodes directly: :class:`Global` (a GLOBAL / STACK_GLOBAL of a name that is
never imported here) and :class:`Call` (REDUCE or NEWOBJ of such a name, optionally followed by
SETITEMS and BUILD).  The layouts are the ones NVlabs' and torch's own code produce:

* ``write_ada_pickle``: stylegan2-ada-pytorch ``torch_utils.persistence`` objects, i.e.
  ``_reconstruct_persistent_obj(dict(type='class', version=6, module_src=..., class_name=...,
  state=<__dict__>))``; arrays under a ``_parameters`` dict become
  ``_rebuild_parameter(_rebuild_tensor_v2(...), True, OrderedDict())``, other arrays plain
  ``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` where the storage is
  ``torch.storage._load_from_bytes(<legacy torch.save of the storage>)``; numpy scalars become
  ``numpy.core.multiarray.scalar(numpy.dtype(...) + BUILD, bytes)``.
* ``write_tf_pickle``: NVlabs TensorFlow ``dnnlib.tflib.network.Network`` objects (NEWOBJ + BUILD of
  the version-4 state dict); arrays as ``numpy.core.multiarray._reconstruct`` + BUILD.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any

import numpy as np

from tf_cartoon.io.network_pickle import PersistentObject, TFNetwork

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_NAMES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
    "uint8": "ByteStorage", "bool": "BoolStorage",
}


class Global:
    """A global name written into the pickle; only ever dumped, never resolved."""

    _cache: dict[tuple[str, str], "Global"] = {}

    def __new__(cls, module: str, name: str):
        # One object per name, so the pickler's memo writes it once.
        key = (module, name)
        if key not in cls._cache:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]


class Call:
    """``func(*args)`` (REDUCE) or ``cls.__new__(cls, *args)`` (NEWOBJ), then SETITEMS / BUILD."""

    def __init__(self, func: Global, args: tuple, state: Any = None, newobj: bool = False,
                 items: dict | None = None):
        self.func, self.args, self.state, self.newobj, self.items = func, args, state, newobj, items


class EasyDict(dict):
    """Written as NVlabs' ``dnnlib.util.EasyDict`` (NEWOBJ + SETITEMS)."""


class _Writer(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_name(self, obj: Global) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_call(self, obj: Call) -> None:
        self.save(obj.func)
        self.save(tuple(obj.args))
        self.write(pickle.NEWOBJ if obj.newobj else pickle.REDUCE)
        self.memoize(obj)
        if obj.items:
            self._batch_setitems(iter(obj.items.items()))
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Global] = _save_global_name
    dispatch[Call] = _save_call


def _dump(path, tree: Any, protocol: int) -> None:
    buf = io.BytesIO()
    _Writer(buf, protocol=protocol).dump(tree)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _np_dtype(dtype: np.dtype) -> Call:
    # numpy pickles a dtype as numpy.dtype('f4', False, True) + BUILD (3, '<', ...).
    order = "|" if dtype.itemsize == 1 else "<"
    return Call(Global("numpy", "dtype"), (f"{dtype.kind}{dtype.itemsize}", False, True),
                state=(3, order, None, None, None, -1, -1, 0))


def _np_scalar(value: np.generic, core: str) -> Call:
    le = np.asarray(value).astype(value.dtype.newbyteorder("<"))
    return Call(Global(f"{core}.multiarray", "scalar"), (_np_dtype(value.dtype), le.tobytes()))


def _legacy_storage_bytes(arr: np.ndarray) -> bytes:
    """What torch.save(storage, _use_new_zipfile_serialization=False) writes for one storage."""
    storage = _STORAGE_NAMES[arr.dtype.name]
    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        _MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                       "type_sizes": {"short": 2, "int": 4, "long": 4}}))

    def text(s: str) -> bytes:
        raw = s.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    obj = (b"\x80\x02(" + text("storage") + f"ctorch\n{storage}\n".encode() + text("0") + text("cpu")
           + b"J" + struct.pack("<i", arr.size) + b"NtQ.")
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return header + obj + pickle.dumps(["0"], protocol=2) + struct.pack("<q", arr.size) + data.tobytes()


def _torch_tensor(arr: np.ndarray, parameter: bool) -> Call:
    shape = tuple(int(n) for n in arr.shape)
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    storage = Call(Global("torch.storage", "_load_from_bytes"), (_legacy_storage_bytes(arr),))
    tensor = Call(Global("torch._utils", "_rebuild_tensor_v2"),
                  (storage, 0, shape, tuple(reversed(stride)), False, collections.OrderedDict()))
    if not parameter:
        return tensor
    return Call(Global("torch._utils", "_rebuild_parameter"), (tensor, True, collections.OrderedDict()))


def _np_array(arr: np.ndarray, core: str) -> Call:
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1
                                            else arr.dtype, copy=False)
    return Call(Global(f"{core}.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                state=(1, tuple(arr.shape), _np_dtype(arr.dtype), False, data.tobytes()))


def _convert(obj: Any, *, array, core: str, parameters: bool = False, memo: dict | None = None) -> Any:
    """Replace numpy values and our dataclasses by the Calls that write them.

    ``memo`` keeps shared objects shared (one Call each, written once and then referenced).
    """
    memo = {} if memo is None else memo
    if isinstance(obj, (np.ndarray, PersistentObject, TFNetwork)):
        key = (id(obj), parameters)
        if key not in memo:
            memo[key] = (obj, _convert_new(obj, array=array, core=core, parameters=parameters, memo=memo))
        return memo[key][1]
    return _convert_new(obj, array=array, core=core, parameters=parameters, memo=memo)


def _convert_new(obj: Any, *, array, core: str, parameters: bool, memo: dict) -> Any:
    def conv(value, params=False):
        return _convert(value, array=array, core=core, parameters=params, memo=memo)

    if isinstance(obj, np.ndarray):
        return array(obj, parameters)
    if isinstance(obj, np.generic):
        return _np_scalar(obj, core)
    if isinstance(obj, PersistentObject):
        state = {k: conv(v, params=(k == "_parameters")) for k, v in obj.state.items()}
        meta = dict(type="class", version=obj.version, module_src=obj.module_src,
                    class_name=obj.class_name, state=state)
        return Call(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))
    if isinstance(obj, TFNetwork):
        state = dict(version=obj.version, name=obj.name, static_kwargs=conv(obj.static_kwargs),
                     components=conv(obj.components), build_module_src=obj.build_module_src,
                     build_func_name=obj.build_func_name,
                     variables=[(k, conv(v)) for k, v in obj.variables.items()], **conv(obj.extra))
        return Call(Global("dnnlib.tflib.network", "Network"), (), state=state, newobj=True)
    if isinstance(obj, EasyDict):
        return Call(Global("dnnlib.util", "EasyDict"), (), newobj=True,
                    items={k: conv(v) for k, v in obj.items()})
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, conv(v, parameters)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: conv(v, parameters) for k, v in obj.items()}
    if isinstance(obj, list):
        return [conv(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(conv(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(conv(v) for v in obj)
    return obj


def write_ada_pickle(path, obj: Any, protocol: int = 4, core: str = "numpy.core") -> None:
    """Write ``obj`` (dicts of :class:`PersistentObject` ...) as NVlabs' persistence pickle."""
    _dump(path, _convert(obj, array=_torch_tensor, core=core), protocol)


def write_tf_pickle(path, obj: Any, protocol: int = 4, core: str = "numpy.core") -> None:
    """Write ``obj`` (e.g. a (G, D, Gs) tuple of :class:`TFNetwork`) as NVlabs' TF pickle."""
    _dump(path, _convert(obj, array=lambda a, _param: _np_array(a, core), core=core), protocol)
