"""Every flagfile in configs/ documents itself and validates against its network."""

from __future__ import annotations

import glob
import os

import pytest

from tf_cartoon.training.config import TrainConfig, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))
# Flagfiles of other tools than train (the judge's) name their own command; the rest are training recipes.
OTHER_TOOL = {"judge.cfg": "tf_cartoon.metrics.judge"}
CONFIGS = [c for c in ALL_CONFIGS if os.path.basename(c) not in OTHER_TOOL]


def parse_flagfile(path) -> dict:
    """absl flagfile lines (--name=value, --flag, --noflag) -> TrainConfig kwargs."""
    fields = {f: type(v) for f, v in vars(TrainConfig()).items()}
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("--"), f"{path}: bad line {line!r}"
        name, _, value = line[2:].partition("=")
        if not _ and name.startswith("no") and name[2:] in fields:
            out[name[2:]] = False
            continue
        assert name in fields, f"{path}: unknown flag --{name}"
        kind = fields[name]
        out[name] = True if (kind is bool and not _) else (value.lower() in ("1", "true") if kind is bool
                                                            else kind(value))
    return out


def test_there_are_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"tiny_cpu.cfg", "freezeD_ada.cfg", "freezeG.cfg", "freezeSG.cfg", "structure_loss.cfg",
            "pretrain_source.cfg", "source_synthetic.cfg", "quickstart.cfg"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_config_header_and_flags(path, tmp_path):
    text = open(path).read()
    name = os.path.basename(path)
    assert text.startswith("#"), f"{name} must open with a comment"
    header = text.split("\n--", 1)[0]
    assert f"python -m tf_cartoon.train --flagfile=configs/{name}" in header
    assert "Expected runtime" in header
    kwargs = parse_flagfile(path)
    # Paths the recipe names (a converted FFHQ checkpoint, a data folder) are the user's: stand in for them.
    # Built-in checkpoints (builtin:NAME) ship with the package and must resolve as they are; paths into the
    # repository's committed test fixtures must exist in a clone and are validated as they are.
    for flag in ("ckpt", "source_ckpt"):
        value = kwargs.get(flag)
        if value and value.startswith("tests/fixtures/"):
            assert os.path.isfile(os.path.join(ROOT, value)), f"{name}: --{flag}={value} is not in the repository"
            kwargs[flag] = os.path.join(ROOT, value)
        elif value and not value.startswith("builtin:"):
            kwargs[flag] = str(tmp_path)
    if kwargs.get("data") and not kwargs["data"].startswith("synthetic:"):
        kwargs["data"] = str(tmp_path)
    cfg = TrainConfig(**kwargs)
    size = cfg.size or (32 if name in ("tiny_cpu.cfg", "quickstart.cfg") else 256)
    n_blocks = size.bit_length() - 3
    validate(cfg, size=size, n_blocks=n_blocks)


@pytest.mark.parametrize("name", sorted(OTHER_TOOL))
def test_other_tool_config_header(name):
    path = os.path.join(ROOT, "configs", name)
    text = open(path).read()
    header = text.split("\n--", 1)[0]
    assert text.startswith("#") and "Expected runtime" in header
    assert f"python -m {OTHER_TOOL[name]} --flagfile=configs/{name}" in header
    assert all(line.startswith(("#", "--")) for line in text.splitlines() if line.strip())


def test_paper_recipes_match_the_paper():
    sg = parse_flagfile(os.path.join(ROOT, "configs", "freezeSG.cfg"))
    assert (sg["freezeStyle"], sg["freezeG"], sg["freezeD"], sg["augment"]) == (4, 4, 4, True)
    sl = parse_flagfile(os.path.join(ROOT, "configs", "structure_loss.cfg"))
    assert (sl["structure_loss"], sl["freezeD"], sl["augment"]) == (3, 3, True) and "freezeG" not in sl


def test_the_demo_recipes():
    """The shipped source is a from-scratch run with an explicit small channel map; the quickstart fine-tunes
    that built-in with FreezeSG (freezeStyle + freezeG) and the structure loss, and leaves a grid and an export."""
    src = parse_flagfile(os.path.join(ROOT, "configs", "source_synthetic.cfg"))
    assert "ckpt" not in src and src["data"] == "synthetic:faces" and src["size"] == 32
    assert TrainConfig(**src).channel_map() == {4: 128, 8: 128, 16: 64, 32: 32}
    qs = parse_flagfile(os.path.join(ROOT, "configs", "quickstart.cfg"))
    assert (qs["ckpt"], qs["data"]) == ("builtin:source_synthetic", "synthetic:cartoon")
    assert qs["freezeStyle"] > 0 and qs["freezeG"] > 0 and qs["structure_loss"] > 0 and qs["freezeD"] > 0
    assert qs["export_on_finish"] and qs["final_grid_seeds"]


def test_tiny_cpu_runs_from_a_clone():
    """The installation check reads the committed reference fixture, never a path outside the repository."""
    tiny = parse_flagfile(os.path.join(ROOT, "configs", "tiny_cpu.cfg"))
    assert tiny["ckpt"] == "tests/fixtures/reference/tiny32.pt"
    assert os.path.isfile(os.path.join(ROOT, tiny["ckpt"]))


def _package_sources():
    package = os.path.join(ROOT, "tf_cartoon")
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def test_every_training_flag_is_documented_once_in_its_field():
    """Each TrainConfig field carries its help text, `train --help` shows it, and no other place in the
    package writes a training flag's help (no second table beside the dataclass)."""
    import ast
    import dataclasses
    import subprocess
    import sys

    from tf_cartoon.precision import PRECISIONS
    from tf_cartoon.training.config import help_of

    fields = dataclasses.fields(TrainConfig)
    helps = {f.name: help_of(f) for f in fields}
    assert all(h.strip() for h in helps.values())
    out = subprocess.run([sys.executable, "-m", "tf_cartoon.train", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    squeezed = "".join(out.stdout.split())  # absl wraps the help text at any space
    for f in fields:
        switch = f"--[no]{f.name}:" if isinstance(f.default, bool) else f"--{f.name}:"
        if f.name == "precision":  # an enum flag: absl lists its values before the help
            switch += "<" + "|".join(PRECISIONS) + ">:"
        assert switch + "".join(help_of(f).split()) in squeezed, f"--{f.name}'s help is not in train --help"
    config_py = os.path.join(ROOT, "tf_cartoon", "training", "config.py")
    texts, names = set(helps.values()), set(helps)
    for path in _package_sources():
        tree = ast.parse(open(path).read())
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        copies = [s for s in strings if s in texts]
        assert len(copies) == (len(texts) if path == config_py else 0), f"{path} repeats flag help: {copies[:3]}"
        for node in ast.walk(tree):  # a {flag name: help} table of its own
            if isinstance(node, ast.Dict) and all(isinstance(v, (ast.Constant, ast.JoinedStr)) for v in node.values):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                assert len(keys & names) < 3, f"{path}:{node.lineno} describes training flags again"


def test_bench_flags_come_from_its_config_fields():
    import dataclasses

    from tf_cartoon import bench

    for f in dataclasses.fields(bench.Config):
        flag = bench.FLAGS[f.name]
        assert flag.default == f.default and flag.help.endswith(f.metadata["help"]), f.name
    assert bench.FLAGS["what"].parser.enum_values == list(bench.WHAT)  # absl prefixes an enum's help with its values
