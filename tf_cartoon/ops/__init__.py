"""Plain functions on tensors (no Keras): FIR resampling, bias + activation, the networks' convolutions,
the modulated convolution and the StyledConv epilogue.

One module per op family: upfirdn2d.py, bias_act.py, conv.py (stride-1 3x3 / 1x1; winograd.py, conv_grad.py
are its building blocks), phase_conv.py (stride-2 3x3), modulated_conv.py, epilogue.py. Every op with
alternative implementations (a reference path, plain TF, compiled ops from custom_ops/ built by
``python -m tf_cartoon.ops.build``, exact CPU rewrites) registers them with dispatch.py, the one place that
picks. Tensors are NHWC. ``TF_CARTOON_OPS_BUILD=1`` builds (or loads from the cache) the compiled ops when
this package is imported.
"""

import os as _os

from tf_cartoon.ops.bias_act import bias_act, fused_leaky_relu
from tf_cartoon.ops.dispatch import plain_ops, set_default_impl
from tf_cartoon.ops.upfirdn2d import (blur2d, downsample2d, make_kernel, upfirdn2d,
                                      upfirdn2d_output_size, upsample2d)
# imported for their dispatch registrations too (TF_CARTOON_OPS_IMPL may name their families)
from tf_cartoon.ops.conv import conv1x1, conv3x3
from tf_cartoon.ops.epilogue import styled_epilogue
from tf_cartoon.ops.modulated_conv import modulated_conv2d
from tf_cartoon.ops.phase_conv import conv3x3_down2, conv_transpose3x3_up2_blur

__all__ = ["bias_act", "fused_leaky_relu", "plain_ops", "set_default_impl", "blur2d", "downsample2d",
           "make_kernel", "upfirdn2d", "upfirdn2d_output_size", "upsample2d", "conv1x1", "conv3x3",
           "conv3x3_down2", "conv_transpose3x3_up2_blur", "modulated_conv2d", "styled_epilogue"]

if _os.environ.get("TF_CARTOON_OPS_BUILD", "") == "1":
    from tf_cartoon.ops import custom as _custom
    _custom.load(build=True)  # failures are logged by dispatch on first use; "auto" falls back
