"""Read NVlabs network pickles as data, without running anything they carry.

Two kinds of plain (non-zip) pickle file are read:

* NVlabs stylegan2-ada-pytorch snapshots (``network-snapshot-*.pkl``):
  ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
  training_set_kwargs=...))``.  Every network is a ``torch_utils.persistence``
  class, pickled as a call ``_reconstruct_persistent_obj(meta)`` with ``meta =
  dict(type='class', version=6, module_src=<the defining module's source
  text>, class_name=..., state=<the object's __dict__>)``.  NVlabs' loader
  ``exec``s ``module_src``; here it is kept as a string and never compiled.
* NVlabs' TensorFlow stylegan2 pickles: ``pickle.dump((G, D, Gs))`` of
  ``dnnlib.tflib.network.Network`` objects, each NEWOBJ + BUILD with a state
  dict (``version`` 2..4, ``name``, ``static_kwargs``, ``components``,
  ``build_module_src``, ``build_func_name``, ``variables`` = list of (name,
  numpy array)).  NVlabs' loader ``exec``s ``build_module_src``; here it is
  kept as a string.

The pickle runs in :mod:`tf_cartoon.io.safe_pickle` (see its threat model)
under an allow-list that maps every permitted global onto our own stand-in:

==========================================================  =====================================
file's global                                               result
==========================================================  =====================================
``torch_utils.persistence._reconstruct_persistent_obj``     :class:`PersistentObject`
``dnnlib.tflib.network.Network``                            :class:`TFNetwork`
``dnnlib.util.EasyDict``                                    plain ``dict``
``torch._utils._rebuild_tensor_v2`` (and v3, parameters),   numpy array (C-contiguous copy)
``torch._tensor._rebuild_from_type_v2`` over Tensor/Parameter
``torch.storage._load_from_bytes(<legacy torch.save bytes>)``  storage, read by torch_pickle
``numpy.core.multiarray._reconstruct`` + BUILD, ``numpy.dtype``, numpy array / dtype / scalar
``numpy.core.multiarray.scalar``, ``numpy.core.numeric._frombuffer``
(also the ``numpy._core`` spellings of numpy 2)
``collections.OrderedDict``, ``builtins.set`` ...            the same, as in torch_pickle
==========================================================  =====================================

numpy arrays are built from their bytes with ``numpy.frombuffer`` for plain
numeric dtypes (bool, int, uint, float, complex) only; object, string, void
and structured dtypes are refused, since object arrays are pickles of
arbitrary objects.  Any other global raises :class:`UnsafePickleError` the
moment it is read.

A module's PersistentObject ``state`` is its ``__dict__``: ``_parameters``,
``_buffers`` and ``_modules`` are OrderedDicts keyed by *local* names, so a
weight is reached as ``G_ema.state['_modules']['mapping'].state['_modules']
['fc0'].state['_parameters']['weight']`` (see :func:`module_tensors` for the
flat ``state_dict``-style view).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Any, Iterator

import numpy as np

from tf_cartoon.io import torch_pickle
from tf_cartoon.io.errors import CheckpointFormatError, UnsafePickleError
from tf_cartoon.io.safe_pickle import AllowedGlobal, Policy, set_attributes, unpickle
from tf_cartoon.io.torch_pickle import sniff

__all__ = ["PersistentObject", "TFNetwork", "load", "module_tensors", "sniff"]


@dataclasses.dataclass
class PersistentObject:
    """A ``torch_utils.persistence`` object, as data.

    ``state`` is the object's pickled ``__dict__``; ``module_src`` is the
    source text NVlabs' loader would execute (kept, never run).
    """

    class_name: str
    module_src: str = dataclasses.field(repr=False)
    state: dict
    version: int


@dataclasses.dataclass
class TFNetwork:
    """A ``dnnlib.tflib.network.Network`` from NVlabs' TensorFlow code, as data."""

    name: str = ""
    static_kwargs: dict = dataclasses.field(default_factory=dict)
    components: dict = dataclasses.field(default_factory=dict)
    variables: "collections.OrderedDict[str, np.ndarray]" = dataclasses.field(
        default_factory=collections.OrderedDict)
    build_module_src: str = dataclasses.field(default="", repr=False)
    build_func_name: str = ""
    version: int = 0
    # Any other keys of the pickled state (older versions' input/output names).
    extra: dict = dataclasses.field(default_factory=dict)


_ALLOWED_SUMMARY = (
    "only NVlabs persistent objects, dnnlib Networks/EasyDicts, torch tensors, numpy "
    "numeric arrays/scalars, OrderedDict and dict/list/tuple/set/primitives are allowed"
)

# numpy dtype strings a file may name: byte order, kind, size ('<f4', 'i8', 'b1').
_DTYPE_STR = re.compile(r"[<>|=]?[biufc]\d{1,2}")


class _ArrayStub:
    """Result of ``_reconstruct``; replaced by an ndarray at its BUILD."""

    __slots__ = ()


class _DtypeStub:
    """Result of ``numpy.dtype(...)``; replaced by a real dtype at its BUILD."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _fail(policy: Policy, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{policy.path}: {what}")


def _numeric_dtype(policy: Policy, value: Any) -> np.dtype:
    dtype = value.dtype if isinstance(value, _DtypeStub) else value
    if not isinstance(dtype, np.dtype):
        raise _fail(policy, f"expected a numpy dtype, got {type(value).__name__}")
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(
            f"{policy.path}: refused numpy dtype {dtype.str!r}: only numeric arrays "
            "(bool/int/uint/float/complex) are allowed (nothing from the file was executed)"
        )
    return dtype


def _shape(policy: Policy, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(n) is int and n >= 0 for n in value):
        raise _fail(policy, f"bad numpy array shape {value!r}")
    return tuple(value)


def _array(policy: Policy, raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    """A fresh native-order C-contiguous array from raw bytes, size-checked."""
    dtype = _numeric_dtype(policy, dtype)
    shape = _shape(policy, shape)
    if isinstance(raw, str):
        raw = raw.encode("latin-1")  # Python 2 era pickles store bytes as str
    if not isinstance(raw, (bytes, bytearray)):
        raise _fail(policy, f"numpy array data is {type(raw).__name__}, not bytes")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(raw) != count * dtype.itemsize:
        raise _fail(policy, f"numpy array of shape {shape} and dtype {dtype.str} needs "
                            f"{count * dtype.itemsize} bytes, the file has {len(raw)}")
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    arr = flat.reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dtype.newbyteorder("="), order="C")


# -- handlers: numpy -----------------------------------------------------------

def _np_reconstruct(policy, args):
    # ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b'), state follows in BUILD.
    if len(args) != 3 or args[0] is not _NDARRAY:
        raise _fail(policy, "bad arguments to numpy _reconstruct (only numpy.ndarray is allowed)")
    return _ArrayStub()


def _np_dtype(policy, args):
    if not args or type(args[0]) is not str or not _DTYPE_STR.fullmatch(args[0]):
        name = args[0] if args else None
        raise UnsafePickleError(
            f"{policy.path}: refused numpy dtype {name!r}: only numeric arrays "
            "(bool/int/uint/float/complex) are allowed (nothing from the file was executed)"
        )
    return _DtypeStub(np.dtype(args[0]))


def _np_scalar(policy, args):
    if len(args) != 2:
        raise _fail(policy, "bad arguments to numpy scalar")
    dtype = _numeric_dtype(policy, args[0])
    return _array(policy, args[1], dtype, (), False)[()]


def _np_frombuffer(policy, args):
    # protocol 5: _frombuffer(buffer, dtype, shape, order)
    if len(args) != 4 or args[3] not in ("C", "F"):
        raise _fail(policy, "bad arguments to numpy _frombuffer")
    return _array(policy, args[0], args[1], args[2], args[3] == "F")


def _build_array(policy, state) -> np.ndarray:
    # ndarray.__setstate__: (version, shape, dtype, is_fortran, rawdata); version may be absent.
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4 and type(state[2]) is bool):
        raise _fail(policy, "bad numpy array state")
    shape, dtype, fortran, raw = state
    return _array(policy, raw, dtype, shape, fortran)


def _build_dtype(policy, stub: _DtypeStub, state) -> np.dtype:
    # dtype.__setstate__: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")):
        raise _fail(policy, f"bad numpy dtype state {state!r}")
    if any(part is not None for part in state[2:5]):
        raise UnsafePickleError(
            f"{policy.path}: refused structured numpy dtype: only numeric arrays are allowed "
            "(nothing from the file was executed)"
        )
    dtype = stub.dtype
    return dtype if state[1] == "|" else dtype.newbyteorder(state[1])


# -- handlers: NVlabs ----------------------------------------------------------

def _reconstruct_persistent_obj(policy, args):
    meta = args[0] if len(args) == 1 else None
    if not isinstance(meta, dict):
        raise _fail(policy, "bad arguments to torch_utils.persistence._reconstruct_persistent_obj")
    state = meta.get("state")
    state = {} if state is None else state
    if (meta.get("type") != "class" or type(meta.get("class_name")) is not str
            or type(meta.get("module_src")) is not str or not isinstance(state, dict)
            or type(meta.get("version")) is not int):
        raise _fail(policy, "persistent object meta needs type='class', class_name, module_src, "
                            f"version and a dict state (got keys {sorted(map(str, meta))})")
    return PersistentObject(meta["class_name"], meta["module_src"], state, meta["version"])


def _easy_dict(policy, args):
    if not args:
        return {}
    if len(args) == 1 and isinstance(args[0], dict):
        return dict(args[0])
    raise _fail(policy, "bad arguments to dnnlib.util.EasyDict")


def _new_network(policy, args):
    if args:
        raise _fail(policy, "dnnlib.tflib.network.Network is rebuilt without arguments")
    return TFNetwork()


def _build_network(policy, net: TFNetwork, state) -> TFNetwork:
    if not isinstance(state, dict):
        raise _fail(policy, "Network state is not a dict")
    version = state.get("version")
    if version not in (2, 3, 4):
        raise _fail(policy, f"unsupported dnnlib Network pickle version {version!r} (2..4 are known)")
    fields = dict(state)
    for key, kind in (("name", str), ("build_module_src", str), ("build_func_name", str),
                      ("static_kwargs", dict), ("variables", list)):
        if not isinstance(fields.get(key), kind):
            raise _fail(policy, f"Network state field {key!r} is not a {kind.__name__}")
    components = fields.pop("components", {})
    if not isinstance(components, dict) or not all(isinstance(c, TFNetwork) for c in components.values()):
        raise _fail(policy, "Network components are not a dict of Networks")
    variables = collections.OrderedDict()
    for item in fields.pop("variables"):
        if not (isinstance(item, tuple) and len(item) == 2 and type(item[0]) is str
                and isinstance(item[1], (np.ndarray, np.generic, int, float))):
            raise _fail(policy, f"Network variable entry is not a (name, array) pair: {item!r:.80}")
        variables[item[0]] = np.asarray(item[1])
    net.name = fields.pop("name")
    net.static_kwargs = fields.pop("static_kwargs")
    net.build_module_src = fields.pop("build_module_src")
    net.build_func_name = fields.pop("build_func_name")
    net.version = fields.pop("version")
    net.components, net.variables, net.extra = components, variables, fields
    return net


def _copyreg_reconstructor(policy, args):
    # Protocol 0/1 spelling of "make an empty instance": (cls, object, None).
    if not (len(args) == 3 and isinstance(args[0], AllowedGlobal) and args[0].call is not None
            and args[1] is _OBJECT and args[2] is None):
        raise UnsafePickleError(
            f"{policy.path}: refused copyreg._reconstructor call with arguments {args!r:.120} "
            "(nothing from the file was executed)"
        )
    return args[0].call(policy, ())


# -- handlers: torch -----------------------------------------------------------

def _load_from_bytes(policy, args):
    if len(args) != 1 or not isinstance(args[0], (bytes, bytearray)):
        raise _fail(policy, "bad arguments to torch.storage._load_from_bytes")
    storage = torch_pickle.load_legacy_bytes(bytes(args[0]), policy.path)
    if not isinstance(storage, torch_pickle._StorageRef):
        raise _fail(policy, "torch.storage._load_from_bytes bytes do not hold a storage")
    return storage


_TENSOR_TYPES: set[str] = {"torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.Parameter"}


def _rebuild_from_type_v2(policy, args):
    # Tensor.__reduce_ex__ for subclasses or tensors with Python state:
    # (func, type, args, state); only plain Tensor/Parameter with no state.
    if len(args) != 4 or not isinstance(args[0], AllowedGlobal) or not isinstance(args[2], tuple):
        raise _fail(policy, "bad arguments to torch._tensor._rebuild_from_type_v2")
    func, cls, func_args, state = args
    if not isinstance(cls, AllowedGlobal) or cls.qualname not in _TENSOR_TYPES:
        raise UnsafePickleError(f"{policy.path}: refused tensor type {cls!r} in _rebuild_from_type_v2 "
                                "(nothing from the file was executed)")
    if state:
        raise _fail(policy, "tensor with Python attributes (state) is not supported")
    if func.call not in (torch_pickle._rebuild_tensor_v2, torch_pickle._rebuild_tensor_v3,
                         torch_pickle._rebuild_tensor, torch_pickle._rebuild_parameter):
        raise UnsafePickleError(f"{policy.path}: refused {func!r} in _rebuild_from_type_v2 "
                                "(nothing from the file was executed)")
    return func.call(policy, func_args)


def _build_allowed() -> dict[tuple[str, str], AllowedGlobal]:
    table = {key: entry for key, entry in torch_pickle._ALLOWED_GLOBALS.items()
             if key != ("argparse", "Namespace")}

    def add(module, name, call=None):
        entry = table[(module, name)] = AllowedGlobal(f"{module}.{name}", call)
        return entry

    for core in ("numpy.core", "numpy._core"):
        add(f"{core}.multiarray", "_reconstruct", _np_reconstruct)
        add(f"{core}.multiarray", "scalar", _np_scalar)
        add(f"{core}.numeric", "_frombuffer", _np_frombuffer)
    add("numpy", "dtype", _np_dtype)
    add("torch_utils.persistence", "_reconstruct_persistent_obj", _reconstruct_persistent_obj)
    add("dnnlib.util", "EasyDict", _easy_dict)
    add("dnnlib", "EasyDict", _easy_dict)
    add("dnnlib.tflib.network", "Network", _new_network)
    add("copyreg", "_reconstructor", _copyreg_reconstructor)
    add("torch.storage", "_load_from_bytes", _load_from_bytes)
    add("torch._tensor", "_rebuild_from_type_v2", _rebuild_from_type_v2)
    for module, name in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
                         ("torch.nn", "Parameter")):
        add(module, name)
    return table


_ALLOWED = _build_allowed()
_NDARRAY = _ALLOWED[("numpy", "ndarray")] = AllowedGlobal("numpy.ndarray")
_OBJECT = _ALLOWED[("builtins", "object")] = AllowedGlobal("builtins.object")
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _NetworkPolicy(Policy):
    label = "pickle"
    allowed_summary = _ALLOWED_SUMMARY

    def __init__(self, path: str):
        self.path = path

    def find_class(self, module: str, name: str) -> AllowedGlobal:
        module = _PY2_MODULES.get(module, module)
        entry = _ALLOWED.get((module, name))
        if entry is None:
            raise UnsafePickleError(
                f"{self.path}: refused to load global '{module}.{name}' from the pickle: "
                f"{_ALLOWED_SUMMARY} (nothing from the file was executed)"
            )
        return entry

    def persistent_load(self, pid: Any) -> Any:
        raise _fail(self, f"unexpected persistent id {pid!r:.80} in a plain pickle "
                          "(torch checkpoints are read by torch_pickle.load)")

    def build(self, inst: Any, state: Any) -> Any:
        if isinstance(inst, _ArrayStub):
            return _build_array(self, state)
        if isinstance(inst, _DtypeStub):
            return _build_dtype(self, inst, state)
        if isinstance(inst, TFNetwork):
            return _build_network(self, inst, state)
        if type(inst) is collections.OrderedDict:
            set_attributes(self, inst, state)
            return inst
        if type(inst) is dict and not state:  # an EasyDict with an empty __dict__
            return inst
        raise UnsafePickleError(
            f"{self.path}: refused BUILD (state restore) on {type(inst).__name__}: only numpy "
            "arrays/dtypes, dnnlib Networks and OrderedDict may receive state"
        )


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
        if type(obj) is collections.OrderedDict:
            yield from vars(obj).values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, PersistentObject):
        yield obj.state
    elif isinstance(obj, TFNetwork):
        yield from (obj.static_kwargs, obj.components, obj.variables, obj.extra)


def _check_finished(policy: Policy, root: Any) -> None:
    """Refuse a result that still holds a stand-in whose BUILD never came."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray, np.generic)):
            continue
        seen.add(id(obj))
        if isinstance(obj, (_ArrayStub, _DtypeStub, torch_pickle._StorageRef, AllowedGlobal)):
            raise _fail(policy, f"the pickle leaves an unfinished {type(obj).__name__.strip('_')} "
                                "in the result (missing BUILD or a bare storage/global)")
        todo.extend(_children(obj))


def load(path: str | os.PathLike) -> Any:
    """Read a plain pickle file (an NVlabs network pickle) as data.

    Returns the pickled object tree with :class:`PersistentObject`,
    :class:`TFNetwork`, plain dicts (for EasyDict) and numpy arrays/scalars in
    place of the original classes; nothing named or carried by the file is
    imported or executed.  torch ``.pt`` files are refused with a hint (read
    them with :func:`tf_cartoon.io.torch_pickle.load`; :func:`sniff` tells
    which reader a file needs).  Raises :class:`UnsafePickleError` for globals
    outside the allow-list and :class:`CheckpointFormatError` for malformed,
    truncated or unexpected content.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise CheckpointFormatError(f"{path}: is a directory, not a network pickle") from None
    if not data:
        raise CheckpointFormatError(f"{path}: empty file (0 bytes): not a network pickle")
    kind = sniff(path)
    if kind in ("torch_zip", "torch_legacy"):
        raise CheckpointFormatError(f"{path}: a torch checkpoint ({kind}), not a plain pickle: "
                                    "read it with tf_cartoon.io.torch_pickle.load")
    if kind != "pickle":
        raise CheckpointFormatError(f"{path}: not a pickle file (no binary pickle header)")
    policy = _NetworkPolicy(path)
    obj, _ = unpickle(data, policy)
    _check_finished(policy, obj)
    return obj


def module_tensors(obj: PersistentObject, prefix: str = "") -> "collections.OrderedDict[str, np.ndarray]":
    """The ``state_dict()``-style flat view of a persistent module's tensors.

    Walks ``_parameters``, ``_buffers`` (skipping names in
    ``_non_persistent_buffers_set``, as torch's ``state_dict`` does) and
    ``_modules`` recursively; keys are dotted paths such as
    ``'mapping.fc0.weight'``.  None entries (unset parameters) are skipped.
    """
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    todo = [(prefix, obj)]
    while todo:
        base, node = todo.pop(0)
        state = node.state if isinstance(node, PersistentObject) else None
        if not isinstance(state, dict):
            continue
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, np.ndarray) and not (group == "_buffers" and name in skip):
                    out[base + name] = value
        children = [(f"{base}{name}.", child) for name, child in (state.get("_modules") or {}).items()]
        todo[0:0] = children
    return out
