"""python -m tf_cartoon.evaluate end to end on tiny data: JSON lines, the feature cache, PPL, the error lines."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tf_cartoon import evaluate
from tf_cartoon.io import torch_pickle
from tf_cartoon.metrics import stats
from tests.tiny_models import make_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    """Runs without --cache_dir write under the test's folder, never under ~/.cache."""
    monkeypatch.setenv("TF_CARTOON_CACHE", str(tmp_path / "default_cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of 4 real PNGs, a tiny checkpoint, random FID Inception weights in pytorch-fid's key layout,
    random torchvision-layout VGG16 weights and LPIPS linear layers (all written with torch_pickle.save)."""
    from tf_cartoon.metrics.inception import get_inception
    from tests.test_metrics import _random_lins, _random_vgg_state_dict

    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.RandomState(0)
    (root / "real").mkdir()
    for i in range(4):
        Image.fromarray(rng.randint(0, 256, (20, 20, 3), np.uint8)).save(root / "real" / f"{i}.png")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    sd = {}
    for key, shape in get_inception(None).expected.items():
        if key.endswith("conv.weight"):
            sd[key] = rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.endswith(("running_var", "bn.weight")):
            sd[key] = rng.uniform(0.5, 1.5, shape)
        else:
            sd[key] = rng.uniform(-0.2, 0.2, shape)
    sd["fc.weight"] = np.zeros((1008, 2048))  # present in the real file, not used
    torch_pickle.save({k: v.astype(np.float32) for k, v in sd.items()}, str(root / "inception.pth"))
    torch_pickle.save(_random_vgg_state_dict(rng), str(root / "vgg16.pth"))
    torch_pickle.save(_random_lins(rng), str(root / "lpips_vgg.pth"))
    return {"root": root, "real": str(root / "real"), "ckpt": ckpt, "inception": str(root / "inception.pth"),
            "vgg16": str(root / "vgg16.pth"), "lpips": str(root / "lpips_vgg.pth"), "cache": str(root / "cache")}


def _run(capsys, argv):
    rc = evaluate.main(argv)
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return rc, lines, err


def test_fid_kid_json_and_cache(files, capsys):
    argv = ["--metrics", "fid,kid", "--real", files["real"], "--fake", files["ckpt"], "--inception",
            files["inception"], "--n", "4", "--batch", "3", "--cache_dir", files["cache"]]
    before = dict(evaluate.FEATURE_COMPUTATIONS)
    rc, lines, err = _run(capsys, argv)
    assert rc == 0, err
    assert [r["metric"] for r in lines] == ["fid", "kid"]
    fid, kid = lines
    assert fid["n"] == 4 and fid["n_real"] == 4 and fid["size"] == 16  # the checkpoint's resolution
    assert fid["cache"] == {"real": "miss", "fake": "miss"}
    assert np.isfinite(fid["value"]) and fid["value"] > 0 and np.isfinite(kid["value"])
    assert kid["num_subsets"] == 100 and kid["max_subset_size"] == 1000
    assert "metric" in err and "fid" in err  # the table
    computed = {k: evaluate.FEATURE_COMPUTATIONS[k] - before.get(k, 0) for k in ("real", "fake")}
    assert computed == {"real": 1, "fake": 1}
    # the values come from the cached features
    cached = [np.load(p) for p in sorted(glob.glob(os.path.join(files["cache"], "*.npy")))]
    assert len(cached) == 2 and all(c.shape == (4, 2048) for c in cached)
    candidates = [stats.fid_from_features(cached[0], cached[1]), stats.fid_from_features(cached[1], cached[0])]
    assert min(abs(c - fid["value"]) for c in candidates) <= 1e-9 * fid["value"]

    # second run, same real set: nothing recomputed
    before = dict(evaluate.FEATURE_COMPUTATIONS)
    rc, again, err = _run(capsys, argv)
    assert rc == 0, err
    assert again[0]["cache"] == {"real": "hit", "fake": "hit"}
    assert {k: evaluate.FEATURE_COMPUTATIONS[k] - before.get(k, 0) for k in ("real", "fake")} == {"real": 0, "fake": 0}
    assert again[0]["value"] == fid["value"] and again[1]["value"] == kid["value"]

    # other sampling settings of the fake side: the real side still hits, the fake side is recomputed
    rc, third, err = _run(capsys, argv[:-2] + ["--cache_dir", files["cache"], "--truncation", "0.5"])
    assert rc == 0, err
    assert third[0]["cache"] == {"real": "hit", "fake": "miss"} and third[0]["truncation"] == 0.5


def test_synthetic_real_and_folder_fake(files, capsys):
    rc, lines, err = _run(capsys, ["--metrics", "fid", "--real", "synthetic:faces", "--fake", files["real"],
                                   "--inception", files["inception"], "--n", "3", "--size", "24", "--no_cache"])
    assert rc == 0, err
    assert lines[0]["n_real"] == 3 and lines[0]["n"] == 4 and lines[0]["size"] == 24
    assert lines[0]["cache"] == {"real": "off", "fake": "off"}


def test_ppl_end_to_end(files, capsys):
    rc, lines, err = _run(capsys, ["--metrics", "ppl", "--fake", files["ckpt"], "--vgg16_weights", files["vgg16"],
                                   "--lpips", files["lpips"], "--n", "5", "--batch", "2", "--seed", "1"])
    assert rc == 0, err
    (r,) = lines
    assert r["metric"] == "ppl" and r["n"] == 5 and r["space"] == "w" and r["eps"] == 1e-4
    assert r["lpips"] == "exact" and r["crop"] is False
    assert np.isfinite(r["value"]) and r["value"] > 0


@pytest.mark.parametrize("argv_fn, match", [
    (lambda f: ["--metrics", "fid,bogus", "--real", f["real"], "--fake", f["ckpt"]], "unknown metric"),
    (lambda f: ["--metrics", "fid", "--real", f["real"], "--fake", f["ckpt"]], "need --inception"),
    (lambda f: ["--metrics", "kid", "--real", f["real"] + "_missing", "--fake", f["ckpt"], "--inception",
                f["inception"]], "real"),
    (lambda f: ["--metrics", "fid", "--real", f["real"], "--fake", f["ckpt"], "--inception",
                f["inception"] + ".missing"], "does not exist"),
    (lambda f: ["--metrics", "fid", "--real", f["real"], "--fake", f["vgg16"], "--inception", f["inception"],
                "--n", "2"], "vgg16.pth"),
    (lambda f: ["--metrics", "fid", "--real", f["real"], "--fake", f["ckpt"], "--inception", f["lpips"],
                "--no_cache"], "not pytorch-fid's FID Inception"),
    (lambda f: ["--metrics", "ppl", "--fake", f["real"], "--vgg16_weights", f["vgg16"], "--lpips", f["lpips"]],
     "checkpoint"),
    (lambda f: ["--metrics", "ppl", "--fake", f["ckpt"]], "--vgg16_weights"),
    (lambda f: ["--metrics", "fid", "--n", "0", "--real", f["real"], "--fake", f["ckpt"], "--inception",
                f["inception"]], "--n must be"),
])
def test_errors_are_one_line(files, capsys, argv_fn, match):
    rc, lines, err = _run(capsys, argv_fn(files))
    assert rc == 2 and not lines
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err


def test_subprocess_error_exit_status():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv, match in ((["--metrics", "nope"], "unknown metric"), (["--n", "x"], "invalid int")):
        p = subprocess.run([sys.executable, "-m", "tf_cartoon.evaluate", *argv], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=120)
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr


def test_progress_lines(capsys):
    import io

    stream = io.StringIO()
    p = evaluate.Progress("fake features", 10, stream=stream, interval=0.0)
    p.update(5)
    p.finish(10)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("fake features: 5/10 images") and "ETA" in lines[0]
    assert lines[-1].startswith("fake features: 10/10 images") and "\r" not in stream.getvalue()


def test_tfrecord_real_equals_same_images_as_folder(files, capsys, tmp_path):
    import tensorflow as tf

    from tf_cartoon.data.tfrecord import make_example

    path = str(tmp_path / "real.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for f in sorted(os.listdir(files["real"])):
            with open(os.path.join(files["real"], f), "rb") as fh:
                w.write(make_example(fh.read(), 20, f))
    rc, lines, err = _run(capsys, ["--metrics", "fid", "--real", path, "--fake", files["real"], "--inception",
                                   files["inception"], "--size", "20", "--batch", "3", "--no_cache"])
    assert rc == 0, err
    assert lines[0]["n_real"] == 4 and lines[0]["n"] == 4
    assert abs(lines[0]["value"]) < 1e-3  # the same four images on both sides


def test_generators_in_memory_score_as_their_checkpoints_and_are_never_cached(tmp_path):
    """The trainer's --metrics path: live generators give the rows their checkpoint gives, and write no cache."""
    import tf_cartoon

    g = tf_cartoon.load("builtin:source_synthetic", models=("g_ema",)).g_ema
    common = ["--metrics", "structure,domain,judge_fd", "--n", "12", "--batch", "6", "--cache_dir", str(tmp_path)]
    by_spec = evaluate.evaluate(common + ["--fake", "builtin:source_synthetic", "--source", "builtin:source_synthetic",
                                          "--no_cache"])
    live = evaluate.evaluate(common + ["--fake", "g_ema", "--source", "source"], live={"fake": g, "source": g})
    assert [(r["metric"], r.get("set")) for r in live] == [(r["metric"], r.get("set")) for r in by_spec]
    for a, b in zip(live, by_spec):
        assert a["value"] == pytest.approx(b["value"], rel=1e-5, abs=1e-6)
    assert live[0]["fake"] == "g_ema"
    cached = [f for f in os.listdir(tmp_path) if f.endswith(".npy")]
    assert len(cached) == 2  # only the real sets (synthetic:cartoon and :faces), never the live generators


def test_quiet_drops_the_progress_lines_but_not_the_results(capsys):
    argv = ["--metrics", "domain,judge_fd", "--fake", "synthetic:faces", "--n", "8", "--size", "32", "--no_cache"]
    assert evaluate.main(argv) == 0
    loud = capsys.readouterr()
    assert evaluate.main(argv + ["--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "judge features" in loud.err and "judge features" not in quiet.err
    assert quiet.out == loud.out and "domain_rate" in quiet.err  # the JSON rows and the table stay
