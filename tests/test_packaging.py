"""Packaging: the wheel carries the configs and the compiled ops' sources inside the package, a
non-editable installation finds them from any directory, and every tool has a console script."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.helpers import ROOT

PACKAGED = ("pyproject.toml", "setup.py", "README.md", "tf_cartoon", "configs", "custom_ops")
TOOLS = ("train", "generate", "sefa", "export", "project", "styleclip", "evaluate", "convert", "prepare_data",
         "bench", "gpu_bench", "align", "toonify", "studio", "compare")


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_tool_has_a_console_script():
    scripts = _pyproject()["project"]["scripts"]
    for tool in TOOLS:
        name = "tf-cartoon-" + tool.replace("_", "-")
        assert name in scripts, f"no console script {name}"
        module, _, func = scripts[name].partition(":")
        # Each target is a function of the package: the tool's main, or its entry in tf_cartoon/entry_points.py.
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        tree = ast.parse(open(path).read())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, scripts[name]
        assert (module, func) in ((f"tf_cartoon.{tool}", "main"), ("tf_cartoon.entry_points", tool)), scripts[name]


def test_one_version_string():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tf_cartoon.__version__"}


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(d, ROOT).replace(os.sep, ".")
             for d, _, files in os.walk(os.path.join(ROOT, "tf_cartoon")) if "__init__.py" in files}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert {"tf_cartoon.configs", "tf_cartoon.custom_ops"} <= listed


# The wheel build, its installation and the ops build take minutes: slow tier.
@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout and installed (not editable) into a scratch target folder."""
    root = tmp_path_factory.mktemp("packaging")
    wheels, site, tree = root / "wheels", root / "site", root / "tree"
    # Built from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
    tree.mkdir()
    for name in PACKAGED:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(src, tree / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(tree)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("tf_cartoon-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr
    return wheel, site


@pytest.mark.slow
def test_wheel_contents(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, pattern in (("custom_ops", ("cc", "cu", "h")), ("configs", ("cfg",))):
        shipped = {f for f in os.listdir(os.path.join(ROOT, folder)) if f.rsplit(".", 1)[-1] in pattern}
        assert shipped and {f"tf_cartoon/{folder}/{f}" for f in shipped} <= names, folder
    assert "tf_cartoon/assets/source_synthetic/config.json" in names
    assert {"tf_cartoon/assets/judge/judge.json", "tf_cartoon/assets/judge/judge.npz"} <= names
    assert not any(n.startswith(("tests/", "configs/", "custom_ops/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for tool in TOOLS:
        assert f"tf-cartoon-{tool.replace('_', '-')} = " in text


def _run_installed(site, cwd, *argv, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_installed_package_finds_its_sources_and_configs(installed, tmp_path):
    """From a directory without configs/ or custom_ops/, the installed copy (not this checkout) answers."""
    _, site = installed
    code = ("import tf_cartoon, tf_cartoon.resources as r, tf_cartoon.ops.build as b;"
            "print(tf_cartoon.__file__); print(b.source_dir()); print(r.find_config('configs/quickstart.cfg'));"
            "print(r.find_config('quickstart'))")
    r = _run_installed(site, tmp_path, "-c", code)
    assert r.returncode == 0, r.stderr
    module, src, cfg, bare = r.stdout.split()
    assert module == str(site / "tf_cartoon" / "__init__.py")
    assert src == str(site / "tf_cartoon" / "custom_ops")
    assert cfg == bare == str(site / "tf_cartoon" / "configs" / "quickstart.cfg")


@pytest.mark.slow
def test_installed_ops_build_uses_the_packaged_sources(installed, tmp_path):
    _, site = installed
    env_cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "tf_cartoon.ops.build", "--cuda", "off"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(site), TF_CARTOON_OPS_CACHE=str(env_cache),
                                TF_CPP_MIN_LOG_LEVEL="2"),
                       capture_output=True, text=True, timeout=900)
    if r.returncode == 2 and "no C++ compiler" in r.stderr:
        pytest.skip("no C++ compiler on this machine")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(env_cache)) and os.path.isfile(r.stdout.strip())


@pytest.mark.slow
def test_installed_train_reads_the_packaged_flagfile(installed, tmp_path):
    """`--flagfile=configs/quickstart.cfg` (and `quickstart`) read the installed config from any directory:
    emptying its --ckpt makes the flagfile's own FreezeSG / structure-loss settings fail validation."""
    _, site = installed
    for value in ("configs/quickstart.cfg", "quickstart"):
        r = _run_installed(site, tmp_path, "-m", "tf_cartoon.train", f"--flagfile={value}", "--ckpt=")
        assert r.returncode == 2, r.stderr
        assert "need a source generator" in r.stderr, r.stderr
    r = _run_installed(site, tmp_path, "-m", "tf_cartoon.train", "--flagfile=configs/nonexistent.cfg")
    assert r.returncode != 0 and "nonexistent.cfg" in r.stderr
