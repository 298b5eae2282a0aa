"""The converter: .pt -> directory -> .pt round trips, architecture inference, errors."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import tf_cartoon
from tf_cartoon import convert
from tf_cartoon.io import reference_keys as rk
from tf_cartoon.io import store, torch_pickle
from tests.helpers import FIXTURES, REFERENCE_PT, tool_lines
from tests.reference_cases import case_names, reference_dir

CASES = case_names()
# The standard 256 px model's keys: the reference folder's copy where it has one, else the committed one.
STD256 = next(p for p in (os.path.join(reference_dir(), "std256_keys.json"), os.path.join(FIXTURES, "std256_keys.json"))
              if os.path.exists(p))


@pytest.fixture(scope="module")
def case_pt():
    """A reference-format checkpoint for the converter's behaviour and error checks: the committed tiny32."""
    return REFERENCE_PT


@pytest.fixture(scope="module")
def original(case_pt):
    return torch_pickle.load(case_pt)


def _run(argv, capsys):
    code = convert.main([str(a) for a in argv])
    return code, capsys.readouterr()


def _assert_same_state(a: dict, b: dict):
    assert list(a) == list(b), "key order differs"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_pt_dir_pt_is_exact(name, tmp_path, capsys):
    src = os.path.join(reference_dir(), name + ".pt")
    orig = torch_pickle.load(src)
    code, out = _run([src, tmp_path / "conv"], capsys)
    assert code == 0, out.err
    assert "size" in out.out and out.out.count("\n") == 1
    assert [line.split(":")[0] for line in tool_lines(out.err)] == [f"reading {src}", f"writing {tmp_path / 'conv'}"]
    code, out = _run(["--to-torch", "--quiet", tmp_path / "conv", tmp_path / "back.pt"], capsys)
    assert code == 0 and tool_lines(out.err) == [], out.err
    back = torch_pickle.load(tmp_path / "back.pt")
    nets = [net for net in ("g", "g_ema", "d") if net in orig]
    assert nets, f"{name}: the checkpoint holds no network"
    for net in nets:
        _assert_same_state(orig[net], back[net])  # incl. FIR buffers and noise, same order
    # Adam states survive (reference names, same indices).
    for opt in (o for o in ("g_optim", "d_optim") if o in orig):
        assert set(back[opt]["state"]) == set(orig[opt]["state"])
        for idx, st in orig[opt]["state"].items():
            for field, v in st.items():
                np.testing.assert_array_equal(np.asarray(back[opt]["state"][idx][field]), np.asarray(v))
        assert back[opt]["param_groups"][0]["lr"] == pytest.approx(orig[opt]["param_groups"][0]["lr"])
    if "args" in orig:
        assert isinstance(back["args"], dict) and back["args"]["size"] == vars(orig["args"])["size"]
    if "ada_aug_p" in orig:
        assert back["ada_aug_p"] == pytest.approx(float(orig["ada_aug_p"]))


def test_written_pt_loads_in_torch_weights_only(tmp_path, case_pt, original, capsys):
    torch = pytest.importorskip("torch")  # interop check only where torch is installed
    assert _run([case_pt, tmp_path / "conv"], capsys)[0] == 0
    assert _run(["--to-torch", tmp_path / "conv", tmp_path / "back.pt"], capsys)[0] == 0
    loaded = torch.load(tmp_path / "back.pt", weights_only=True)
    for net in ("g", "g_ema", "d"):
        assert list(loaded[net]) == list(original[net])
        for k, v in original[net].items():
            np.testing.assert_array_equal(loaded[net][k].numpy(), v, err_msg=k)


def test_load_pt_directly_equals_converted_dir(tmp_path, case_pt, capsys):
    direct = tf_cartoon.load(case_pt)
    assert _run([case_pt, tmp_path / "conv"], capsys)[0] == 0
    conv = tf_cartoon.load(tmp_path / "conv")
    for name in ("g_ema", "g", "d"):
        a, b = getattr(direct, name), getattr(conv, name)
        assert len(a.variables) == len(b.variables)
        for va, vb in zip(a.variables, b.variables):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert conv.args == direct.args and conv.args["size"] == direct.g_ema.size
    assert conv.optimizer_states is not None and set(conv.optimizer_states) == {"g_optim", "d_optim"}


def test_g_ema_only_and_bare_state_dict(tmp_path, original):
    torch_pickle.save({"g_ema": original["g_ema"]}, tmp_path / "only.pt")
    ck = tf_cartoon.load(tmp_path / "only.pt")
    assert ck.g_ema is not None and ck.g is None and ck.d is None
    torch_pickle.save(original["g_ema"], tmp_path / "bare.pt")
    ck2 = tf_cartoon.load(tmp_path / "bare.pt")
    for va, vb in zip(ck.g_ema.variables, ck2.g_ema.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    # and it converts
    assert convert.main([str(tmp_path / "only.pt"), str(tmp_path / "only_dir")]) == 0
    assert tf_cartoon.load(tmp_path / "only_dir").models().keys() == {"g_ema"}


def test_missing_noise_buffers_are_tolerated_missing_parameters_are_not(tmp_path, original, caplog):
    sd = {k: v for k, v in original["g_ema"].items() if not k.startswith("noises.")}
    torch_pickle.save({"g_ema": sd}, tmp_path / "nonoise.pt")
    ck = tf_cartoon.load(tmp_path / "nonoise.pt")
    assert ck.g_ema is not None
    assert any("noises.noise_0" in r.getMessage() for r in caplog.records)
    sd2 = {k: v for k, v in original["g_ema"].items() if k != "convs.0.conv.modulation.bias"}
    torch_pickle.save({"g_ema": sd2}, tmp_path / "noparam.pt")
    with pytest.raises(rk.CheckpointMismatchError, match=r"missing keys 'convs\.0\.conv\.modulation\.bias'"):
        tf_cartoon.load(tmp_path / "noparam.pt")


# ---------------------------------------------------------------------------
# errors: each one a clear message naming the file / key / shapes, exit code 2
# ---------------------------------------------------------------------------

def test_unexpected_key_is_named(tmp_path, original, capsys):
    sd = dict(original["g_ema"])
    sd["convs.99.conv.extra"] = np.zeros(3, np.float32)
    torch_pickle.save({"g_ema": sd}, tmp_path / "extra.pt")
    code, out = _run([tmp_path / "extra.pt", tmp_path / "o"], capsys)
    assert code == 2
    assert "unexpected keys 'convs.99.conv.extra'" in out.err and "extra.pt" in out.err


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, original, capsys):
    sd = dict(original["g_ema"])
    w = sd["to_rgbs.0.conv.modulation.weight"]
    sd["to_rgbs.0.conv.modulation.weight"] = np.zeros((w.shape[0] + 1, w.shape[1]), np.float32)
    torch_pickle.save({"g_ema": sd}, tmp_path / "shape.pt")
    code, out = _run([tmp_path / "shape.pt", tmp_path / "o"], capsys)
    assert code == 2
    assert "'to_rgbs.0.conv.modulation.weight'" in out.err
    assert str((w.shape[0] + 1, w.shape[1])) in out.err and str(tuple(w.shape)) in out.err
    assert not (tmp_path / "o").exists()


def test_not_a_checkpoint_and_truncated(tmp_path, case_pt, capsys):
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    code, out = _run([tmp_path / "junk.pt", tmp_path / "o"], capsys)
    assert code == 2 and "junk.pt" in out.err
    data = open(case_pt, "rb").read()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    code, out = _run([tmp_path / "half.pt", tmp_path / "o"], capsys)
    assert code == 2 and "half.pt" in out.err
    code, out = _run([tmp_path / "missing.pt", tmp_path / "o"], capsys)
    assert code == 2 and "not found" in out.err
    assert not (tmp_path / "o").exists()


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"g_ema": Evil()}, protocol=2))
        zf.writestr("evil/version", "3\n")
    code, out = _run([path, tmp_path / "o"], capsys)
    assert code == 2
    assert "system" in out.err and "evil.pt" in out.err
    assert not marker.exists()
    with pytest.raises(torch_pickle.UnsafePickleError):
        tf_cartoon.load(path)
    assert not marker.exists()


def test_existing_output_needs_overwrite(tmp_path, case_pt, capsys):
    out_dir = tmp_path / "conv"
    assert _run([case_pt, out_dir], capsys)[0] == 0
    code, out = _run([case_pt, out_dir], capsys)
    assert code == 2 and "--overwrite" in out.err
    assert _run([case_pt, out_dir, "--overwrite"], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["conv"]  # no temporary or old directories left behind


def test_size_not_power_of_two_is_refused(tmp_path, case_pt, capsys):
    out_dir = tmp_path / "conv"
    assert _run([case_pt, out_dir], capsys)[0] == 0
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["generator"]["size"] = 48
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="power of two"):
        tf_cartoon.load(out_dir)


def test_corrupt_converted_weights_are_reported(tmp_path, case_pt, capsys):
    out_dir = tmp_path / "conv"
    assert _run([case_pt, out_dir], capsys)[0] == 0
    for f in os.listdir(out_dir / "weights"):
        if ".data-" in f:
            p = out_dir / "weights" / f
            p.write_bytes(p.read_bytes()[:100])
    from tf_cartoon.io.errors import CheckpointFormatError

    # checked before restoring (io/integrity.py): the message names the torn file
    with pytest.raises(CheckpointFormatError, match=r"ckpt\.data-00000-of-00001 is cut short \(100 of"):
        tf_cartoon.load(out_dir)


# ---------------------------------------------------------------------------
# the standard 256 px model: keys, shapes, parameter order, inference
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def std256():
    with open(STD256) as f:
        return json.load(f)


def _zeros_state(shapes: dict) -> dict:
    return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def test_std256_architecture_is_inferred_from_shapes(std256):
    g_shapes = dict(std256["g"])
    cfg = rk.infer_generator_config(_zeros_state(g_shapes))
    assert cfg["size"] == 256 and cfg["style_dim"] == 512 and cfg["n_mlp"] == 8
    assert cfg["channel_multiplier"] == 2
    expect = {k: v for k, v in std256["generator_channels"].items() if int(k) <= 256}
    assert cfg["channels"] == {k: int(v) for k, v in expect.items()}
    dcfg = rk.infer_discriminator_config(_zeros_state(dict(std256["d"])))
    assert dcfg["size"] == 256 and dcfg["channels"] == cfg["channels"]


def test_std256_our_tables_match_reference_keys_shapes_and_order(std256):
    from tf_cartoon.networks import Discriminator, Generator

    g = Generator(256, 512, 8, channel_multiplier=2)
    d = Discriminator(256, channel_multiplier=2)
    ours_g = rk.state_dict(g, rk.generator_table)
    ours_d = rk.state_dict(d, rk.discriminator_table)
    assert {k: list(v.shape) for k, v in ours_g.items()} == {k: list(v) for k, v in std256["g"].items()}
    assert {k: list(v.shape) for k, v in ours_d.items()} == {k: list(v) for k, v in std256["d"].items()}
    # The optimizer's parameter order (Adam state indices) is our table order without buffers.
    assert rk.parameter_keys(rk.generator_table(g)) == std256["g_param_order"]
    assert rk.parameter_keys(rk.discriminator_table(d)) == std256["d_param_order"]
    assert sum(int(np.prod(v.shape)) for v in g.trainable_variables) == std256["g_num_params"]
    assert sum(int(np.prod(v.shape)) for v in d.trainable_variables) == std256["d_num_params"]


@pytest.mark.parametrize("name", CASES)
def test_case_param_order_matches_optimizer_order(name, converted_tables):
    meta, g, d = converted_tables(name)
    order = meta.get("checkpoint_format", {}).get("optimizer_param_order")
    if not order:
        pytest.skip(f"{name}: the case's json records no optimizer parameter order")
    if "g_optim" in order:
        assert rk.parameter_keys(rk.generator_table(g)) == order["g_optim"]
    if "d_optim" in order and d is not None:
        assert rk.parameter_keys(rk.discriminator_table(d)) == order["d_optim"]


@pytest.fixture(scope="module")
def converted_tables():
    def get(name):
        with open(os.path.join(reference_dir(), name + ".json")) as f:
            meta = json.load(f)
        ck = store.load(os.path.join(reference_dir(), name + ".pt"), models=("g_ema", "d"))
        return meta, ck.g_ema, ck.d

    return get


# ------------------------------------------------------------------------------------ torch's legacy format
TORCH_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch")


def _variables(ckpt):
    return {f"{name}/{v.path}": v.numpy() for name, m in ckpt.models().items() for v in m.variables}


def test_legacy_and_zip_files_of_one_checkpoint_convert_to_identical_networks(tmp_path, capsys):
    """Both files were written by torch 2.13 from one object (tests/fixtures/torch/README.md)."""
    legacy = os.path.join(TORCH_FIXTURES, "tiny16_legacy.pt")
    assert torch_pickle.sniff(legacy) == "torch_legacy"
    zipped = _variables(tf_cartoon.load(os.path.join(TORCH_FIXTURES, "tiny16_zip.pt")))
    old = _variables(tf_cartoon.load(legacy))
    assert sorted(old) == sorted(zipped) and len(old) > 20
    for k in zipped:
        np.testing.assert_array_equal(old[k], zipped[k], err_msg=k)
    assert convert.main([legacy, str(tmp_path / "conv")]) == 0
    converted = _variables(tf_cartoon.load(str(tmp_path / "conv")))
    for k in zipped:
        np.testing.assert_array_equal(converted[k], zipped[k], err_msg=k)
    from tf_cartoon import generate

    assert generate.main(["--ckpt", legacy, "--seeds", "0-1", "--out", str(tmp_path / "gen")]) == 0
    assert sorted(os.listdir(tmp_path / "gen"))


def test_torch_written_legacy_file_of_a_reference_case_loads_like_the_zip_file(tmp_path, case_pt):
    torch = pytest.importorskip("torch")
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(case_pt, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    a, b = _variables(tf_cartoon.load(case_pt)), _variables(tf_cartoon.load(str(legacy)))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
