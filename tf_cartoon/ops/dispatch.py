"""Which implementation of an op runs: the one place every op with alternative implementations asks.

Each op family registers its paths (:func:`register`) where it is defined, with the path ``"auto"`` takes
per device; :func:`choose` picks one path per call:

  ==================  =====================================  =============================================
  family              paths (the plain one first)            auto: CPU / GPU
  ==================  =====================================  =============================================
  upfirdn2d           tf (alias xla), ref, custom            custom / tf        (ops/upfirdn2d.py)
  bias_act            tf (alias xla), ref, custom            custom / tf        (ops/bias_act.py)
  conv3x3             direct, fast, plain                    fast / direct      (ops/conv.py)
  conv1x1             direct, fast, plain                    fast / direct      (ops/conv.py)
  conv3x3_down2       direct, fast                           fast / direct      (ops/phase_conv.py)
  conv3x3_up2         direct, fast, plain                    fast / direct      (ops/phase_conv.py)
  styled_epilogue     direct, fast, plain                    fast / direct      (ops/epilogue.py)
  ==================  =====================================  =============================================

  * ``tf``: plain TF ops, XLA-compilable, differentiable to any order; ``ref``: the reference (the
    definition, step by step); ``custom``: the compiled op (custom_ops/, ops/custom.py);
  * ``direct``: one TF convolution op (cuDNN / oneDNN); ``fast``: the exact CPU rewrites with their own
    gradients (Winograd, output phases, matmuls, one-pass epilogue), which hold nested XLA clusters;
    ``plain``: a rewrite in plain TF ops only (no XLA cluster) where one measured faster than ``direct``
    without XLA (Winograd for conv3x3, matmuls with the scale in the weights for conv1x1, phase convolutions
    for the small upsampling layers, fewer passes for the epilogue): what exports run.

Every op takes ``impl=`` ("auto" or one of its paths). What ``"auto"`` means for the whole process is set by
``TF_CARTOON_OPS_IMPL`` or :func:`set_default_impl`: a comma-separated list whose items are a path name (it
applies to every family that has that path; ``auto`` clears) or ``family=path``, e.g. ``direct`` (every conv
on its direct op), ``tf,direct`` or ``conv3x3=direct``. A per-call ``impl="custom"`` is strict (a clear error
where the compiled op cannot run); as the process setting it means "wherever it can run".

The compiled op is never used, whatever was asked for by default:
  * inside an XLA-compiled function (``tf.function(jit_compile=True)``, also in functions and branches nested
    in one): XLA has no kernel for it (a per-call ``impl="custom"`` there is an error);
  * while a SavedModel is written (``tf.saved_model.save`` tracing) or inside :func:`plain_ops`.
Inside :func:`plain_ops` every family's ``auto`` is its export path (``Family.export``: the plain path, or
``plain`` where a family has one): plain TF ops only, what exports contain.

Which path a family takes is logged once per (family, path, reason) at INFO level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading

ENV = "TF_CARTOON_OPS_IMPL"
ALIASES = {"xla": "tf"}
_default: str | None = None  # set_default_impl's spec; None: the environment's
_plain_depth = 0
_plain_lock = threading.Lock()
_logged: set = set()


@dataclasses.dataclass(frozen=True)
class Family:
    """An op family: its paths (``paths[0]`` is the plain one: fallbacks), auto's path per device, and the path
    auto takes inside :func:`plain_ops` (``export``: plain TF ops only; default the plain path)."""
    name: str
    paths: tuple[str, ...]
    prefer: dict  # device ("CPU" | "GPU") -> path; mutable so that tests can vary it
    export: str | None = None

    @property
    def plain(self) -> str:
        return self.paths[0]

    @property
    def export_path(self) -> str:
        return self.export or self.plain


FAMILIES: dict[str, Family] = {}
_DESCRIBE = {"custom": "the compiled op", "tf": "the pure-TF path", "ref": "the reference path",
             "direct": "the direct TF convolution", "fast": "the exact CPU rewrite"}


def register(name: str, paths: tuple[str, ...], prefer: dict, export: str | None = None) -> Family:
    """Declare op family ``name`` with its ``paths`` (plain path first), ``prefer``: device -> auto's path, and
    ``export``: the path (plain TF ops only) auto takes inside plain_ops (default: the plain path)."""
    unknown = (set(prefer.values()) | ({export} if export else set())) - set(paths)
    if unknown:
        raise ValueError(f"{name}: preferred paths {sorted(unknown)} are not among its paths {paths}")
    FAMILIES[name] = Family(name, tuple(paths), dict(prefer), export)
    return FAMILIES[name]


@functools.lru_cache(maxsize=None)
def device() -> str:
    """"GPU" where TensorFlow sees a GPU, else "CPU": the one device query of the ops and layers."""
    import tensorflow as tf
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _all_paths() -> set:
    return {"auto", *ALIASES, *(p for fam in FAMILIES.values() for p in fam.paths)}


def parse_spec(spec: str, source: str) -> dict:
    """``"tf,conv3x3=direct"`` -> {"*": ["tf"], "conv3x3": "direct"}; ValueError naming ``source`` if invalid."""
    out: dict = {"*": []}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        fam, _, path = item.rpartition("=")
        if fam:
            if fam not in FAMILIES:
                raise ValueError(f"{source}: unknown op family {fam!r} in {spec!r} (one of {sorted(FAMILIES)})")
            path = ALIASES.get(path, path)
            if path not in (*FAMILIES[fam].paths, "auto"):
                raise ValueError(f"{source}: {fam} has no path {path!r} in {spec!r} (one of "
                                 f"{('auto', *FAMILIES[fam].paths)})")
            out[fam] = path
        elif path not in _all_paths():
            raise ValueError(f"{source} must name paths among {sorted(_all_paths())} or family=path, got {spec!r}")
        else:
            out["*"].append(ALIASES.get(path, path))
    return out


def set_default_impl(spec: str | None) -> None:
    """Make ``"auto"`` mean ``spec`` for this process (the syntax of ``TF_CARTOON_OPS_IMPL``; None: back to the
    environment / "auto")."""
    global _default
    if spec is not None:
        parse_spec(spec, "ops impl")
    _default = spec


def default_impl(family: str | None = None) -> str:
    """The process setting: the whole spec, or with ``family`` the path its "auto" means there ("auto": its
    per-device preference). Inside :func:`plain_ops` a family's setting is its export path."""
    spec = _default if _default is not None else os.environ.get(ENV, "auto")
    if family is None:
        parse_spec(spec, ENV if _default is None else "ops impl")
        return spec
    fam = FAMILIES[family]
    if _plain_depth > 0:
        return fam.export_path
    parsed = parse_spec(spec, ENV if _default is None else "ops impl")
    setting = parsed.get(family)
    if setting is None:  # the last global item this family has
        setting = next((p for p in reversed(parsed["*"]) if p == "auto" or p in fam.paths), "auto")
    return setting


@contextlib.contextmanager
def plain_ops():
    """Within this block (process-wide, nestable), every op family's ``auto`` takes its export path (plain TF
    ops only: no compiled op and no nested XLA cluster), e.g. while an export is traced."""
    global _plain_depth
    with _plain_lock:
        _plain_depth += 1
    try:
        yield
    finally:
        with _plain_lock:
            _plain_depth -= 1


def in_xla_context() -> bool:
    """Whether ops being created now are compiled by XLA (jit_compile=True, also nested)."""
    import tensorflow as tf
    if tf.executing_eagerly():
        return False
    try:  # tf.function(jit_compile=True) traces inside an XLAControlFlowContext
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))
    except (ImportError, AttributeError):  # private API moved: assume XLA, the safe answer
        return True


def in_export_context() -> bool:
    """Whether a SavedModel is being written (or :func:`plain_ops` is active)."""
    if _plain_depth > 0:
        return True
    try:
        from tensorflow.python.saved_model import save_context
        return bool(save_context.in_save_context())
    except (ImportError, AttributeError):
        return False


def _log(op: str, path: str, reason: str) -> None:
    key = (op, path, reason)
    if key in _logged:
        return
    _logged.add(key)
    from absl import logging
    logging.info("tf_cartoon.ops: %s uses %s (%s)", op, _DESCRIBE.get(path, path), reason)


def choose(op: str, impl: str = "auto", dtype=None, unsupported: str | None = None) -> str:
    """The path of family ``op`` for one call.

    impl: "auto" or one of the family's paths (or an alias); dtype: the input's dtype (the compiled ops take
    float32, and float16 on the GPU); unsupported: why this call can run only the plain path, or None.
    """
    fam = FAMILIES[op]
    path = ALIASES.get(impl, impl)
    if path != "auto" and path not in fam.paths:
        raise ValueError(f"{op}: impl must be one of {('auto', *fam.paths, *ALIASES)}, got {impl!r}")
    strict = path != "auto"
    if not strict:
        path = default_impl(op)
    why = "asked for" if strict else "the process setting"
    if path == "auto":
        path, why = fam.prefer.get(device(), fam.plain), f"auto: preferred on {device()}"
    if path == "custom":  # built on demand only where asked for by name
        return _custom_or_plain(fam, strict, why, dtype, unsupported, build=not why.startswith("auto"))
    if unsupported is not None and path != fam.plain and path != "ref":
        _log(op, fam.plain, f"{path} cannot run this call: {unsupported}")
        return fam.plain
    _log(op, path, why)
    return path


def _custom_or_plain(fam: Family, strict: bool, why: str, dtype, unsupported: str | None, build: bool) -> str:
    """"custom" where the compiled op can run this call, else the plain path (an error when ``strict``)."""
    op = fam.name
    if in_export_context():
        _log(op, fam.plain, "writing a SavedModel or plain_ops(): exports never contain custom ops")
        return fam.plain
    if in_xla_context():
        if strict:
            raise ValueError(f"{op}: impl='custom' cannot run inside an XLA-compiled function (jit_compile=True): "
                             "XLA has no kernel for the compiled op; use impl='auto' or impl='xla'")
        _log(op, fam.plain, "inside an XLA-compiled function")
        return fam.plain
    from tf_cartoon.ops import custom
    lib = custom.load(build=True if build else None)
    if lib is None:
        if strict:
            raise RuntimeError(f"{op}: impl='custom' but the compiled ops are unavailable: {custom.status()['error']}")
        _log(op, fam.plain, f"compiled ops unavailable: {custom.status()['error']}")
        return fam.plain
    if unsupported is None and dtype is not None:
        unsupported = _dtype_problem(dtype, device(), custom.has_cuda_kernels())
    if unsupported is not None:
        if strict:
            raise ValueError(f"{op}: impl='custom' cannot run this call: {unsupported}")
        _log(op, fam.plain, f"the compiled op cannot run this call: {unsupported}")
        return fam.plain
    if device() == "GPU" and not custom.has_cuda_kernels() and not strict:
        _log(op, fam.plain, "the compiled library has no CUDA kernels (rebuild with `--cuda on`)")
        return fam.plain
    _log(op, "custom", f"{why}; library {custom.status()['path']}")
    return "custom"


def _dtype_problem(dtype, device_kind: str, cuda: bool) -> str | None:
    import tensorflow as tf
    dtype = tf.as_dtype(dtype)
    if dtype == tf.float32:
        return None
    if dtype == tf.float16:
        return None if device_kind == "GPU" and cuda else "float16 runs only on the CUDA kernels"
    return f"dtype {dtype.name} (the compiled ops take float32, and float16 on the GPU)"
