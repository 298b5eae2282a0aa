"""SavedModel export for TF Serving: signatures vs the in-process generators, saved_model_cli,
errors, versions, and no custom ops in the graph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_cartoon
from tf_cartoon import export as ex
from tests.helpers import REFERENCE_TARGET_PT, ROOT, served_uint8, subprocess_env, tool_lines
from tests.tiny_models import TINY, make_tiny_checkpoint

# Slow tier: the module's fixture exports SavedModels and runs saved_model_cli in subprocesses.
pytestmark = pytest.mark.slow

SIGNATURES = ("serving_default", "from_latent", "png", "swap")
SEED, SAMPLES = 0, 4096
_uint8 = served_uint8


def _close(got, want):
    """uint8 images equal up to one level (float rounding at a .5 boundary), nearly all exactly."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.uint8 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    assert (diff > 0).mean() < 0.01, f"{(diff > 0).mean():.2%} of the values differ"


def _cli():
    exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    exe = exe if os.path.exists(exe) else shutil.which("saved_model_cli")
    assert exe, "saved_model_cli not found next to the interpreter nor on PATH"
    return exe


REF_TARGET = REFERENCE_TARGET_PT  # 32 px, written by the reference trainer
CLI_Z = np.round(np.random.default_rng(3).standard_normal([2, TINY["style_dim"]]), 3).astype(np.float32)
CLI_PSI = np.array([1.0, 0.6], np.float32)


def _spawn(argv):
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    target = make_tiny_checkpoint(root / "target", seed=1)
    source = make_tiny_checkpoint(root / "source", seed=2)
    base = str(root / "cartoon")
    path = ex.export(target, base, source=source, truncation_samples=SAMPLES, seed=SEED)
    # The subprocesses (fresh interpreters, no tf_cartoon for saved_model_cli) run while the
    # in-process tests do: saved_model_cli show / run on version 1, and a second export
    # through the CLI (the reference .pt target, no source) that becomes version 2.
    assert os.path.exists(REF_TARGET), f"fixture missing: {REF_TARGET}"
    exe = _cli()
    procs = {
        "show": _spawn([exe, "show", "--dir", path, "--all"]),
        # TF 2.21's saved_model_cli evaluates --input_exprs with ast.literal_eval: literals only (no np.*).
        "run": _spawn([exe, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
                       "--input_exprs", f"z={CLI_Z.tolist()};truncation_psi={CLI_PSI.tolist()}",
                       "--outdir", str(root / "cli_out")]),
        "export2": _spawn([sys.executable, "-m", "tf_cartoon.export", "--ckpt", REF_TARGET, "--out", base,
                           "--truncation_samples", "512", "--seed", "3"]),
    }
    g = tf_cartoon.load(target, models=("g_ema",)).g_ema
    s = tf_cartoon.load(source, models=("g_ema",)).g_ema
    yield dict(root=root, target=target, source=source, base=base, path=path, g=g, s=s, procs=procs,
               g_mean=g.mean_latent(SAMPLES, seed=SEED), s_mean=s.mean_latent(SAMPLES, seed=SEED),
               model=tf.saved_model.load(path))
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def inputs(setup):
    rng = np.random.default_rng(0)
    z = rng.standard_normal([3, setup["g"].style_dim]).astype(np.float32)
    psi = np.array([1.0, 0.5, 0.7], np.float32)  # per sample, psi = 1: no truncation
    return z, psi


def _expected_image(g, mean, z, psi):
    return _uint8(g(tf.constant(z), truncation=tf.constant(psi), truncation_latent=mean, randomize_noise=False))


def test_layout_and_metadata(setup):
    assert setup["path"] == os.path.join(setup["base"], "1")
    with open(os.path.join(setup["path"], "assets.extra", "tf_cartoon_export.json")) as f:
        meta = json.load(f)
    g = setup["g"]
    assert (meta["size"], meta["style_dim"], meta["n_latent"], meta["n_blocks"]) == (
        g.size, g.style_dim, g.n_latent, g.n_blocks)
    assert meta["source"] == os.path.abspath(setup["source"]) and meta["swap_layers"] == [1, 2]
    assert set(meta["signatures"]) == set(SIGNATURES) == set(setup["model"].signatures)
    assert meta["signatures"]["swap"]["inputs"]["swap_layer"] == {"dtype": "int32", "shape": []}
    for name, sig in setup["model"].signatures.items():
        assert set(sig.structured_input_signature[1]) == set(meta["signatures"][name]["inputs"])
        assert set(sig.structured_outputs) == set(meta["signatures"][name]["outputs"])
    # The mean latents were computed once, with the fixed seed, and stored.
    stored = [v.numpy() for v in setup["model"].mean_latents]
    np.testing.assert_allclose(stored[0], setup["g_mean"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored[1], setup["s_mean"].numpy(), rtol=1e-5, atol=1e-6)


def test_serving_default_per_sample_truncation(setup, inputs):
    z, psi = inputs
    out = setup["model"].signatures["serving_default"](z=tf.constant(z), truncation_psi=tf.constant(psi))
    assert set(out) == {"image"}
    want = _expected_image(setup["g"], setup["g_mean"], z, psi)
    _close(out["image"].numpy(), want)
    # psi = 1 is no truncation; psi differs per row (not one psi for the batch).
    _close(out["image"].numpy()[:1], _uint8(setup["g"](tf.constant(z[:1]), randomize_noise=False)))
    one_psi = _expected_image(setup["g"], setup["g_mean"], z, np.full(3, 0.5, np.float32))
    assert not np.array_equal(want[2], one_psi[2])
    # Deterministic: the same request gives the same bytes.
    again = setup["model"].signatures["serving_default"](z=tf.constant(z), truncation_psi=tf.constant(psi))
    np.testing.assert_array_equal(again["image"].numpy(), out["image"].numpy())


def test_from_latent(setup):
    g = setup["g"]
    wplus = np.random.default_rng(1).standard_normal([2, g.n_latent, g.style_dim]).astype(np.float32)
    out = setup["model"].signatures["from_latent"](wplus=tf.constant(wplus))
    _close(out["image"].numpy(), _uint8(g(tf.constant(wplus), input_is_latent=True, randomize_noise=False)))


def test_png_decodes_to_the_image(setup, inputs):
    z, psi = inputs
    sigs = setup["model"].signatures
    encoded = sigs["png"](z=tf.constant(z), truncation_psi=tf.constant(psi))["png_bytes"].numpy()
    images = sigs["serving_default"](z=tf.constant(z), truncation_psi=tf.constant(psi))["image"].numpy()
    assert encoded.shape == (3,)
    for data, image in zip(encoded, images):
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(tf.io.decode_png(data, channels=3).numpy(), image)


def test_swap_every_layer(setup, inputs):
    z, psi = inputs
    g, s = setup["g"], setup["s"]
    zt, pt = tf.constant(z), tf.constant(psi)
    w_src = s.make_wplus(zt, truncation=pt, truncation_latent=setup["s_mean"])
    # the swap signature pairs as the reference's demos: the source's w, truncated toward the target's mean
    w_tgt = g.make_wplus(s.mapping(zt), input_is_latent=True, truncation=pt, truncation_latent=setup["g_mean"])
    source_image = _expected_image(s, setup["s_mean"], z, psi)
    plain = _expected_image(g, setup["g_mean"], z, psi)
    for L in range(1, g.n_blocks + 1):
        # The reference pattern: the source gives its feature at L, the target takes it in.
        _, feature = s(w_src, input_is_latent=True, randomize_noise=False, swap_layer=L)
        want, _ = g(w_tgt, input_is_latent=True, randomize_noise=False, swap_layer=L, swap_feature=feature)
        out = setup["model"].signatures["swap"](z=zt, truncation_psi=pt, swap_layer=tf.constant(L, tf.int32))
        assert set(out) == {"image", "source_image"}
        _close(out["image"].numpy(), _uint8(want))
        _close(out["source_image"].numpy(), source_image)
        assert not np.array_equal(out["image"].numpy(), plain)  # the swap changed the target's image


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_invalid_swap_layer(setup, inputs, layer):
    z, psi = inputs
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"swap_layer must be an integer in 1\.\.2"):
        setup["model"].signatures["swap"](z=tf.constant(z), truncation_psi=tf.constant(psi),
                                          swap_layer=tf.constant(layer, tf.int32))


def test_wrong_shapes_are_refused(setup):
    model, d = setup["model"], setup["g"].style_dim
    sig = model.signatures["serving_default"]
    # Signatures (what TF Serving runs): the graph checks the shape itself.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"z \[2,5\] is not compatible with .*\[\?,8\]"):
        sig(z=tf.zeros([2, 5]), truncation_psi=tf.ones([2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"truncation_psi \[2,1\] is not compatible"):
        sig(z=tf.zeros([2, d]), truncation_psi=tf.ones([2, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one value per row of z"):
        sig(z=tf.zeros([2, d]), truncation_psi=tf.ones([3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"wplus \[1,5,8\] is not compatible with .*\[\?,6,8\]"):
        model.signatures["from_latent"](wplus=tf.zeros([1, 5, d]))
    # The revived functions check against their TensorSpec before running anything.
    with pytest.raises((TypeError, ValueError), match=r"\(None, 8\)"):
        model.serving_default(tf.zeros([2, 5]), tf.ones([2]))


def test_saved_model_cli_show_and_run(setup):
    code, out, err = _finish(setup["procs"]["show"])
    assert code == 0, err[-2000:]
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in out
    for key in ("inputs['z']", "inputs['truncation_psi']", "inputs['wplus']", "inputs['swap_layer']",
                "outputs['image']", "outputs['source_image']", "outputs['png_bytes']"):
        assert key in out, key

    code, out, err = _finish(setup["procs"]["run"])
    assert code == 0, err[-2000:]
    got = np.load(setup["root"] / "cli_out" / "image.npy")
    want = setup["model"].signatures["serving_default"](z=tf.constant(CLI_Z), truncation_psi=tf.constant(CLI_PSI))
    _close(got, want["image"].numpy())
    _close(got, _expected_image(setup["g"], setup["g_mean"], CLI_Z, CLI_PSI))


def test_no_custom_ops(setup):
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(setup["path"], "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    ops = set()
    for mg in sm.meta_graphs:
        ops |= {n.op for n in mg.graph_def.node}
        for fn in mg.graph_def.library.function:
            ops |= {n.op for n in fn.node_def}
    fn_names = {fn.signature.name for mg in sm.meta_graphs for fn in mg.graph_def.library.function}
    op_types = ops - fn_names  # calls of library functions are not op types
    assert {"Conv2D", "Case"} <= op_types
    unregistered = sorted(op for op in op_types if op_def_registry.get(op) is None)
    assert not unregistered, f"ops outside TF's registry: {unregistered}"
    suspicious = sorted(op for op in op_types if any(k in op.lower() for k in ("upfirdn", "tfcartoon", "biasact")))
    assert not suspicious, suspicious
    # The CPU conv rewrites (nested XLA clusters) stay out of exports: plain graph functions only.
    xla = sorted(fn.signature.name for mg in sm.meta_graphs for fn in mg.graph_def.library.function
                 if "_XlaMustCompile" in fn.attr and fn.attr["_XlaMustCompile"].b)
    assert not xla, xla


@pytest.fixture(scope="module")
def bf16(setup):
    """The same target and source exported in bfloat16 (and saved_model_cli run on it, meanwhile)."""
    path = ex.export(setup["target"], str(setup["root"] / "cartoon_bf16"), source=setup["source"],
                     truncation_samples=SAMPLES, seed=SEED, precision="bf16")
    run = _spawn([_cli(), "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
                  "--input_exprs", f"z={CLI_Z.tolist()};truncation_psi={CLI_PSI.tolist()}",
                  "--outdir", str(setup["root"] / "cli_out_bf16")])
    yield dict(path=path, model=tf.saved_model.load(path), run=run)
    if run.poll() is None:
        run.kill()
        run.communicate()


# bfloat16 keeps 8 significant bits: each rounding moves a value by up to 2^-9 of itself, i.e. up to half a
# grey level near |x| = 1 ([-1, 1] -> 255 levels). The tiny generator's ~20 rounded layers (mapping, modulation,
# convolutions, epilogues) compound that; measured on these seeds (64 images): max 12 levels, mean 0.6, 45% of
# the values differ. The bounds leave 2x room above that.
BF16_MAX_LEVELS, BF16_MEAN_LEVELS = 24, 1.5


def test_bf16_export_matches_fp32_within_bfloat16_rounding(setup, bf16):
    model32, model16 = setup["model"], bf16["model"]
    with open(os.path.join(bf16["path"], "assets.extra", "tf_cartoon_export.json")) as f:
        meta16 = json.load(f)
    with open(os.path.join(setup["path"], "assets.extra", "tf_cartoon_export.json")) as f:
        meta32 = json.load(f)
    assert (meta32["precision"], meta16["precision"]) == ("fp32", "bf16")
    assert meta16["signatures"] == meta32["signatures"]
    # identical signatures: names, input / output names, dtypes and shapes; the stored means stay float32
    assert set(model16.signatures) == set(model32.signatures)
    for name, sig in model32.signatures.items():
        other = model16.signatures[name]
        assert other.structured_input_signature == sig.structured_input_signature, name
        assert other.structured_outputs == sig.structured_outputs, name
    assert [v.dtype for v in model16.mean_latents] == [tf.float32, tf.float32]
    # the bfloat16 graph computes in bfloat16
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(bf16["path"], "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    conv_types = {n.attr["T"].type for mg in sm.meta_graphs for fn in mg.graph_def.library.function
                  for n in fn.node_def if n.op == "Conv2D"}
    assert conv_types == {tf.bfloat16.as_datatype_enum}, conv_types

    rng = np.random.default_rng(5)
    z = tf.constant(rng.standard_normal([64, setup["g"].style_dim]), tf.float32)
    psi = tf.constant(rng.uniform(0.5, 1.0, [64]), tf.float32)
    outs = []
    for name, kwargs in (("serving_default", {}), ("swap", {"swap_layer": tf.constant(2, tf.int32)})):
        a = model32.signatures[name](z=z, truncation_psi=psi, **kwargs)
        b = model16.signatures[name](z=z, truncation_psi=psi, **kwargs)
        for key in a:
            assert b[key].dtype == tf.uint8 and b[key].shape == a[key].shape
            outs.append(np.abs(a[key].numpy().astype(np.int32) - b[key].numpy().astype(np.int32)))
    diff = np.concatenate([d.ravel() for d in outs])
    assert diff.max() <= BF16_MAX_LEVELS and diff.mean() <= BF16_MEAN_LEVELS, (diff.max(), diff.mean())
    assert (diff > 0).mean() > 0.1, "the bf16 export computes exactly as fp32: bfloat16 did not take effect"
    # saved_model_cli runs it as it runs the fp32 export
    code, _, err = _finish(bf16["run"])
    assert code == 0, err[-2000:]
    got = np.load(setup["root"] / "cli_out_bf16" / "image.npy")
    want = model16.signatures["serving_default"](z=tf.constant(CLI_Z), truncation_psi=tf.constant(CLI_PSI))
    np.testing.assert_array_equal(got, want["image"].numpy())


def test_bad_precision_is_refused(setup, capsys):
    with pytest.raises(ex.ExportError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        ex.export(setup["target"], str(setup["root"] / "never"), precision="fp16")
    with pytest.raises(SystemExit) as e:
        ex.main(["--ckpt", setup["target"], "--out", str(setup["root"] / "never"), "--precision", "fp8"])
    assert e.value.code == 2 and "--precision" in capsys.readouterr().err
    assert not os.path.exists(setup["root"] / "never")


def test_warmup_requests_parse_and_run(setup):
    """assets.extra/tf_serving_warmup_requests, read with tensorflow-serving-api's own classes (the export
    writes the wire format itself): one Predict request per signature and per swap layer, each of which the
    reloaded signature runs."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(setup["path"], "assets.extra", "tf_serving_warmup_requests")
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    asked = [(log.predict_log.request.model_spec.signature_name,
              int(tf.make_ndarray(log.predict_log.request.inputs["swap_layer"]))
              if "swap_layer" in log.predict_log.request.inputs else None) for log in records]
    assert asked == [("serving_default", None), ("from_latent", None), ("png", None), ("swap", 1), ("swap", 2)]
    with open(os.path.join(setup["path"], "assets.extra", "tf_cartoon_export.json")) as f:
        meta = json.load(f)
    assert meta["warmup"]["requests"] == [name for name, _ in asked]
    g = setup["g"]
    for log in records:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "cartoon" == meta["warmup"]["model_name"]  # the model base folder
        signature = setup["model"].signatures[request.model_spec.signature_name]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        assert set(inputs) == set(signature.structured_input_signature[1])
        for name, spec in signature.structured_input_signature[1].items():
            assert inputs[name].dtype == spec.dtype and spec.shape.is_compatible_with(inputs[name].shape), name
        out = signature(**inputs)
        assert set(out) == set(signature.structured_outputs)
        if "image" in out:
            assert out["image"].shape == (1, g.size, g.size, 3) and out["image"].dtype == tf.uint8
    # the wplus request is the target's stored mean latent in every row: a valid W+
    wplus = tf.make_ndarray(records[1].predict_log.request.inputs["wplus"])
    np.testing.assert_array_equal(wplus[0], np.repeat(setup["model"].mean_latents[0].numpy(), g.n_latent, axis=0))


def test_second_export_is_version_2_from_a_reference_checkpoint(setup):
    """The CLI export of the reference .pt target (32 px, written by the reference trainer; no
    source, so no swap) into the same base path became version 2 and matches in-process."""
    base = setup["base"]
    code, out, err = _finish(setup["procs"]["export2"])
    assert code == 0, err[-2000:]
    assert out.strip().startswith(f"wrote {os.path.join(base, '2')}:") and out.count("\n") == 1, out
    stages = tool_lines(err)
    assert any(line.startswith("mean latents (512 samples) and tracing the signatures: ") for line in stages), err
    assert any(line.startswith("writing the SavedModel: ") for line in stages), err
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folder left behind
    assert ex.next_version(base) == 3
    with open(os.path.join(base, "2", "assets.extra", "tf_cartoon_export.json")) as f:
        meta = json.load(f)
    assert meta["size"] == 32 and meta["source"] is None and meta["swap_layers"] == []
    assert set(meta["signatures"]) == {"serving_default", "from_latent", "png"}
    assert meta["truncation"]["truncation_samples"] == 512 and meta["truncation"]["seed"] == 3

    model = tf.saved_model.load(os.path.join(base, "2"))
    assert set(model.signatures) == {"serving_default", "from_latent", "png"}
    g = tf_cartoon.load(REF_TARGET, models=("g_ema",)).g_ema
    z = np.random.default_rng(4).standard_normal([2, g.style_dim]).astype(np.float32)
    psi = np.array([0.7, 1.0], np.float32)
    out = model.signatures["serving_default"](z=tf.constant(z), truncation_psi=tf.constant(psi))
    _close(out["image"].numpy(), _expected_image(g, g.mean_latent(512, seed=3), z, psi))


def test_existing_version_and_missing_checkpoint_are_refused(setup, capsys):
    base = setup["base"]
    before = os.path.getmtime(os.path.join(base, "1", "saved_model.pb"))
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        ex.export(setup["target"], base, version=1)
    code = ex.main(["--ckpt", setup["target"], "--out", base, "--version", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: version 1 already exists") and err.count("\n") == 1, err
    assert os.path.getmtime(os.path.join(base, "1", "saved_model.pb")) == before

    for argv in (["--ckpt", str(setup["root"] / "nope")], ["--ckpt", setup["target"], "--source", "/nope.pt"]):
        code = ex.main(argv + ["--out", str(setup["root"] / "elsewhere")])
        err = capsys.readouterr().err
        assert code == 2 and "checkpoint not found" in err and err.count("\n") == 1, err
    assert not os.path.exists(setup["root"] / "elsewhere")


def test_next_version(tmp_path):
    assert ex.next_version(str(tmp_path / "none")) == 1
    for name in ("1", "3", "10", "latest", ".tmp-4-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    # Empty version folders hold no SavedModel: never counted as existing, but their names are never reused.
    assert ex.existing_versions(str(tmp_path)) == [] and ex.next_version(str(tmp_path)) == 11
    assert sorted(ex.incomplete_versions(str(tmp_path))) == [1, 3, 10]
