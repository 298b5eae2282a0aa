"""The fast convolution rewrites (tf_cartoon/ops/conv.py, phase_conv.py, winograd.py, conv_grad.py) and the
StyledConv epilogue (ops/epilogue.py) against the direct TF ops, and how dispatch.py picks between them.

Expected values come from an independent path: tf.nn.conv2d / conv2d_transpose and TF's own gradients of
them. Values, first- and second-order gradients (grad of a function of both gradients, as R1 and path
length need) are compared on odd and even sizes, and on a shape where the Winograd path is taken.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.ops import conv as C
from tf_cartoon.ops import conv_grad, dispatch, make_kernel
from tf_cartoon.ops import epilogue as E
from tf_cartoon.ops import phase_conv as P
from tf_cartoon.ops import winograd as W

FIR_UP = make_kernel((1, 3, 3, 1), gain=4)


def _derivatives(fn, x, w):
    """[y, dL/dx, dL/dw, dS/dx, dS/dw] with L = sum(y * r), S = |dL/dx|^2 + |dL/dw|^2."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, w])
        with tf.GradientTape() as inner:
            inner.watch([x, w])
            y = fn(x, w)
            r = tf.cos(tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y)))
            loss = tf.reduce_sum(y * r)
        gx, gw = inner.gradient(loss, [x, w])
        s = tf.reduce_sum(tf.square(gx)) + tf.reduce_sum(tf.square(gw))
    hx, hw = outer.gradient(s, [x, w])
    return [y, gx, gw, hx, hw]


def _assert_same(fast, direct, x_shape, w_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=x_shape), tf.float32)
    w = tf.constant(rng.normal(size=w_shape) / np.sqrt(9 * w_shape[2]), tf.float32)
    names = ["value", "grad x", "grad w", "2nd-order x", "2nd-order w"]
    for name, a, b in zip(names, _derivatives(fast, x, w), _derivatives(direct, x, w)):
        assert a.shape == b.shape, name
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=2e-5 * max(scale, 1.0), err_msg=name)


SHAPES = [(2, 8, 8, 4, 6), (2, 9, 7, 5, 3), (1, 5, 6, 3, 4)]


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES)
def test_conv3x3_fast_equals_conv2d(n, h, w, ci, co):
    _assert_same(lambda x, k: C.conv3x3(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"),
                 (n, h, w, ci), (3, 3, ci, co))


def test_conv3x3_winograd_path_equals_conv2d():
    x_shape, w_shape = (1, 32, 34, 256), (3, 3, 256, 8)
    assert W.use_winograd(tf.zeros(x_shape), tf.zeros(w_shape))
    _assert_same(lambda x, k: C.conv3x3(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x_shape, w_shape)


@pytest.mark.parametrize("n,h,w,ci,co", [(2, 8, 8, 4, 6), (1, 7, 9, 5, 3), (3, 6, 5, 2, 2)])
def test_winograd_plain_equals_conv2d(n, h, w, ci, co):
    """The export's Winograd (plain TF ops), odd sizes cropped: values and TF's own gradients, and with the
    modulated conv's input scale."""
    _assert_same(W.winograd_plain, lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), (n, h, w, ci), (3, 3, ci, co))
    rng = np.random.default_rng(1)
    x, k, s = (tf.constant(rng.normal(size=shape), tf.float32) for shape in ((n, h, w, ci), (3, 3, ci, co), (n, ci)))
    want = tf.nn.conv2d(x * s[:, None, None, :], k, 1, "SAME")
    np.testing.assert_allclose(W.winograd_plain(x, k, s).numpy(), want.numpy(), rtol=0,
                               atol=2e-5 * float(tf.reduce_max(tf.abs(want))))


def test_conv3x3_plain_path():
    """impl="plain": Winograd in plain TF ops where the fast path takes Winograd (float32 and bfloat16; a batch
    unknown at trace time works), oneDNN's conv2d elsewhere and for float16."""
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(2, 32, 33, 256)), tf.float32)
    k = tf.constant(rng.normal(size=(3, 3, 256, 8)) / 48, tf.float32)
    s = tf.constant(rng.uniform(0.5, 1.5, size=(2, 256)), tf.float32)
    want = tf.nn.conv2d(x * s[:, None, None, :], k, 1, "SAME")
    fn = tf.function(lambda x, s: C.conv3x3(x, k, "plain", scale=s),
                     input_signature=[tf.TensorSpec([None, 32, 33, 256]), tf.TensorSpec([None, 256])])
    np.testing.assert_allclose(fn(x, s).numpy(), want.numpy(), rtol=0, atol=2e-5 * float(tf.reduce_max(tf.abs(want))))
    types, xla = _traced_op_types(lambda x: C.conv3x3(x, k, "plain", scale=s), x)
    assert "BatchMatMulV2" in types and "Conv2D" not in types and not xla, (types, xla)
    small, _ = _traced_op_types(lambda x: C.conv3x3(x, k[:, :, :8], "plain"), x[..., :8])  # 8 channels: direct
    assert "Conv2D" in small and "BatchMatMulV2" not in small
    xb, kb = tf.cast(x, tf.bfloat16), tf.cast(k, tf.bfloat16)
    bf16, _ = _traced_op_types(lambda x: C.conv3x3(x, kb, "plain"), xb)
    assert "BatchMatMulV2" in bf16 and "Conv2D" not in bf16  # F(2x2) at 256 channels
    got = tf.cast(C.conv3x3(xb, kb, "plain"), tf.float32)
    want_bf16 = tf.nn.conv2d(tf.cast(xb, tf.float32), tf.cast(kb, tf.float32), 1, "SAME")
    np.testing.assert_allclose(got.numpy(), want_bf16.numpy(), rtol=0, atol=2e-2 * float(tf.reduce_max(tf.abs(want))))
    xh = tf.cast(x, tf.float16)
    fp16, _ = _traced_op_types(lambda x: C.conv3x3(x, tf.cast(k, tf.float16), "plain"), xh)
    assert "Conv2D" in fp16 and "BatchMatMulV2" not in fp16


def test_plain_winograd_folds_both_scales_into_per_sample_weights():
    """winograd_plain(x, w, scale, out_scale) = conv(x * scale) * out_scale, the scales folded into per-sample
    transformed weights (float32 and bfloat16, a batch unknown at trace time). In an export a StyledConv takes
    it (its modulated conv returns epilogue.FOLDED, demodulation and gain applied) where folding_pays, and
    computes what the library computes; elsewhere the demodulation stays the epilogue's."""
    from tf_cartoon.layers import StyledConv
    from tf_cartoon.ops.epilogue import FOLDED
    from tf_cartoon.ops.modulated_conv import modulated_conv2d

    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 32, 33, 256)), tf.float32)
    k = tf.constant(rng.normal(size=(3, 3, 256, 8)) / 48, tf.float32)
    s = tf.constant(rng.uniform(0.5, 1.5, size=(2, 256)), tf.float32)
    d = tf.constant(rng.uniform(0.5, 1.5, size=(2, 8)), tf.float32)
    want = tf.nn.conv2d(x * s[:, None, None, :], k, 1, "SAME") * d[:, None, None, :]
    fn = tf.function(lambda x, s, d: W.winograd_plain(x, k, s, d), input_signature=[
        tf.TensorSpec([None, 32, 33, 256]), tf.TensorSpec([None, 256]), tf.TensorSpec([None, 8])])
    np.testing.assert_allclose(fn(x, s, d).numpy(), want.numpy(), rtol=0,
                               atol=2e-5 * float(tf.reduce_max(tf.abs(want))))
    bf16 = [tf.cast(t, tf.bfloat16) for t in (x, k, s, d)]
    got = tf.cast(W.winograd_plain(*bf16[:2], *bf16[2:]), tf.float32)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-2 * float(tf.reduce_max(tf.abs(want))))

    assert W.folding_pays(tf.zeros([1, 128, 128, 128]), tf.zeros([3, 3, 128, 128]))
    assert not W.folding_pays(tf.zeros([1, 64, 64, 512]), tf.zeros([3, 3, 512, 512]))
    layer = StyledConv(128, 128, 3, 16, name="styled")
    layer.noise.strength.assign([0.3])
    layer.activate.bias.assign(rng.normal(size=128).astype(np.float32))
    w = tf.constant(rng.normal(size=(2, 16)), tf.float32)
    noise = tf.constant(rng.normal(size=(1, 128, 128, 1)), tf.float32)
    for size, folds in ((128, True), (32, False)):
        xs = tf.constant(rng.normal(size=(2, size, size, 128)), tf.float32)
        with dispatch.plain_ops():
            _, demod = modulated_conv2d(xs, layer.conv.kernel * layer.conv.scale, layer.conv.modulation(w),
                                        defer_demod=True)
            got = layer(xs, w, noise=noise[:, :size, :size])
        assert (isinstance(demod, str) and demod == FOLDED) == folds, (size, demod)
        want = layer(xs, w, noise=noise[:, :size, :size])  # the library's paths
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5 * float(tf.reduce_max(tf.abs(want))))


def test_winograd_odd_size_value():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 7, 5, 3)), tf.float32)
    w = tf.constant(rng.normal(size=(3, 3, 3, 4)), tf.float32)
    np.testing.assert_allclose(W.winograd(x, w).numpy(), tf.nn.conv2d(x, w, 1, "SAME").numpy(), atol=1e-4)
    s = tf.constant(rng.uniform(0.5, 2, size=(2, 3)), tf.float32)  # the input scale, applied in the transform
    np.testing.assert_allclose(W.winograd(x, w, s).numpy(), tf.nn.conv2d(x * s[:, None, None, :], w, 1, "SAME").numpy(),
                               atol=1e-4)


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES)
def test_conv3x3_down2_fast_equals_strided_conv2d(n, h, w, ci, co):
    _assert_same(lambda x, k: P.conv3x3_down2(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 2, "VALID"),
                 (n, h, w, ci), (3, 3, ci, co))


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES)
@pytest.mark.parametrize("pad", [(1, 1), (2, 1, 1, 2)])
@pytest.mark.slow
def test_up2_blur_fast_equals_conv2d_transpose(n, h, w, ci, co, pad):
    _assert_same(lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "fast"),
                 lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "direct"),
                 (n, h, w, ci), (3, 3, ci, co))


def test_direct_up2_is_tf_conv2d_transpose_then_blur():
    """The direct path itself against zero insertion + full correlation written with numpy."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    w = rng.normal(size=(3, 3, 2, 5)).astype(np.float32)
    y = np.zeros((1, 7, 9, 5), np.float32)
    for i in range(3):
        for j in range(4):
            y[0, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3] += np.einsum("c,abcd->abd", x[0, i, j], w)
    identity = np.ones((1, 1), np.float32)
    got = P.conv_transpose3x3_up2_blur(tf.constant(x), tf.constant(w), identity, (0, 0), "direct")
    np.testing.assert_allclose(got.numpy(), y, atol=1e-5)
    got = P.conv_transpose3x3_up2_blur(tf.constant(x), tf.constant(w), identity, (0, 0), "fast")
    np.testing.assert_allclose(got.numpy(), y, atol=1e-5)


def test_fast_paths_trace_inside_tf_function():
    f = tf.function(lambda x, k: C.conv3x3(x, k, "fast") + 0.0)
    x, k = tf.ones([2, 8, 8, 3]), tf.ones([3, 3, 3, 2])
    np.testing.assert_allclose(f(x, k).numpy(), tf.nn.conv2d(x, k, 1, "SAME").numpy(), atol=1e-5)


def test_generator_with_a_winograd_layer_equals_its_direct_convolutions():
    """A generator whose 32 px block has 128 channels (Winograd F(4x4) in float32): its images through the
    CPU's fast paths and through the export's plain paths equal those of the direct TF convolutions."""
    from tf_cartoon.networks import Generator

    g = Generator(32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 128, 32: 128})
    assert W.use_winograd(tf.zeros([1, 32, 32, 128]), tf.zeros([3, 3, 128, 128]))
    z = tf.constant(np.random.default_rng(5).normal(size=(2, 32)), tf.float32)

    def image():
        return tf.function(lambda z: g.synthesis(g.make_wplus(z), randomize_noise=False).image)(z).numpy()

    fast = image()
    with _process_impl("direct"):
        direct = image()
    with dispatch.plain_ops():
        plain = image()
    scale = np.abs(direct).max()
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(plain, direct, rtol=0, atol=1e-4 * scale)
    assert np.abs(fast - direct).max() > 0  # a different computation: Winograd ran


CONV_FAMILIES = ("conv3x3", "conv1x1", "conv3x3_down2", "conv3x3_up2", "styled_epilogue")


@contextlib.contextmanager
def _process_impl(spec):
    dispatch.set_default_impl(spec)
    try:
        yield
    finally:
        dispatch.set_default_impl(None)


def test_dispatch_picks_conv_paths(monkeypatch):
    """auto: fast on CPU, direct where a GPU is visible (one device query); TF_CARTOON_OPS_IMPL by path name or
    family=path, set_default_impl over it, plain_ops over both; per-call impl; static-shape fallback."""
    monkeypatch.delenv("TF_CARTOON_OPS_IMPL", raising=False)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    assert dispatch.device() == ("GPU" if gpu else "CPU")
    auto = "direct" if gpu else "fast"
    fir_auto = {op: dispatch.choose(op) for op in ("upfirdn2d", "bias_act")}
    for fam in CONV_FAMILIES:
        assert dispatch.choose(fam) == auto
        assert dispatch.choose(fam, "direct") == "direct" and dispatch.choose(fam, "fast") == "fast"
        assert dispatch.choose(fam, "fast", unsupported="H unknown") == "direct"
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "direct")  # every conv family; the FIR ops keep their auto
    assert {dispatch.choose(f) for f in CONV_FAMILIES} == {"direct"}
    assert {op: dispatch.choose(op) for op in fir_auto} == fir_auto
    monkeypatch.setenv("TF_CARTOON_OPS_IMPL", "ref,conv3x3=direct")
    assert dispatch.choose("conv3x3") == "direct" and dispatch.choose("conv1x1") == auto
    assert dispatch.choose("upfirdn2d") == "ref"
    with _process_impl("fast"):  # wins over the environment
        assert {dispatch.choose(f) for f in CONV_FAMILIES} == {"fast"}
        with dispatch.plain_ops():  # each family's export path: plain TF ops only
            export_paths = {f: dispatch.choose(f) for f in CONV_FAMILIES}
            assert export_paths == {**{f: "plain" for f in CONV_FAMILIES}, "conv3x3_down2": "direct"}
            assert dispatch.choose("upfirdn2d") == "tf" and dispatch.choose("bias_act") == "tf"
        assert dispatch.choose("conv3x3") == "fast"
    for bad in ("winograd", "conv3x3=tf", "nope=direct"):
        monkeypatch.setenv("TF_CARTOON_OPS_IMPL", bad)
        with pytest.raises(ValueError, match="TF_CARTOON_OPS_IMPL"):
            dispatch.choose("conv3x3")
    with pytest.raises(ValueError, match="conv3x3: impl must be one of.*'nope'"):
        dispatch.choose("conv3x3", "nope")
    with pytest.raises(ValueError, match="ops impl"):
        dispatch.set_default_impl("conv3x3=ref")


def _traced_op_types(fn, *args):
    """Op types of fn's graph and every function it calls, and the names of functions XLA must compile."""
    graph_def = tf.function(fn).get_concrete_function(*args).graph.as_graph_def()
    types = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    xla = {f.signature.name for f in graph_def.library.function
           if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b}
    return types, xla


def test_plain_ops_trace_only_plain_tf_ops():
    """Inside plain_ops() the generator's and discriminator's layers trace no compiled op and no nested XLA
    cluster, even with the compiled ops and the CPU rewrites the process setting (what exports rely on)."""
    from tf_cartoon.layers import ConvLayer, StyledConv, ToRGB

    up, conv, rgb = StyledConv(4, 4, 3, 8, upsample=True), StyledConv(4, 4, 3, 8), ToRGB(4, 8, upsample=False)
    down = ConvLayer(4, 4, 3, downsample=True)
    wide = StyledConv(256, 4, 3, 8)  # at 32 px the 3x3 conv takes Winograd: the export's is plain TF

    def forward(x, w, x_wide):
        y = conv(up(x, w), w)
        return tf.reduce_sum(rgb(y, w)) + tf.reduce_sum(down(y)) + tf.reduce_sum(wide(x_wide, w))

    args = (tf.ones([2, 8, 8, 4]), tf.ones([2, 8]), tf.ones([2, 32, 32, 256]))
    with _process_impl("custom,fast"):
        types, xla = _traced_op_types(forward, *args)
        assert xla  # the rewrites' compiled passes: what plain_ops must remove
        with dispatch.plain_ops():
            types, xla = _traced_op_types(forward, *args)
    assert not xla, xla
    assert not {t for t in types if t.startswith("TfCartoon")}, types
    assert {"Conv2D", "DepthToSpace"} <= types  # the direct convs; the small up layer's phases, interleaved
    assert "BatchMatMulV2" in types  # the wide layer's Winograd products


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("h,w", [(6, 8), (7, 5)])
def test_conv1x1_matmul_equals_conv2d(stride, h, w):
    _assert_same(lambda x, k: C.conv1x1(x, k, stride, "fast"), lambda x, k: tf.nn.conv2d(x, k, stride, "VALID"),
                 (2, h, w, 5), (1, 1, 5, 3))


@pytest.mark.parametrize("upsample", [False, True])
def test_styled_conv_fused_epilogue_equals_layer_by_layer_path(upsample):
    """StyledConv's fast path (one-pass epilogue, rewritten convs) against the reference layer order."""
    from tf_cartoon.layers import StyledConv

    layer = StyledConv(6, 5, 3, 8, upsample=upsample, name="sc")
    rng = np.random.default_rng(7)
    for v, val in ((layer.noise.strength, 0.3), (layer.activate.bias, rng.normal(size=5))):
        v.assign(np.broadcast_to(val, v.shape).astype(np.float32))
    x = tf.constant(rng.normal(size=(2, 8, 8, 6)), tf.float32)
    w = tf.constant(rng.normal(size=(2, 8)), tf.float32)
    res = 16 if upsample else 8
    noise = tf.constant(rng.normal(size=(2, res, res, 1)), tf.float32)

    def run(impl):
        with _process_impl(impl), tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, w, noise)
            loss = tf.reduce_sum(tf.square(y))
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    want = run("direct")
    for impl in ("fast", "styled_epilogue=plain"):  # plain: the export's epilogue (TF's own gradients)
        for a, b in zip(run(impl), want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Input-scaled convolutions (the modulated conv's x * s, recomputed in the backward pass) and the
# StyledConv epilogue's own gradient, against the direct ops, to second order in every input.
# ---------------------------------------------------------------------------------------------

def _derivatives_n(fn, inputs):
    """[y, dL/d each input..., dS/d each input...] with L = sum(y * r), S = sum of |dL/d input|^2."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(inputs)
        with tf.GradientTape() as inner:
            inner.watch(inputs)
            y = fn(*inputs)
            r = tf.cos(tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y)))
            loss = tf.reduce_sum(y * r)
        first = inner.gradient(loss, inputs)
        s = tf.add_n([tf.reduce_sum(tf.square(g)) for g in first])
    return [y, *first, *outer.gradient(s, inputs)]


def _assert_same_n(fast, direct, inputs):
    for i, (a, b) in enumerate(zip(_derivatives_n(fast, inputs), _derivatives_n(direct, inputs))):
        if a is None or b is None:  # no path at all on one side: the other side must be exactly zero
            assert not np.any((b if a is None else a).numpy()), f"output {i}"
            continue
        assert a.shape == b.shape, i
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=3e-5 * max(scale, 1.0), err_msg=f"output {i}")


def _xsw(n, h, w, ci, co, seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(n, h, w, ci)), tf.float32),
            tf.constant(rng.uniform(0.5, 1.5, size=(n, ci)), tf.float32),
            tf.constant(rng.normal(size=(3, 3, ci, co)) / np.sqrt(9 * ci), tf.float32)]


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES + [(1, 32, 34, 256, 8)])  # the last one takes Winograd
def test_conv3x3_scaled_fast_equals_conv2d_of_scaled_input(n, h, w, ci, co):
    _assert_same_n(lambda x, s, k: C.conv3x3(x, k, "fast", scale=s),
                   lambda x, s, k: tf.nn.conv2d(x * s[:, None, None, :], k, 1, "SAME"), _xsw(n, h, w, ci, co))


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES)
def test_up2_blur_scaled_fast_equals_direct_of_scaled_input(n, h, w, ci, co):
    _assert_same_n(lambda x, s, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, (1, 1), "fast", scale=s),
                   lambda x, s, k: P.conv_transpose3x3_up2_blur(x * s[:, None, None, :], k, FIR_UP, (1, 1),
                                                                "direct"), _xsw(n, h, w, ci, co))


def _epilogue(impl):
    """styled_epilogue on (y, demod, noise, strength, bias): the noise term as StyledConv forms it."""
    return lambda y, demod, noise, strength, bias: E.styled_epilogue(y, demod, strength * noise, bias, impl=impl)


def _epilogue_formula(y, demod, noise, strength, bias):
    return tf.nn.leaky_relu(y * demod[:, None, None, :] + strength * noise + bias, 0.2) * np.sqrt(2.0)


def _epilogue_inputs(n, noise_batch, seed):
    """(y [n, 6, 5, 4], demod [n, 4], noise [noise_batch, 6, 5, 1], strength [1], bias [4])."""
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(n, 6, 5, 4)), tf.float32),
            tf.constant(rng.uniform(0.5, 2, size=(n, 4)), tf.float32),
            tf.constant(rng.normal(size=(noise_batch, 6, 5, 1)), tf.float32),
            tf.constant([0.3], tf.float32),
            tf.constant(rng.normal(size=(4,)), tf.float32)]


@pytest.mark.parametrize("noise_batch", [2, 1])
def test_styled_epilogue_fast_gradient_equals_direct(noise_batch):
    """The epilogue's hand-written backward pass (from the output's sign, not the pre-activation) against
    TF's gradients of the direct formula, to second order, incl. a noise map broadcast over the batch."""
    inputs = _epilogue_inputs(2, noise_batch, seed=5)
    _assert_same_n(_epilogue("fast"), _epilogue_formula, inputs)
    _assert_same_n(_epilogue("direct"), _epilogue_formula, inputs)


@pytest.mark.parametrize("n,h,w,ci,co", [(2, 9, 7, 5, 3), (1, 8, 6, 3, 4)])
@pytest.mark.slow
def test_filter_gradient_in_row_bands_equals_direct(monkeypatch, n, h, w, ci, co):
    """The filter gradients run over bands of output rows (band-sized copies); with a band of one or two
    rows, every band boundary (halo rows, zero rows past the edges, odd sizes at stride 2) is exercised, for
    all four fast ops to second order."""
    monkeypatch.setattr(conv_grad, "FILTER_GRAD_BAND_BYTES", 1)  # one output row per band
    scaled = lambda x, s: x * s[:, None, None, :]  # noqa: E731
    _assert_same_n(lambda x, s, k: C.conv3x3(x, k, "fast", scale=s),
                   lambda x, s, k: tf.nn.conv2d(scaled(x, s), k, 1, "SAME"), _xsw(n, h, w, ci, co))
    _assert_same_n(lambda x, s, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, (1, 1), "fast", scale=s),
                   lambda x, s, k: P.conv_transpose3x3_up2_blur(scaled(x, s), k, FIR_UP, (1, 1), "direct"),
                   _xsw(n, h, w, ci, co))
    monkeypatch.setattr(conv_grad, "FILTER_GRAD_BAND_BYTES", 2 * (n * 2 * (w + 2) * ci * 4))  # two rows per band
    _assert_same(lambda x, k: C.conv3x3(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"),
                 (n, h, w, ci), (3, 3, ci, co))
    _assert_same(lambda x, k: P.conv3x3_down2(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 2, "VALID"),
                 (n, h, w, ci), (3, 3, ci, co))
    _assert_same(lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, (2, 1, 1, 2), "fast"),
                 lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, (2, 1, 1, 2), "direct"),
                 (n, h, w, ci), (3, 3, ci, co))


def _band_calls(graph):
    """Bands of a traced filter gradient: calls of the shared band function (or, inlined, k = 1 matmuls)."""
    return [op for op in graph.get_operations()
            if op.type in ("MatMul", "BatchMatMulV2", "PartitionedCall", "StatefulPartitionedCall")]


def test_band_count_is_capped():
    """Huge images still make at most _MAX_BANDS bands (graph size), each covering whole rows."""
    x, dy = tf.zeros([1, 70, 3, 1]), tf.zeros([1, 70, 3, 1])
    graph = tf.function(lambda a, b: conv_grad.tap_matmuls(a, b, 1, 1)).get_concrete_function(x, dy).graph
    assert len(_band_calls(graph)) == 1  # 70 rows of 12 bytes: one band under the default budget
    old = conv_grad.FILTER_GRAD_BAND_BYTES
    try:
        conv_grad.FILTER_GRAD_BAND_BYTES = 1
        graph = tf.function(lambda a, b: conv_grad.tap_matmuls(a, b, 1, 1)).get_concrete_function(x, dy).graph
    finally:
        conv_grad.FILTER_GRAD_BAND_BYTES = old
    # rows per band = ceil(70 / 32) = 3 -> 24 bands
    assert len(_band_calls(graph)) == -(-70 // -(-70 // conv_grad.MAX_BANDS))


def test_equal_bands_share_one_traced_body(monkeypatch):
    """Outside XLA, the bands of a filter gradient call one out-of-line function per band shape: 4 equal
    bands of a 3x3 stride-1 gradient trace 9 tap matmuls once, not 36; inside XLA they are traced in place.
    Both give the inline computation's value."""
    n, h, w, ci, co = 2, 8, 5, 3, 4
    x = tf.random.stateless_normal([n, h, w, ci], [1, 2])
    dy = tf.random.stateless_normal([n, h, w, co], [3, 4])
    monkeypatch.setattr(conv_grad, "FILTER_GRAD_BAND_BYTES", 2 * (n * (w + 2) * ci * 4))  # two rows per band
    fn = tf.function(lambda a, b: conv_grad.tap_matmuls(a, b, 3, 1, pad=1))
    graph = fn.get_concrete_function(x, dy).graph
    calls = [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    assert len(calls) == 4
    library = graph.as_graph_def().library.function
    assert len({op.get_attr("f").name for op in calls}) == 1 and len(library) == 1
    assert sum(node.op == "MatMul" for node in library[0].node_def) == 9
    assert library[0].attr["_noinline"].b
    kernel = tf.zeros([3, 3, ci, co])
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = tf.nn.conv2d(x, kernel, 1, "SAME")
    expected = tape.gradient(y, kernel, output_gradients=dy)  # TF's own filter gradient
    xla = tf.function(lambda a, b: conv_grad.tap_matmuls(a, b, 3, 1, pad=1), jit_compile=True)
    for got in (fn(x, dy), xla(x, dy)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("band_bytes", [1, 36 * 2 * 9 * 256 * 4 * 2])  # 4-row bands; 8-row bands
@pytest.mark.slow
def test_winograd_in_row_bands_equals_conv2d(monkeypatch, band_bytes):
    """Large Winograd convs run band by band (one compiled call per band of rows, a halo row each side);
    odd height and width, the last band shorter: values and gradients to second order."""
    monkeypatch.setattr(W, "WINOGRAD_BAND_BYTES", band_bytes)
    x_shape, w_shape = (2, 33, 35, 256), (3, 3, 256, 4)
    assert W.use_winograd(tf.zeros(x_shape), tf.zeros(w_shape))
    graph = tf.function(W.winograd).get_concrete_function(tf.zeros(x_shape), tf.zeros(w_shape)).graph
    matmuls = len([op for op in graph.get_operations() if op.type == "MatMul"]) - 2  # 2 transform the weights
    assert matmuls % 36 == 0 and matmuls // 36 == -(-33 // (4 if band_bytes == 1 else 8))  # 36 per band
    _assert_same(lambda x, k: C.conv3x3(x, k, "fast"), lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x_shape, w_shape)


def test_winograd_bands_share_one_unstack_of_the_weights(monkeypatch):
    """Every band reads the transformed weights from one Unpack: indexing the [(m + 2)^2, Ci, Co] array per band
    added 36 slices and 108 constants per band, half the nodes of a 256 px training step's graph (TF keeps
    about 16 KB of host memory per node: 0.4 GB of its RSS)."""
    monkeypatch.setattr(W, "WINOGRAD_BAND_BYTES", 1)  # 4-row bands: 9 of them
    x, w = tf.zeros([2, 33, 35, 256]), tf.zeros([3, 3, 256, 4])
    ops = tf.function(W.winograd).get_concrete_function(x, w).graph.get_operations()
    assert [op.type for op in ops].count("Unpack") == 1
    assert not [op for op in ops if op.type == "StridedSlice" and op.inputs[0].shape.rank == 3]


def test_winograd_weights_wait_for_the_layer_input():
    """The transformed weights (2.25x the kernel) are computed once the layer's input is ready: every op reading
    the kernel waits for x (a control dependency), so a training step does not compute all layers' at its start
    and hold them until their layers run."""
    def layer(x, w):
        return W.winograd(tf.nn.relu(x, name="layer_input"), w)  # x computed in the graph, as in a network

    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([1, 32, 32, 128]),
                                                     tf.TensorSpec([3, 3, 128, 8])).graph
    x_op, w_op = graph.get_operation_by_name("layer_input"), graph.inputs[1].op
    readers = [op for op in graph.get_operations() if any(t.op is w_op for t in op.inputs)]

    def waits_for_x(op, seen=None):  # x's op among op's data or control ancestors
        seen = set() if seen is None else seen
        if op is x_op:
            return True
        seen.add(op)
        return any(waits_for_x(a, seen) for a in [t.op for t in op.inputs] + list(op.control_inputs) if a not in seen)

    assert readers and all(waits_for_x(op) for op in readers), [op.type for op in readers]


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_1d_correlation(m):
    """A^T [(G g) * (B^T d)] = the correlation of d (m + 2 values) with g (3 taps), in float64: the
    constants of each tile size, checked against the definition."""
    bt, g, at = (np.asarray(a, np.float64) for a in W._MATRICES[m])
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, k = rng.normal(size=m + 2), rng.normal(size=3)
        want = [d[i: i + 3] @ k for i in range(m)]
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,m,tol", [(tf.float32, 4, 2e-5), (tf.bfloat16, 2, 2e-2)])
def test_winograd_tile_size_per_dtype(dtype, m, tol):
    """float32 takes F(4x4, 3x3) (36 products), bfloat16 F(2x2, 3x3) (16): each within its dtype's rounding of
    the float64 convolution, relative to the largest output, with the input scale and odd sizes."""
    assert W.tile_size(dtype) == m
    rng = np.random.default_rng(4)
    x, k, s = (rng.normal(size=shape) for shape in ((2, 33, 35, 256), (3, 3, 256, 6), (2, 256)))
    k, s = k / 48, np.abs(s) + 0.5
    cast = lambda a: tf.constant(a, dtype)  # noqa: E731
    graph = tf.function(W.winograd).get_concrete_function(cast(x), cast(k), cast(s)).graph
    assert len([op for op in graph.get_operations() if op.type == "MatMul"]) == (m + 2) ** 2 + 2  # + the weights'
    want = tf.nn.conv2d(x * s[:, None, None, :], k, 1, "SAME").numpy()
    got = tf.cast(W.winograd(cast(x), cast(k), cast(s)), tf.float64).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("n,h,w,ci,co", SHAPES)
def test_conv1x1_scaled_fast_equals_conv2d_of_scaled_input(n, h, w, ci, co):
    """ToRGB's modulated 1x1 conv, the scale folded into per-sample weights (fast: keeping x, not x * scale;
    plain: TF's own gradients): values and gradients to second order; neither writes x * scale."""
    x, s, k = _xsw(n, h, w, ci, co)
    for impl in ("fast", "plain"):
        _assert_same_n(lambda x, s, k: C.conv1x1(x, k, impl=impl, scale=s),
                       lambda x, s, k: tf.nn.conv2d(x * s[:, None, None, :], k, 1, "VALID"), [x, s, k[1:2, 1:2]])
        graph = tf.function(lambda x: C.conv1x1(x, k[1:2, 1:2], impl=impl, scale=s)).get_concrete_function(x).graph
        image_sized = [op for op in graph.get_operations() if op.type == "Mul"
                       and op.outputs[0].shape.num_elements() == x.shape.num_elements()]
        assert not image_sized, image_sized


@pytest.mark.parametrize("noise_batch", [3, 1])
def test_styled_epilogue_backward_per_image_equals_direct(monkeypatch, noise_batch):
    """Above epilogue.GRAD_SPLIT_BYTES the epilogue's reductions run one image at a time: same values and
    gradients to second order as TF's gradients of the direct formula."""
    monkeypatch.setattr(E, "GRAD_SPLIT_BYTES", 0)
    inputs = _epilogue_inputs(3, noise_batch, seed=6)
    graph = tf.function(lambda *a: tf.gradients(_epilogue("fast")(*a), a)).get_concrete_function(*inputs).graph
    calls = [op for op in graph.get_operations() if op.type in ("StatefulPartitionedCall", "PartitionedCall")]
    assert len(calls) >= 1 + 3 + 1  # forward, one reduction call per image, dy
    _assert_same_n(_epilogue("fast"), _epilogue_formula, inputs)


def _interleave_by_zero_insertion(ph):
    """The image whose phases (PARITIES order) ph are, by the reference upfirdn2d: each phase zero-inserted
    (up=2) and shifted to its parity, then summed; [N, 2H+1, 2W+1, C] for phase (0, 0) [N, H+1, W+1, C]."""
    from tf_cartoon.ops.upfirdn2d import upfirdn2d
    rows, cols = 2 * ph[0].shape[1] - 1, 2 * ph[0].shape[2] - 1
    one = np.ones((1, 1), np.float32)
    parts = []
    for (a, b), p in zip(P.PARITIES, ph):
        # up=2 gives 2 * size rows (the last one an inserted zero); shift by the parity, crop to rows
        y = upfirdn2d(p, one, up=2, pad=(b, cols - 2 * p.shape[2] - b, a, rows - 2 * p.shape[1] - a), impl="ref")
        parts.append(y)
    return tf.add_n(parts)


@pytest.mark.parametrize("h,w,fir_shape,pads", [
    (4, 5, (4, 4), (1, 1, 1, 1)),     # the generator's upsampling blur
    (4, 3, (3, 2), (-1, 2, 0, 1)),    # non-square, non-separable, a cropping pad
    (2, 4, (1, 1), (0, 1, 0, 1)),     # plain interleave with a zero row / column (the stride-2 conv's dx)
])
@pytest.mark.slow
def test_phase_fir_equals_upfirdn2d_of_the_interleaved_image(h, w, fir_shape, pads):
    """phase_fir (FIR of an image given by its four stride-2 phases, never built) against zero insertion +
    the reference upfirdn2d, values and gradients to second order; its gradient is a hand-written adjoint."""
    from tf_cartoon.ops.upfirdn2d import upfirdn2d
    rng = np.random.default_rng(11)
    fir = rng.normal(size=fir_shape).astype(np.float32)
    taps = tuple(tuple(float(v) for v in row) for row in fir[::-1, ::-1])
    ph = [tf.constant(rng.normal(size=(2, h + 1 - a, w + 1 - b, 3)), tf.float32) for a, b in P.PARITIES]
    py0, py1, px0, px1 = pads
    # squared, so that the first gradient passes the output through the adjoint and the second-order one
    # differentiates the adjoint too (for the bare linear map it would be None on both sides)
    _assert_same_n(lambda *p: tf.square(P.phase_fir(p, taps, pads)),
                   lambda *p: tf.square(upfirdn2d(_interleave_by_zero_insertion(p), fir, pad=(px0, px1, py0, py1),
                                                  impl="ref")), ph)


@pytest.mark.parametrize("h,w,pad", [(8, 8, (1, 1)), (5, 7, (2, 1, 1, 2)), (3, 4, (0, 0))])
def test_up2_blur_plain_equals_direct(h, w, pad):
    """The export's upsampling conv (phase convolutions interleaved by depth_to_space, plain TF ops, TF's own
    gradients) against the transposed conv, with and without the input scale, to second order; above
    PLAIN_PHASES_MAX_HW it is the transposed conv itself."""
    _assert_same(lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "plain"),
                 lambda x, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "direct"), (2, h, w, 3), (3, 3, 3, 4))
    _assert_same_n(lambda x, s, k: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "plain", scale=s),
                   lambda x, s, k: P.conv_transpose3x3_up2_blur(x * s[:, None, None, :], k, FIR_UP, pad, "direct"),
                   _xsw(2, h, w, 3, 4))
    x, k = tf.ones([1, h, w, 3]), tf.ones([3, 3, 3, 4])
    small, xla = _traced_op_types(lambda x: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "plain"), x)
    assert {"Conv2D", "DepthToSpace"} <= small and "Conv2DBackpropInput" not in small and not xla, small
    big = P.PLAIN_PHASES_MAX_HW + 1
    x = tf.ones([1, big, big, 3])
    large, _ = _traced_op_types(lambda x: P.conv_transpose3x3_up2_blur(x, k, FIR_UP, pad, "plain"), x)
    assert "Conv2DBackpropInput" in large and "DepthToSpace" not in large, large


@pytest.mark.parametrize("noise_batch", [2, 1])
def test_styled_epilogue_plain_equals_formula(noise_batch):
    """The export's epilogue (one noise-and-bias term where the noise map is shared by the batch) against the
    formula, values and TF's gradients to second order."""
    inputs = _epilogue_inputs(2, noise_batch, seed=6)
    _assert_same_n(_epilogue("plain"), _epilogue_formula, inputs)
