"""The CPU demo: the shipped source (builtin:source_synthetic) and configs/quickstart.cfg end to end.

* The shipped source loads by its built-in name and draws faces, not noise: its samples' statistics are
  close to real synthetic:faces samples' (per-channel mean colour, and a Frechet distance between Gaussians
  fitted to 8x8 greyscale thumbnails), while a randomly initialised generator of the same architecture is
  far on both (asserted too, so the thresholds cannot be vacuous).
* A shortened demo (the quickstart flagfile, a few steps, a temporary workdir) runs as the README's command
  does (a subprocess), leaves final_grid.png and a loadable SavedModel, prints where they are, and a rerun
  says it is finished without training or exporting again.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tf_cartoon import assets
from tf_cartoon.data import faces as F
from tests.helpers import ROOT, served_uint8, subprocess_env

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.cfg")
N_FAKE, N_REAL = 256, 512
# Thresholds sit between what the shipped source reaches and what a random network gets (see the
# measured values in the assertions' messages); both sides are asserted below.
MAX_MEAN_COLOUR_DIST = 12.0  # L2 distance of the per-channel mean colours, 0..255 units
# Frechet distance of 8x8 greyscale thumbnails, 0..255 units squared / 64. Two independent sets of real
# synthetic:faces are ~32 apart (the noise floor of 256 vs 512 samples); the shipped source reaches ~67; a
# random network ~1270.
MAX_FRECHET = 80.0


# ------------------------------------------------------------------------------------------- statistics
_uint8 = served_uint8


def mean_colour(images) -> np.ndarray:
    return _uint8(images).reshape(-1, 3).astype(np.float64).mean(0)


def thumbnails(images, res: int = 8) -> np.ndarray:
    """[N, H, W, 3] -> [N, res*res] greyscale box-averaged thumbnails (0..255): the face's layout."""
    x = _uint8(images).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    n, h, w = x.shape
    return x.reshape(n, res, h // res, res, w // res).mean((2, 4)).reshape(n, -1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b, divided by the dimension:
    |mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2), computed through the symmetric
    Ca^1/2 Cb Ca^1/2 so only eigendecompositions of symmetric matrices are needed."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev, vec = np.linalg.eigh(ca)
    sqrt_ca = (vec * np.sqrt(np.clip(ev, 0, None))) @ vec.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_ca @ cb @ sqrt_ca), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross) / a.shape[1]


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (20000, 4))
    b = rng.normal(3.0, 2.0, (20000, 4))
    # per dimension (mu_a - mu_b)^2 + (s_a - s_b)^2 = 9 + 1
    assert frechet(a, b) == pytest.approx(10.0, rel=0.03)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-6)


def _samples(g, n=N_FAKE):
    from tf_cartoon import generate

    return generate.sample(g, range(n), truncation=1.0, batch=64)


@pytest.fixture(scope="module")
def real():
    return F.faces(12345, N_REAL, 32)


def test_builtin_names_resolve_and_unknown_names_are_clear_errors(tmp_path):
    import tf_cartoon
    from tf_cartoon.training.config import ConfigError, TrainConfig, validate

    assert "source_synthetic" in assets.available()
    assert assets.resolve("builtin:source_synthetic") == os.path.join(assets.ASSETS_DIR, "source_synthetic")
    assert assets.resolve("some/dir") == "some/dir"
    with pytest.raises(FileNotFoundError, match="builtin:nope.*known: .*builtin:source_synthetic"):
        tf_cartoon.load("builtin:nope")
    with pytest.raises(ConfigError, match="--ckpt='builtin:nope'.*builtin:source_synthetic"):
        validate(TrainConfig(data="synthetic:cartoon", workdir=str(tmp_path), ckpt="builtin:nope"))


@pytest.mark.slow
def test_shipped_source_draws_faces_and_a_random_network_does_not(real):
    import tf_cartoon
    from tf_cartoon.io import store

    ckpt = tf_cartoon.load("builtin:source_synthetic")
    # g_ema and the trained D ship (FreezeD needs D; the fine-tuned g starts from g_ema when g is absent)
    assert ckpt.g_ema is not None and ckpt.d is not None
    g = ckpt.g_ema
    assert (g.size, g.style_dim) == (32, 64)
    random_g = store.build_generator(ckpt.config["generator"], name="random")

    real_colour, real_thumbs = mean_colour(real), thumbnails(real)
    results = {}
    for name, net in (("shipped", g), ("random", random_g)):
        fake = _samples(net)
        results[name] = (float(np.linalg.norm(mean_colour(fake) - real_colour)),
                         frechet(thumbnails(fake), real_thumbs))
    # a second draw of real faces: the scale of "indistinguishable"
    real2 = F.faces(777, N_FAKE, 32)
    results["real"] = (float(np.linalg.norm(mean_colour(real2) - real_colour)),
                       frechet(thumbnails(real2), real_thumbs))
    msg = "  ".join(f"{k}: colour {c:.1f}, frechet {f:.1f}" for k, (c, f) in results.items())
    assert results["shipped"][0] < MAX_MEAN_COLOUR_DIST and results["shipped"][1] < MAX_FRECHET, msg
    assert results["random"][0] > MAX_MEAN_COLOUR_DIST or results["random"][1] > 3 * MAX_FRECHET, msg
    assert results["random"][1] > 3 * MAX_FRECHET, msg
    assert results["real"][1] < results["shipped"][1], msg  # the metric does see the remaining difference


# ------------------------------------------------------------------------------------ the new trainer flags
@pytest.mark.parametrize("flag,value,match", [
    ("channels", "4:8,8:6", "--channels='4:8,8:6': a 16 px network needs exactly the resolutions 4,8,16"),
    ("channels", "4:8,8:6,16:4,32:4", "needs exactly the resolutions 4,8,16"),
    ("channels", "4:8,8:x,16:4", "bad entry '8:x'"),
    ("channels", "4:8,12:6,16:4", "resolution 12 is not a power of two"),
    ("channels", "4:8,8:0,16:4", "resolution 8 needs a positive channel count"),
    ("channels", "4:8,4:6,16:4", "resolution 4 appears twice"),
    ("final_grid_seeds", "3-1", "--final_grid_seeds='3-1'.*backwards"),
    ("final_grid_seeds", "0-64", "at most 64 seeds"),
    ("final_grid_truncation", 0.0, "--final_grid_truncation"),
    ("ema_halflife_steps", 0.0, "--ema_halflife_steps"),
])
def test_new_flags_are_validated(flag, value, match, tmp_path):
    from tf_cartoon.training.config import ConfigError, TrainConfig, validate

    cfg = TrainConfig(**{"data": "synthetic:faces", "workdir": str(tmp_path), "size": 16, flag: value})
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_channels_build_both_networks_from_scratch_and_conflict_with_a_checkpoint(tmp_path):
    from tf_cartoon.training.config import ConfigError, TrainConfig, validate
    from tf_cartoon.training.trainer import Trainer

    cfg = TrainConfig(data="synthetic:faces", workdir=str(tmp_path / "run"), size=16, channels="4:8, 8:6,16:4",
                      latent=8, n_mlp=2, batch=4)
    trainer = Trainer(cfg)
    assert trainer.g.channels == trainer.d.channels == {4: 8, 8: 6, 16: 4}
    assert trainer.g.get_config()["channels"] == {"4": 8, "8": 6, "16": 4}  # what model_config.json stores
    with pytest.raises(ConfigError, match="--channels=.*from scratch only.*builtin:source_synthetic"):
        validate(TrainConfig(data="synthetic:faces", workdir=str(tmp_path), ckpt="builtin:source_synthetic",
                             channels="4:8,8:6,16:4,32:4"))


# -------------------------------------------------------------------------------------------- the demo
def _run(workdir, *extra, timeout=600):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "tf_cartoon.train", f"--flagfile={QUICKSTART}", f"--workdir={workdir}",
           "--iter=2", "--log_every=1", "--sample_every=2", "--ckpt_every=2", "--final_grid_seeds=0-3", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_shortened_quickstart_end_to_end_and_rerun_says_finished(tmp_path):
    import tensorflow as tf

    from tf_cartoon import generate
    from tf_cartoon.images import make_grid
    from tf_cartoon.io import store
    from tests.test_configs import parse_flagfile

    flags = parse_flagfile(QUICKSTART)
    assert flags["ckpt"] == "builtin:source_synthetic" and flags["data"] == "synthetic:cartoon"
    assert flags["export_on_finish"] and flags["final_grid_seeds"]
    swap_layers = [int(s) for s in flags["swap_layers"].split(",")]

    workdir = str(tmp_path / "qs")
    r = _run(workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    grid_path = os.path.join(workdir, "final_grid.png")
    export_dir = os.path.join(workdir, "export", "1")
    for text in (f"finished: step 2 of 2 in {workdir}", grid_path, export_dir,
                 f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}"):
        assert text in r.stdout, r.stdout
    assert any(n.startswith("events.") for n in os.listdir(os.path.join(workdir, "tensorboard")))

    # The grid: rows source | target | swapped at each swap layer, one 32 px column per seed; the source
    # row is the shipped source's own samples (drawn here through generate.sample, another path).
    from PIL import Image

    grid = np.asarray(Image.open(grid_path).convert("RGB"))
    assert grid.shape == ((2 + len(swap_layers)) * 32, 4 * 32, 3)
    source = store.load("builtin:source_synthetic", models=("g_ema",)).g_ema
    expected_source_row = make_grid([generate.sample(source, range(4), flags.get("final_grid_truncation", 0.7))])
    np.testing.assert_allclose(grid[:32].astype(int), expected_source_row.astype(int), atol=1)
    # The target moved, and only where FreezeG lets it: the trained g differs from the source exactly in the
    # variables freeze.generator_trainable(--freezeG) returns (g_ema moves ~7% of that in 2 steps at
    # --ema_halflife_steps=20, so its row differs by a little only).
    from tf_cartoon.training import freeze

    trained = store.load(workdir, models=("g",)).g
    src_g = store.load("builtin:source_synthetic", models=("g_ema",)).g_ema
    unfrozen = {id(v) for v in freeze.generator_trainable(trained, int(flags["freezeG"]))}
    assert 0 < len(unfrozen) < len(trained.trainable_variables)
    for a, b in zip(src_g.trainable_variables, trained.trainable_variables):
        assert a.path == b.path
        changed = not np.array_equal(a.numpy(), b.numpy())
        assert changed == (id(b) in unfrozen), (b.path, changed)
    assert np.abs(grid[32:64].astype(int) - grid[:32].astype(int)).mean() > 0.05

    # The SavedModel serves the target and the layer swap without tf_cartoon.
    loaded = tf.saved_model.load(export_dir)
    z = generate.seed_z([0, 1], 64)
    out = loaded.signatures["serving_default"](z=tf.constant(z), truncation_psi=tf.constant([0.7, 0.7]))
    assert out["image"].dtype == tf.uint8 and tuple(out["image"].shape) == (2, 32, 32, 3)
    swap = loaded.signatures["swap"](z=tf.constant(z), truncation_psi=tf.constant([0.7, 0.7]),
                                     swap_layer=tf.constant(swap_layers[0]))
    assert tuple(swap["image"].shape) == (2, 32, 32, 3)

    # The workdir converts to a shippable directory (how tf_cartoon/assets/source_synthetic was written).
    from tf_cartoon import convert

    shipped = str(tmp_path / "shipped")
    assert convert.main([workdir, shipped, "--models", "g_ema,d"]) == 0
    back, run = store.load(shipped), store.load(workdir, models=("g_ema",))
    assert back.g is None and back.d is not None
    for a, b in zip(back.g_ema.variables, run.g_ema.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert convert.main([workdir, str(tmp_path / "x"), "--models", "g_ema,q"]) == 2
    assert convert.main([str(tmp_path), str(tmp_path / "y")]) == 2  # a directory, neither workdir nor .pt

    # Rerun: finished, nothing retrained or re-exported.
    mtime = os.path.getmtime(grid_path)
    r2 = _run(workdir)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert "already finished: step 2 of --iter=2" in r2.stdout and grid_path in r2.stdout, r2.stdout
    assert os.path.getmtime(grid_path) == mtime
    assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["1"]
