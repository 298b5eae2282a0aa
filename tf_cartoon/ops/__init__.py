"""Plain functions on tensors (no Keras): FIR resampling and bias + activation.

Each op has a reference implementation, a pure-TF default and a compiled version
(custom_ops/, built by ``python -m tf_cartoon.ops.build``); see dispatch.py.
Tensors are NHWC. ``TF_CARTOON_OPS_BUILD=1`` builds (or loads from the cache) the
compiled ops when this package is imported.
"""

import os as _os

from tf_cartoon.ops.bias_act import bias_act, fused_leaky_relu
from tf_cartoon.ops.dispatch import set_default_impl
from tf_cartoon.ops.upfirdn2d import (blur2d, downsample2d, make_kernel, upfirdn2d,
                                      upfirdn2d_output_size, upsample2d)

__all__ = ["bias_act", "fused_leaky_relu", "set_default_impl", "blur2d", "downsample2d",
           "make_kernel", "upfirdn2d", "upfirdn2d_output_size", "upsample2d"]

if _os.environ.get("TF_CARTOON_OPS_BUILD", "") == "1":
    from tf_cartoon.ops import custom as _custom
    _custom.load(build=True)  # failures are logged by dispatch on first use; "auto" falls back
