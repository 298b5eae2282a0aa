"""Files the package ships besides its modules: the flagfiles (configs/) and the compiled ops' sources (custom_ops/).

In the repository both folders sit at the top level; an installation maps them into the package as
``tf_cartoon.configs`` and ``tf_cartoon.custom_ops`` (pyproject.toml, ``[tool.setuptools.package-dir]``).
They are found through ``importlib.resources``, which covers a wheel and an editable install alike; a
checkout used without installing (``tf_cartoon`` imported from the working tree) reads the top-level folders.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _folder(name: str) -> Path:
    """The directory of the shipped folder ``name`` (``configs`` or ``custom_ops``)."""
    try:
        found = importlib.resources.files(f"tf_cartoon.{name}")
    except ModuleNotFoundError:
        found = None
    # Installed packages live on the file system (the compiler and absl read real paths); anything else
    # (e.g. a zip import) falls back to the checkout's folder.
    if isinstance(found, Path) and found.is_dir():
        return found
    return _REPO / name


def configs_dir() -> Path:
    """The shipped flagfiles (configs/*.cfg)."""
    return _folder("configs")


def custom_ops_dir() -> Path:
    """The compiled ops' sources (custom_ops/*.cc, *.cu, *.h)."""
    return _folder("custom_ops")


def find_config(value: str) -> str:
    """A ``--flagfile`` value as a path absl can read.

    An existing path is taken as it is (relative to the current directory, as absl reads it). Otherwise a
    shipped config answers to its path in the repository (``configs/quickstart.cfg``), its file name
    (``quickstart.cfg``) or its bare name (``quickstart``), so the commands of the README work from any
    directory once the package is installed. Anything else is returned unchanged for absl to report.
    """
    if not value or os.path.exists(value):
        return value
    parts = Path(value).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        name = parts[-1] if parts[-1].endswith(".cfg") else parts[-1] + ".cfg"
        packaged = configs_dir() / name
        if packaged.is_file():
            return str(packaged)
    return value


def resolve_flagfile_args(argv: list[str]) -> list[str]:
    """``argv`` with each ``--flagfile=VALUE`` / ``--flagfile VALUE`` resolved by :func:`find_config`."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--flagfile="):
            out.append("--flagfile=" + find_config(arg[len("--flagfile="):]))
        elif arg == "--flagfile" and i + 1 < len(argv):
            out += [arg, find_config(argv[i + 1])]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out
