"""Which implementation of an op runs when a caller asks for ``impl="auto"``.

Every op in this package has a reference path (``"ref"``: the definition,
transcribed step by step) and a fast plain-TF path (``"tf"``, the default).
``TF_CARTOON_OPS_IMPL`` (or :func:`set_default_impl`) changes what ``"auto"``
means for the whole process, e.g. to run a model on the reference paths.
"""

from __future__ import annotations

import os

IMPLS = ("ref", "tf")
_default = None


def set_default_impl(impl: str | None) -> None:
    """Make ``"auto"`` mean ``impl`` (None: back to the environment / "tf")."""
    global _default
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"ops impl must be one of {IMPLS}, got {impl!r}")
    _default = impl


def resolve_impl(impl: str) -> str:
    if impl == "auto":
        impl = _default or os.environ.get("TF_CARTOON_OPS_IMPL", "tf")
        if impl not in IMPLS:
            raise ValueError(f"TF_CARTOON_OPS_IMPL must be one of {IMPLS}, got {impl!r}")
        return impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl
