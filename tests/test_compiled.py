"""The fast paths' compiled passes compute in float32 (tf_cartoon/ops/compiled.py).

Given bfloat16 tensors, each compiled pass (phase_fir and its adjoint, the Winograd transforms, the one-pass
epilogue and its gradient, scale_grads) must return exactly what the same pass returns in float32 on the same
values, rounded once to bfloat16: the expected values are that independent float32 evaluation. Computing in
bfloat16 op by op rounds after every op and misses them by many bfloat16 steps on these sums.
"""

import numpy as np
import tensorflow as tf

from tf_cartoon.ops import compiled as K
from tf_cartoon.ops import conv_grad, make_kernel
from tf_cartoon.ops import epilogue as E
from tf_cartoon.ops import phase_conv as P
from tf_cartoon.ops import winograd as W

BF16 = tf.bfloat16


def _bf16(rng, shape, scale=1.0):
    return tf.cast(tf.constant(rng.normal(size=shape) * scale, tf.float32), BF16)


def _up(structure):
    return tf.nest.map_structure(lambda a: tf.cast(a, tf.float32) if isinstance(a, tf.Tensor) and a.dtype == BF16
                                 else a, structure)


def _assert_rounded_once(got, reference_f32):
    """got (bfloat16) equals the float32 reference rounded to bfloat16, element for element."""
    for g, r in zip(tf.nest.flatten(got), tf.nest.flatten(reference_f32)):
        assert g.dtype == BF16
        np.testing.assert_array_equal(tf.cast(g, tf.float32).numpy(), tf.cast(tf.cast(r, BF16), tf.float32).numpy())


def test_in_float32_casts_bfloat16_arguments_up_and_results_down():
    calls = []

    def fn(a, b, k, bias=None):
        calls.append((a.dtype, b.dtype, k, None if bias is None else bias.dtype))
        return a * b + bias, tf.reduce_sum(a)

    f = K.in_float32(fn)
    rng = np.random.default_rng(0)
    a, b, bias = _bf16(rng, [64]), _bf16(rng, [64]), _bf16(rng, [64])
    out, total = f(a, b, 3, bias=bias)
    assert calls[-1] == (tf.float32, tf.float32, 3, tf.float32)  # non-tensors pass through
    _assert_rounded_once([out, total], fn(*_up([a, b]), 3, bias=_up(bias)))
    # float32 arguments: fn as it is
    out32, _ = f(_up(a), _up(b), 3, bias=_up(bias))
    assert out32.dtype == tf.float32 and calls[-1][0] == tf.float32
    # float16 (GPUs) computes as it is
    out16, _ = f(*[tf.cast(t, tf.float16) for t in (a, b)], 3, bias=tf.cast(bias, tf.float16))
    assert out16.dtype == tf.float16 and calls[-1][0] == tf.float16


def test_compiled_is_one_xla_function():
    f = K.compiled(lambda x: tf.nn.relu(x) * 2.0)
    assert f.experimental_get_compiler_ir(tf.ones([3], BF16))(stage="hlo")  # jit_compile: XLA has its HLO


def test_phase_fir_and_adjoint_in_float32():
    rng = np.random.default_rng(1)
    taps = tuple(tuple(float(v) for v in row) for row in np.asarray(make_kernel((1, 3, 3, 1), gain=4))[::-1, ::-1])
    h, w, c = 5, 6, 8
    ph = tuple(_bf16(rng, [2, h + 1 - a, w + 1 - b, c]) for a, b in P.PARITIES)
    pads = (1, 1, 1, 1)
    plan = P._phase_fir_plan(taps, pads, (h + 1, w + 1))
    y = P.phase_fir(ph, taps, pads)
    _assert_rounded_once(y, P._phase_fir_forward(plan, *_up(ph)))
    dz = _bf16(rng, y.shape)
    with tf.GradientTape() as tape:
        tape.watch(ph)
        out = P.phase_fir(ph, taps, pads)
    _assert_rounded_once(tape.gradient(out, ph, output_gradients=dz), P._phase_fir_adjoint(plan, _up(dz)))


def test_winograd_transforms_in_float32():
    rng = np.random.default_rng(2)
    x, scale = _bf16(rng, [2, 8, 8, 16]), _bf16(rng, [2, 16])
    m = W.tile_size(BF16)
    th, tw = 8 // m, 8 // m
    lo = tf.constant(0)
    tiles = W._input(x, scale, lo, 8, (1, 1), th, m)
    _assert_rounded_once(tiles, W._input.python_function(_up(x), _up(scale), lo, 8, (1, 1), th, m))
    products = tuple(_bf16(rng, [2 * th * tw, 4]) for _ in tiles)
    _assert_rounded_once(W._output(products, th, tw, m), W._output.python_function(_up(products), th, tw, m))


def test_epilogue_and_scale_grads_in_float32():
    rng = np.random.default_rng(3)
    y, demod, noise, bias = _bf16(rng, [2, 6, 6, 8]), _bf16(rng, [2, 8], 0.1), _bf16(rng, [2, 6, 6, 1]), _bf16(rng, [8])
    out = E._forward(y, demod, noise, bias)
    _assert_rounded_once(out, E._forward.python_function(*_up([y, demod, noise, bias])))
    dout = _bf16(rng, out.shape)
    _assert_rounded_once(E._grad(dout, out, demod, noise, bias),
                         E._grad.python_function(*_up([dout, out, demod, noise, bias])))
    dxs, x, s = _bf16(rng, [2, 6, 6, 8]), _bf16(rng, [2, 6, 6, 8]), _bf16(rng, [2, 8])
    _assert_rounded_once(conv_grad.scale_grads(dxs, x, s), conv_grad.scale_grads.python_function(*_up([dxs, x, s])))
