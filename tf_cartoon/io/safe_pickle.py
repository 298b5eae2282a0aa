"""An allow-list pickle interpreter that only ever builds data.

Threat model
------------
A pickle is a program for a small stack machine, and :mod:`pickle`'s loader
runs it with full powers: ``GLOBAL``/``STACK_GLOBAL`` import any module and
fetch any attribute the file names, ``REDUCE``/``NEWOBJ``/``INST``/``OBJ`` call
what was fetched, and ``BUILD`` calls ``__setstate__`` or writes attributes.
Checkpoints (torch ``.pt`` files, NVlabs network pickles) are pickles, so
loading an untrusted one with :mod:`pickle` runs whatever code its author
chose (``os.system``, ``builtins.exec``, or a network pickle's embedded module
source).

This module never uses :mod:`pickle`'s loader.  It interprets every opcode
itself (a table from opcode byte to handler), and all the powerful opcodes go
through a *policy* object that the caller supplies:

* a global name is only looked up by ``policy.find_class(module, name)``,
  which maps the permitted names onto the policy's own stand-ins
  (:class:`AllowedGlobal`) and raises :class:`UnsafePickleError` for anything
  else, the moment the name is read and before any call happens; no module is
  ever imported;
* a call (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ) only reaches an
  :class:`AllowedGlobal`'s own ``call`` handler; calling anything else (a
  string, a list, a name-only global) is refused;
* persistent ids go to ``policy.persistent_load(pid)``;
* BUILD goes to ``policy.build(inst, state)``; the default only writes plain
  instance attributes (``vars(inst).update``, which runs no descriptor or
  method) on the types listed in ``policy.build_types``; a policy may handle
  its own stand-ins there and hand back a replacement object;
* the copyreg extension registry (EXT1/2/4) resolves to arbitrary globals and
  is refused; out-of-band buffers (protocol 5) are not supported.

Malformed input (truncated data, stack underflow, bad memo keys, wrong types)
raises :class:`CheckpointFormatError` naming the file and byte position, never
a bare ``IndexError`` or ``struct.error``.  The interpreter is iterative, so a
deeply nested file cannot exhaust Python's recursion limit.

The only Python objects created are str/bytes/bytearray, numbers, None/bools,
tuples, lists, dicts, sets/frozensets, and whatever the policy's handlers
return.
"""

from __future__ import annotations

import codecs
import pickle
import struct
from typing import Any, Callable

from tf_cartoon.io.errors import CheckpointFormatError, UnsafePickleError

__all__ = ["AllowedGlobal", "Policy", "unpickle", "set_attributes"]


class AllowedGlobal:
    """A policy's stand-in for one allow-listed global name.

    ``call(policy, args)`` implements REDUCE / NEWOBJ / INST / OBJ for the
    name; ``None`` means the global may only be passed around as a value (a
    storage type, a dtype, a class given to another handler).
    """

    __slots__ = ("qualname", "call")

    def __init__(self, qualname: str, call: Callable[[Any, tuple], Any] | None = None):
        self.qualname = qualname
        self.call = call

    def __repr__(self) -> str:
        return f"<allowed global {self.qualname}>"


class Policy:
    """What a file may ask for.  Subclasses override the hooks they allow."""

    path: str = "<pickle>"
    # Names the pickle in error messages ("data.pkl", "pickle", ...).
    label: str = "pickle"
    # One sentence listing what is allowed, appended to refusals.
    allowed_summary: str = "nothing outside plain data is allowed"
    # Types whose instances BUILD may give plain attributes.
    build_types: tuple[type, ...] = ()

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self.path}: refused to load global '{module}.{name}' from the {self.label}: "
            f"{self.allowed_summary} (nothing from the file was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointFormatError(f"{self.path}: unexpected persistent id {pid!r} in the {self.label}")

    def build(self, inst: Any, state: Any) -> Any:
        """BUILD: restore ``state`` into ``inst``; returns the object that replaces ``inst``."""
        if type(inst) not in self.build_types:
            allowed = " and ".join(t.__name__ for t in self.build_types) or "nothing"
            raise UnsafePickleError(
                f"{self.path}: refused BUILD (state restore) on {type(inst).__name__}: only "
                f"{allowed} may receive attributes"
            )
        set_attributes(self, inst, state)
        return inst


def set_attributes(policy: Policy, inst: Any, state: Any) -> None:
    """Write a BUILD state (dict, or (dict, slots dict)) into ``vars(inst)``."""
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    for part in (state, slots):
        if part is None:
            continue
        if not isinstance(part, dict) or not all(type(k) is str for k in part):
            raise CheckpointFormatError(
                f"{policy.path}: BUILD state for {type(inst).__name__} is not a str-keyed dict"
            )
        # Writing to __dict__ never invokes descriptors or methods, so keys
        # such as "__class__" stay inert.
        vars(inst).update(part)


class _Stop(Exception):
    """Raised by the STOP handler to leave the opcode loop with a result."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


class _Machine:
    """The interpreter's state: data, position, stack, mark stack, memo."""

    __slots__ = ("data", "pos", "end", "stack", "metastack", "memo", "policy")

    def __init__(self, data: bytes, policy: Policy, start: int):
        self.data = data
        self.pos = start
        self.end = len(data)
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.policy = policy

    def fail(self, what: str) -> CheckpointFormatError:
        return CheckpointFormatError(
            f"{self.policy.path}: malformed {self.policy.label} at byte {self.pos}: {what}"
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail("unexpected end of pickle data (truncated)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def line(self) -> bytes:
        nl = self.data.find(b"\n", self.pos)
        if nl < 0:
            raise self.fail("unexpected end of pickle data (truncated)")
        chunk = self.data[self.pos:nl]
        self.pos = nl + 1
        return chunk

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.fail("MARK expected")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def call(self, func: Any, args: Any, opname: str) -> Any:
        if not isinstance(func, AllowedGlobal) or func.call is None:
            raise UnsafePickleError(
                f"{self.policy.path}: refused {opname} of {func!r}: calls are only allowed to "
                f"allow-listed constructors; {self.policy.allowed_summary}"
            )
        if not isinstance(args, tuple):
            raise self.fail(f"{opname} arguments are not a tuple")
        return func.call(self.policy, args)

    def memo_get(self, idx: int) -> Any:
        if idx not in self.memo:
            raise self.fail(f"memo key {idx} missing")
        return self.memo[idx]

    def memo_put(self, idx: int) -> None:
        self.memo[idx] = self.top()

    def set_items(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict):
            raise self.fail(f"SETITEM(S) on {type(target).__name__}")
        if len(items) % 2:
            raise self.fail("odd number of items for SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def replace(self, old: Any, new: Any) -> None:
        """Swap ``old`` for ``new`` on the stack top and in the memo (BUILD results)."""
        self.stack[-1] = new
        for key, value in self.memo.items():
            if value is old:
                self.memo[key] = new


# ---------------------------------------------------------------------------
# opcode handlers
# ---------------------------------------------------------------------------

_Handler = Callable[[_Machine], None]
_HANDLERS: dict[int, _Handler] = {}


def _op(*opcodes: bytes) -> Callable[[_Handler], _Handler]:
    def register(func: _Handler) -> _Handler:
        for code in opcodes:
            _HANDLERS[code[0]] = func
        return func
    return register


def _decode_utf8(m: _Machine, raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _push(value_of: Callable[[_Machine], Any]) -> _Handler:
    """Handler that pushes one value read by ``value_of``."""
    def handler(m: _Machine) -> None:
        # Read first: pop_mark() rebinds m.stack, so ``m.stack.append(value_of(m))``
        # would append to the discarded inner list.
        value = value_of(m)
        m.stack.append(value)
    return handler


def _reg(opcode: bytes, value_of: Callable[[_Machine], Any]) -> None:
    _HANDLERS[opcode[0]] = _push(value_of)


# -- structure ---------------------------------------------------------------

@_op(pickle.PROTO)
def _proto(m: _Machine) -> None:
    proto = m.take(1)[0]
    if proto > 5:
        raise m.fail(f"unsupported pickle protocol {proto}")


@_op(pickle.FRAME)
def _frame(m: _Machine) -> None:
    m.take(8)  # the frame length is only a buffering hint


@_op(pickle.STOP)
def _stop(m: _Machine) -> None:
    raise _Stop(m.pop())


@_op(pickle.MARK)
def _mark(m: _Machine) -> None:
    m.metastack.append(m.stack)
    m.stack = []


@_op(pickle.POP)
def _pop(m: _Machine) -> None:
    if m.stack:
        m.stack.pop()
    else:
        m.pop_mark()


@_op(pickle.POP_MARK)
def _pop_mark(m: _Machine) -> None:
    m.pop_mark()


@_op(pickle.DUP)
def _dup(m: _Machine) -> None:
    m.stack.append(m.top())


# -- memo --------------------------------------------------------------------

@_op(pickle.PUT)
def _put(m: _Machine) -> None:
    m.memo_put(int(m.line()))


@_op(pickle.BINPUT)
def _binput(m: _Machine) -> None:
    m.memo_put(m.take(1)[0])


@_op(pickle.LONG_BINPUT)
def _long_binput(m: _Machine) -> None:
    m.memo_put(m.unpack("<I", 4))


@_op(pickle.MEMOIZE)
def _memoize(m: _Machine) -> None:
    m.memo_put(len(m.memo))


_reg(pickle.GET, lambda m: m.memo_get(int(m.line())))
_reg(pickle.BINGET, lambda m: m.memo_get(m.take(1)[0]))
_reg(pickle.LONG_BINGET, lambda m: m.memo_get(m.unpack("<I", 4)))

# -- constants ---------------------------------------------------------------


def _text_int(m: _Machine) -> Any:
    raw = m.line()
    return raw == b"01" if raw in (b"00", b"01") else int(raw)  # I00/I01 are bools


def _text_string(m: _Machine) -> str:
    # Protocol 0 STRING: a quoted Python 2 str literal.
    raw = m.line()
    if len(raw) < 2 or raw[:1] != raw[-1:] or raw[:1] not in (b"'", b'"'):
        raise m.fail("STRING argument is not quoted")
    return codecs.escape_decode(raw[1:-1])[0].decode("latin-1")


_reg(pickle.NONE, lambda m: None)
_reg(pickle.NEWTRUE, lambda m: True)
_reg(pickle.NEWFALSE, lambda m: False)
_reg(pickle.INT, _text_int)
_reg(pickle.BININT, lambda m: m.unpack("<i", 4))
_reg(pickle.BININT1, lambda m: m.take(1)[0])
_reg(pickle.BININT2, lambda m: m.unpack("<H", 2))
_reg(pickle.LONG, lambda m: int(m.line().rstrip(b"L")))
_reg(pickle.LONG1, lambda m: int.from_bytes(m.take(m.take(1)[0]), "little", signed=True))
_reg(pickle.LONG4, lambda m: int.from_bytes(m.take(m.unpack("<i", 4)), "little", signed=True))
_reg(pickle.FLOAT, lambda m: float(m.line()))
_reg(pickle.BINFLOAT, lambda m: m.unpack(">d", 8))
_reg(pickle.STRING, _text_string)
_reg(pickle.BINSTRING, lambda m: m.take(m.unpack("<i", 4)).decode("latin-1"))
_reg(pickle.SHORT_BINSTRING, lambda m: m.take(m.take(1)[0]).decode("latin-1"))
_reg(pickle.UNICODE, lambda m: m.line().decode("raw-unicode-escape"))
_reg(pickle.BINUNICODE, lambda m: _decode_utf8(m, m.take(m.unpack("<I", 4))))
_reg(pickle.SHORT_BINUNICODE, lambda m: _decode_utf8(m, m.take(m.take(1)[0])))
_reg(pickle.BINUNICODE8, lambda m: _decode_utf8(m, m.take(m.unpack("<Q", 8))))
_reg(pickle.BINBYTES, lambda m: m.take(m.unpack("<I", 4)))
_reg(pickle.SHORT_BINBYTES, lambda m: m.take(m.take(1)[0]))
_reg(pickle.BINBYTES8, lambda m: m.take(m.unpack("<Q", 8)))
_reg(pickle.BYTEARRAY8, lambda m: bytearray(m.take(m.unpack("<Q", 8))))

# -- containers --------------------------------------------------------------

_reg(pickle.EMPTY_TUPLE, lambda m: ())
_reg(pickle.TUPLE, lambda m: tuple(m.pop_mark()))
_reg(pickle.EMPTY_LIST, lambda m: [])
_reg(pickle.LIST, lambda m: m.pop_mark())
_reg(pickle.EMPTY_DICT, lambda m: {})
_reg(pickle.EMPTY_SET, lambda m: set())
_reg(pickle.FROZENSET, lambda m: frozenset(m.pop_mark()))


@_op(pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)
def _tuple_n(m: _Machine) -> None:
    n = m.data[m.pos - 1] - pickle.TUPLE1[0] + 1
    if len(m.stack) < n:
        raise m.fail("stack underflow")
    items = tuple(m.stack[-n:])
    del m.stack[-n:]
    m.stack.append(items)


@_op(pickle.APPEND)
def _append(m: _Machine) -> None:
    value = m.pop()
    target = m.top()
    if type(target) is not list:
        raise m.fail(f"APPEND to {type(target).__name__}")
    target.append(value)


@_op(pickle.APPENDS)
def _appends(m: _Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if type(target) is not list:
        raise m.fail(f"APPENDS to {type(target).__name__}")
    target.extend(items)


@_op(pickle.DICT)
def _dict(m: _Machine) -> None:
    items = m.pop_mark()
    new: dict = {}
    m.set_items(new, items)
    m.stack.append(new)


@_op(pickle.SETITEM)
def _setitem(m: _Machine) -> None:
    value = m.pop()
    key = m.pop()
    m.set_items(m.top(), [key, value])


@_op(pickle.SETITEMS)
def _setitems(m: _Machine) -> None:
    items = m.pop_mark()
    m.set_items(m.top(), items)


@_op(pickle.ADDITEMS)
def _additems(m: _Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if type(target) is not set:
        raise m.fail(f"ADDITEMS to {type(target).__name__}")
    target.update(items)


# -- globals, calls, objects -------------------------------------------------

@_op(pickle.GLOBAL)
def _global(m: _Machine) -> None:
    module = m.line().decode("utf-8")
    name = m.line().decode("utf-8")
    m.stack.append(m.policy.find_class(module, name))


@_op(pickle.STACK_GLOBAL)
def _stack_global(m: _Machine) -> None:
    name = m.pop()
    module = m.pop()
    if type(module) is not str or type(name) is not str:
        raise m.fail("STACK_GLOBAL needs two strings")
    m.stack.append(m.policy.find_class(module, name))


@_op(pickle.REDUCE)
def _reduce(m: _Machine) -> None:
    args = m.pop()
    func = m.pop()
    m.stack.append(m.call(func, args, "REDUCE"))


@_op(pickle.NEWOBJ)
def _newobj(m: _Machine) -> None:
    args = m.pop()
    cls = m.pop()
    m.stack.append(m.call(cls, args, "NEWOBJ"))


@_op(pickle.NEWOBJ_EX)
def _newobj_ex(m: _Machine) -> None:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    if kwargs:
        raise m.fail("NEWOBJ_EX with keyword arguments")
    m.stack.append(m.call(cls, args, "NEWOBJ_EX"))


@_op(pickle.INST)
def _inst(m: _Machine) -> None:
    module = m.line().decode("utf-8")
    name = m.line().decode("utf-8")
    cls = m.policy.find_class(module, name)
    items = m.pop_mark()
    m.stack.append(m.call(cls, tuple(items), "INST"))


@_op(pickle.OBJ)
def _obj(m: _Machine) -> None:
    items = m.pop_mark()
    if not items:
        raise m.fail("OBJ without a class")
    m.stack.append(m.call(items[0], tuple(items[1:]), "OBJ"))


@_op(pickle.BUILD)
def _build(m: _Machine) -> None:
    state = m.pop()
    inst = m.top()
    new = m.policy.build(inst, state)
    if new is not inst:
        m.replace(inst, new)


@_op(pickle.PERSID)
def _persid(m: _Machine) -> None:
    m.stack.append(m.policy.persistent_load(m.line().decode("ascii")))


@_op(pickle.BINPERSID)
def _binpersid(m: _Machine) -> None:
    pid = m.pop()
    m.stack.append(m.policy.persistent_load(pid))


@_op(pickle.EXT1, pickle.EXT2, pickle.EXT4)
def _ext(m: _Machine) -> None:
    raise UnsafePickleError(
        f"{m.policy.path}: refused pickle extension-registry code (EXT opcode): "
        f"{m.policy.allowed_summary}"
    )


@_op(pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)
def _buffer(m: _Machine) -> None:
    raise m.fail("out-of-band pickle buffers are not supported")


def unpickle(data: bytes, policy: Policy, start: int = 0) -> tuple[Any, int]:
    """Run the pickle that starts at byte ``start`` of ``data`` under ``policy``.

    Returns ``(object, end)`` where ``end`` is the position just after its
    STOP opcode (several pickles may follow each other in one file).
    """
    m = _Machine(data, policy, start)
    handlers = _HANDLERS
    try:
        while True:
            if m.pos >= m.end:
                raise m.fail("unexpected end of pickle data (no STOP opcode; truncated?)")
            op = m.data[m.pos]
            m.pos += 1
            handler = handlers.get(op)
            if handler is None:
                raise m.fail(f"unknown pickle opcode 0x{op:02x}")
            handler(m)
    except _Stop as stop:
        return stop.value, m.pos
    except (UnsafePickleError, CheckpointFormatError):
        raise
    except (IndexError, KeyError, TypeError, ValueError, AttributeError,
            OverflowError, UnicodeError, struct.error, RecursionError, MemoryError) as exc:
        raise m.fail(f"{type(exc).__name__}: {exc}") from None
