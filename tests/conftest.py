"""Fixtures several test modules use (plain helpers and paths: tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A 16 px source (seed 0) and target (seed 1) as converted directories: (source path, target path)."""
    root = tmp_path_factory.mktemp("ckpts")
    return make_tiny_checkpoint(root / "source", seed=0), make_tiny_checkpoint(root / "target", seed=1)
