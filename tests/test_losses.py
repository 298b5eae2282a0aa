"""Losses and regularisers against the reference fixtures (every case in $TF_CARTOON_REFERENCE_DIR)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_cartoon
from tf_cartoon.training import losses
from tests.reference_cases import Case, case_names

CASES = case_names()


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            case = Case(name)
            src = tf_cartoon.load(case.source_pt)
            tgt = tf_cartoon.load(case.target_pt, models=("g_ema",)) if case.target_pt else None
            cache[name] = (case, src, tgt)
        return cache[name]

    return get


def _close(got, case, name):
    ref = case.arrays[name]
    got = np.asarray(got)
    assert got.shape == ref.shape, name
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", CASES)
def test_adversarial_losses_and_r1(name, loaded):
    case, src, _ = loaded(name)
    case.require("x_real", "img_const")
    if src.d is None:
        pytest.skip(f"{name}: the checkpoint holds no discriminator")
    d = src.d
    real = d(case.nhwc("x_real"))
    fake = d(case.nhwc("img_const"))
    checked = 0
    for got, key in ((lambda: losses.d_logistic_loss(real, fake), "d_logistic_loss"),
                     (lambda: losses.g_nonsaturating_loss(fake), "g_nonsat_loss")):
        if case.has(key):
            _close(got(), case, key)
            checked += 1
    if case.has("r1_penalty") or case.has("d_real"):
        r1, logits = losses.r1_penalty(d, case.nhwc("x_real"))
        if case.has("r1_penalty"):
            _close(r1, case, "r1_penalty")
            checked += 1
        if case.has("d_real"):
            np.testing.assert_allclose(logits.numpy(), case.arrays["d_real"], rtol=1e-4, atol=1e-6)
            checked += 1
    if not checked:
        pytest.skip(f"{name}: the case stores no adversarial loss or R1")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.slow
def test_path_length_regulariser(name, loaded):
    case, src, _ = loaded(name)
    case.require("pl_z", "pl_mean_path_length_in", "pl_noise", "path_lengths", "path_mean", "path_penalty")
    if src.g is None:
        pytest.skip(f"{name}: the checkpoint holds no training generator g")
    g = src.g
    wplus = g.make_wplus(case.arrays["pl_z"])
    penalty, mean, lengths = losses.path_length_penalty(
        lambda w: g.synthesis(w, randomize_noise=False).image, wplus,
        float(case.arrays["pl_mean_path_length_in"]), noise=case.nhwc("pl_noise"),
        decay=float(case.scalar("path_length_decay", 0.01)))
    _close(lengths, case, "path_lengths")
    _close(mean, case, "path_mean")
    _close(penalty, case, "path_penalty")


@pytest.mark.parametrize("name", CASES)
def test_structure_loss_per_layer_and_cumulative(name, loaded):
    case, src, tgt = loaded(name)
    stored = [k for k in case.arrays if k.startswith(("struct_mse_L", "structure_loss_n"))]
    if not stored:
        pytest.skip(f"{name}: the case stores no structure loss")
    case.require("z")
    assert tgt is not None, f"{name}: structure-loss fixtures need the target checkpoint"
    layers = tuple(range(1, src.g_ema.n_blocks + 1))
    z = case.arrays["z"]
    s = src.g_ema.synthesis(src.g_ema.make_wplus(z), randomize_noise=False, tap_layers=layers).features
    t = tgt.g_ema.synthesis(tgt.g_ema.make_wplus(z), randomize_noise=False, tap_layers=layers).features
    for n in layers:
        if f"struct_mse_L{n}" in case.arrays:
            total, per = losses.structure_loss(s, t, [n])
            _close(per[n], case, f"struct_mse_L{n}")
        if f"structure_loss_n{n}" in case.arrays:
            total, per = losses.structure_loss(s, t, range(1, n + 1))
            _close(total, case, f"structure_loss_n{n}")


def test_structure_loss_gradient_reaches_only_the_target():
    s = {1: tf.Variable(tf.ones([2, 4, 4, 3]))}
    t = {1: tf.Variable(tf.zeros([2, 4, 4, 3]))}
    with tf.GradientTape() as tape:
        total, _ = losses.structure_loss({1: s[1] * 1.0}, {1: t[1] * 1.0}, [1])
    gs, gt = tape.gradient(total, [s[1], t[1]])
    assert gs is None or float(tf.reduce_sum(tf.abs(gs))) == 0.0
    # d/dt mean((t - s)^2) = 2 (t - s) / numel
    np.testing.assert_allclose(gt.numpy(), np.full([2, 4, 4, 3], -2.0 / 96), rtol=1e-6)


@pytest.mark.slow
def test_path_length_is_second_order_differentiable():
    from tf_cartoon.networks import Generator

    g = Generator(8, 8, 1, channels={4: 4, 8: 4})
    w = g.make_wplus(tf.random.normal([2, 8]))
    with tf.GradientTape() as tape:
        pen, _, _ = losses.path_length_penalty(lambda x: g.synthesis(x, randomize_noise=False).image, w, 0.0)
    grads = tape.gradient(pen, g.trainable_variables)
    assert any(gr is not None and float(tf.reduce_sum(tf.abs(gr))) > 0 for gr in grads)
