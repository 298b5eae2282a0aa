"""Keras 3 layers of StyleGAN2 (rosinality / Cartoon-StyleGAN2 maths), NHWC.

Layout: every image / feature tensor is NHWC ``[N, H, W, C]``. oneDNN on CPU and
cuDNN on GPU both run NHWC convolutions at full speed, while NCHW works on the CPU
only through oneDNN or XLA; so we stay NHWC inside and convert to the
reference's NCHW only at the edges (checkpoint conversion, fixtures, the
discriminator head's flatten order, which the converter folds into the weight).

Weight layouts (ours <- reference):
  EqualLinear.kernel  [in, out]          <- weight [out, in]
  EqualConv2d.kernel  [k, k, in, out]    <- weight [out, in, k, k]
  ModulatedConv2d.kernel [k, k, in, out] <- weight [1, out, in, k, k]
Equalised learning rate: weights are stored at unit scale and multiplied by
``1 / sqrt(fan_in)`` (times ``lr_mul`` for linear layers) at use, as the
reference does, so reference checkpoints load unchanged.

Every layer creates its weights in ``__init__`` (all shapes are known from the
constructor), so a freshly built model can restore a checkpoint immediately.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tf_cartoon.ops import bias_act, make_kernel, upfirdn2d
from tf_cartoon.ops.conv import conv1x1, conv3x3
from tf_cartoon.ops.epilogue import styled_epilogue
from tf_cartoon.ops.modulated_conv import modulated_conv2d
from tf_cartoon.ops.phase_conv import conv3x3_down2

DEFAULT_BLUR = (1, 3, 3, 1)


def _normal(stddev=1.0):
    return keras.initializers.RandomNormal(stddev=stddev)


def track_items(owner, prefix: str, items: list) -> list:
    """Name each item of a list of layers / variables as an attribute of ``owner``.

    Keras 3 tracks list attributes for its own weight lists, but TF's object graph
    (``tf.train.Checkpoint``) does not see them: without this, a checkpoint of a
    model would silently miss every layer kept in a list.
    """
    for i, item in enumerate(items):
        setattr(owner, f"{prefix}_{i}", item)
    return items


class _Layer(keras.layers.Layer):
    """Base: subclasses create weights in __init__ and set ``built``."""

    def _done(self):
        self.built = True


def clamp(x, conv_clamp):
    """``x`` clipped to [-conv_clamp, conv_clamp]; unchanged when conv_clamp is None.

    NVlabs' StyleGAN2-ADA clamps every activated conv output (and ToRGB's output before the skip sum) at
    ``conv_clamp`` (256 in its configs) so that its float16 layers cannot overflow; networks loaded from its
    pickles keep the clamp so that they compute what NVlabs' code computes. The reference (rosinality) has none.
    """
    if conv_clamp is None:
        return x
    return tf.clip_by_value(x, -float(conv_clamp), float(conv_clamp))


class PixelNorm(keras.layers.Layer):
    """x * rsqrt(mean(x^2 over the last axis) + 1e-8)."""

    def call(self, x):
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + 1e-8)


class EqualLinear(_Layer):
    """Dense layer with equalised learning rate.

    y = x @ (kernel * lr_mul / sqrt(in)) + bias * lr_mul, then optional
    fused leaky ReLU (bias inside the activation, times sqrt(2)).
    """

    def __init__(self, in_dim, out_dim, use_bias=True, bias_init=0.0, lr_mul=1.0, activation=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in (None, "lrelu"):
            raise ValueError(f"activation must be None or 'lrelu', got {activation!r}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.use_bias, self.bias_init, self.lr_mul, self.activation = use_bias, float(bias_init), float(lr_mul), activation
        self.scale = self.lr_mul / math.sqrt(self.in_dim)
        self.kernel = self.add_weight(name="kernel", shape=(self.in_dim, self.out_dim),
                                      initializer=_normal(1.0 / self.lr_mul))
        self.bias = (self.add_weight(name="bias", shape=(self.out_dim,),
                                     initializer=keras.initializers.Constant(self.bias_init))
                     if use_bias else None)
        self._done()

    def call(self, x):
        y = tf.matmul(x, tf.cast(self.kernel, x.dtype) * self.scale) if x.shape.rank == 2 else \
            tf.tensordot(x, tf.cast(self.kernel, x.dtype) * self.scale, axes=1)
        b = tf.cast(self.bias, x.dtype) * self.lr_mul if self.bias is not None else None
        if self.activation == "lrelu":
            return bias_act(y, b, "lrelu")
        return y + b if b is not None else y

    def get_config(self):
        return {**super().get_config(), "in_dim": self.in_dim, "out_dim": self.out_dim, "use_bias": self.use_bias,
                "bias_init": self.bias_init, "lr_mul": self.lr_mul, "activation": self.activation}


class EqualConv2d(_Layer):
    """Conv2d with equalised learning rate: kernel / sqrt(in * k * k); explicit zero padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        self.stride, self.padding, self.use_bias = int(stride), int(padding), use_bias
        self.scale = 1.0 / math.sqrt(self.in_channels * self.kernel_size ** 2)
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, self.in_channels, self.out_channels),
                                      initializer=_normal())
        self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros") if use_bias else None
        self._done()

    def call(self, x, stride=None):
        """stride: overrides the layer's (ConvLayer subsamples before a 1x1 conv instead)."""
        stride = self.stride if stride is None else int(stride)
        p, k, kernel = self.padding, self.kernel_size, tf.cast(self.kernel, x.dtype) * self.scale
        if k == 3 and stride == 1 and p == 1:
            y = conv3x3(x, kernel)
        elif k == 3 and stride == 2 and p == 0:
            y = conv3x3_down2(x, kernel)
        elif k == 1 and p == 0:
            y = conv1x1(x, kernel, stride)
        else:
            y = tf.nn.conv2d(x, kernel, stride, "VALID" if p == 0 else [[0, 0], [p, p], [p, p], [0, 0]])
        return y + tf.cast(self.bias, x.dtype) if self.bias is not None else y

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "use_bias": self.use_bias}


class FusedLeakyReLU(_Layer):
    """Per-channel bias + leaky ReLU(0.2) * sqrt(2).

    With ``noise_term`` (and optionally ``demod``), the StyledConv epilogue lrelu(x * demod + noise_term + bias) in one
    pass (ops/epilogue.py)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")
        self._done()

    def call(self, x, demod=None, noise_term=None):
        if noise_term is None:
            return bias_act(x, tf.cast(self.bias, x.dtype), "lrelu")
        return styled_epilogue(x, demod, noise_term, tf.cast(self.bias, x.dtype))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class ModulatedConv2d(_Layer):
    """StyleGAN2 modulated convolution (ops/modulated_conv.py), optionally upsampling by 2.

    s = modulation(w) (EqualLinear, bias starts at 1); the kernel is stored at unit scale and used times
    1 / sqrt(in * k * k). ``fused`` picks the grouped-convolution form (the reference's) over the default
    shared convolution; both compute the same. Upsampling: stride-2 transposed convolution without padding,
    then a blur with the FIR kernel * 4 and pads (1, 1): 2H.
    """

    def __init__(self, in_channels, out_channels, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_kernel=DEFAULT_BLUR, fused=False, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.style_dim = int(kernel_size), int(style_dim)
        self.demodulate, self.upsample, self.fused = bool(demodulate), bool(upsample), bool(fused)
        self.blur_kernel = tuple(blur_kernel)
        self.scale = 1.0 / math.sqrt(self.in_channels * self.kernel_size ** 2)
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, self.in_channels, self.out_channels),
                                      initializer=_normal())
        self.modulation = EqualLinear(self.style_dim, self.in_channels, bias_init=1.0, name="modulation")
        if self.upsample:
            factor = 2
            p = (len(self.blur_kernel) - factor) - (k - 1)
            self.blur_pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
            self.blur_fir = make_kernel(self.blur_kernel, gain=factor ** 2)
        self._done()

    def call(self, x, w, fused=None, defer_demod=False):
        """The modulated conv of x by style w; with defer_demod, (y, demodulation coefficients still to apply
        or None), see modulated_conv2d."""
        return modulated_conv2d(x, tf.cast(self.kernel, x.dtype) * self.scale, self.modulation(w),
                                demodulate=self.demodulate,
                                upsample=(self.blur_fir, self.blur_pad) if self.upsample else None,
                                fused=self.fused if fused is None else fused, defer_demod=defer_demod)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "style_dim": self.style_dim, "demodulate": self.demodulate,
                "upsample": self.upsample, "blur_kernel": list(self.blur_kernel), "fused": self.fused}


class NoiseInjection(_Layer):
    """x + strength * noise; noise [N or 1, H, W, 1], fresh N(0, 1) when None."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.strength = self.add_weight(name="strength", shape=(1,), initializer="zeros")
        self._done()

    def call(self, x, noise=None):
        return x + self.term(x, noise)

    def term(self, x, noise=None):
        """strength * noise [N or 1, H, W, 1] in x's dtype (what call adds to x); noise drawn when None."""
        if noise is None:
            shape = tf.shape(x)
            noise = tf.random.normal(tf.stack([shape[0], shape[1], shape[2], 1]), dtype=x.dtype)
        return tf.cast(self.strength, x.dtype) * tf.cast(noise, x.dtype)


class ConstantInput(_Layer):
    """The learned 4x4 input, [1, size, size, C], repeated over the batch."""

    def __init__(self, channels, size=4, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.size = int(channels), int(size)
        self.const = self.add_weight(name="const", shape=(1, self.size, self.size, self.channels),
                                     initializer=_normal())
        self._done()

    def call(self, batch_size):
        return tf.tile(self.const, tf.stack([batch_size, 1, 1, 1]))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "size": self.size}


class StyledConv(_Layer):
    """Modulated conv -> + noise -> bias + leaky ReLU * sqrt(2) (the reference's order)."""

    def __init__(self, in_channels, out_channels, kernel_size, style_dim, upsample=False,
                 blur_kernel=DEFAULT_BLUR, demodulate=True, fused=False, conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        self.style_dim, self.upsample, self.demodulate = int(style_dim), bool(upsample), bool(demodulate)
        self.blur_kernel = tuple(blur_kernel)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel, fused=fused, name="conv")
        self.noise = NoiseInjection(name="noise")
        self.activate = FusedLeakyReLU(out_channels, name="activate")
        self._done()

    def call(self, x, w, noise=None, fused=None):
        # demodulation, noise, bias and activation in one pass over the feature map (FusedLeakyReLU's epilogue)
        y, demod = self.conv(x, w, fused=fused, defer_demod=True)
        return clamp(self.activate(y, demod=demod, noise_term=self.noise.term(y, noise)), self.conv_clamp)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "style_dim": self.style_dim, "upsample": self.upsample,
                "blur_kernel": list(self.blur_kernel), "demodulate": self.demodulate, "fused": self.conv.fused,
                "conv_clamp": self.conv_clamp}


class ToRGB(_Layer):
    """1x1 modulated conv (no demodulation) + bias [clamped] + the upsampled previous RGB skip."""

    def __init__(self, in_channels, style_dim, upsample=True, blur_kernel=DEFAULT_BLUR, fused=False, conv_clamp=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.style_dim, self.upsample = int(in_channels), int(style_dim), bool(upsample)
        self.blur_kernel = tuple(blur_kernel)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False, fused=fused, name="conv")
        self.bias = self.add_weight(name="bias", shape=(3,), initializer="zeros")
        if self.upsample:
            self.skip_fir = make_kernel(self.blur_kernel, gain=4)
            p = self.skip_fir.shape[0] - 2
            self.skip_pad = ((p + 1) // 2 + 1, p // 2)
        self._done()

    def call(self, x, w, skip=None, fused=None):
        out = clamp(self.conv(x, w, fused=fused) + tf.cast(self.bias, x.dtype), self.conv_clamp)
        if skip is not None:
            out = out + upfirdn2d(skip, self.skip_fir, up=2, pad=self.skip_pad)
        return out

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "style_dim": self.style_dim,
                "upsample": self.upsample, "blur_kernel": list(self.blur_kernel), "fused": self.conv.fused,
                "conv_clamp": self.conv_clamp}


class ConvLayer(_Layer):
    """Discriminator conv: [blur] -> EqualConv2d (stride 2 when downsampling) -> [bias + lrelu].

    With ``activate`` the bias lives in the activation (reference: ``ConvLayer.1.bias``
    or ``.2.bias`` after a blur); without it, in the conv when ``use_bias``. ``conv_clamp`` clips the
    activated output (NVlabs networks; see ``clamp``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, downsample=False, blur_kernel=DEFAULT_BLUR,
                 use_bias=True, activate=True, conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        self.downsample, self.use_bias, self.activate = bool(downsample), bool(use_bias), bool(activate)
        self.blur_kernel = tuple(blur_kernel)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        if self.downsample:
            p = (len(self.blur_kernel) - 2) + (self.kernel_size - 1)
            self.blur_pad = ((p + 1) // 2, p // 2)
            self.blur_fir = make_kernel(self.blur_kernel)
            stride, padding = 2, 0
        else:
            stride, padding = 1, self.kernel_size // 2
        self.conv = EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                use_bias=use_bias and not activate, name="conv")
        self.act = FusedLeakyReLU(out_channels, name="act") if activate and use_bias else None
        self._done()

    def call(self, x):
        if self.downsample and self.kernel_size == 1:
            # A 1x1 stride-2 conv reads every second blurred pixel only: blur and subsample in one op (a
            # quarter of the blur's work and memory; same values), then a stride-1 1x1 conv.
            x = self.conv(upfirdn2d(x, self.blur_fir, down=2, pad=self.blur_pad), stride=1)
        elif self.downsample:
            x = self.conv(upfirdn2d(x, self.blur_fir, pad=self.blur_pad))
        else:
            x = self.conv(x)
        if self.act is not None:
            return clamp(self.act(x), self.conv_clamp)
        if self.activate:  # activation without a bias
            return clamp(bias_act(x, None, "lrelu"), self.conv_clamp)
        return x

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "downsample": self.downsample,
                "blur_kernel": list(self.blur_kernel), "use_bias": self.use_bias, "activate": self.activate,
                "conv_clamp": self.conv_clamp}


class ResBlock(_Layer):
    """(conv2(conv1(x)) + skip(x)) / sqrt(2); conv2 and skip downsample by 2.

    ``conv_clamp`` clips conv1's and conv2's activated outputs, not the (linear) skip: NVlabs' block computes
    clamp(lrelu * sqrt(2) * sqrt(1/2), conv_clamp * sqrt(1/2)) for conv2, which is the same clip before the sum's
    1 / sqrt(2)."""

    def __init__(self, in_channels, out_channels, blur_kernel=DEFAULT_BLUR, conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels, self.blur_kernel = int(in_channels), int(out_channels), tuple(blur_kernel)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.conv1 = ConvLayer(in_channels, in_channels, 3, blur_kernel=blur_kernel, conv_clamp=conv_clamp,
                               name="conv1")
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel,
                               conv_clamp=conv_clamp, name="conv2")
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel,
                              use_bias=False, activate=False, name="skip")
        self._done()

    def call(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) * (1.0 / math.sqrt(2.0))

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "blur_kernel": list(self.blur_kernel), "conv_clamp": self.conv_clamp}


class MinibatchStddev(keras.layers.Layer):
    """Appends the minibatch standard deviation as extra channel(s).

    group = min(N, group_size); grouping is STRIDED as in the reference's
    ``view(group, -1, ...)``: sample b uses the statistics of samples
    {b mod (N/group) + j * N/group}. var over the group (biased), sqrt(+1e-8),
    mean over H, W and the channels of each feature group.
    """

    def __init__(self, group_size=4, num_features=1, **kwargs):
        super().__init__(**kwargs)
        self.group_size, self.num_features = int(group_size), int(num_features)

    def call(self, x):
        n, h, w, c = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(4))
        if isinstance(n, int):
            group = min(n, self.group_size)
            if n % group:
                raise ValueError(f"MinibatchStddev: batch {n} is not divisible by the group size {group} "
                                 f"(use a batch that is a multiple of {self.group_size} or smaller than it)")
        else:
            group = tf.minimum(n, self.group_size)
        f = self.num_features
        y = tf.reshape(x, tf.stack([group, -1, h, w, f, c // f]))  # strided groups
        y = tf.sqrt(tf.math.reduce_variance(y, axis=0) + 1e-8)  # [N/group, H, W, f, c/f]
        y = tf.reduce_mean(y, axis=[1, 2, 4])  # [N/group, f]
        y = tf.tile(y, tf.stack([group, 1]))  # sample b -> row b mod (N/group)
        y = tf.tile(y[:, None, None, :], tf.stack([1, h, w, 1]))
        return tf.concat([x, tf.cast(y, x.dtype)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size, "num_features": self.num_features}
