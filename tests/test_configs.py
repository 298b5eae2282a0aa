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
