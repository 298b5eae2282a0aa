"""StyleGAN2 networks: mapping, skip generator, resnet discriminator (NHWC).

The architecture is rosinality/stylegan2-pytorch's, with the Cartoon-StyleGAN2
forward options (W+ injection for FreezeSG / freezeFC, feature taps and
layer swapping). Reads in one sitting:

  z [N, D] --MappingNetwork--> w [N, D] --broadcast / mix / truncate--> W+ [N, n_latent, D]
  W+ --synthesis--> const 4x4 -> conv1 -> to_rgb1
                    for each block b (resolution 2^(b+3)):
                        convs[2b] (upsample) -> convs[2b+1] -> [tap / swap L=b+1] -> to_rgbs[b] (+ skip)

W+ rows: conv1 <- 0, to_rgb1 <- 1; block b: convs[2b] <- 2b+1, convs[2b+1] <- 2b+2,
to_rgbs[b] <- 2b+3. Noise inputs: 0 -> conv1, 2b+1 and 2b+2 -> block b.

Layout: NHWC everywhere (see layers.py for why); images are [N, H, W, 3],
the reference's NCHW only appears in tf_cartoon/io (checkpoint conversion).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tf_cartoon import arch, latent
from tf_cartoon.arch import log2_size, resolve_channels
from tf_cartoon.layers import (DEFAULT_BLUR, ConstantInput, ConvLayer, EqualLinear, MinibatchStddev, PixelNorm,
                               ResBlock, StyledConv, ToRGB, track_items)

class MappingNetwork(keras.layers.Layer):
    """PixelNorm then n_mlp x EqualLinear(lr_mul) + leaky ReLU: z [.., z_dim] -> w [.., style_dim].

    Normalises over the LAST axis, so [N, D] and [N, n, D] inputs both work (the
    reference normalises a 3-D input across rows; we do not reproduce that). z_dim is style_dim in the
    reference; NVlabs' networks may have another (the first layer then maps z_dim -> style_dim).
    """

    def __init__(self, style_dim=512, n_mlp=8, lr_mul=0.01, z_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.style_dim, self.n_mlp, self.lr_mul = int(style_dim), int(n_mlp), float(lr_mul)
        self.z_dim = self.style_dim if z_dim is None else int(z_dim)
        self.norm = PixelNorm(name="pixel_norm")
        self.dense = [EqualLinear(self.z_dim if i == 0 else style_dim, style_dim, lr_mul=lr_mul, activation="lrelu",
                                  name=f"dense_{i + 1}") for i in range(self.n_mlp)]
        track_items(self, "dense", self.dense)
        self.built = True

    def call(self, z):
        x = self.norm(z)
        for layer in self.dense:
            x = layer(x)
        return x

    def get_config(self):
        return {**super().get_config(), "style_dim": self.style_dim, "n_mlp": self.n_mlp, "lr_mul": self.lr_mul,
                "z_dim": self.z_dim}


class SynthesisOutput(NamedTuple):
    image: tf.Tensor  # [N, size, size, 3]
    features: dict  # swap index L -> feature after convs[2L-1] (before to_rgbs[L-1]), when tapped
    skips: list  # RGB skip after to_rgb1, to_rgbs[0], ... (resolutions 4, 8, ..., size), when asked


class Generator(keras.Model):
    """StyleGAN2 skip generator.

    ``call`` mirrors the reference's forward with its options; the pieces are also
    available separately: :meth:`mapping`, :meth:`make_wplus`, :meth:`synthesis`.
    """

    def __init__(self, size=256, style_dim=512, n_mlp=8, channel_multiplier=2, lr_mlp=0.01, channels=None,
                 blur_kernel=DEFAULT_BLUR, fused_modconv=False, z_dim=None, conv_clamp=None, **kwargs):
        kwargs.setdefault("name", "generator")
        super().__init__(**kwargs)
        self.size, self.style_dim, self.n_mlp = int(size), int(style_dim), int(n_mlp)
        self.z_dim = self.style_dim if z_dim is None else int(z_dim)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        # The truncation centre a checkpoint stores (NVlabs' w_avg, rosinality's latent_avg), [1, style_dim];
        # None: mean_latent computes the mean of the mapping instead. Set by the checkpoint loaders.
        self.stored_mean_latent = None
        self.channel_multiplier, self.lr_mlp = int(channel_multiplier), float(lr_mlp)
        self.blur_kernel = tuple(blur_kernel)
        self.log_size = log2_size(size)
        self.channels = resolve_channels(size, channel_multiplier, channels)
        self.num_layers = arch.num_noise(size)  # noise inputs
        self.n_latent = arch.n_latent(size)  # W+ rows
        self.n_blocks = arch.n_blocks(size)  # synthesis blocks above 4x4 = valid swap indices 1..n_blocks
        ch = self.channels

        self.style = MappingNetwork(style_dim, n_mlp, lr_mlp, z_dim=self.z_dim, name="style")
        self.const_input = ConstantInput(ch[4], name="input")
        clip = {"conv_clamp": self.conv_clamp, "fused": fused_modconv}
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel, name="conv1", **clip)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False, name="to_rgb1", **clip)
        self.convs, self.to_rgbs = [], []
        in_ch = ch[4]
        for b in range(self.n_blocks):
            out_ch = ch[2 ** (b + 3)]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel,
                                         name=f"convs_{2 * b}", **clip))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel,
                                         name=f"convs_{2 * b + 1}", **clip))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, name=f"to_rgbs_{b}", **clip))
            in_ch = out_ch
        # The stored noise maps (reference buffers noises.noise_i), [1, R, R, 1].
        self.noise_buffers = [
            self.add_weight(name=f"noise_{i}", shape=(1, self.noise_resolution(i), self.noise_resolution(i), 1),
                            initializer=keras.initializers.RandomNormal(), trainable=False)
            for i in range(self.num_layers)
        ]
        track_items(self, "convs", self.convs)
        track_items(self, "to_rgbs", self.to_rgbs)
        track_items(self, "noise", self.noise_buffers)
        self._fused = bool(fused_modconv)
        self.built = True

    # -- configuration -----------------------------------------------------------------------------
    @staticmethod
    def noise_resolution(i: int) -> int:
        return arch.noise_resolution(i)

    @property
    def fused_modconv(self) -> bool:
        return self._fused

    @fused_modconv.setter
    def fused_modconv(self, value: bool) -> None:
        """Switch every modulated conv between the fused and the non-fused path (same maths)."""
        self._fused = bool(value)
        for layer in [self.conv1, self.to_rgb1, *self.convs, *self.to_rgbs]:
            layer.conv.fused = self._fused

    def get_config(self):
        """The constructor's arguments; z_dim and conv_clamp only where they differ from the reference's
        (style_dim, none), so that configs of reference networks stay as they were."""
        extra = {**({"z_dim": self.z_dim} if self.z_dim != self.style_dim else {}),
                 **({"conv_clamp": self.conv_clamp} if self.conv_clamp is not None else {})}
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "lr_mlp": self.lr_mlp,
                "channels": {str(k): v for k, v in self.channels.items()},
                "blur_kernel": list(self.blur_kernel), "fused_modconv": self._fused, "name": self.name, **extra}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- latents -----------------------------------------------------------------------------------
    def mapping(self, z):
        """z [N, z_dim] (or [N, n, z_dim]) -> w [N, (n,) style_dim]."""
        return self.style(z)

    def mean_latent(self, n: int = 4096, seed: int | None = None):
        """The truncation centre, [1, style_dim]: the checkpoint's stored one where it has one
        (``stored_mean_latent``: NVlabs' w_avg, the average of w over training, which NVlabs' code truncates
        toward), else the mean of the mapping over ``n`` N(0, 1) latents. Float32 whatever the compute dtype:
        the mean of thousands of bfloat16 rows is summed in float32."""
        if self.stored_mean_latent is not None:
            return tf.constant(np.reshape(self.stored_mean_latent, [1, self.style_dim]), tf.float32)
        z = (tf.random.stateless_normal([n, self.z_dim], seed=[seed, 0]) if seed is not None
             else tf.random.normal([n, self.z_dim]))
        return tf.reduce_mean(tf.cast(self.style(z), tf.float32), axis=0, keepdims=True)

    def make_wplus(self, styles, input_is_latent=False, truncation=1.0, truncation_latent=None, inject_index=None,
                   put_latent=None, freeze_fc=None):
        """Reference latent logic -> W+ [N, n_latent, style_dim].

        styles: a tensor or a list of one or two tensors, each [N, D] (z or w) or
          [N, n_latent, D] (W+, with ``input_is_latent``).
        truncation: python float or a tensor (scalar or [N]); applied as
          ``t + psi * (w - t)`` to the mapped styles when psi < 1 (tensor: always).
        inject_index: with two styles, rows < index come from the first, the rest
          from the second; None draws it uniformly in [1, n_latent - 1]. A tensor works.
        put_latent: FreezeSG (Cartoon fork): with two styles, rows < inject_index come
          from ``put_latent`` (the source's W+), the rest from the first style.
        freeze_fc: freezeFC (Cartoon fork): with two styles, the whole W+ is ``freeze_fc``.
        """
        if not isinstance(styles, (list, tuple)):
            styles = [styles]
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"styles must hold one or two tensors, got {len(styles)}")
        styles = [tf.convert_to_tensor(s) for s in styles]
        width = self.style_dim if input_is_latent else self.z_dim
        for s in styles:
            if s.shape.rank not in (2, 3) or (s.shape[-1] is not None and s.shape[-1] != width):
                raise ValueError(f"style tensor must be [N, {width}] or [N, {self.n_latent}, "
                                 f"{width}], got {s.shape}")
            if s.shape.rank == 3 and s.shape[1] is not None and s.shape[1] != self.n_latent:
                raise ValueError(f"W+ input must have {self.n_latent} rows, got shape {s.shape}")
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if not (isinstance(truncation, (int, float, np.number)) and truncation >= 1):
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. generator.mean_latent(4096))")
            styles = [latent.truncate(s, truncation_latent, truncation) for s in styles]
        n = self.n_latent
        if len(styles) == 1:
            return latent.to_wplus(styles[0], n)
        if freeze_fc is not None:
            return tf.convert_to_tensor(freeze_fc)
        if inject_index is None:
            inject_index = tf.random.uniform([], 1, n, dtype=tf.int32)
        first = put_latent if put_latent is not None else styles[0]
        second = styles[0] if put_latent is not None else styles[1]
        return latent.mix(latent.to_wplus(tf.convert_to_tensor(first), n), latent.to_wplus(second, n),
                          latent.cutoff_rows(n, inject_index))

    # -- synthesis ---------------------------------------------------------------------------------
    def stored_noise(self):
        return list(self.noise_buffers)

    def synthesis(self, wplus, noise=None, randomize_noise=True, tap_layers=(), swap_layer=None, swap_feature=None,
                  return_skips=False, stop_after_layer=None, recompute=False):
        """W+ [N, n_latent, D] -> SynthesisOutput.

        noise: list of ``num_layers`` maps ([N or 1, R, R, 1] or None entries);
          None -> fresh N(0, 1) when ``randomize_noise`` else the stored buffers.
        tap_layers: swap indices L (1..n_blocks) whose feature after convs[2L-1] to return.
        swap_layer / swap_feature: replace that feature by ``swap_feature`` (layer swapping).
        stop_after_layer: return after block L (no image): its feature, and with
          ``return_skips`` its RGB skip; the source side of the structure loss needs
          only these low-resolution outputs.
        recompute: gradient checkpointing (``recompute_blocks``): a backward pass keeps only each
          block's inputs and recomputes the block's forward; same values and gradients, far less memory.
          True: every block; an int k: the k highest-resolution blocks (and their ToRGBs) only.
        """
        wplus = tf.convert_to_tensor(wplus)
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.stored_noise()
        if len(noise) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} maps, got {len(noise)}")
        tap = set(tap_layers)
        for L in tap | ({swap_layer} if swap_layer is not None else set()) | (
                {stop_after_layer} if stop_after_layer is not None else set()):
            self._check_layer(L)
        tap = {int(t) for t in tap}
        if (swap_layer is None) != (swap_feature is None):
            raise ValueError("swap_layer and swap_feature go together")

        x = self.const_input(tf.shape(wplus)[0])
        first_recomputed = _first_recomputed(recompute, self.n_blocks)
        if first_recomputed < self.n_blocks:  # a recomputed block must see the same noise twice: draw it here
            noise = [tf.random.normal(tf.stack([tf.shape(wplus)[0], self.noise_resolution(i),
                                                self.noise_resolution(i), 1]), dtype=x.dtype) if n is None else n
                     for i, n in enumerate(noise)]
        x = self.conv1(x, wplus[:, 0], noise[0])
        skip = self.to_rgb1(x, wplus[:, 1])
        features, skips = {}, [skip] if return_skips else []
        for b in range(self.n_blocks):
            L = b + 1
            again = b >= first_recomputed
            x = recompute_blocks(self._conv_pair(b), again)(x, wplus[:, 2 * b + 1], wplus[:, 2 * b + 2],
                                                             noise[2 * b + 1], noise[2 * b + 2])
            if L in tap:
                features[L] = x
            if L == swap_layer:
                x = self._check_swap_feature(swap_feature, x, L)
            if L == stop_after_layer and not return_skips:
                return SynthesisOutput(None, features, skips)
            skip = recompute_blocks(self.to_rgbs[b], again)(x, wplus[:, 2 * b + 3], skip)
            if return_skips:
                skips.append(skip)
            if L == stop_after_layer:
                return SynthesisOutput(None, features, skips)
        return SynthesisOutput(skip, features, skips)

    def _conv_pair(self, b):
        """Block b's two styled convs (upsampling, then same-size) as one function of tensors."""
        def pair(x, w_up, w, noise_up, noise):
            x = self.convs[2 * b](x, w_up, noise_up)
            return self.convs[2 * b + 1](x, w, noise)
        return pair

    def call(self, styles, input_is_latent=False, truncation=1.0, truncation_latent=None, inject_index=None,
             noise=None, randomize_noise=True, return_latents=False, swap_layer=None, swap_feature=None,
             put_latent=None, freeze_fc=None, training=None):
        """The reference forward. Returns the image [N, H, W, 3]; with
        ``return_latents`` a tuple (image, W+); with ``swap_layer`` a tuple
        (image, feature at that layer BEFORE the swap), like the reference."""
        wplus = self.make_wplus(styles, input_is_latent, truncation, truncation_latent, inject_index, put_latent,
                                freeze_fc)
        out = self.synthesis(wplus, noise, randomize_noise, tap_layers=() if swap_layer is None else (swap_layer,),
                             swap_layer=swap_layer if swap_feature is not None else None, swap_feature=swap_feature)
        if return_latents:
            return out.image, wplus
        if swap_layer is not None:
            return out.image, out.features[swap_layer]
        return out.image

    def _check_layer(self, L):
        latent.check_layers([L], self.n_blocks, self.size, "swap/tap layer")

    def _check_swap_feature(self, feature, x, L):
        feature = tf.cast(tf.convert_to_tensor(feature), x.dtype)
        if feature.shape.rank != 4 or any(a is not None and b is not None and a != b
                                          for a, b in zip(feature.shape[1:], x.shape[1:])):
            raise ValueError(f"swap_feature for layer {L} must be [N, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}], "
                             f"got {feature.shape}")
        return feature


def recompute_blocks(fn, recompute: bool):
    """``fn`` itself, or with ``recompute`` ``tf.recompute_grad(fn)``: gradient checkpointing. The forward
    keeps only fn's inputs; the backward runs fn again under a tape. Values and gradients are the same (fn
    must be deterministic: callers pass noise explicitly); a 256 px training step keeps about one block's
    activations instead of all of them, for one extra forward of the wrapped blocks. First-order gradients
    only (R1 and path length, which take grad-of-grad, call the networks without it)."""
    return tf.recompute_grad(fn) if recompute else fn


def _first_recomputed(recompute, n_blocks: int) -> int:
    """Index of the first block (of n_blocks, lowest resolution first) that ``recompute`` (bool | int k: the
    k highest-resolution blocks) checkpoints; n_blocks when none."""
    if recompute is True:
        return 0
    k = int(recompute or 0)
    if k < 0:
        raise ValueError(f"recompute must be a bool or a block count >= 0, got {recompute!r}")
    return max(0, n_blocks - k)


class Discriminator(keras.Model):
    """StyleGAN2 resnet discriminator on NHWC images [N, size, size, 3].

    from-RGB 1x1 -> ResBlocks down to 4x4 -> minibatch stddev -> 3x3 conv ->
    flatten (NHWC order; the converter permutes the reference's NCHW-ordered
    ``final_linear.0.weight`` to match) -> linear + lrelu -> linear -> logits [N, 1].
    """

    def __init__(self, size=256, channel_multiplier=2, channels=None, blur_kernel=DEFAULT_BLUR,
                 stddev_group=arch.STDDEV_GROUP, stddev_features=1, conv_clamp=None, **kwargs):
        kwargs.setdefault("name", "discriminator")
        super().__init__(**kwargs)
        self.size, self.channel_multiplier = int(size), int(channel_multiplier)
        self.blur_kernel, self.stddev_group = tuple(blur_kernel), int(stddev_group)
        self.stddev_features = int(stddev_features)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.log_size = log2_size(size)
        self.channels = resolve_channels(size, channel_multiplier, channels)
        ch = self.channels
        self.convs = [ConvLayer(3, ch[self.size], 1, conv_clamp=conv_clamp, name="convs_0")]
        in_ch = ch[self.size]
        for j, i in enumerate(range(self.log_size, 2, -1)):
            out_ch = ch[2 ** (i - 1)]
            self.convs.append(ResBlock(in_ch, out_ch, blur_kernel, conv_clamp=conv_clamp, name=f"convs_{j + 1}"))
            in_ch = out_ch
        self.stddev = MinibatchStddev(stddev_group, self.stddev_features, name="stddev")
        self.final_conv = ConvLayer(in_ch + self.stddev_features, ch[4], 3, conv_clamp=conv_clamp, name="final_conv")
        self.final_linear = [EqualLinear(ch[4] * 4 * 4, ch[4], activation="lrelu", name="final_linear_0"),
                             EqualLinear(ch[4], 1, name="final_linear_1")]
        track_items(self, "convs", self.convs)
        track_items(self, "final_linear", self.final_linear)
        self.built = True

    def get_config(self):
        extra = {**({"stddev_features": self.stddev_features} if self.stddev_features != 1 else {}),
                 **({"conv_clamp": self.conv_clamp} if self.conv_clamp is not None else {})}
        return {"size": self.size, "channel_multiplier": self.channel_multiplier,
                "channels": {str(k): v for k, v in self.channels.items()}, "blur_kernel": list(self.blur_kernel),
                "stddev_group": self.stddev_group, "name": self.name, **extra}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def call(self, x, return_activations=False, training=None, recompute=False):
        """Logits [N, 1]; with ``return_activations`` also a dict of reference-named
        intermediate outputs ('convs.0' ... 'convs.K', 'final_conv'), NHWC. ``recompute``: gradient
        checkpointing per ResBlock (``recompute_blocks``): True for every block, an int k for the k
        highest-resolution ones; first-order gradients only."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4 or x.shape[-1] != 3 or (x.shape[1] is not None and x.shape[1] != self.size):
            raise ValueError(f"discriminator expects NHWC images [N, {self.size}, {self.size}, 3], got {x.shape}")
        n_blocks = len(self.convs) - 1
        last_recomputed = n_blocks - _first_recomputed(recompute, n_blocks)  # convs[1..last] are checkpointed
        acts, start = {}, 0
        if last_recomputed >= 1 and not return_activations:
            # The from-RGB conv (3 input channels: nearly free) is recomputed with the first block, so its
            # full-resolution output is not kept either.
            x = recompute_blocks(lambda t: self.convs[1](self.convs[0](t)), True)(x)
            start = 2
        for i in range(start, len(self.convs)):
            x = recompute_blocks(self.convs[i], max(i, 1) <= last_recomputed)(x)  # convs[0] goes with convs[1]
            acts[f"convs.{i}"] = x
        x = self.final_conv(self.stddev(x))
        acts["final_conv"] = x
        x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
        x = self.final_linear[1](self.final_linear[0](x))
        return (x, acts) if return_activations else x
