"""GAN losses and regularisers (the reference's definitions), NHWC.

Every function returns per-replica values averaged over the LOCAL batch; the
training step scales by ``1 / num_replicas`` so gradients summed across
replicas equal the gradient of the global-batch mean.
"""

from __future__ import annotations

import math

import tensorflow as tf


def d_logistic_loss(real_logits, fake_logits):
    """mean(softplus(-D(real))) + mean(softplus(D(fake)))."""
    return d_logistic_real_term(real_logits) + d_logistic_fake_term(fake_logits)


def d_logistic_real_term(real_logits):
    """mean(softplus(-D(real))): d_logistic_loss's real half (the trainer differentiates the halves apart)."""
    return tf.reduce_mean(tf.nn.softplus(-real_logits))


def d_logistic_fake_term(fake_logits):
    """mean(softplus(D(fake))): d_logistic_loss's fake half."""
    return tf.reduce_mean(tf.nn.softplus(fake_logits))


def g_nonsaturating_loss(fake_logits):
    """mean(softplus(-D(fake)))."""
    return tf.reduce_mean(tf.nn.softplus(-fake_logits))


def _scale_inner(total, inner_scale):
    """The inner gradient's target (float16 training, tf_cartoon.training.loss_scale): ``inner_scale * total``,
    so the float16 backward pass that computes it sees scaled values; record it on the tape."""
    return total if inner_scale is None else total * tf.cast(inner_scale, total.dtype)


def _unscale_inner(grad, inner_scale):
    """The inner gradient without its scale again, in the float32 of the input it was taken for."""
    return grad if inner_scale is None else grad / tf.cast(inner_scale, grad.dtype)


def r1_penalty(d_fn, real_images, inner_scale=None):
    """Un-weighted R1: mean over the batch of sum over pixels of (d sum D(real) / d real)^2.

    ``d_fn`` maps images to logits (it may include augmentation). Differentiable
    w.r.t. D's variables (grad-of-grad), which is how R1 trains D. ``inner_scale``: the
    loss scale of the inner gradient's backward pass (float16 training; the result is unscaled).
    Returns (penalty, real_logits).
    """
    real_images = tf.convert_to_tensor(real_images)
    with tf.GradientTape() as tape:
        tape.watch(real_images)
        logits = d_fn(real_images)
        total = _scale_inner(tf.reduce_sum(logits), inner_scale)
    grad = _unscale_inner(tape.gradient(total, real_images), inner_scale)
    return tf.reduce_mean(tf.reduce_sum(tf.square(grad), axis=[1, 2, 3])), logits


def path_length_penalty(synthesis_fn, wplus, mean_path_length, noise=None, decay: float = 0.01, inner_scale=None):
    """StyleGAN2 path-length regulariser on W+ ``[N, n_latent, D]``.

    y = noise / sqrt(H*W) (noise ~ N(0, 1) drawn here unless given, NHWC like the image);
    L = sqrt(mean over rows of sum over dims of (d sum(img * y) / d W+)^2);
    a = mean_path_length + decay * (mean(L) - mean_path_length) (not detached, as the reference);
    penalty = mean((L - a)^2). ``inner_scale``: as r1_penalty's. Returns (penalty, stop_gradient(a), L).
    """
    wplus = tf.convert_to_tensor(wplus)
    with tf.GradientTape() as tape:
        tape.watch(wplus)
        img = synthesis_fn(wplus)
        if noise is None:
            noise = tf.random.normal(tf.shape(img), dtype=img.dtype)
        h, w = img.shape[1], img.shape[2]
        y = tf.cast(noise, img.dtype) / math.sqrt(h * w)
        total = _scale_inner(tf.reduce_sum(img * y), inner_scale)
    grad = _unscale_inner(tape.gradient(total, wplus), inner_scale)
    lengths = tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(grad), axis=2), axis=1))
    path_mean = mean_path_length + decay * (tf.reduce_mean(lengths) - mean_path_length)
    penalty = tf.reduce_mean(tf.square(lengths - path_mean))
    return penalty, tf.stop_gradient(path_mean), lengths


def structure_loss(source: dict, target: dict, layers):
    """Sum over L in ``layers`` of mean((target[L] - source[L])^2); also the per-layer terms.

    ``source`` / ``target`` map swap index L to the tapped tensors (feature maps after
    convs.{2L-1}, what the reference trains with, or the RGB skips after to_rgbs.{L-1},
    what the paper's figure shows). The source side carries no gradient.
    """
    per_layer = {L: tf.reduce_mean(tf.square(target[L] - tf.stop_gradient(source[L]))) for L in layers}
    return tf.add_n(list(per_layer.values())), per_layer
