"""tf_cartoon.compare: the method table, its figures and the command (the full comparison's numbers live in
the README; here a 2-step run checks the plumbing end to end)."""

import json
import os

import numpy as np
import pytest

from tf_cartoon import compare


@pytest.mark.parametrize("method", compare.METHODS, ids=lambda m: m.name)
def test_every_method_is_a_valid_training_configuration(method, tmp_path):
    from tf_cartoon import train
    from tf_cartoon.training.config import validate

    cmd = compare.train_command(method, str(tmp_path / method.name), 10, 8, 0)
    cfg = train.parse_flags(cmd[3:])
    validate(cfg)
    assert cfg.ckpt == compare.SOURCE and cfg.data == compare.DATA and cfg.freezeD == 2 and cfg.augment
    # only the method's own flags differ between methods
    shared = set(compare.budget_flags(10, 8, 0))
    assert set(cmd[3:]) - shared - {f"--workdir={tmp_path / method.name}"} == set(method.flags)


def test_methods_differ_in_what_the_paper_varies():
    from tf_cartoon import train

    cfgs = {m.name: train.parse_flags(compare.train_command(m, "w", 10, 8, 0)[3:]) for m in compare.METHODS}
    assert cfgs["freezeD_ada"].freezeG == -1 and cfgs["freezeD_ada"].structure_loss == -1
    assert cfgs["freezeG"].freezeG == 2 and cfgs["freezeG"].freezeStyle == -1
    assert cfgs["freezeSG"].freezeG == 2 and cfgs["freezeSG"].freezeStyle == 2
    assert cfgs["structure_features"].structure_loss_on == "features"
    assert cfgs["structure_rgb"].structure_loss_on == "rgb"


def test_rows_group_evaluate_output_by_swap_layer():
    results = [
        {"metric": "structure_error", "value": 0.3}, {"metric": "domain_rate", "value": 0.9, "set": "fake"},
        {"metric": "judge_fd", "value": 40.0, "set": "fake"},
        {"metric": "domain_rate", "value": 0.0, "set": "source"},  # the source's own row: not the method's
        {"metric": "structure_error", "value": 0.2, "swap_layer": 2},
        {"metric": "domain_rate", "value": 0.5, "set": "fake", "swap_layer": 2},
        {"metric": "judge_fd", "value": 120.0, "set": "fake", "swap_layer": 2},
    ]
    rows = compare._rows_from(results, "m", "M")
    assert [(r.swap_layer, r.structure_error, r.domain_rate, r.judge_fd) for r in rows] == [
        (None, 0.3, 0.9, 40.0), (2, 0.2, 0.5, 120.0)]
    assert rows[1].label == "m l=2"


@pytest.mark.parametrize("argv, flag", [(["--methods", "freezeX"], "--methods"), (["--steps", "0"], "--steps"),
                                        (["--figure_seeds", "x"], "--figure_seeds")])
def test_bad_flags_are_one_line_and_status_2(argv, flag, tmp_path, capsys):
    assert compare.main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_two_step_comparison_writes_the_table_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--out", str(out), "--steps", "2", "--methods", "freezeSG", "--n", "8", "--figure_seeds", "0-2"]
    assert compare.main(argv) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["swap_layer"]): r for r in payload["rows"]}
    assert set(rows) == {("source", None), ("freezeSG", None), ("freezeSG", 1), ("freezeSG", 2)}
    assert rows[("source", None)]["structure_error"] == 0.0  # the source against itself
    # FreezeSG trains neither the 8 px block nor the first W+ rows: swapping layer 1 changes nothing
    assert rows[("freezeSG", 1)]["structure_error"] == pytest.approx(rows[("freezeSG", None)]["structure_error"])
    for r in payload["rows"]:
        assert all(np.isfinite(r[k]) for k in ("structure_error", "domain_rate", "judge_fd"))
    assert "| freezeSG | FreezeSG | 2 |" in (out / "results.md").read_text()
    from PIL import Image

    assert Image.open(out / "samples.png").size[1] == 2 * (32 * 3 + 2)  # source + one method
    assert Image.open(out / "tradeoff.png").size == (720, 480)
    # a rerun resumes: the finished run trains nothing
    assert compare.main(argv) == 0
    assert "already finished" in (out / "runs" / "freezeSG.log").read_text()
