"""Plain functions on tensors (no Keras): FIR resampling and bias + activation.

Each op has a reference implementation and a faster default; see dispatch.py.
Tensors are NHWC.
"""

from tf_cartoon.ops.bias_act import bias_act, fused_leaky_relu
from tf_cartoon.ops.dispatch import set_default_impl
from tf_cartoon.ops.upfirdn2d import (blur2d, downsample2d, make_kernel, upfirdn2d,
                                      upfirdn2d_output_size, upsample2d)

__all__ = ["bias_act", "fused_leaky_relu", "set_default_impl", "blur2d", "downsample2d",
           "make_kernel", "upfirdn2d", "upfirdn2d_output_size", "upsample2d"]
