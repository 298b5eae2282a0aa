"""float16 training (--precision fp16): dynamic loss scaling per phase, skipped updates, resume (tiny models, CPU;
TF's CPU kernels compute float16 too, slowly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.training import loss_scale
from tf_cartoon.training.config import TrainConfig
from tf_cartoon.training.loss_scale import DynamicLossScale
from tf_cartoon.training.trainer import Trainer, TrainingDiverged
from tests.helpers import event_scalars
from tests.tiny_models import make_tiny_checkpoint

PHASES = ("D_main", "D_r1", "G_main", "G_path_length")


def test_the_scale_halves_on_non_finite_gradients_and_doubles_after_n_finite_steps():
    s = DynamicLossScale("x", growth_interval=3)
    assert float(s.scale.numpy()) == loss_scale.INITIAL_SCALE == 2.0 ** 15
    history = []
    for finite in (True, True, True, True, False, True, True, False):
        s.update(tf.constant(finite))
        history.append((float(s.scale.numpy()), int(s.good_steps.numpy())))
    assert history == [(2 ** 15, 1), (2 ** 15, 2), (2 ** 16, 0), (2 ** 16, 1), (2 ** 15, 0), (2 ** 15, 1),
                       (2 ** 15, 2), (2 ** 14, 0)]
    # Two backward passes (R1, path length): the loss's factor is scale ** 2, at most 2 ** 15 to start with
    # (2 ** 16 is already beyond float16's largest value, 65504).
    two = DynamicLossScale("y", passes=2)
    assert float(two.factor(two.scale).numpy()) == 2.0 ** 14
    with pytest.raises(ValueError, match="growth_interval"):
        DynamicLossScale("z", growth_interval=0)


def test_all_finite_sees_inf_and_nan_in_any_gradient_and_ignores_none():
    ok = [tf.ones([2, 2]), None, tf.zeros([3])]
    assert bool(loss_scale.all_finite(ok))
    assert not bool(loss_scale.all_finite(ok + [tf.constant([1.0, math.inf])]))
    assert not bool(loss_scale.all_finite([tf.constant([math.nan], tf.float16)] + ok))
    assert bool(loss_scale.all_finite([None]))


def _values(variables):
    return [v.numpy().copy() for v in variables]


@pytest.mark.slow
def test_fp16_training_scales_every_phase_skips_overflows_and_resumes_its_scales(tmp_path):
    tiny = make_tiny_checkpoint(tmp_path / "tiny", seed=3)
    cfg = TrainConfig(ckpt=tiny, data="synthetic:blobs", batch=4, iter=3, workdir=str(tmp_path / "run"),
                      log_every=1, sample_every=1000, ckpt_every=1000, swap_layers="1", seed=1, precision="fp16",
                      d_reg_every=1, g_reg_every=1)
    t = Trainer(cfg, loss_scale_growth=2)
    assert t.g.compute_dtype == "float16" and t.d.compute_dtype == "float16"
    assert all(v.dtype == tf.float32 for v in t.g.variables + t.d.variables)
    initial = {name: float(s.scale.numpy()) for name, s in t.loss_scales.items()}
    assert initial == {"D_main": 2.0 ** 15, "D_r1": 2.0 ** 7, "G_main": 2.0 ** 15, "G_path_length": 2.0 ** 7}
    metrics = t.fit()
    for k in ("d_loss", "g_loss", "r1", "path_penalty"):
        assert k in metrics and math.isfinite(metrics[k]), (k, metrics.get(k))

    # TensorBoard has each phase's scale and skip flag at every step; the scale follows the rule: halved at a
    # skipped step, doubled after 2 finite steps in a row.
    scalars = event_scalars(tmp_path / "run" / "tensorboard")
    for name in PHASES:
        scale, skipped = scalars[f"loss_scale/{name}"], scalars[f"skipped/{name}"]
        assert sorted(scale) == sorted(skipped) == [1, 2, 3]
        want, good = initial[name], 0
        for step in (1, 2, 3):
            if skipped[step]:
                want, good = want / 2, 0
            else:
                good += 1
                if good == 2:
                    want, good = want * 2, 0
            assert scale[step] == want, (name, step, scale, skipped)
    assert sum(scalars["skipped/G_main"].values()) + sum(scalars["skipped/D_main"].values()) < 6

    # Overflow: at a scale of 2 ** 40 the D step's float16 gradients are infinite. The step changes neither D
    # nor its optimizer, and the scale halves; the G step that follows is not affected.
    real = next(iter(t.make_data(3)))
    step = tf.constant(3, tf.int64)
    t.loss_scales["D_main"].scale.assign(2.0 ** 40)
    d_before = _values(t.d.variables + t.d_opt.variables)
    out = t.phase_steps["D_main"](real, step)
    assert float(out["skipped"]) == 1.0
    assert float(t.loss_scales["D_main"].scale.numpy()) == 2.0 ** 39
    assert int(t.loss_scales["D_main"].good_steps.numpy()) == 0
    for a, v in zip(d_before, t.d.variables + t.d_opt.variables):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
    g_before = _values(t.g_train_vars)
    g_scale = float(t.loss_scales["G_main"].scale.numpy())
    out = t.phase_steps["G_main"](step)
    assert float(out["skipped"]) == 0.0 and math.isfinite(float(out["g_loss"]))
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(g_before, t.g_train_vars))
    assert float(t.loss_scales["G_main"].scale.numpy()) in (g_scale, 2 * g_scale)

    # A phase that overflows even at a scale below 1 has diverged: the run stops (train exits 3).
    t.loss_scales["D_main"].scale.assign(0.5)
    with pytest.raises(TrainingDiverged, match=r"step 3: D_main's gradients are not finite even at loss scale 0.5"):
        t._loss_scale_metrics("D_main", {"skipped": tf.constant(1.0)}, 3)
    t.loss_scales["D_main"].scale.assign(2.0 ** 39)

    # The scales are checkpointed: a resumed run continues at them.
    t.save()
    saved = {name: (float(s.scale.numpy()), int(s.good_steps.numpy())) for name, s in t.loss_scales.items()}
    assert saved != {name: (v, 0) for name, v in initial.items()}
    t2 = Trainer(cfg)
    assert {name: float(s.scale.numpy()) for name, s in t2.loss_scales.items()} == initial  # before restoring
    assert t2.restore_or_initialise() == 3
    assert {name: (float(s.scale.numpy()), int(s.good_steps.numpy())) for name, s in t2.loss_scales.items()} == saved


@pytest.mark.slow
def test_all_replicas_skip_together_when_one_replicas_gradients_are_not_finite(tmp_path):
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT, subprocess_env

    tiny = make_tiny_checkpoint(tmp_path / "tiny", seed=4)
    out = tmp_path / "out.json"
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    r = subprocess.run([sys.executable, f"{ROOT}/tests/_train_worker.py", "fp16_skip", tiny, str(tmp_path / "run"),
                        str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["replicas"] == 2
    assert got["skipped"] == 1.0 and got["unchanged"], got  # replica 0's gradients were finite: it skips too
    assert got["scale_after_skip"] == got["scale_before"] / 2
    assert got["applied_skipped"] == 0.0 and got["changed"] and got["replicas_agree"], got


@pytest.mark.slow
def test_unscaled_fp16_gradients_of_every_phase_match_fp32(tmp_path):
    """The loss scale cancels: each phase's float16 gradients, scaled by scale ** backward_passes and divided by
    it again (as the distributed step does), point where the float32 gradients of the same step point, with the
    same length. A wrong power of the scale (R1 and path length carry it squared) would be off by 2 ** 7."""
    tiny = make_tiny_checkpoint(tmp_path / "tiny", seed=5)

    def trainer(precision):
        return Trainer(TrainConfig(ckpt=tiny, data="synthetic:blobs", batch=4, iter=1, seed=2, precision=precision,
                                   workdir=str(tmp_path / precision), swap_layers="1"))

    t32, t16 = trainer("fp32"), trainer("fp16")
    real = tf.constant(np.random.RandomState(1).uniform(-1, 1, [4, t32.size, t32.size, 3]), tf.float32)
    step = tf.constant(0, tf.int64)
    for p32, p16 in zip(t32.phases, t16.phases):
        args = (real, step) if p32.takes_real else (step,)
        want = p32.compute(*args)[0]
        scale = tf.constant(2.0 ** 5)  # small enough never to overflow here (checked: finite below)
        got = [g / scale ** p16.backward_passes for g in p16.compute(*args, scale)[0]]
        a = np.concatenate([g.numpy().ravel() for g in want])
        b = np.concatenate([g.numpy().ravel() for g in got])
        assert np.isfinite(b).all(), p16.name
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.99, (p16.name, cosine)
        assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(a), rel=0.05), p16.name
