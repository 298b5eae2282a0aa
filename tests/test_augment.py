"""Tests for tf_cartoon.training.augment: the ADA "bgc" pipeline and the adaptive-p controller.

Expected values come from maths or from an independent NumPy path, never from the code under test:

* geometric expectations use numpy flips / np.rot90 / shifts of a reflect-padded array, and a float64
  NumPy bilinear resampler that gets its reflection from ``np.pad(mode="reflect")`` applied to an *index
  image* and builds the dense matrix of the (linear) augmentation, so both the forward result ``A x + b``
  and the adjoint ``A^T r`` (what the gradient must be) are checked;
* the composed matrices are rebuilt in float64 from the sampled parameters with the recipe of the ADA
  paper (Karras et al. 2020, appendix B);
* color expectations are properties (grey = mean of RGB at zero saturation, Householder involution,
  120-degree hue rotation about (1, 1, 1) permutes the channels, ...);
* the p controller is checked against a few lines of plain-Python transcription of the reference's rule.

The augmentation's convention (module docstring): centred pixel coordinates, x = column to the right,
y = row downwards, positive angles turn +x towards +y (clockwise as displayed), translations move content
by +t, and ``G`` maps input positions to output positions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.training.augment import (PARAM_KEYS, AdaptiveAugment, apply_color, augment, color_matrix, geom_matrices,
                                sample_params, warp)

ALL_OFF = dict(xflip=0, rotate90=0, xint=0, scale=0, rotate=0, aniso=0, xfrac=0,
               brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0)


def only(**on):
    opts = dict(ALL_OFF)
    opts.update(on)
    return opts


def rand_images(n, h, w, c=3, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, h, w, c)).astype(np.float32)


# ---------------------------------------------------------------------------
# Independent NumPy path.
# ---------------------------------------------------------------------------

def np_shift_reflect(img, tx, ty):
    """out[y, x] = img[y - ty, x - tx] with numpy 'reflect' padding outside the image (img: [H, W, C])."""
    pad = int(max(abs(tx), abs(ty))) + 1
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    return padded[pad - ty:pad - ty + h, pad - tx:pad - tx + w]


def np_warp_matrix(g_inv, h, w):
    """Dense [H*W, H*W] bilinear resampling matrix: output pixel p samples the input at g_inv (u, v, 1)."""
    pad = 4 * max(h, w)
    src = np.pad(np.arange(h * w).reshape(h, w), pad, mode="reflect")   # reflection done by numpy
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    m = np.zeros((h * w, h * w))
    for yo in range(h):
        for xo in range(w):
            px, py, pq = np.asarray(g_inv, np.float64) @ np.array([xo - cx, yo - cy, 1.0])
            x, y = px / pq + cx, py / pq + cy
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            for dy, wy in ((0, 1.0 - fy), (1, fy)):
                for dx, wx in ((0, 1.0 - fx), (1, fx)):
                    m[yo * w + xo, src[y0 + dy + pad, x0 + dx + pad]] += wy * wx
    return m


def np_linear_map(g, c, h, w):
    """(A, b) with augment(x)[flat] = A x[flat] + b for one sample (pixel-major, channel-minor)."""
    warp_m = np_warp_matrix(np.linalg.inv(np.asarray(g, np.float64)), h, w)
    c = np.asarray(c, np.float64)
    return np.kron(warp_m, c[:3, :3]), np.tile(c[:3, 3], h * w)


def np_geom_from_params(prm, i, h, w):
    """Forward G for sample i from the parameter dict, composed in float64 (ADA order, xflip first)."""
    def t(tx, ty):
        return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])

    def s(sx, sy):
        return np.diag([sx, sy, 1.0])

    def r(a):
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])

    v = {k: np.asarray(val)[i] for k, val in prm.items()}
    return (t(v["xfrac"][0] * w, v["xfrac"][1] * h) @ r(v["rotate_post"]) @ s(v["aniso"], 1 / v["aniso"])
            @ r(v["rotate_pre"]) @ s(v["scale"], v["scale"])
            @ t(np.round(v["xint"][0] * w), np.round(v["xint"][1] * h))
            @ r(v["rotate90"] * math.pi / 2) @ s(1 - 2 * v["xflip"], 1))


def np_color_from_params(prm, i):
    """C for sample i: saturation . hue . lumaflip . contrast . brightness, 4x4 float64."""
    v = {k: np.asarray(val)[i] for k, val in prm.items()}
    axis = np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0)

    def hom(m3, off=(0, 0, 0)):
        m = np.eye(4)
        m[:3, :3] = m3
        m[:3, 3] = off
        return m

    bri = hom(np.eye(3), [v["brightness"]] * 3)
    con = hom(np.eye(3) * v["contrast"])
    flip = hom(np.eye(3) - 2 * np.outer(axis, axis) * v["lumaflip"])
    # Rotation about axis by theta via the matrix exponential of theta [axis]_x (series, independent of
    # the Rodrigues closed form).
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) * v["hue"]
    rot, term = np.eye(3), np.eye(3)
    for n in range(1, 40):
        term = term @ k / n
        rot = rot + term
    hue = hom(rot)
    proj = np.outer(axis, axis)
    sat = hom(proj + (np.eye(3) - proj) * v["saturation"])
    return sat @ hue @ flip @ con @ bri


# ---------------------------------------------------------------------------
# p == 0 and unfired samples: exact identity.
# ---------------------------------------------------------------------------

def special_images():
    x = rand_images(3, 8, 6)
    x[0, 0, 0] = [-0.0, 1e-30, -1e-38]
    x[1, 2, 3] = [3.0e5, -7.25, np.float32(1) / 3]
    return x


def test_p0_is_bit_exact_identity_eager():
    x = special_images()
    for p in (0.0, 0, tf.constant(0.0), tf.Variable(0.0)):
        out = augment(x, p, seed=(1, 2)).numpy()
        assert out.tobytes() == x.tobytes()
    out, g, c = augment(x, tf.constant(0.0), return_params=True)
    assert out.numpy().tobytes() == x.tobytes()
    np.testing.assert_array_equal(g.numpy(), np.broadcast_to(np.eye(3), (3, 3, 3)))
    np.testing.assert_array_equal(c.numpy(), np.broadcast_to(np.eye(4), (3, 4, 4)))


def test_unfired_samples_are_returned_exactly():
    # Small p: most samples have nothing fired; their matrices are exact identities and the bilinear
    # sampling at integer pixel centres reproduces them bit for bit (the p > 0 code path).
    x = rand_images(24, 8, 8, seed=1)
    out, g, c = augment(x, 0.05, seed=(5, 6), return_params=True)
    out, g, c = out.numpy(), g.numpy(), c.numpy()
    ident = np.all(g == np.eye(3), axis=(1, 2)) & np.all(c == np.eye(4), axis=(1, 2))
    assert 3 <= ident.sum() < len(x)
    np.testing.assert_array_equal(out[ident], x[ident])
    assert np.all(np.abs(out[~ident] - x[~ident]).max(axis=(1, 2, 3)) > 1e-3)


# ---------------------------------------------------------------------------
# Geometric augmentations against NumPy.
# ---------------------------------------------------------------------------

def test_xflip_matches_numpy_flip():
    x = rand_images(16, 6, 7, seed=2)
    out, g, _ = augment(x, 1.0, seed=(0, 1), return_params=True, **only(xflip=1))
    out, g = out.numpy(), g.numpy()
    flipped = g[:, 0, 0] == -1.0
    assert 0 < flipped.sum() < 16
    for i in range(16):
        expected = x[i, :, ::-1] if flipped[i] else x[i]
        np.testing.assert_array_equal(out[i], expected)
        np.testing.assert_array_equal(g[i], np.diag([-1.0 if flipped[i] else 1.0, 1.0, 1.0]))


def test_rotate90_matches_numpy_rot90():
    x = rand_images(32, 7, 7, seed=3)
    out, g, _ = augment(x, 1.0, seed=(2, 3), return_params=True, **only(rotate90=1))
    out, g = out.numpy(), g.numpy()
    ks = np.round(np.arctan2(g[:, 1, 0], g[:, 0, 0]) / (np.pi / 2)).astype(int) % 4
    assert set(ks) == {0, 1, 2, 3}
    for i in range(32):
        # k quarter turns clockwise as displayed (+x towards +y) = np.rot90 with -k.
        np.testing.assert_array_equal(out[i], np.rot90(x[i], -ks[i], axes=(0, 1)))


def test_xint_moves_content_by_whole_pixels_in_both_axes():
    h, w = 24, 40
    x = rand_images(16, h, w, seed=4)
    out, g, _ = augment(x, 1.0, seed=(3, 4), return_params=True, **only(xint=1))
    out, g = out.numpy(), g.numpy()
    tx, ty = g[:, 0, 2], g[:, 1, 2]
    np.testing.assert_array_equal(tx, np.round(tx))
    np.testing.assert_array_equal(ty, np.round(ty))
    assert np.all(np.abs(tx) <= round(0.125 * w)) and np.all(np.abs(ty) <= round(0.125 * h))
    assert np.any(np.abs(tx) >= 3) and np.any(tx > 0) and np.any(tx < 0) and np.any(ty != 0)
    for i in range(16):
        np.testing.assert_array_equal(g[i][:, :2], np.eye(3)[:, :2])
        np.testing.assert_array_equal(out[i], np_shift_reflect(x[i], int(tx[i]), int(ty[i])))


def test_translation_units_and_direction():
    # t = (3/40, -2/24) of the image size = +3 columns, -2 rows (content moves right and up): fixes the
    # reference's translation units / direction bug.
    h, w = 24, 40
    x = rand_images(1, h, w, seed=5)
    for key in ("xint", "xfrac"):
        out, g, _ = augment(x, 1.0, params={key: [[3.0 / w, -2.0 / h]]}, return_params=True)
        np.testing.assert_allclose(g.numpy()[0], [[1, 0, 3], [0, 1, -2], [0, 0, 1]], atol=1e-5)
        out = out.numpy()[0]
        np.testing.assert_allclose(out[:h - 2, 3:], x[0, 2:, :w - 3], atol=1e-5)      # interior
        np.testing.assert_allclose(out, np_shift_reflect(x[0], 3, -2), atol=1e-5)


def test_arbitrary_rotation_path_by_quarter_turn_equals_rot90():
    x = rand_images(2, 9, 9, seed=6)
    expected = np.rot90(x, -1, axes=(1, 2))
    half = math.pi / 2
    for prm in ({"rotate_pre": half}, {"rotate_post": half}, {"rotate_pre": half / 2, "rotate_post": half / 2},
                {"rotate_pre": half, "aniso": 1.0, "scale": 1.0}):
        out, g, _ = augment(x, 1.0, params=prm, return_params=True)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
        # The matrix applied to points: +x axis -> +y axis, +y -> -x, centre fixed.
        pts = np.array([[1.0, 0, 1], [0, 1.0, 1], [0, 0, 1.0]]).T
        np.testing.assert_allclose(g.numpy()[0] @ pts, [[0, -1, 0], [1, 0, 0], [1, 1, 1]], atol=1e-6)


def test_geometric_matrix_composition_matches_paper_recipe():
    h, w = 12, 20
    prm = {k: v.numpy() for k, v in sample_params(16, 1.0, seed=(7, 8)).items()}
    g, g_inv = (m.numpy() for m in geom_matrices(prm, h, w))
    for i in range(16):
        np.testing.assert_allclose(g[i], np_geom_from_params(prm, i, h, w), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(g[i] @ g_inv[i], np.eye(3), atol=1e-5)
    # Every geometric augmentation fired for some sample at p = 1 (and the rotations are not all zero).
    assert np.any(prm["xflip"] == 1) and np.any(prm["rotate90"] != 0) and np.any(prm["rotate_pre"] != 0)


def test_full_pipeline_matches_numpy_linear_map():
    h, w = 7, 6
    x = rand_images(4, h, w, seed=7)
    out, g, c = augment(x, 1.0, seed=(9, 10), return_params=True)
    out, g, c = out.numpy(), g.numpy(), c.numpy()
    for i in range(4):
        a, b = np_linear_map(g[i], c[i], h, w)
        np.testing.assert_allclose(out[i].ravel(), a @ x[i].ravel() + b, atol=2e-4)
    # warp / apply_color separately with the same matrices agree with the pipeline.
    np.testing.assert_allclose(apply_color(warp(x, np.linalg.inv(g)), c).numpy(), out, atol=1e-4)


# ---------------------------------------------------------------------------
# Color.
# ---------------------------------------------------------------------------

def test_brightness_adds_a_per_sample_constant():
    x = rand_images(8, 5, 4, seed=8)
    out, _, c = augment(x, 1.0, seed=(1, 1), return_params=True, **only(brightness=1))
    diff = out.numpy() - x
    per_sample = diff[:, :1, :1, :1]
    np.testing.assert_allclose(diff, np.broadcast_to(per_sample, diff.shape), atol=1e-6)
    np.testing.assert_allclose(per_sample.ravel(), c.numpy()[:, 0, 3], atol=1e-6)
    assert np.std(per_sample) > 0.01


def test_contrast_scales_about_zero():
    x = rand_images(8, 5, 4, seed=9)
    out, _, c = augment(x, 1.0, seed=(1, 2), return_params=True, **only(contrast=1))
    factor = c.numpy()[:, 0, 0]
    np.testing.assert_allclose(out.numpy(), x * factor[:, None, None, None], rtol=1e-6, atol=1e-7)


def test_zero_saturation_gives_grey_luma():
    x = rand_images(3, 5, 4, seed=10)
    out = augment(x, 1.0, params={"saturation": 0.0}).numpy()
    grey = np.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape)
    np.testing.assert_allclose(out, grey, atol=1e-6)


def test_lumaflip_is_an_involution_that_negates_luma():
    x = rand_images(3, 5, 4, seed=11)
    once = augment(x, 1.0, params={"lumaflip": 1.0})
    twice = augment(once, 1.0, params={"lumaflip": 1.0}).numpy()
    np.testing.assert_allclose(twice, x, atol=1e-6)
    once = once.numpy()
    np.testing.assert_allclose(once.mean(-1), -x.mean(-1), atol=1e-6)
    np.testing.assert_allclose(once - once.mean(-1, keepdims=True), x - x.mean(-1, keepdims=True), atol=1e-6)


def test_hue_rotation_keeps_luma_and_permutes_at_120_degrees():
    x = rand_images(4, 5, 4, seed=12)
    out = augment(x, 1.0, params={"hue": 2 * math.pi / 3}).numpy()
    # A third of a turn about (1, 1, 1) maps e_r -> e_g -> e_b -> e_r: (r, g, b) -> (b, r, g).
    np.testing.assert_allclose(out, x[..., [2, 0, 1]], atol=1e-6)
    out, _, _ = augment(x, 1.0, seed=(4, 4), return_params=True, **only(hue=1))
    out = out.numpy()
    np.testing.assert_allclose(out.mean(-1), x.mean(-1), atol=1e-6)
    chroma = np.linalg.norm(x - x.mean(-1, keepdims=True), axis=-1)
    np.testing.assert_allclose(np.linalg.norm(out - out.mean(-1, keepdims=True), axis=-1), chroma, atol=1e-5)
    assert np.abs(out - x).max() > 0.1


def test_color_matrix_composition_matches_paper_recipe():
    prm = {k: v.numpy() for k, v in sample_params(16, 1.0, seed=(11, 12)).items()}
    c = color_matrix(prm).numpy()
    for i in range(16):
        np.testing.assert_allclose(c[i], np_color_from_params(prm, i), atol=2e-5)
    assert np.any(prm["lumaflip"] == 1)


# ---------------------------------------------------------------------------
# Statistics and determinism.
# ---------------------------------------------------------------------------

def test_firing_statistics():
    n = 4000
    x = rand_images(n, 2, 2, seed=13)
    out, g, _ = augment(x, 0.5, seed=(1, 3), return_params=True, **only(xflip=1))
    flipped = g.numpy()[:, 0, 0] == -1
    # ADA: the flip fires with probability p, then flips with probability 1/2.
    assert abs(flipped.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    np.testing.assert_array_equal(out.numpy()[flipped], x[flipped][:, :, ::-1])

    m = 20000
    prm = sample_params(m, 0.5, seed=(2, 5), **only(rotate=1, brightness=1, contrast=1, xint=1))
    prm = {k: v.numpy() for k, v in prm.items()}
    pre, post = prm["rotate_pre"] != 0, prm["rotate_post"] != 0
    p_rot = 1 - math.sqrt(0.5)
    tol = 5 * math.sqrt(0.25 / m)
    assert abs(pre.mean() - p_rot) < tol and abs(post.mean() - p_rot) < tol
    assert abs((pre | post).mean() - 0.5) < tol                   # some rotation with probability p
    assert np.all(np.abs(prm["rotate_pre"]) <= math.pi)
    fired_b = prm["brightness"] != 0
    assert abs(fired_b.mean() - 0.5) < tol
    assert abs(prm["brightness"][fired_b].std() - 0.2) < 0.01
    log_c = np.log2(prm["contrast"][prm["contrast"] != 1])
    assert abs(log_c.std() - 0.5) < 0.025 and abs(log_c.mean()) < 0.025
    assert np.all(np.abs(prm["xint"]) <= 0.125)
    # Disabled augmentations hold identity values.
    assert np.all(prm["xflip"] == 0) and np.all(prm["saturation"] == 1) and np.all(prm["scale"] == 1)


def test_seeded_is_deterministic_and_seedless_is_random():
    x = rand_images(4, 8, 8, seed=14)
    a = augment(x, 1.0, seed=(5, 5)).numpy()
    np.testing.assert_array_equal(a, augment(x, 1.0, seed=tf.constant([5, 5])).numpy())
    assert np.abs(a - augment(x, 1.0, seed=(5, 6)).numpy()).max() > 0.1
    assert np.abs(augment(x, 1.0).numpy() - augment(x, 1.0).numpy()).max() > 0.1
    # Disabling one augmentation leaves the others' draws unchanged.
    p1 = sample_params(8, 1.0, seed=(3, 3))
    p2 = sample_params(8, 1.0, seed=(3, 3), xflip=0)
    np.testing.assert_array_equal(p1["hue"].numpy(), p2["hue"].numpy())
    np.testing.assert_array_equal(p1["xint"].numpy(), p2["xint"].numpy())
    assert set(p1) == set(PARAM_KEYS)


def test_unknown_batch_dimension():
    x = rand_images(5, 8, 8, seed=15)
    p = tf.Variable(0.7)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([2], tf.int32)])
    def f(images, seed):
        return augment(images, p, seed=seed, return_params=True)

    for n in (3, 5):
        out, g, c = f(x[:n], tf.constant([1, 2]))
        assert out.shape == (n, 8, 8, 3) and g.shape == (n, 3, 3) and c.shape == (n, 4, 4)
        ref, g_ref, c_ref = augment(x[:n], 0.7, seed=(1, 2), return_params=True)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), atol=1e-6)
    p.assign(0.0)
    assert f(x, tf.constant([1, 2]))[0].numpy().tobytes() == x.tobytes()


def test_other_channel_counts_and_validation():
    x = rand_images(2, 6, 6, c=1, seed=16)
    out, g, _ = augment(x, 1.0, seed=(1, 1), return_params=True, brightness=0, contrast=0, lumaflip=0, hue=0,
                        saturation=0)
    for i in range(2):
        expected = np_warp_matrix(np.linalg.inv(g.numpy()[i]), 6, 6) @ x[i].ravel()
        np.testing.assert_allclose(out.numpy()[i].ravel(), expected, atol=1e-4)
    with pytest.raises(ValueError):
        augment(x, 1.0)                                  # color needs RGB
    with pytest.raises(ValueError):
        augment(np.zeros([6, 6, 3], np.float32), 1.0)    # not NHWC
    with pytest.raises(TypeError):
        augment(x, 1.0, bogus=1)
    with pytest.raises(KeyError):
        augment(rand_images(1, 4, 4), 1.0, params={"nope": 1.0})


# ---------------------------------------------------------------------------
# Gradients (eager and XLA).
# ---------------------------------------------------------------------------

def vjp(x, p, seed, r):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, g, c = augment(x, p, seed=seed, return_params=True)
        loss = tf.reduce_sum(y * r)
    return y, g, c, tape.gradient(loss, x)


jit_vjp = tf.function(vjp, jit_compile=True)


def check_forward_and_adjoint(x, r, y, g, c, grad):
    n, h, w, _ = x.shape
    for i in range(n):
        a, b = np_linear_map(g[i], c[i], h, w)
        np.testing.assert_allclose(y[i].ravel(), a @ x[i].ravel() + b, atol=2e-4)
        np.testing.assert_allclose(grad[i].ravel(), a.T @ r[i].ravel(), atol=2e-4)
    # Dot-product test on the linear part: <A x, r> == <x, A^T r> (remove the brightness offset first).
    lin = y - c[:, None, None, :3, 3]
    np.testing.assert_allclose(np.sum(lin * r, dtype=np.float64), np.sum(x * grad, dtype=np.float64),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_gradient_is_the_adjoint(mode):
    h, w = 6, 5
    x = rand_images(3, h, w, seed=17)
    x[0, 0, 0] = [-0.0, 1e-30, -1e-38]                     # signed zero, tiny, subnormal
    x = tf.constant(x)
    r = rand_images(3, h, w, seed=18)
    fn = vjp if mode == "eager" else jit_vjp
    y, g, c, grad = (t.numpy() for t in fn(x, tf.constant(1.0), tf.constant([21, 22]), tf.constant(r)))
    assert np.all(np.isfinite(grad))
    assert np.any(np.abs(g[:, :2, :2] - np.eye(2)) > 1e-3)          # a non-trivial warp fired
    check_forward_and_adjoint(x.numpy(), r, y, g, c, grad)
    # p = 0 through the same (compiled) function: bit-exact identity, gradient = r.
    y0, _, _, grad0 = (t.numpy() for t in fn(x, tf.constant(0.0), tf.constant([21, 22]), tf.constant(r)))
    assert y0.tobytes() == x.numpy().tobytes()
    np.testing.assert_array_equal(grad0, r)


def tiny_d(x, w1, w2):
    h = tf.nn.softplus(tf.nn.conv2d(x, w1, strides=1, padding="SAME"))
    return tf.reduce_sum(tf.reduce_mean(h, axis=[1, 2]) * w2, axis=-1)


def r1_through_augment(x, w1, w2, p, seed):
    """R1 = |d sum(D(augment(x))) / dx|^2 and its gradient w.r.t. D's weights (grad of grad)."""
    with tf.GradientTape() as outer:
        outer.watch([w1, w2])
        with tf.GradientTape() as inner:
            inner.watch(x)
            total = tf.reduce_sum(tiny_d(augment(x, p, seed=seed), w1, w2))
        dx = inner.gradient(total, x)
        penalty = tf.reduce_sum(tf.square(dx))
    return (penalty,) + tuple(outer.gradient(penalty, [w1, w2]))


jit_r1 = tf.function(r1_through_augment, jit_compile=True)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_grad_of_grad_through_augment(mode):
    rng = np.random.default_rng(19)
    x = tf.constant(rand_images(2, 8, 8, seed=20))
    w1 = rng.normal(size=(3, 3, 3, 4)).astype(np.float32) * 0.5
    w2 = rng.normal(size=(4,)).astype(np.float32)
    d1 = rng.normal(size=w1.shape).astype(np.float32)
    d2 = rng.normal(size=w2.shape).astype(np.float32)
    fn = r1_through_augment if mode == "eager" else jit_r1
    p, seed = tf.constant(1.0), tf.constant([3, 9])
    pen, g1, g2 = (t.numpy() for t in fn(x, tf.constant(w1), tf.constant(w2), p, seed))
    assert np.isfinite(pen) and pen > 0
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2)) and np.abs(g1).max() > 0
    # Central finite difference of the penalty along (d1, d2) (same seed: same augmentation).
    eps = 1e-2
    plus = fn(x, tf.constant(w1 + eps * d1), tf.constant(w2 + eps * d2), p, seed)[0].numpy()
    minus = fn(x, tf.constant(w1 - eps * d1), tf.constant(w2 - eps * d2), p, seed)[0].numpy()
    directional = np.sum(g1 * d1, dtype=np.float64) + np.sum(g2 * d2, dtype=np.float64)
    np.testing.assert_allclose((plus - minus) / (2 * eps), directional, rtol=2e-2)


def test_jit_without_seed_compiles_and_is_random():
    f = tf.function(lambda images: augment(images, 1.0), jit_compile=True)
    x = rand_images(2, 8, 8, seed=21)
    a, b = f(x).numpy(), f(x).numpy()
    assert np.all(np.isfinite(a)) and np.abs(a - b).max() > 0.05


# ---------------------------------------------------------------------------
# AdaptiveAugment.
# ---------------------------------------------------------------------------

class ReferenceController:
    """Plain-Python transcription of the reference's tune() rule."""

    def __init__(self, p, target, length, every):
        self.p, self.target, self.length, self.every = p, target, length, every
        self.buf, self.n, self.steps, self.r_t = 0.0, 0.0, 0, 0.0

    def tune(self, logits):
        logits = np.asarray(logits)
        self.buf += float(np.sign(logits).sum())
        self.n += logits.size
        self.steps += 1
        if self.steps % self.every == 0:
            self.r_t = self.buf / self.n
            sign = 1 if self.r_t > self.target else -1
            self.p = min(1.0, max(0.0, self.p + sign * self.n / self.length))
            self.buf = self.n = 0.0
        return self.p


def state(ada):
    return {k: v.numpy() for k, v in ada.state_variables().items()}


def test_ada_update_rule_exact():
    ada = AdaptiveAugment(target=0.6, ada_length=1000, update_every=8)
    assert ada.adaptive and ada.p.numpy() == 0.0
    pos = np.array([[0.5], [2.0], [1.0], [3.0]], np.float32)                   # r_t = 1 > 0.6
    for step in range(7):
        ada.tune(pos)
        s = state(ada)
        assert s["p"] == 0.0 and s["r_t"] == 0.0                              # nothing moves in between
        assert s["sign_sum"] == 4 * (step + 1) and s["count"] == 4 * (step + 1)
    p = ada.tune(pos).numpy()
    s = state(ada)
    np.testing.assert_allclose(p, 32 / 1000, rtol=1e-6)
    assert s["r_t"] == 1.0 and s["sign_sum"] == 0 and s["count"] == 0 and s["steps"] == 0
    mixed = np.array([1.0, 1.0, 1.0, -1.0], np.float32)                        # r_t = 0.5 < 0.6
    for _ in range(8):
        ada.tune(mixed)
    np.testing.assert_allclose(ada.p.numpy(), 0.0, atol=1e-7)
    assert ada.r_t.numpy() == 0.5
    for _ in range(8):
        ada.tune(mixed)
    assert ada.p.numpy() == 0.0                                               # clamped at 0
    # r_t exactly at the target moves p down (strict ">" in the reference).
    ada = AdaptiveAugment(0.2, adaptive=True, target=0.5, ada_length=1000, update_every=2)
    ada.tune(mixed)
    ada.tune(mixed)
    np.testing.assert_allclose(ada.p.numpy(), 0.2 - 8 / 1000, rtol=1e-6)
    # Clamped at 1; zero logits count in n but add 0 to the sign sum.
    ada = AdaptiveAugment(0.9, adaptive=True, target=0.5, ada_length=10, update_every=1)
    ada.tune(np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32))                 # r_t = 3 / 5 > 0.5
    assert ada.p.numpy() == 1.0 and abs(ada.r_t.numpy() - 0.6) < 1e-7


@pytest.mark.parametrize("jit", [False, True])
def test_ada_in_tf_function_matches_reference_trajectory(jit):
    ada = AdaptiveAugment(target=0.6, ada_length=200, update_every=3)
    ref = ReferenceController(0.0, 0.6, 200, 3)
    tune = tf.function(ada.tune, jit_compile=jit)
    rng = np.random.default_rng(22)
    trajectory = []
    for step in range(30):
        frac = 0.95 if step < 15 else 0.3
        logits = np.where(rng.uniform(size=(6, 1)) < frac, 1.0, -1.0).astype(np.float32) * rng.uniform(0.1, 2.0)
        got = tune(tf.constant(logits)).numpy()
        expected = ref.tune(logits)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        np.testing.assert_allclose(ada.r_t.numpy(), ref.r_t, atol=1e-6)
        assert 0.0 <= got <= 1.0
        trajectory.append(got)
    assert max(trajectory) > 0.05 and trajectory[-1] < max(trajectory)      # went up, then down


def test_ada_fixed_mode_and_checkpoint(tmp_path):
    fixed = AdaptiveAugment(0.3, ada_length=10, update_every=2)
    assert not fixed.adaptive
    for _ in range(4):
        fixed.tune(np.ones([4], np.float32))
    np.testing.assert_allclose(fixed.p.numpy(), 0.3)
    assert fixed.r_t.numpy() == 1.0                          # still reported for logging

    ada = AdaptiveAugment(target=0.6, ada_length=100, update_every=4)
    for _ in range(6):                                        # one update + 2 pending steps
        ada.tune(np.ones([2], np.float32))
    path = tf.train.Checkpoint(ada=ada).save(str(tmp_path / "ada"))
    saved = state(ada)
    fresh = AdaptiveAugment(target=0.6, ada_length=100, update_every=4)
    tf.train.Checkpoint(ada=fresh).restore(path).assert_consumed()
    assert state(fresh) == saved and saved["steps"] == 2 and saved["count"] == 4
    fresh.tune(np.ones([2], np.float32))
    assert fresh.p.numpy() == saved["p"]
    fresh.tune(np.ones([2], np.float32))                      # 4th step since the last update
    np.testing.assert_allclose(fresh.p.numpy(), saved["p"] + 8 / 100, rtol=1e-6)


def test_ada_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        ada = AdaptiveAugment(0.5, adaptive=True, target=0.6, ada_length=1000, update_every=2)

    @tf.function
    def d_step(logits):
        strategy.run(ada.accumulate, args=(logits,))          # per replica, no communication
        return ada.maybe_update()                             # cross-replica context

    logits = tf.constant([1.0, -1.0, -1.0, -1.0])
    assert d_step(logits).numpy() == 0.5
    np.testing.assert_allclose(d_step(logits).numpy(), 0.5 - 8 / 1000, rtol=1e-6)
    assert ada.r_t.numpy() == -0.5 and ada.count.numpy() == 0
    with pytest.raises(RuntimeError):
        strategy.run(ada.tune, args=(logits,))
