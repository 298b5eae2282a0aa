"""The shipped judge of the built-in domains (tf_cartoon/metrics/judge.py) and evaluate's structure metrics."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tf_cartoon import evaluate
from tf_cartoon.data import faces as F
from tf_cartoon.metrics import judge as J

N_FRESH = 300  # fresh held-out faces per check (each rendered in both domains, 32 px)
FRESH_SEED = 20261203  # neither the recorded held-out seed nor a training stream (default_rng([seed, step]))


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CARTOON_CACHE", str(tmp_path / "default_cache"))


@pytest.fixture(scope="module")
def judge():
    return J.load()


@pytest.fixture(scope="module")
def fresh(judge):
    """Fresh faces, their renders in both domains and the judge's reading of each."""
    params = J.heldout_params(FRESH_SEED, N_FRESH)
    faces, toons = F.render_faces(params, J.JUDGE_SIZE), F.render_cartoon(params, J.JUDGE_SIZE)
    return {"params": params, "faces": faces, "cartoon": toons, "out_faces": judge(faces), "out_cartoon": judge(toons)}


def test_shipped_judge_is_small_and_documented(judge):
    folder = J.default_dir()
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert size < 2_000_000
    cfg = judge.config
    assert cfg["heldout"]["seed"] != FRESH_SEED and cfg["heldout"]["n"] >= 1000
    assert cfg["structure"] == list(J.STRUCTURE) and 0 < cfg["floor"] < 0.5
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    table = open(os.path.join(root, "docs", "judge_table.md")).read()
    assert table.strip() == J.markdown_table(cfg).strip()  # the docs show the shipped figures


def _tol_rate(p: float, n: int) -> float:
    """4 binomial standard errors of a rate measured on n samples (both estimates carry noise), plus 0.01."""
    return 4.0 * math.sqrt(max(p * (1 - p), 1e-4) / n) + 0.01


def test_accuracy_matches_the_recorded_figures(judge):
    """On fresh held-out renders, every recorded figure holds within its sampling tolerance."""
    rec = judge.config["accuracy"]
    got = J.accuracy(judge, J.heldout_params(FRESH_SEED, N_FRESH))
    for dom in ("faces", "cartoon"):
        assert abs(got[dom]["domain"] - rec[dom]["domain"]) <= _tol_rate(rec[dom]["domain"], N_FRESH), dom
        assert rec[dom]["domain"] > 0.95
        for k in J.CATEGORICAL:
            assert abs(got[dom][k] - rec[dom][k]) <= _tol_rate(rec[dom][k], N_FRESH), (dom, k, got[dom][k])
        for k in J.CONTINUOUS:
            se = rec[dom][k]["mae_se"] * math.sqrt(rec["n"] / N_FRESH)
            assert abs(got[dom][k]["mae"] - rec[dom][k]["mae"]) <= 4 * se + 1e-4, (dom, k, got[dom][k])
    floor = judge.config["floor"]
    assert abs(got["floor"]["value"] - floor) <= 0.25 * floor + 0.02


def test_structure_error_floor_and_unrelated_pairs(judge, fresh):
    pairs, per = J.structure_error(fresh["out_faces"], fresh["out_cartoon"], judge.spreads)
    assert set(per) == set(J.STRUCTURE)
    perm = np.random.default_rng(0).permutation(N_FRESH)
    shuffled = fresh["out_cartoon"].subset(perm)
    unrelated, _ = J.structure_error(fresh["out_faces"], shuffled, judge.spreads)
    floor = judge.config["floor"]
    assert pairs <= 1.25 * floor + 0.02
    assert unrelated > 0.6 and unrelated > 2.5 * pairs
    assert abs(unrelated - judge.config["unrelated"]) <= 0.15 * judge.config["unrelated"]
    same, _ = J.structure_error(fresh["out_faces"], fresh["out_faces"], judge.spreads)
    assert same == 0.0


def test_spreads_are_the_disagreement_of_independent_draws():
    """E|X - X'| of a uniform on [a, b] is (b - a) / 3; P(X != X') of k equally likely classes is 1 - 1/k."""
    stats = J.parameter_statistics(20000, seed=1)
    assert stats["cx"]["spread"] == pytest.approx((0.60 - 0.40) / 3, rel=0.03)
    assert stats["ry"]["spread"] == pytest.approx((0.285 - 0.22) / 3, rel=0.03)
    assert stats["hair_style"]["spread"] == pytest.approx(1 - 1 / len(F.HAIR_STYLES), rel=0.01)
    assert stats["mouth_type"]["spread"] == pytest.approx(1 - 1 / len(F.MOUTH_TYPES), rel=0.01)


def test_domain_rate(fresh):
    assert J.domain_rate(fresh["out_cartoon"]) > 0.95
    assert J.domain_rate(fresh["out_faces"]) < 0.05


def test_judge_fd_same_domain_small_across_large(judge, fresh):
    other = J.heldout_params(FRESH_SEED + 1, N_FRESH)
    toons2 = judge(F.render_cartoon(other, J.JUDGE_SIZE))
    faces2 = judge(F.render_faces(other, J.JUDGE_SIZE))
    same_cartoon = J.judge_fd(fresh["out_cartoon"], toons2)
    same_faces = J.judge_fd(fresh["out_faces"], faces2)
    across = J.judge_fd(fresh["out_faces"], toons2)
    assert across > 10 * max(same_cartoon, same_faces) > 0


def test_any_input_size_and_dtype(judge, fresh):
    """64 px renders are resized to the judge's 32 px; floats in [-1, 1] read as the uint8 they come from."""
    params = F.subset_params(fresh["params"], slice(0, 48))
    big = judge(F.render_cartoon(params, 64))
    assert J.domain_rate(big) > 0.9
    assert np.mean(np.abs(big.params["cx"] - params["cx"])) < 2 * judge.config["accuracy"]["cartoon"]["cx"]["mae"]
    as_float = judge(fresh["cartoon"][:16].astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(as_float.features, fresh["out_cartoon"].features[:16], atol=1e-4)


# ------------------------------------------------------------------------------------------ evaluate CLI
def _run(capsys, argv):
    rc = evaluate.main(argv)
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_evaluate_builtin_source_against_itself(capsys, tmp_path):
    """The shipped source as both source and target: the same images, so structure_error is 0 (also swapped:
    its own feature goes back in), and the judge sees faces."""
    argv = ["--metrics", "structure,domain,judge_fd", "--fake", "builtin:source_synthetic", "--source",
            "builtin:source_synthetic", "--n", "48", "--batch", "24", "--cache_dir", str(tmp_path / "cache")]
    rc, rows, err = _run(capsys, argv)
    assert rc == 0, err
    by = {(r["metric"], r.get("set")): r for r in rows}
    assert set(by) == {("structure_error", None), ("domain_rate", "fake"), ("domain_rate", "source"),
                       ("judge_fd", "fake"), ("judge_fd", "source")}
    s = by[("structure_error", None)]
    assert s["value"] == 0.0 and s["n"] == 48 and s["floor"] > 0 and set(s["per_param"]) == set(J.STRUCTURE)
    assert by[("domain_rate", "fake")]["value"] < 0.15 and by[("domain_rate", "source")]["value"] < 0.15
    assert by[("judge_fd", "fake")]["real"] == "synthetic:cartoon"
    assert by[("judge_fd", "source")]["real"] == "synthetic:faces"
    assert by[("judge_fd", "source")]["value"] < by[("judge_fd", "fake")]["value"]
    assert "structure_error" in err and "domain_rate" in err  # the table
    before = dict(evaluate.FEATURE_COMPUTATIONS)
    rc, swapped, err = _run(capsys, argv + ["--swap_layer", "1,2", "--metrics", "structure"])
    assert rc == 0, err
    assert [(r["metric"], r["swap_layer"], r["value"]) for r in swapped] == [("structure_error", 1, 0.0),
                                                                             ("structure_error", 2, 0.0)]
    assert swapped[0]["cache"]["source"] == "hit"  # the source's judge outputs come from the cache
    assert evaluate.FEATURE_COMPUTATIONS["fake"] - before.get("fake", 0) == 2


def test_paired_target_renders_the_sources_seeds(tmp_path):
    """A target paired with an identical source renders exactly the source's images (same z, w and noise)."""
    src = evaluate.Source("source", "builtin:source_synthetic")
    tgt = src.paired(src, "shared_w")  # the same generator object as its own target
    a = np.concatenate(list(src.batches(6, 32, 4, 1.0, 64, 5)))
    b = np.concatenate(list(tgt.batches(6, 32, 4, 1.0, 64, 5)))
    assert np.abs(a).max() > 0.1  # real images, not an empty render
    np.testing.assert_array_equal(a, b)
    assert tgt.identity() != src.identity() and tgt.identity()["partner"] == src.identity()


def test_swapped_target_matches_generates_layer_swap(tmp_path, monkeypatch):
    """With the noise maps set to the stored ones, a paired target's swapped images are tf_cartoon.generate's
    swap_images of the same seeds (an independent path: generate's render and swap), quantised."""
    from tf_cartoon import generate
    from tests.tiny_models import make_tiny_checkpoint

    src = evaluate.Source("source", make_tiny_checkpoint(tmp_path / "s", seed=0))
    tgt = evaluate.Source("fake", make_tiny_checkpoint(tmp_path / "t", seed=1))
    monkeypatch.setattr(evaluate, "seed_noise", lambda g, seeds, z_dim: g.stored_noise())
    seeds = range(3, 8)
    want = generate.swap_images(src.generator(), tgt.generator(), seeds, layers=(1, 2), truncation=1.0)
    for layer in (1, 2):
        got = np.concatenate(list(tgt.paired(src, "shared_w", layer).batches(5, 16, 2, 1.0, 16, 3)))
        np.testing.assert_allclose(got, evaluate.quantise(want.swapped[layer]), atol=1.01 / 127.5)
    plain = np.concatenate(list(tgt.paired(src, "shared_w").batches(5, 16, 2, 1.0, 16, 3)))
    np.testing.assert_allclose(plain, evaluate.quantise(want.target), atol=1.01 / 127.5)
    assert np.abs(plain - evaluate.quantise(want.swapped[1])).max() > 0.05  # the swap changes the image


@pytest.mark.parametrize("extra, match", [
    (["--metrics", "structure"], "structure needs --source"),
    (["--metrics", "domain", "--swap_layer", "2"], "--swap_layer needs --source"),
    (["--metrics", "structure", "--source", "builtin:source_synthetic", "--swap_layer", "x"],
     "--swap_layer must be integers"),
    (["--metrics", "structure", "--source", "builtin:source_synthetic", "--swap_layer", "9"],
     "swap layer must be in 1..3"),
    (["--metrics", "domain", "--source", "builtin:source_synthetic", "--pairing", "nope"], "--pairing must be one of"),
    (["--metrics", "domain", "--judge", "/nonexistent/judge"], "--judge /nonexistent/judge is not a folder"),
])
def test_bad_flags_are_one_line(capsys, extra, match):
    rc, rows, err = _run(capsys, ["--fake", "builtin:source_synthetic", "--n", "4"] + extra)
    assert rc == 2 and not rows
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


# ------------------------------------------------------------------------------------------ training CLI
def test_training_cli_writes_a_loadable_judge(tmp_path, capsys):
    out = tmp_path / "j"
    rc = J.main(["--out", str(out), "--steps", "2", "--pairs", "4", "--heldout_n", "16", "--docs",
                 str(tmp_path / "t.md")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    j = J.Judge(str(out))
    assert j.config["train"]["steps"] == 2 and j.config["heldout"]["n"] == 16
    assert set(j.config["accuracy"]["cartoon"]) >= set(J.CONTINUOUS) | set(J.CATEGORICAL) | {"domain"}
    assert open(tmp_path / "t.md").read().strip() == J.markdown_table(j.config).strip()
    res = j(np.zeros((3, 20, 24, 3), np.uint8))
    assert res.features.shape == (3, J.FEATURE_DIM) and res.domain_prob.shape == (3,)


def test_training_cli_bad_flags(tmp_path, capsys):
    assert J.main(["--steps", "0", "--out", str(tmp_path)]) == 2
    assert "error: --steps must be >= 1" in capsys.readouterr().err
    assert J.main(["--flagfile", str(tmp_path / "none.cfg")]) == 2
    assert "none.cfg does not exist" in capsys.readouterr().err
