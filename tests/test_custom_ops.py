"""The compiled ops (custom_ops/, tf_cartoon/ops/custom.py, build.py, dispatch.py).

Expected values come from the pure-TF paths of the same ops (themselves tested against a
float64 NumPy transcription of the definition in tests/test_ops.py): values, first-order
and second-order gradients (nested tapes, as R1 and path length need) on random shapes,
up / down factors 1, 2, 4, asymmetric and negative pads, the 4x4-kernel fast paths.

Every test name contains "custom" (``pytest -k custom``). The library is built, or
reused from the cache, once per module by the ``lib`` fixture: a build or load failure
FAILS the tests; they skip only on a machine without any C++ compiler. The build cache
and the missing-compiler fallback are exercised with a fake compiler script and a
nonexistent one (no real compilation), and the CUDA sources are compiled (compile-only)
wherever nvcc exists; the CUDA kernels run only where a GPU is present.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.ops import bias_act, build, custom, dispatch, make_kernel, set_default_impl, upfirdn2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM_TYPES = ("TfCartoonUpfirdn2d", "TfCartoonBiasAct", "TfCartoonBiasActGrad")


@pytest.fixture(scope="module")
def lib():
    try:
        build.find_cxx()
    except build.CompilerNotFound as e:  # the only reason to skip: nothing could build it here
        pytest.skip(f"no C++ compiler on this machine: {e}")
    path = build.build()  # BuildError -> test error
    loaded = custom.load(build=True)
    assert loaded is not None, f"the compiled library {path} was built but does not load: {custom.status()['error']}"
    assert custom.status()["path"] == str(path)
    return loaded


@pytest.fixture(autouse=True)
def _clean_impl(monkeypatch):
    monkeypatch.delenv("TF_CARTOON_OPS_IMPL", raising=False)
    set_default_impl(None)
    yield
    set_default_impl(None)


def _close(got, want, rtol=2e-5, what=""):
    """Close relative to the magnitude of the expected tensor (float32 sums of many products)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    err = float(np.abs(got - want).max()) if want.size else 0.0
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol} * {scale:.3g}"


def _op_types(concrete):
    """Op types of a traced function, including the functions it calls (library)."""
    gd = concrete.graph.as_graph_def()
    return {n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def}


# ---------------------------------------------------------------------------------------------
# upfirdn2d: values, first and second order, against the pure-TF path
# ---------------------------------------------------------------------------------------------

def _random_cases(seed, n):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        up = tuple(int(v) for v in rng.choice([1, 2, 4], 2))
        down = tuple(int(v) for v in rng.choice([1, 2, 4], 2))
        pad = tuple(int(v) for v in rng.integers(-2, 4, 4))
        shape = (int(rng.integers(1, 3)), int(rng.integers(2, 8)), int(rng.integers(2, 8)), int(rng.integers(1, 5)))
        if shape[1] * up[1] + pad[2] + pad[3] < kh or shape[2] * up[0] + pad[0] + pad[1] < kw:
            continue
        cases.append(dict(shape=shape, k=rng.standard_normal((kh, kw)).astype(np.float32), up=up, down=down,
                          pad=pad))
    return cases


K4 = make_kernel([1, 3, 3, 1])
FIXED = [
    dict(shape=(2, 8, 8, 5), k=K4 * 4, up=1, down=1, pad=(2, 1, 2, 1)),   # blur after an upsampling conv
    dict(shape=(2, 5, 6, 3), k=K4 * 4, up=2, down=1, pad=(2, 1, 2, 1)),   # ToRGB skip upsample
    dict(shape=(2, 8, 8, 18), k=K4, up=1, down=2, pad=(1, 1, 1, 1)),      # downsample (C > 16: register blocks)
    dict(shape=(1, 6, 7, 4), k=K4, up=2, down=2, pad=(1, 2, 0, 3)),       # fast path, factor 2 both ways
    dict(shape=(2, 9, 5, 2), k=K4 * 2, up=1, down=1, pad=(-1, 2, 3, -2)),  # fast path with crops
    dict(shape=(1, 4, 4, 3), k=np.ones((1, 1), np.float32), up=4, down=1, pad=(0, 0, 0, 0)),
    dict(shape=(1, 9, 11, 2), k=np.arange(12, dtype=np.float32).reshape(3, 4), up=(1, 2), down=(4, 1),
         pad=(0, -1, 2, 1)),
]
CASES = FIXED + _random_cases(5, 14)


def _case_id(cs):
    return f"{cs['shape']}-k{cs['k'].shape}-up{cs['up']}-down{cs['down']}-pad{cs['pad']}"


def _up_derivs(cs, impl, seed=0):
    """y, the VJP with a random cotangent, and the gradient of ||VJP||^2 (a Hessian-vector product)."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal(cs["shape"]).astype(np.float32))
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = upfirdn2d(x, cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"], impl=impl)
            r = tf.constant(np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32))
            f = tf.reduce_sum(tf.square(y) * r)
        g = inner.gradient(f, x)
        gg = tf.reduce_sum(tf.square(g))
    return y, g, outer.gradient(gg, x)


@pytest.mark.parametrize("cs", CASES, ids=[_case_id(c) for c in CASES])
def test_custom_upfirdn2d_matches_pure_tf(lib, cs):
    y, g, h = _up_derivs(cs, "custom")
    y_tf, g_tf, h_tf = _up_derivs(cs, "xla")
    _close(y, y_tf, what="value")
    _close(y, upfirdn2d(tf.constant(np.random.default_rng(0).standard_normal(cs["shape"]).astype(np.float32)),
                        cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"], impl="ref"), what="value vs ref")
    _close(g, g_tf, what="first-order gradient")
    _close(h, h_tf, rtol=5e-5, what="second-order gradient")


def test_custom_upfirdn2d_graph_uses_the_op_with_dynamic_batch(lib):
    cs = FIXED[1]
    _, h, w, c = cs["shape"]

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32)])
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = upfirdn2d(x, cs["k"], up=cs["up"], pad=cs["pad"], impl="custom")
        return y, tape.gradient(y, x, output_gradients=y)

    concrete = f.get_concrete_function()
    assert concrete.structured_outputs[0].shape.as_list() == [None, 2 * h, 2 * w, c]  # the op's shape function
    assert "TfCartoonUpfirdn2d" in _op_types(concrete)
    assert "DepthwiseConv2dNative" not in _op_types(concrete)  # really the compiled op, forward and backward
    x = np.random.default_rng(3).standard_normal((3, h, w, c)).astype(np.float32)
    y, g = f(tf.constant(x))
    y_tf = upfirdn2d(x, cs["k"], up=cs["up"], pad=cs["pad"], impl="xla")
    _close(y, y_tf)
    _, g_tf = _up_derivs_with_cotangent(cs, x, np.asarray(y_tf))
    _close(g, g_tf)


def _up_derivs_with_cotangent(cs, x, cot):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = upfirdn2d(x, cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"], impl="xla")
    return y, tape.gradient(y, x, output_gradients=tf.constant(cot))


def test_custom_upfirdn2d_op_errors(lib):
    x = tf.zeros([1, 4, 4, 2])
    k = tf.ones([3, 3])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="smaller than the kernel"):
        lib.tf_cartoon_upfirdn2d(x, k, padx0=-1, padx1=-1)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank"):
        lib.tf_cartoon_upfirdn2d(tf.zeros([4, 4, 2]), k)
    # An empty batch is fine (nothing to compute).
    assert tuple(lib.tf_cartoon_upfirdn2d(tf.zeros([0, 4, 4, 2]), k, upx=2, upy=2).shape) == (0, 6, 6, 2)


# ---------------------------------------------------------------------------------------------
# bias_act
# ---------------------------------------------------------------------------------------------

BA_CASES = [
    dict(shape=(2, 5, 6, 7), act="lrelu", alpha=0.2, gain=None, bias=True),      # the networks' default
    dict(shape=(3, 33), act="lrelu", alpha=0.1, gain=3.0, bias=True),
    dict(shape=(2, 4, 4, 3), act="lrelu", alpha=0.2, gain=None, bias=False),
    dict(shape=(4, 9), act="linear", alpha=0.2, gain=None, bias=True),
    dict(shape=(2, 3, 5, 6), act="linear", alpha=0.2, gain=2.5, bias=True),
    dict(shape=(5,), act="lrelu", alpha=0.0, gain=0.5, bias=True),
    dict(shape=(1, 40000), act="lrelu", alpha=0.2, gain=1.0, bias=True),         # several CPU work units
]


def _ba_derivs(cs, impl, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal(cs["shape"]).astype(np.float32))
    b = tf.constant(rng.standard_normal(cs["shape"][-1]).astype(np.float32))
    r = tf.constant(rng.standard_normal(cs["shape"]).astype(np.float32))
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, b])
        with tf.GradientTape() as inner:
            inner.watch([x, b])
            y = bias_act(x, b if cs["bias"] else None, act=cs["act"], alpha=cs["alpha"], gain=cs["gain"], impl=impl)
            f = tf.reduce_sum(tf.square(y) * r + y)
        gx, gb = inner.gradient(f, [x, b])
        gb = gb if gb is not None else tf.zeros_like(b)
        gg = tf.reduce_sum(tf.square(gx)) + 3.0 * tf.reduce_sum(tf.square(gb))
    hx, hb = outer.gradient(gg, [x, b])
    return [t if t is not None else tf.zeros_like(b) for t in (y, gx, gb, hx, hb)]


@pytest.mark.parametrize("cs", BA_CASES, ids=[f"{c['act']}-{c['shape']}-g{c['gain']}-b{c['bias']}" for c in BA_CASES])
def test_custom_bias_act_matches_pure_tf(lib, cs):
    got = _ba_derivs(cs, "custom")
    want = _ba_derivs(cs, "xla")
    for name, a, b in zip(("y", "dx", "db", "d2x", "d2b"), got, want):
        _close(a, b, rtol=1e-5, what=name)


def test_custom_bias_act_graph_has_fused_ops(lib):
    @tf.function
    def f(x, b):
        with tf.GradientTape() as t:
            t.watch(x)
            y = bias_act(x, b, impl="custom")
        return t.gradient(y, x, output_gradients=tf.ones_like(y))

    x, b = tf.zeros([2, 3]), tf.zeros([3])
    types = _op_types(f.get_concrete_function(x, b))
    assert {"TfCartoonBiasAct", "TfCartoonBiasActGrad"} <= types and "LeakyRelu" not in types
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="bias"):
        lib.tf_cartoon_bias_act(tf.zeros([2, 3]), tf.zeros([4]))


# ---------------------------------------------------------------------------------------------
# Networks: R1 (grad of D's input gradient) and path length (grad of G's w gradient)
# ---------------------------------------------------------------------------------------------

def _tiny_models():
    import keras

    from tests.tiny_models import TINY
    from tf_cartoon.networks import Discriminator, Generator
    keras.utils.set_random_seed(3)
    g = Generator(**TINY)
    d = Discriminator(size=TINY["size"], channels=TINY["channels"])
    return g, d


def _r1_and_pl(g, d, impl):
    set_default_impl(impl)
    try:
        rng = np.random.default_rng(4)
        real = tf.constant(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32))
        z = tf.constant(rng.standard_normal((2, g.style_dim)).astype(np.float32))
        noise = tf.constant(rng.standard_normal((2, 16, 16, 3)).astype(np.float32))
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(real)
                logits = d(real)
                total = tf.reduce_sum(logits)
            r1 = tf.reduce_sum(tf.square(inner.gradient(total, real)))
        d_grads = outer.gradient(r1, d.trainable_variables)
        with tf.GradientTape() as outer:
            w = g.make_wplus(z)
            with tf.GradientTape() as inner:
                inner.watch(w)
                img = g.synthesis(w, randomize_noise=False).image
                total = tf.reduce_sum(img * noise)
            pl = tf.reduce_sum(tf.square(inner.gradient(total, w)))
        g_grads = outer.gradient(pl, g.trainable_variables)
        return logits, r1, d_grads, img, pl, g_grads
    finally:
        set_default_impl(None)


@pytest.mark.slow
def test_custom_networks_r1_and_path_length_second_order(lib):
    g, d = _tiny_models()
    got = _r1_and_pl(g, d, "custom")
    want = _r1_and_pl(g, d, "xla")
    for name, a, b in zip(("D(x)", "R1", "dR1/dD", "G(w)", "PL", "dPL/dG"), got, want):
        if isinstance(a, list):
            assert len(a) == len(b) and sum(t is not None for t in a) > len(a) // 2
            for i, (ta, tb) in enumerate(zip(a, b)):
                # The same variables are connected on both paths (the lrelu gradient's gradient w.r.t. its
                # piecewise-constant mask is explicit zeros on both, so e.g. D's biases get zeros, not None:
                # code that zips variables with gradients must see the same list).
                assert (ta is None) == (tb is None), (name, i, ta is None, tb is None)
                if ta is None:
                    continue
                _close(ta, tb, rtol=1e-4, what=f"{name}[{i}]")
        else:
            _close(a, b, rtol=1e-4, what=name)


# ---------------------------------------------------------------------------------------------
# Dispatch: auto, XLA, exports
# ---------------------------------------------------------------------------------------------

def _model_fn(impl="auto"):
    def f(x):
        y = upfirdn2d(x, K4, down=2, pad=(1, 1), impl=impl)
        return bias_act(y, tf.ones([3]), impl=impl)
    return f


def test_custom_auto_follows_preference_table(lib, monkeypatch):
    x = tf.zeros([1, 8, 8, 3])
    for prefer_up, prefer_ba in ((True, False), (False, True)):
        monkeypatch.setitem(dispatch.FAMILIES["upfirdn2d"].prefer, "CPU", "custom" if prefer_up else "tf")
        monkeypatch.setitem(dispatch.FAMILIES["bias_act"].prefer, "CPU", "custom" if prefer_ba else "tf")
        types = _op_types(tf.function(_model_fn()).get_concrete_function(x))
        assert ("TfCartoonUpfirdn2d" in types) == prefer_up
        assert ("TfCartoonBiasAct" in types) == prefer_ba
    # The process default "custom" means the compiled op wherever it can run.
    set_default_impl("custom")
    types = _op_types(tf.function(_model_fn()).get_concrete_function(x))
    assert {"TfCartoonUpfirdn2d", "TfCartoonBiasAct"} <= types
    # ... and "xla" / "tf" / "ref" never use it.
    for impl in ("xla", "tf", "ref"):
        set_default_impl(impl)
        assert not _op_types(tf.function(_model_fn()).get_concrete_function(x)) & set(CUSTOM_TYPES)


def test_custom_auto_inside_jit_compile_uses_pure_tf(lib, monkeypatch):
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "custom")  # custom wherever it can run
    x = tf.constant(np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32))

    def loss_and_grad(x):
        with tf.GradientTape() as t:
            t.watch(x)
            y = _model_fn()(x)
            loss = tf.reduce_sum(y * y)
        return y, t.gradient(loss, x)

    jit = tf.function(loss_and_grad, jit_compile=True)
    plain = tf.function(loss_and_grad)
    jit_types = _op_types(jit.get_concrete_function(x))
    assert not jit_types & set(CUSTOM_TYPES) and "DepthwiseConv2dNative" in jit_types
    assert {"TfCartoonUpfirdn2d", "TfCartoonBiasAct", "TfCartoonBiasActGrad"} <= _op_types(plain.get_concrete_function(x))
    for a, b in zip(jit(x), plain(x)):
        _close(a, b, rtol=1e-5)

    # A function nested in an XLA one is compiled by XLA too.
    inner = tf.function(_model_fn())
    nested = tf.function(lambda x: inner(x) * 2.0, jit_compile=True)
    assert not _op_types(nested.get_concrete_function(x)) & set(CUSTOM_TYPES)
    # Asking for the compiled op by name inside XLA is an error, not a silent switch.
    with pytest.raises(ValueError, match="XLA-compiled"):
        tf.function(_model_fn("custom"), jit_compile=True).get_concrete_function(x)


def test_custom_saved_model_never_contains_custom_ops(lib, tmp_path):
    set_default_impl("custom")

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            return _model_fn()(x)

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"))  # traced while saving
    types = _saved_model_op_types(tmp_path / "sm")
    assert "DepthwiseConv2dNative" in types and not {t for t in types if t.startswith("TfCartoon")}
    with dispatch.plain_ops():
        assert not _op_types(tf.function(_model_fn()).get_concrete_function(tf.zeros([1, 8, 8, 3]))) & set(CUSTOM_TYPES)
    # Outside both, the process default still applies.
    assert "TfCartoonBiasAct" in _op_types(tf.function(_model_fn()).get_concrete_function(tf.zeros([1, 8, 8, 3])))


def test_custom_export_cli_graph_has_no_custom_ops(lib, tmp_path):
    """tf_cartoon.export with the compiled ops the process default: the SavedModel still has none."""
    from tests.tiny_models import make_tiny_checkpoint
    from tf_cartoon import export as ex
    set_default_impl("custom")
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    out = ex.export(ckpt, str(tmp_path / "export"), truncation_samples=8)
    types = _saved_model_op_types(out)
    assert "Conv2D" in types and not {t for t in types if t.startswith("TfCartoon")}
    assert dispatch.default_impl() == "custom"  # restored after the export


def _saved_model_op_types(path):
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    types = set()
    for mg in sm.meta_graphs:
        types |= {n.op for n in mg.graph_def.node}
        for fn in mg.graph_def.library.function:
            types |= {n.op for n in fn.node_def}
    return types


def test_custom_explicit_requests_that_cannot_run_are_errors(lib):
    with pytest.raises(ValueError, match="float64"):
        upfirdn2d(tf.zeros([1, 4, 4, 1], tf.float64), K4, impl="custom")
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(ValueError, match="float16 runs only on the CUDA kernels"):
            bias_act(tf.zeros([2, 3], tf.float16), impl="custom")
    with pytest.raises(ValueError, match="H or W unknown"):
        tf.function(lambda x: upfirdn2d(x, K4, pad=(2, 1), impl="custom")).get_concrete_function(
            tf.TensorSpec([1, None, None, 1]))
    # auto simply takes the pure-TF path for those.
    set_default_impl("custom")
    y = upfirdn2d(tf.ones([1, 4, 4, 1], tf.float64), K4, pad=(2, 1))
    assert y.dtype == tf.float64


# ---------------------------------------------------------------------------------------------
# Build: cache, atomic install, missing compiler, CUDA compile-only
# ---------------------------------------------------------------------------------------------

FAKE_CXX = textwrap.dedent("""\
    #!/bin/sh
    # A stand-in compiler: records each call, writes the requested output.
    echo "$@" >> "$(dirname "$0")/calls.log"
    case "$1" in --version) echo "fakecc 1.0"; exit 0;; esac
    out=""; prev=""
    for a in "$@"; do
      if [ "$prev" = "-o" ]; then out="$a"; fi
      case "$a" in *FAIL_ME*) echo "upfirdn2d.cc:1:1: error: deliberate failure" >&2; exit 1;; esac
      prev="$a"
    done
    echo "object" > "$out"
    """)


@pytest.fixture()
def fake_cxx(tmp_path, monkeypatch):
    cc = tmp_path / "bin" / "fakecc"
    cc.parent.mkdir()
    cc.write_text(FAKE_CXX)
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "custom_ops"), src)
    monkeypatch.setenv("TF_CARTOON_CXX", str(cc))
    monkeypatch.setenv("TF_CARTOON_OPS_SRC", str(src))
    monkeypatch.setenv("TF_CARTOON_OPS_CACHE", str(tmp_path / "cache"))
    return cc, src, tmp_path / "cache"


def _calls(cc):
    log = cc.parent / "calls.log"
    return [l for l in log.read_text().splitlines() if l != "--version"] if log.exists() else []


def test_custom_build_cache_reuse_and_key(fake_cxx):
    cc, src, cache = fake_cxx
    lib1 = build.build(cuda="off")
    assert lib1 == cache / lib1.parent.name / build.LIB_NAME and lib1.is_file()
    meta = json.loads((lib1.parent / build.META_NAME).read_text())
    assert meta["cxx"] == str(cc) and meta["cuda"] is False and "-D_GLIBCXX_USE_CXX11_ABI=1" in meta["cxx_flags"]
    n_compile = len(_calls(cc))
    assert n_compile == len(build.CXX_SOURCES) + 1  # each source, then the link
    # Nothing but the library and its metadata lands in the cache (no temp dirs, no objects).
    assert sorted(os.listdir(cache)) == [lib1.parent.name]
    assert sorted(os.listdir(lib1.parent)) == sorted([build.LIB_NAME, build.META_NAME])
    # Second build: reused, no compiler call.
    assert build.build(cuda="off") == lib1 and len(_calls(cc)) == n_compile
    assert build.cached_library(cuda="off") == lib1
    # The key follows the sources, the flags and the compiler.
    key = build.plan("off").key()
    assert build.plan("off", extra_cxx_flags=["-DX=1"]).key() != key
    (src / "bias_act.cc").write_text((src / "bias_act.cc").read_text() + "\n// changed\n")
    key2 = build.plan("off").key()
    assert key2 != key and build.cached_library(cuda="off") is None
    lib2 = build.build(cuda="off")
    assert lib2.parent.name == key2 != lib1.parent.name and lib1.is_file()
    # --force rebuilds in place.
    build.build(cuda="off", force=True)
    assert len(_calls(cc)) == 3 * n_compile


def test_custom_build_failure_leaves_nothing_behind(fake_cxx):
    cc, src, cache = fake_cxx
    with pytest.raises(build.BuildError, match="deliberate failure"):
        build.build(cuda="off", extra_cxx_flags=["-DFAIL_ME"])
    assert not cache.exists() or os.listdir(cache) == []
    assert build.main(["--quiet"]) == 0  # the CLI: builds fine without the bad flag


def test_custom_missing_compiler_message(monkeypatch, capsys):
    monkeypatch.setenv("TF_CARTOON_CXX", "/nonexistent/g++")
    with pytest.raises(build.CompilerNotFound, match=r"TF_CARTOON_CXX=/nonexistent/g\+\+ does not exist"):
        build.find_cxx()
    assert build.main(["--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no C++ compiler" in err and "pure-TF" in err


@pytest.mark.slow
def test_custom_missing_compiler_auto_falls_back(tmp_path):
    """A fresh process whose compiler does not exist: auto runs the pure-TF ops and says so."""
    code = textwrap.dedent("""\
        import numpy as np, tensorflow as tf
        from absl import logging
        logging.set_verbosity(logging.INFO)
        from tf_cartoon.ops import bias_act, custom, dispatch, make_kernel, upfirdn2d
        for op in ("upfirdn2d", "bias_act"):  # make auto want the compiled ops
            dispatch.FAMILIES[op].prefer.update(CPU="custom", GPU="custom")
        x = tf.constant(np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32))
        k = make_kernel([1, 3, 3, 1])
        y = upfirdn2d(x, k, down=2, pad=(1, 1))
        assert np.allclose(y, upfirdn2d(x, k, down=2, pad=(1, 1), impl="ref"), atol=1e-6)
        z = bias_act(x, tf.ones([3]))
        assert np.allclose(z, tf.nn.leaky_relu(x + 1, 0.2) * 2 ** 0.5, atol=1e-6)
        st = custom.status()
        assert not st["loaded"] and "TF_CARTOON_CXX=/nonexistent/g++" in st["error"], st
        try:
            upfirdn2d(x, k, impl="custom")
        except RuntimeError as e:
            print("EXPLICIT:", e)
        print("OK")
        """)
    env = {**os.environ, "TF_CARTOON_CXX": "/nonexistent/g++", "TF_CARTOON_OPS_CACHE": str(tmp_path / "cache"),
           "TF_CARTOON_OPS_BUILD": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    env.pop("TF_CARTOON_OPS_IMPL", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
    assert "EXPLICIT:" in out.stdout and "compiled ops are unavailable" in out.stdout
    assert "upfirdn2d uses the pure-TF path (compiled ops unavailable: no C++ compiler" in out.stderr
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


@pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not installed (CUDA compile-only check)")
@pytest.mark.slow
def test_custom_cuda_sources_compile(tmp_path):
    objs = build.cuda_check(tmp_path, cuda_archs=["80"])
    assert [o.name for o in objs] == [s + ".o" for s in build.CUDA_SOURCES]
    assert all(o.stat().st_size > 1000 for o in objs)


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a CUDA GPU")
def test_custom_cuda_kernels_match_reference(lib):
    assert custom.has_cuda_kernels(), "a GPU is visible but the library was built without CUDA kernels"
    rng = np.random.default_rng(9)
    for cs in CASES:
        x = rng.standard_normal(cs["shape"]).astype(np.float32)
        want = upfirdn2d(tf.constant(x), cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"], impl="ref")
        with tf.device("/GPU:0"):
            for dtype, rtol in ((tf.float32, 2e-5), (tf.float16, 2e-2)):
                y = upfirdn2d(tf.cast(x, dtype), cs["k"], up=cs["up"], down=cs["down"], pad=cs["pad"],
                              impl="custom")
                assert y.dtype == dtype and "GPU" in y.device
                _close(tf.cast(y, tf.float32), want, rtol=rtol, what=f"{_case_id(cs)} {dtype.name}")
    with tf.device("/GPU:0"):
        for cs in CASES[:6]:
            got = _up_derivs(cs, "custom")
            want = _up_derivs(cs, "xla")
            for a, b in zip(got, want):
                _close(a, b, rtol=1e-4)
        for cs in BA_CASES:
            for a, b in zip(_ba_derivs(cs, "custom"), _ba_derivs(cs, "xla")):
                _close(a, b, rtol=1e-5)
            x = rng.standard_normal(cs["shape"]).astype(np.float32)
            y16 = bias_act(tf.constant(x, tf.float16), None, act=cs["act"], alpha=cs["alpha"], gain=cs["gain"],
                           impl="custom")
            y32 = bias_act(tf.constant(x), None, act=cs["act"], alpha=cs["alpha"], gain=cs["gain"], impl="xla")
            _close(tf.cast(y16, tf.float32), y32, rtol=2e-3)
