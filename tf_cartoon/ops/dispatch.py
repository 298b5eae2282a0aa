"""Which implementation of an op runs.

Implementations (``impl=`` of every op, or for the whole process through
``TF_CARTOON_OPS_IMPL`` / :func:`set_default_impl`, which say what ``"auto"`` means):

  * ``"auto"`` (default): the compiled op (custom_ops/, tf_cartoon/ops/custom.py) when
    its library loads, the call can run there, and it is measured faster than the
    pure-TF path on this device (:data:`PREFER_CUSTOM`); otherwise the pure-TF path.
  * ``"custom"``: the compiled op (building it first if needed). Passed to an op it is
    strict (a clear error when the op cannot run); as the process default it means
    "the compiled op wherever it can run" and falls back like ``"auto"`` elsewhere.
  * ``"xla"``: the pure-TF path: plain TF ops, XLA-compilable, differentiable to any
    order. ``"tf"`` is accepted as an alias (and is the name :func:`resolve_impl` returns).
  * ``"ref"``: the reference path (the definition, step by step).

The compiled op is never used, whatever was asked for by default:
  * inside an XLA-compiled function (``tf.function(jit_compile=True)``, also in functions
    and branches nested in one): XLA has no kernel for it;
  * while a SavedModel is written (``tf.saved_model.save`` tracing, or inside
    :func:`no_custom_ops`): exports must load without our library (tf_cartoon/export.py
    additionally pins the pure-TF path for the whole export).
A per-call ``impl="custom"`` inside an XLA function is an error.

Which path an op takes is logged once per (op, path, reason) at INFO level.
"""

from __future__ import annotations

import contextlib
import os
import threading

IMPLS = ("auto", "custom", "xla", "tf", "ref")
ENV = "TF_CARTOON_OPS_IMPL"
_default = None

# Where "auto" takes the compiled op, per (op, device): only where it measured faster than the
# pure-TF path in a plain (non-XLA) graph, which is what auto would run otherwise. Measured with
# `python -m tf_cartoon.bench --what ops` (README; 2-core shared CPU, so approximate), NHWC
# [4, 256, 256, 64] float32, forward / forward + backward:
#   upfirdn2d blur 4x4:   compiled 50 / 90 ms    plain TF 59 / 122 ms    XLA 2600 / 6000 ms
#   upfirdn2d down 2:     compiled 13 / 45 ms    plain TF 25 / 138 ms    XLA 1100 / 6400 ms
#   bias_act lrelu:       compiled 46 / 124 ms   plain TF 106 / 165 ms   XLA 49 / 82 ms
# (the RGB upsample [4, 128, 128, 3]: 7.6 / 12 ms vs 5.9 / 27 ms). Whole models barely move,
# as the 3x3 convolutions dominate: G forward and train step at 32 px are equal within the noise.
# GPU: not measured (no GPU was available), so the pure-TF paths stay the default there;
# TF_CARTOON_OPS_IMPL=custom opts in.
PREFER_CUSTOM = {
    ("upfirdn2d", "CPU"): True,
    ("bias_act", "CPU"): True,
    ("upfirdn2d", "GPU"): False,
    ("bias_act", "GPU"): False,
}

_local = threading.local()
_logged = set()


def set_default_impl(impl: str | None) -> None:
    """Make ``"auto"`` mean ``impl`` for this process (None: back to the environment / "auto")."""
    global _default
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"ops impl must be one of {IMPLS}, got {impl!r}")
    _default = impl


def default_impl() -> str:
    """What ``impl="auto"`` means now: :func:`set_default_impl`, else ``TF_CARTOON_OPS_IMPL``, else "auto"."""
    impl = _default or os.environ.get(ENV, "auto")
    if impl not in IMPLS:
        raise ValueError(f"{ENV} must be one of {IMPLS}, got {impl!r}")
    return impl


def resolve_impl(impl: str) -> str:
    """The implementation family for an op WITHOUT a compiled version: "ref" or "tf"
    ("custom" only when asked for explicitly, per call or as the process default)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    setting = default_impl() if impl == "auto" else impl
    if setting == "ref":
        return "ref"
    if setting == "custom":
        return "custom"
    return "tf"


@contextlib.contextmanager
def no_custom_ops():
    """Within this block (this thread), ops never use the compiled library (exports)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


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
    """Whether a SavedModel is being written (or :func:`no_custom_ops` is active)."""
    if getattr(_local, "depth", 0) > 0:
        return True
    try:
        from tensorflow.python.saved_model import save_context
        return bool(save_context.in_save_context())
    except (ImportError, AttributeError):
        return False


def _device() -> str:
    import tensorflow as tf
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _log(op: str, path: str, reason: str) -> None:
    key = (op, path, reason)
    if key in _logged:
        return
    _logged.add(key)
    from absl import logging
    name = {"custom": "the compiled op", "tf": "the pure-TF path", "ref": "the reference path"}[path]
    logging.info("tf_cartoon.ops: %s uses %s (%s)", op, name, reason)


def choose(op: str, impl: str, dtype=None, unsupported: str | None = None) -> str:
    """The path ("ref" | "tf" | "custom") for one call of ``op``.

    dtype: the input's dtype (the compiled ops take float32, and float16 on the GPU);
    unsupported: why this particular call cannot use the compiled op, or None.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    strict = impl == "custom"
    setting = impl if impl != "auto" else default_impl()
    if setting == "ref":
        return "ref"
    if setting in ("tf", "xla"):
        return "tf"
    # setting is "auto" or "custom"
    if in_export_context():
        _log(op, "tf", "writing a SavedModel: exports never contain custom ops")
        return "tf"
    if in_xla_context():
        if strict:
            raise ValueError(f"{op}: impl='custom' cannot run inside an XLA-compiled function (jit_compile=True): "
                             "XLA has no kernel for the compiled op; use impl='auto' or impl='xla'")
        _log(op, "tf", "inside an XLA-compiled function")
        return "tf"
    device = _device()
    if setting == "auto" and not PREFER_CUSTOM.get((op, device), False):
        _log(op, "tf", f"auto: the pure-TF path is not slower on {device} (dispatch.PREFER_CUSTOM)")
        return "tf"
    from tf_cartoon.ops import custom
    lib = custom.load(build=True if setting == "custom" else None)
    if lib is None:
        if strict:
            raise RuntimeError(f"{op}: impl='custom' but the compiled ops are unavailable: {custom.status()['error']}")
        _log(op, "tf", f"compiled ops unavailable: {custom.status()['error']}")
        return "tf"
    if unsupported is None and dtype is not None:
        unsupported = _dtype_problem(dtype, device, custom.has_cuda_kernels())
    if unsupported is not None:
        if strict:
            raise ValueError(f"{op}: impl='custom' cannot run this call: {unsupported}")
        _log(op, "tf", f"the compiled op cannot run this call: {unsupported}")
        return "tf"
    if device == "GPU" and not custom.has_cuda_kernels() and not strict:
        _log(op, "tf", "the compiled library has no CUDA kernels (rebuild with `--cuda on`)")
        return "tf"
    why = "asked for" if setting == "custom" else f"auto: measured faster on {device}"
    _log(op, "custom", f"{why}; library {custom.status()['path']}")
    return "custom"


def _dtype_problem(dtype, device: str, cuda: bool) -> str | None:
    import tensorflow as tf
    dtype = tf.as_dtype(dtype)
    if dtype == tf.float32:
        return None
    if dtype == tf.float16:
        return None if device == "GPU" and cuda else "float16 runs only on the CUDA kernels"
    return f"dtype {dtype.name} (the compiled ops take float32, and float16 on the GPU)"
