"""Parity with the reference PyTorch outputs, for every case in $TF_CARTOON_REFERENCE_DIR.

Each case's checkpoints go through the real converter (``python -m
tf_cartoon.convert``), are loaded back with ``tf_cartoon.load`` and every network
output in the case's npz is recomputed: with the fused and non-fused modulated
convolution, eagerly and under XLA. Driven only by the files: a case with other
sizes, channel maps or n_mlp runs the same code.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

import tf_cartoon
from tf_cartoon import convert
from tests.reference_cases import Case, case_names, compare, reference_dir

CASES = case_names()

# Arrays that are inputs of the reference computations (or drawn from torch's RNG).
INPUTS = {"z", "z2", "mean_latent", "target_mean_latent", "x_real", "x_real_b8", "pl_z", "pl_noise", "swap_z",
          "inject_index", "freeze_style_k", "pl_mean_path_length_in"}
INPUT_PATTERNS = [r"noise_\d+"]
# Scalar losses and regularisers: tests/test_losses.py checks these.
LOSS_PATTERNS = [r"d_logistic_loss", r"g_nonsat_loss", r"r1_penalty", r"path_penalty", r"path_mean",
                 r"path_lengths", r"struct_mse_L\d+", r"structure_loss_n\d+"]


def test_reference_folder_has_cases():
    # Fails (never skips) when the folder holds no case.
    assert CASES, f"no reference case (<case>.json + .npz + .pt) in {reference_dir()}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case name -> (source Checkpoint, target Checkpoint or None), through the converter CLI."""
    cache = {}

    def get(name):
        if name not in cache:
            case = Case(name)
            out = tmp_path_factory.mktemp(name)
            assert convert.main([case.source_pt, str(out / "source")]) == 0
            src = tf_cartoon.load(str(out / "source"))
            tgt = None
            if case.target_pt:
                assert convert.main([case.target_pt, str(out / "target")]) == 0
                tgt = tf_cartoon.load(str(out / "target"), models=("g_ema",))
            cache[name] = (case, src, tgt)
        return cache[name]

    return get


def _compute(case: Case, src, tgt, xla: bool) -> dict:
    """Every network output of the case, NHWC, keyed by the npz names."""
    body = lambda: _outputs(case, src, tgt)  # noqa: E731
    out = tf.function(body, jit_compile=True)() if xla else body()  # one XLA cluster for everything
    return {k: np.asarray(v) for k, v in out.items() if k in case.arrays}


def _outputs(case: Case, src, tgt) -> dict:
    """Every output whose inputs the case stores (a case may hold any subset of the arrays)."""
    a = case.arrays
    has = case.has
    g, g_train, d = src.g_ema, src.g, src.d
    n_blocks = g.n_blocks
    taps = tuple(range(1, n_blocks + 1))
    out = {}

    def synth(gen, w, **kw):
        o = gen.synthesis(w, randomize_noise=False, tap_layers=taps, return_skips=True, **kw)
        return o.image, o.features, o.skips

    def store_skips(prefix, skips):
        for s in skips[:-1]:  # the last skip is the image itself
            out[f"{prefix}rgb_skip_{s.shape[1]}"] = s

    psi = float(case.scalar("truncation", 0.7))
    k = case.scalar("inject_index")
    z = tf.constant(a["z"]) if has("z") else None
    if z is not None:
        out["w"] = g.mapping(z)
        img, feats, skips = synth(g, g.make_wplus(z))
        out["img_const"] = img
        store_skips("", skips)
        for L, f in feats.items():
            out[f"feat_L{L}"] = f
        if has("mean_latent"):
            out["img_trunc"] = g(z, truncation=psi, truncation_latent=a["mean_latent"], randomize_noise=False)
        if has("z2") and k is not None:
            out["img_mix"] = g([z, a["z2"]], inject_index=int(k), randomize_noise=False)
            out["src_latent_mix"] = g([z, a["z2"]], inject_index=int(k), randomize_noise=False,
                                      return_latents=True)[1]
        if has(*(f"noise_{i}" for i in range(g.num_layers))):
            noise = [tf.constant(case.nhwc(f"noise_{i}")) for i in range(g.num_layers)]
            out["img_noise"] = g(z, noise=noise)
    if has("w"):
        out["img_w"] = g(a["w"], input_is_latent=True, randomize_noise=False)

    if g_train is not None:
        if z is not None:
            out["g_w"] = g_train.mapping(z)
            img, _, skips = synth(g_train, g_train.make_wplus(z))
            out["g_img_const"] = img
            store_skips("g_", skips)
        if has("pl_z"):
            pl_img, pl_latents = g_train(a["pl_z"], randomize_noise=False, return_latents=True)
            out["pl_img"], out["pl_latents"] = pl_img, pl_latents

    if d is not None:
        if has("x_real"):
            logits, acts = d(case.nhwc("x_real"), return_activations=True)
            out["d_real"] = logits
            for name, act in acts.items():
                out["d_act_" + name.replace(".", "")] = act
        if has("x_real_b8"):
            out["d_real_b8"] = d(case.nhwc("x_real_b8"))
        if has("img_const"):
            out["d_fake"] = d(case.nhwc("img_const"))

    if tgt is not None:
        t = tgt.g_ema
        if z is not None:
            img, feats, _ = synth(t, t.make_wplus(z))
            out["target_img_const"] = img
            for L, f in feats.items():
                out[f"struct_feat_tgt_L{L}"] = f
        if has("swap_z"):
            out["swap_wplus"] = g.mapping(a["swap_z"])
        if has("swap_wplus", "mean_latent"):
            src_w = g.make_wplus(a["swap_wplus"], input_is_latent=True, truncation=psi,
                                 truncation_latent=a["mean_latent"])
            img, feats, _ = synth(g, src_w)
            out["swap_src_img"] = img
            for L in taps:
                out[f"swap_feat_L{L}"] = feats[L]
        if has("swap_wplus", "target_mean_latent"):
            tgt_w = t.make_wplus(a["swap_wplus"], input_is_latent=True, truncation=psi,
                                 truncation_latent=a["target_mean_latent"])
            for L in taps:
                if has(f"swap_feat_L{L}"):
                    out[f"swap_img_L{L}"] = t.synthesis(tgt_w, randomize_noise=False, swap_layer=L,
                                                        swap_feature=a[f"swap_feat_L{L}"].transpose(0, 2, 3, 1)
                                                        ).image
            out["swap_tgt_img_noswap"] = t.synthesis(tgt_w, randomize_noise=False).image
        if z is not None and has("z2", "src_latent_mix"):
            ks = case.scalar("freeze_style_k")
            if ks is not None:
                out["img_freezestyle"] = t([z, a["z2"]], inject_index=int(ks), put_latent=a["src_latent_mix"],
                                           randomize_noise=False)
            out["img_freezefc"] = t([z, a["z2"]], freeze_fc=a["src_latent_mix"], randomize_noise=False)
    return out


# Under XLA every output compiles (minutes on 2 cores): slow tier; the eager runs stay in the fast one.
@pytest.mark.parametrize("xla", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "xla"])
@pytest.mark.parametrize("fused", [False, True], ids=["nonfused", "fused"])
@pytest.mark.parametrize("name", CASES)
def test_network_outputs_match_reference(name, fused, xla, converted):
    case, src, tgt = converted(name)
    for ckpt in (src, tgt):
        if ckpt is not None:
            for m in ("g_ema", "g"):
                if getattr(ckpt, m) is not None:
                    getattr(ckpt, m).fused_modconv = fused
    got = _compute(case, src, tgt, xla)
    assert got, f"{name}: the case stores no network output this test can recompute"
    problems = compare(got, case)
    assert not problems, f"{name} (fused={fused}, xla={xla}):\n" + "\n".join(problems)

    # Every array the case stores is an input, a loss (tests/test_losses.py) or was checked here.
    unchecked = [k for k in case.arrays if k not in got and k not in INPUTS
                 and not any(re.fullmatch(p, k) for p in INPUT_PATTERNS + LOSS_PATTERNS)]
    assert not unchecked, f"{name}: arrays no test checks: {unchecked}"


@pytest.mark.parametrize("name", CASES)
def test_converted_architecture_matches_case(name, converted):
    case, src, _ = converted(name)
    arch = case.meta.get("architecture")
    if arch is None:
        pytest.skip(f"{name}: the case's json records no architecture")
    g = src.g_ema
    assert (g.size, g.style_dim, g.n_mlp) == (arch["size"], arch["style_dim"], arch["n_mlp"])
    for res, ch in g.channels.items():
        if "channels" in arch:
            assert ch == int(arch["channels"][str(res)]), f"G channels at {res}"
    n_params = sum(int(np.prod(v.shape)) for v in g.trainable_variables)
    if "generator_num_params" in arch:
        assert n_params == arch["generator_num_params"]
    if "discriminator_num_params" in arch and src.d is not None:
        assert sum(int(np.prod(v.shape)) for v in src.d.trainable_variables) == arch["discriminator_num_params"]
