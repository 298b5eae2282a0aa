"""Reference fixture cases: discovery and loading, shared by the parity tests.

A case is ``<case>.json`` + ``<case>.npz`` + ``<case>.pt`` (the source checkpoint)
and optionally ``<case>_target.pt`` in ``$TF_CARTOON_REFERENCE_DIR`` (default: the
fixtures committed in tests/fixtures/reference). Arrays in the npz are NCHW as PyTorch wrote them.

Tests driven by this folder take whatever a case holds: other names, sizes and channel maps, and only
the arrays it stores (``Case.require`` skips a check whose arrays the case lacks).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from tests.helpers import FIXTURES

DEFAULT_DIR = FIXTURES


def reference_dir() -> str:
    return os.environ.get("TF_CARTOON_REFERENCE_DIR", DEFAULT_DIR)


def case_names() -> list[str]:
    """Every case in the folder: a json with an npz and a pt of the same stem."""
    d = reference_dir()
    names = []
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        stem = os.path.splitext(path)[0]
        if os.path.exists(stem + ".npz") and os.path.exists(stem + ".pt"):
            names.append(os.path.basename(stem))
    return names


class Case:
    def __init__(self, name: str):
        self.name = name
        self.dir = reference_dir()
        self.stem = os.path.join(self.dir, name)
        with open(self.stem + ".json") as f:
            self.meta = json.load(f)
        with np.load(self.stem + ".npz") as data:
            self.arrays = {k: data[k] for k in data.files}
        self.source_pt = self.stem + ".pt"
        self.target_pt = self.stem + "_target.pt" if os.path.exists(self.stem + "_target.pt") else None

    def has(self, *names) -> bool:
        return all(n in self.arrays for n in names)

    def require(self, *names):
        """Skip the calling test when the case stores none of some array it needs."""
        missing = [n for n in names if n not in self.arrays]
        if missing:
            pytest.skip(f"case {self.name} stores no {', '.join(missing)}")

    def scalar(self, name, default=None):
        if name in self.arrays:
            return self.arrays[name].item()
        return self.meta.get("scalars", {}).get(name, default)

    def nhwc(self, name):
        a = self.arrays[name]
        return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1))) if a.ndim == 4 else a


def to_nchw(x) -> np.ndarray:
    x = np.asarray(x)
    return np.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def compare(got: dict, case: Case, rtol=1e-4, atol=1e-4) -> list[str]:
    """Mismatch messages for every name in ``got`` (NHWC outputs are transposed to NCHW)."""
    problems = []
    for name, value in got.items():
        ref = case.arrays[name]
        value = to_nchw(value)
        if value.shape != ref.shape:
            problems.append(f"{name}: shape {value.shape} != reference {ref.shape}")
        elif not np.allclose(value, ref, rtol=rtol, atol=atol):
            err = np.abs(value.astype(np.float64) - ref).max()
            problems.append(f"{name}: max abs error {err:.3g} (reference max {np.abs(ref).max():.3g})")
    return problems
