"""The compiled ops (``custom_ops/``): loading, gradients, and thin call wrappers.

Nothing here decides WHEN the compiled ops run; tf_cartoon/ops/dispatch.py does.

Loading (:func:`load`) happens at most once per process: the library is taken from
the build cache (tf_cartoon/ops/build.py); it is compiled first only when asked
(``build=True``, ``TF_CARTOON_OPS_BUILD=1`` or ``impl="custom"``). When it cannot be
had, :func:`load` returns None and :func:`status` says why.

Gradients (registered with ``tf.RegisterGradient`` for the op types, so that they
also hold for graphs, tapes and grad-of-grad):
  * upfirdn2d: the adjoint of "zero-insert by up, pad p0, convolve with k, keep every
    down-th" is "zero-insert by down, pad K - 1 - p0, convolve with the flipped k, keep
    every up-th", with the end pad chosen so the result has the input's size:
        p1' = in * up - out * down + p0 - up + 1      (per axis)
    It is the same op, so its gradient is again this rule: any order works.
  * bias_act, lrelu: d/dz = gain * (y * gain > 0 ? 1 : alpha) from the forward output
    y (TfCartoonBiasActGrad); that op is linear in its first input with a piecewise
    constant factor, so its gradient w.r.t. dy is itself and w.r.t. y is zero (returned as zeros). linear:
    d/dz = gain. The bias gradient sums over every axis but the last.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import tensorflow as tf

from tf_cartoon.ops import build as _build

_lock = threading.Lock()
_state = {"attempts": set(), "lib": None, "path": None, "meta": None, "error": None}


def load(build: bool | None = None):
    """The loaded op library, or None (see :func:`status` for the reason).

    build: True compiles the library when the cache lacks it; False only loads a cached
    one; None follows ``TF_CARTOON_OPS_BUILD`` ("1": build). Each kind of attempt is made
    once per process (a failed cache lookup may still be followed by a build).
    """
    if build is None:
        build = os.environ.get("TF_CARTOON_OPS_BUILD", "") == "1"
    with _lock:
        if _state["lib"] is not None:
            return _state["lib"]
        attempts = _state["attempts"]
        if "build" in attempts or (not build and "load" in attempts):
            return None
        attempts.add("build" if build else "load")
        try:
            path = _build.build() if build else _build.cached_library()
        except _build.BuildError as e:
            _state["error"] = str(e)
            return None
        except Exception as e:  # e.g. an unwritable cache: the pure-TF ops still work, so do not crash here
            _state["error"] = f"building / finding the compiled ops failed: {type(e).__name__}: {e}"
            return None
        if path is None:
            _state["error"] = ("the compiled ops are not built for this setup (run `python -m tf_cartoon.ops.build` "
                               "or set TF_CARTOON_OPS_BUILD=1)")
            return None
        try:
            _state["lib"] = load_library(path)
        except (tf.errors.OpError, OSError) as e:  # built, but broken: say so (tests turn this into a failure)
            _state["error"] = f"the compiled library {path} was built but does not load: {e}"
            return None
        _state["path"], _state["meta"], _state["error"] = str(path), _build.metadata(path), None
        return _state["lib"]


def load_library(path):
    """tf.load_op_library + gradient registration (raises when the file does not load)."""
    lib = tf.load_op_library(str(path))
    _register_gradients()
    return lib


def status() -> dict:
    """{"loaded", "path", "cuda", "error"}: what :func:`load` found."""
    meta = _state["meta"] or {}
    return {"loaded": _state["lib"] is not None, "path": _state["path"], "cuda": bool(meta.get("cuda")),
            "error": _state["error"]}


def has_cuda_kernels() -> bool:
    return bool((_state["meta"] or {}).get("cuda"))


def _lib():
    lib = load(build=True)
    if lib is None:
        raise RuntimeError(f"tf_cartoon compiled ops unavailable: {_state['error']}")
    return lib


# ---------------------------------------------------------------------------------------------
# Call wrappers (arguments already validated by tf_cartoon/ops/upfirdn2d.py and bias_act.py)
# ---------------------------------------------------------------------------------------------

def upfirdn2d(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1):
    """NHWC x, 2-D kernel (numpy or tensor, float32, used as a true convolution)."""
    k = tf.convert_to_tensor(np.asarray(kernel, np.float32) if not tf.is_tensor(kernel) else kernel, tf.float32)
    return _lib().tf_cartoon_upfirdn2d(x, k, upx=upx, upy=upy, downx=downx, downy=downy,
                                       padx0=px0, padx1=px1, pady0=py0, pady1=py1)


def bias_act(x, bias, act: str, alpha: float, gain: float):
    """act(x + bias) * gain, bias along the last axis (None: no bias)."""
    if bias is None:
        bias = tf.zeros([0], x.dtype)
    return _lib().tf_cartoon_bias_act(x, bias, act=act, alpha=float(alpha), gain=float(gain))


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

_registered = False


def _static_hw(t, what):
    h, w = t.shape[1], t.shape[2]
    if h is None or w is None:
        raise ValueError(f"gradient of TfCartoonUpfirdn2d needs static H and W of {what}, got shape {t.shape}")
    return int(h), int(w)


def _upfirdn2d_grad(op, dy):
    x, k = op.inputs
    a = {n: op.get_attr(n) for n in ("upx", "upy", "downx", "downy", "padx0", "pady0")}
    in_h, in_w = _static_hw(x, "the input")
    out_h, out_w = _static_hw(op.outputs[0], "the output")
    kh, kw = k.shape
    if kh is None or kw is None:
        raise ValueError(f"gradient of TfCartoonUpfirdn2d needs a static kernel shape, got {k.shape}")
    dx = _lib().tf_cartoon_upfirdn2d(
        dy, tf.reverse(k, [0, 1]), upx=a["downx"], upy=a["downy"], downx=a["upx"], downy=a["upy"],
        padx0=kw - a["padx0"] - 1, padx1=in_w * a["upx"] - out_w * a["downx"] + a["padx0"] - a["upx"] + 1,
        pady0=kh - a["pady0"] - 1, pady1=in_h * a["upy"] - out_h * a["downy"] + a["pady0"] - a["upy"] + 1)
    return dx, None


def _bias_act_grad(op, dy):
    x, b = op.inputs
    gain, alpha = op.get_attr("gain"), op.get_attr("alpha")
    if op.get_attr("act") in (b"lrelu", "lrelu"):
        dz = _lib().tf_cartoon_bias_act_grad(dy, op.outputs[0], alpha=alpha, gain=gain)
    else:
        dz = dy * tf.cast(gain, dy.dtype)
    if b.shape.rank == 1 and b.shape[0] == 0:
        return dz, None
    rank = dz.shape.rank
    axes = list(range(rank - 1)) if rank is not None else tf.range(tf.rank(dz) - 1)
    return dz, tf.reduce_sum(dz, axis=axes)


def _bias_act_grad_grad(op, ddx):
    # W.r.t. y the factor is piecewise constant: the gradient is zero, returned as zeros (not None) so that
    # grad-of-grad stays connected to everything upstream of y (the bias too), as with TF's LeakyReluGrad.
    y = op.inputs[1]
    return _lib().tf_cartoon_bias_act_grad(ddx, y, alpha=op.get_attr("alpha"),
                                           gain=op.get_attr("gain")), tf.zeros_like(y)


def _register_gradients():
    global _registered
    if _registered:
        return
    tf.RegisterGradient("TfCartoonUpfirdn2d")(_upfirdn2d_grad)
    tf.RegisterGradient("TfCartoonBiasAct")(_bias_act_grad)
    tf.RegisterGradient("TfCartoonBiasActGrad")(_bias_act_grad_grad)
    _registered = True
