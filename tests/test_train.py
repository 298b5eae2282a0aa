"""The trainer: freezing, the frozen source, resume, NaN, flag validation (tiny 16 px models, CPU)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.training import freeze
from tf_cartoon.io import store
from tf_cartoon.training.config import ConfigError, TrainConfig, validate
from tf_cartoon.training.trainer import Trainer, TrainingDiverged
from tests.helpers import event_tags
from tests.tiny_models import make_tiny_checkpoint

# Slow tier: each test runs the trainer's steps end to end (about a minute each).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)


def _cfg(tiny, workdir, **kw):
    base = dict(ckpt=tiny, data="synthetic:blobs", batch=4, iter=2, workdir=str(workdir), log_every=1,
                sample_every=1000, ckpt_every=1000, swap_layers="1,2", seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _ids(variables):
    return {id(v) for v in variables}


def test_freeze_options_train_exactly_the_unfrozen_variables_and_never_the_source(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path / "run", freezeG=1, freezeD=1, freezeStyle=1, structure_loss=2, mixing=1.0,
               augment=True, ada_every=1, ada_length=1000)
    t = Trainer(cfg)
    g0, d0, s0 = _values(t.g.trainable_variables), _values(t.d.trainable_variables), _values(t.source.variables)
    seen = []  # a periodic evaluation hook: called after each step it is due at, its values in fit's metrics
    t.evaluations.append((1, lambda trainer: seen.append(int(trainer.step.numpy())) or {"probe": len(seen)}))
    metrics = t.fit()
    assert seen == [1, 2] and metrics["eval/probe"] == 2.0
    assert {"d_loss", "g_loss", "r1", "structure_loss", "structure_loss_L1", "structure_loss_L2",
            "ada_p", "ada_r_t"} <= set(metrics)
    assert "path_penalty" not in metrics  # freezeG >= 0 switches path length off, as the reference
    g_train, d_train = _ids(freeze.generator_trainable(t.g, 1)), _ids(freeze.discriminator_trainable(t.d, 1))
    assert 0 < len(g_train) < len(t.g.trainable_variables) and 0 < len(d_train) < len(t.d.trainable_variables)
    for before, v in zip(g0, t.g.trainable_variables):
        if id(v) in g_train:
            assert not np.array_equal(before, v.numpy()), f"trainable {v.path} did not change"
        else:
            assert np.array_equal(before, v.numpy()), f"frozen {v.path} changed"
    for before, v in zip(d0, t.d.trainable_variables):
        if id(v) in d_train:
            assert not np.array_equal(before, v.numpy()), f"trainable {v.path} did not change"
        else:
            assert np.array_equal(before, v.numpy()), f"frozen {v.path} changed"
    for before, v in zip(s0, t.source.variables):
        assert np.array_equal(before, v.numpy()), f"source {v.path} changed"
    # The source is the checkpoint's g_ema, loaded (the reference forgets to load it).
    ref = store.load(tiny, models=("g_ema",)).g_ema
    for a, b in zip(ref.variables, t.source.variables):
        assert np.array_equal(a.numpy(), b.numpy())
    assert 0.0 <= metrics["ada_p"] <= 1.0
    assert os.path.exists(os.path.join(cfg.workdir, "samples.png"))
    assert os.listdir(os.path.join(cfg.workdir, "tensorboard"))
    # A training workdir is a checkpoint the other tools load directly.
    import tf_cartoon

    loaded = tf_cartoon.load(cfg.workdir, models=("g_ema",)).g_ema
    for a, b in zip(loaded.variables, t.g_ema.variables):
        assert np.array_equal(a.numpy(), b.numpy())


def test_no_freeze_trains_everything_with_path_length_freezefc_rgb_structure_and_bf16(tiny, tmp_path):
    import keras

    cfg = _cfg(tiny, tmp_path / "run", iter=1, freezeFC=True, structure_loss=1, structure_loss_on="rgb",
               mixing=1.0, mixed_precision=True)
    t = Trainer(cfg)
    assert t.g.convs[0].compute_dtype == "bfloat16" and t.d.convs[1].compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in t.g.variables + t.d.variables)
    assert keras.mixed_precision.global_policy().name == "float32"  # the process-wide policy is restored
    # The frozen source stores its weights as the bfloat16 values its layers compute with: the --ckpt's
    # g_ema rounded once, so it computes what a float32-stored copy under the mixed policy computes.
    import tf_cartoon
    from tf_cartoon import precision

    with precision.policy("bf16"):
        mixed = tf_cartoon.load(cfg.ckpt).g_ema
    assert t.source.compute_dtype == "bfloat16" and all(v.dtype == "bfloat16" for v in t.source.variables)
    for a, b in zip(mixed.variables, t.source.variables):
        assert np.array_equal(tf.cast(a, tf.bfloat16).numpy(), b.numpy())
    z = tf.random.stateless_normal([2, mixed.style_dim], [5, 6])
    w_a, w_b = mixed.make_wplus([z]), t.source.make_wplus([z])
    assert np.array_equal(w_a.numpy(), w_b.numpy())
    img_a = mixed.synthesis(w_a, randomize_noise=False).image  # the stored noise buffers
    assert np.array_equal(img_a.numpy(), t.source.synthesis(w_b, randomize_noise=False).image.numpy())
    g0, d0 = _values(t.g.trainable_variables), _values(t.d.trainable_variables)
    e0 = _values(t.g_ema.trainable_variables)
    metrics = t.fit()
    assert "path_penalty" in metrics and "structure_loss_L1" in metrics
    for before, v in zip(g0 + d0, t.g.trainable_variables + t.d.trainable_variables):
        assert not np.array_equal(before, v.numpy()), f"{v.path} did not change"
    # EMA: g_ema moved toward g by exactly (1 - decay)
    from tf_cartoon.training.trainer import EMA_DECAY

    for e_before, e, g in zip(e0, t.g_ema.trainable_variables, t.g.trainable_variables):
        np.testing.assert_allclose(e.numpy(), g.numpy() + EMA_DECAY * (e_before - g.numpy()), rtol=1e-5, atol=1e-6)


def test_recompute_trains_exactly_like_the_plain_step(tiny, tmp_path):
    """--recompute (gradient checkpointing of G and D blocks) changes memory, not results: two runs from the
    same checkpoint, one with it, reach the same G, D and g_ema (structure loss, FreezeSG and mixing on, so
    the tapped features and the source path go through the recomputed blocks; step 0 is also a lazy R1 /
    path-length step, which runs without it)."""
    runs = {}
    for rc in (False, True):
        cfg = _cfg(tiny, tmp_path / f"run_{rc}", iter=1, freezeStyle=1, structure_loss=2, mixing=1.0, recompute=rc)
        t = Trainer(cfg)
        before = _values(t.g.trainable_variables + t.d.trainable_variables)
        metrics = t.fit()
        runs[rc] = (metrics, _values(t.g.trainable_variables + t.d.trainable_variables + t.g_ema.variables), before)
    (m0, v0, b0), (m1, v1, _) = runs[False], runs[True]
    assert any(not np.array_equal(a, b) for a, b in zip(b0, v0))  # the runs trained
    for a, b in zip(v0, v1):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for k in ("d_loss", "g_loss", "structure_loss"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5)


def test_resume_continues_with_identical_state_and_nan_keeps_last_good_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"
    t = Trainer(_cfg(tiny, run, iter=3, ckpt_every=1, keep_checkpoints=5, augment=True, augment_p=0.3,
                     export_torch=True))
    t.fit()
    # --export_torch: the reference format beside each checkpoint, loadable by every tool (and by torch).
    import tf_cartoon

    pt = tf_cartoon.load(str(run / "checkpoints" / "step_00000003.pt"))
    for a, b in zip(pt.g_ema.variables + pt.d.variables, t.g_ema.variables + t.d.variables):
        assert np.array_equal(a.numpy(), b.numpy())
    final = _values(t.g.variables + t.d.variables + t.g_ema.variables + t.g_opt.variables + t.d_opt.variables)

    # Pretend the run was interrupted after step 2: drop ckpt-3 and point the state at ckpt-2.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    ckdir = copy / "checkpoints"
    for f in os.listdir(ckdir):
        if f.startswith("ckpt-3"):
            os.remove(ckdir / f)
    tf.compat.v1.train.update_checkpoint_state(str(ckdir), str(ckdir / "ckpt-2"))
    t2 = Trainer(_cfg(tiny, copy, iter=3, ckpt_every=1, keep_checkpoints=5, augment=True, augment_p=0.3))
    assert t2.restore_or_initialise() == 2
    t2.fit()
    assert int(t2.step.numpy()) == 3
    resumed = _values(t2.g.variables + t2.d.variables + t2.g_ema.variables + t2.g_opt.variables + t2.d_opt.variables)
    for a, b in zip(final, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # A second run of the finished command says so and changes nothing.
    assert Trainer(_cfg(tiny, copy, iter=3)).fit() == {}

    # NaN: poison a weight, the next step stops with a clear error, the last checkpoint stays good.
    t3 = Trainer(_cfg(tiny, copy, iter=5, ckpt_every=1, keep_checkpoints=5))
    t3.restore_or_initialise()
    t3.restore_or_initialise = lambda: 3
    v = t3.d.final_linear[1].kernel
    v.assign(np.full(v.shape, np.nan, np.float32))
    with pytest.raises(TrainingDiverged, match=r"step 3: .*d_loss=nan.* not finite"):
        t3.fit()
    latest = tf.train.latest_checkpoint(str(ckdir))
    assert latest.endswith("ckpt-3")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


# ---------------------------------------------------------------------------
# flag validation: clear one-line errors naming the flag, before any graph
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,match", [
    ("batch", 0, "--batch=0"),
    ("batch", 6, "multiple of 4"),
    ("size", 100, "power of two"),
    ("mixing", 1.5, "--mixing=1.5"),
    ("augment_p", -0.1, "augment_p"),
    ("structure_loss_on", "pixels", "features' or 'rgb'"),
    ("xla", "maybe", "--xla"),
    ("data", "", "--data"),
    ("data", "/nonexistent/folder", "no such folder"),
    ("ckpt", "/nonexistent.pt", "--ckpt"),
])
def test_bad_flags_are_clear_errors(flag, value, match, tmp_path):
    cfg = TrainConfig(**{"data": "synthetic:blobs", "workdir": str(tmp_path), flag: value})
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_flags_checked_against_the_network(tiny, tmp_path):
    base = dict(data="synthetic:blobs", workdir=str(tmp_path), ckpt=tiny)
    with pytest.raises(ConfigError, match="--freezeG=3.*2 synthesis blocks"):
        validate(TrainConfig(**base, freezeG=3), size=16, n_blocks=2)
    with pytest.raises(ConfigError, match="--structure_loss=3"):
        validate(TrainConfig(**base, structure_loss=3), size=16, n_blocks=2)
    with pytest.raises(ConfigError, match="--size=32.*16 px"):
        validate(TrainConfig(**base, size=32), size=16, n_blocks=2)
    with pytest.raises(ConfigError, match="layer 3 is outside 1..2"):
        validate(TrainConfig(**base, swap_layers="1,3"), size=16, n_blocks=2)
    with pytest.raises(ConfigError, match="need a source generator"):
        validate(TrainConfig(data="synthetic:blobs", workdir=str(tmp_path), structure_loss=1))
    with pytest.raises(ConfigError, match="--size=32"):
        Trainer(TrainConfig(**base, size=32))


def test_random_draws_of_different_steps_and_purposes_never_share_a_key():
    """Every draw the trainer makes in 64 steps (latents, mixing, noise maps of 13 layers and path-length
    targets for the D, R1, G and path-length purposes; augmentations per replica) gets its own key: keys are
    folded, never offsets that one step's draw can reach from another's (the old [seed, step * 8 + purpose]
    plus offsets gave the reals' augmentation of step s the key of the D latents of step s + 13)."""
    from tf_cartoon.training import trainer as T

    layers, replicas = 13, 2
    short, long = [], []
    for step in range(64):
        for purpose in (T._D, T._R1, T._G, T._PL):
            short += [(step, purpose, T._Z), (step, purpose, T._MIX)]
            long += [(step, purpose, T._NOISE, i) for i in range(layers)]
        short.append((step, T._PL, T._PL_Y))
        for purpose in (T._AUG_D, T._AUG_D_REAL, T._AUG_R1, T._AUG_G):
            short += [(step, purpose, r) for r in range(replicas)]

    @tf.function
    def keys(words):
        return tf.map_fn(lambda w: T.draw_key(7, *tf.unstack(w)), words,
                         fn_output_signature=tf.TensorSpec([2], tf.int64))

    found = [tuple(k) for group in (short, long) for k in keys(tf.constant(group, tf.int64)).numpy().tolist()]
    assert len(found) == len(short) + len(long) == len(set(found))
    # a key is a pure function of its words (resuming reproduces the draws) and depends on the seed
    assert T.draw_key(7, 3, T._D, T._Z).numpy().tolist() == T.draw_key(7, 3, T._D, T._Z).numpy().tolist()
    assert T.draw_key(8, 3, T._D, T._Z).numpy().tolist() != T.draw_key(7, 3, T._D, T._Z).numpy().tolist()


def _slots(opt, var):
    i = opt._get_variable_index(var)
    return opt._momentums[i].numpy().copy(), opt._velocities[i].numpy().copy()


def test_adam_states_of_the_checkpoint_are_loaded_updated_and_written_back(tmp_path):
    """As the reference's train.py: Adam continues from the checkpoint's g_optim / d_optim. After one G step
    the second moments are beta2 * loaded + (1 - beta2) * g^2 for trained variables (with beta1 = 0 the
    momentum is g itself) and the weights moved by an independent numpy Adam's update; frozen variables keep
    the loaded moments; --export_torch writes them back with their step counts; --fresh_optimizer starts
    from zero."""
    from tests.reference_cases import case_names, reference_dir
    from tf_cartoon.io import reference_keys as rk, torch_pickle
    from tf_cartoon.training import adam_states

    pt = os.path.join(reference_dir(), case_names()[0] + ".pt")
    stored = torch_pickle.load(pt)
    if not isinstance(stored.get("g_optim"), dict) or not stored["g_optim"].get("state"):
        pytest.skip(f"{pt} stores no Adam states")
    cfg = _cfg(pt, tmp_path / "run", iter=1, freezeG=1, freezeD=1, swap_layers="1", export_torch=True,
               ckpt_every=1)
    t = Trainer(cfg)
    rows = rk.parameter_keys(rk.generator_table(t.g))
    table = {k: (var, layout) for k, var, layout in rk.generator_table(t.g)}
    loaded = stored["g_optim"]["state"]
    step0 = max(int(np.asarray(st["step"])) for st in loaded.values())
    before = {}
    for i, key in enumerate(rows):
        var, layout = table[key]
        m, v = _slots(t.g_opt, var)
        to_ours = rk.layout_of(layout, var)[0]
        np.testing.assert_array_equal(v, to_ours(np.asarray(loaded[i]["exp_avg_sq"], np.float32)), err_msg=key)
        before[key] = (var.numpy().copy(), m, v)
    assert int(t.g_opt.iterations.numpy()) == step0
    t.fit()
    trained = {id(v) for v in t.g_train_vars}
    b2, lr, eps = float(t.g_opt.beta_2), float(np.asarray(t.g_opt.learning_rate)), float(t.g_opt.epsilon)
    n_trained = 0
    for key, (w0, m0, v0) in before.items():
        var = table[key][0]
        m1, v1 = _slots(t.g_opt, var)
        if id(var) in trained:
            n_trained += 1
            np.testing.assert_allclose(v1, b2 * v0 + (1 - b2) * m1.astype(np.float64) ** 2, rtol=1e-5, atol=1e-12,
                                       err_msg=key)
            alpha = lr * np.sqrt(1 - b2 ** (step0 + 1))
            np.testing.assert_allclose(var.numpy(), w0 - alpha * m1 / (np.sqrt(v1) + eps), rtol=1e-5, atol=1e-7,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(v1, v0, err_msg=key)
            np.testing.assert_array_equal(m1, m0, err_msg=key)
            np.testing.assert_array_equal(var.numpy(), w0, err_msg=key)
    assert 0 < n_trained < len(before)
    # --export_torch: the reference-format .pt holds the states, frozen ones exactly as loaded.
    written = torch_pickle.load(os.path.join(cfg.workdir, "checkpoints", "step_00000001.pt"))["g_optim"]
    for i, key in enumerate(rows):
        var = table[key][0]
        st = written["state"][i]
        if id(var) in trained:
            assert int(st["step"]) == step0 + 1
        else:
            assert int(st["step"]) == int(np.asarray(loaded[i]["step"]))
            np.testing.assert_array_equal(st["exp_avg_sq"], loaded[i]["exp_avg_sq"], err_msg=key)
    assert written["param_groups"][0]["params"] == list(range(len(rows)))
    # and it loads back into an optimizer as it was
    fresh = Trainer(_cfg(pt, tmp_path / "fresh", iter=1, freezeG=1, freezeD=1, swap_layers="1",
                         fresh_optimizer=True))
    assert int(fresh.g_opt.iterations.numpy()) == 0
    assert not any(_slots(fresh.g_opt, table_var).__getitem__(1).any()
                   for table_var in fresh.g.trainable_variables)
    adam_states.load(fresh.g_opt, fresh.g, rk.generator_table, written, "g_optim")
    for key in rows:
        var = {k: v for k, v, _ in rk.generator_table(fresh.g)}[key]
        np.testing.assert_array_equal(_slots(fresh.g_opt, var)[1], _slots(t.g_opt, table[key][0])[1], err_msg=key)


def test_convert_to_torch_from_a_workdir_writes_its_adam_states(tiny, tmp_path):
    """The reference's train.py resumes from our .pt: convert --to-torch of a workdir writes g_optim / d_optim
    equal to the run's optimizer slots, in the reference's layouts."""
    from tf_cartoon import convert
    from tf_cartoon.io import reference_keys as rk, torch_pickle

    t = Trainer(_cfg(tiny, tmp_path / "run", iter=2, ckpt_every=2))
    t.fit()
    assert convert.main(["--to-torch", str(tmp_path / "run"), str(tmp_path / "run.pt")]) == 0
    obj = torch_pickle.load(str(tmp_path / "run.pt"))
    for name, opt, model, table in (("g_optim", t.g_opt, t.g, rk.generator_table),
                                    ("d_optim", t.d_opt, t.d, rk.discriminator_table)):
        keys = rk.parameter_keys(table(model))
        rows = {k: (v, layout) for k, v, layout in table(model)}
        state = obj[name]["state"]
        assert sorted(state) == list(range(len(keys)))
        for i, key in enumerate(keys):
            var, layout = rows[key]
            m, v = _slots(opt, var)
            np.testing.assert_array_equal(state[i]["exp_avg_sq"], rk.layout_of(layout, var)[1](v), err_msg=key)
            assert int(state[i]["step"]) == int(opt.iterations.numpy())


def test_adaptive_augmentation_starts_at_zero_unless_asked_to_continue_the_checkpoints_p(tiny, tmp_path):
    """The reference starts ADA at p = 0 when it fine-tunes (the stored ada_aug_p belongs to the source's
    dataset); --ada_p_from_ckpt continues from the stored p."""
    ck = store.load(tiny)
    ck.ada_aug_p = 0.4
    pt = str(tmp_path / "with_p.pt")
    store.write_reference(ck, pt)
    assert Trainer(_cfg(pt, tmp_path / "a", augment=True)).ada.p.numpy() == 0.0
    assert Trainer(_cfg(pt, tmp_path / "b", augment=True, ada_p_from_ckpt=True)).ada.p.numpy() == pytest.approx(0.4)


def test_sample_grids_pair_source_and_target_through_the_source_mapping_by_default(tiny, tmp_path):
    """--pairing shared_w (default, the reference's demos): the target rows render the source's W; own_z: the
    target maps z itself. With a source whose mapping differs from the trained G's the two differ, and
    shared_w's target row is g_ema.synthesis of the source's W."""
    other = make_tiny_checkpoint(tmp_path / "other", seed=11)
    shared = Trainer(_cfg(tiny, tmp_path / "a", source_ckpt=other, structure_loss=1, swap_layers="1"))
    own = Trainer(_cfg(tiny, tmp_path / "b", source_ckpt=other, structure_loss=1, swap_layers="1",
                       pairing="own_z"))
    a, b = shared.sample_grid(4), own.sample_grid(4)
    h = a.shape[0] // 3  # rows: source | target | swap l1
    np.testing.assert_array_equal(a[:h], b[:h])  # the same source row
    assert np.abs(a[h:2 * h].astype(int) - b[h:2 * h].astype(int)).max() > 0
    z = tf.random.stateless_normal([4, shared.g.z_dim], seed=[shared.cfg.seed, 2 ** 31 - 1])
    noise = [tf.constant(v.numpy()) for v in shared.g_ema.noise_buffers]
    from tf_cartoon.images import make_grid

    want = make_grid([shared.g_ema.synthesis(shared.source.make_wplus(z), noise).image])
    np.testing.assert_array_equal(a[h:2 * h], want)


def test_metrics_during_training_reach_tensorboard_and_the_hparams_dashboard(tmp_path):
    """--metrics: the judge's metrics of g_ema at every --metrics_every step and at --iter, equal to what
    evaluate computes from the saved run; the run's flags and metric names in the HParams plugin's records."""
    from tf_cartoon import evaluate

    workdir = tmp_path / "run"
    cfg = TrainConfig(ckpt="builtin:source_synthetic", data="synthetic:cartoon", batch=4, iter=3, workdir=str(workdir),
                      log_every=1, sample_every=1000, ckpt_every=3, freezeD=2, seed=1,
                      metrics="structure,domain,judge_fd", metrics_every=2, metrics_n=8)
    metrics = Trainer(cfg).fit()
    assert {"eval/structure_error", "eval/domain_rate", "eval/judge_fd"} <= set(metrics)
    tags, plugins = event_tags(workdir / "tensorboard")
    for name in ("structure_error", "domain_rate", "judge_fd"):
        assert tags[f"eval/{name}"] == [2, 3]  # every 2 steps and at --iter
    assert "hparams" in plugins and "_hparams_/session_start_info" in tags and "_hparams_/experiment" in tags
    # the values at --iter are evaluate's on the saved run (its g_ema, the same seeds and the source's noise)
    rows = evaluate.evaluate(["--metrics", "structure,domain,judge_fd", "--fake", str(workdir), "--source",
                              "builtin:source_synthetic", "--n", "8", "--real", "synthetic:cartoon", "--no_cache"])
    got = {r["metric"]: r["value"] for r in rows if r.get("set", "fake") == "fake"}
    for name, value in got.items():
        assert metrics[f"eval/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kw, flag", [(dict(metrics="fid"), "--inception"), (dict(metrics="bleu"), "--metrics"),
                                      (dict(metrics="structure", ckpt=""), "--metrics"),
                                      (dict(metrics="domain", metrics_n=1), "--metrics_n"),
                                      (dict(metrics="domain", metrics_every=-1), "--metrics_every")])
def test_metrics_flags_are_checked_before_training(kw, flag, tmp_path):
    base = dict(ckpt="builtin:source_synthetic", data="synthetic:cartoon", workdir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match=flag):
        validate(TrainConfig(**{**base, **kw}))


def test_one_replica_traces_each_phase_into_one_graph(tiny, tmp_path):
    """On one replica without XLA a phase's gradient computation is traced into its step function (no nested
    function whose graph would be kept once more); with --xla on it is an XLA-compiled function of its own."""
    for xla in ("off", "on"):
        t = Trainer(_cfg(tiny, tmp_path / f"run_{xla}", xla=xla))
        real = tf.zeros([4, t.size, t.size, 3])
        step = t.phase_steps["D_main"].get_concrete_function(real, tf.constant(1, tf.int64))
        names = [f.signature.name for f in step.graph.as_graph_def().library.function]
        nested = [n for n in names if "_d_compute" in n]
        assert (nested == []) if xla == "off" else (len(nested) == 1), (xla, names)
