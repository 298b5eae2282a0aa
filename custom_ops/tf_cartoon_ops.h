// Shared declarations of the tf_cartoon custom ops: parameter structs and the CUDA launchers.
//
// This header is included by the C++ op files (g++, TensorFlow headers) and by the
// .cu files (nvcc, CUDA headers only). It depends on neither, so that nvcc never
// has to parse TensorFlow's headers: the .cu files compile with whatever nvcc the
// machine has, independently of the CUDA version TensorFlow itself was built with.
//
// Layout everywhere: NHWC, row-major, dense.
#ifndef TF_CARTOON_CUSTOM_OPS_TF_CARTOON_OPS_H_
#define TF_CARTOON_CUSTOM_OPS_TF_CARTOON_OPS_H_

#include <cstdint>

namespace tf_cartoon {

// upfirdn2d on x [n, in_h, in_w, c] with a [kh, kw] FIR kernel (float32, applied as a
// true convolution), zero insertion by up, pads (negative: crop), decimation by down.
// Output [n, out_h, out_w, c] with out = (in * up + pad0 + pad1 - k) / down + 1.
// Only pad0 is needed by the kernels: pad1 is implied by the output size.
struct Upfirdn2dParams {
  int64_t n;
  int in_h, in_w, c;
  int out_h, out_w;
  int kh, kw;
  int upx, upy, downx, downy;
  int padx0, pady0;
};

// Elementwise bias + activation over x viewed as [rows, c] (the bias runs along the
// last axis). act: 0 = linear, 1 = leaky ReLU with slope alpha; the result is
// multiplied by gain. has_bias == false: b is not read.
struct BiasActParams {
  int64_t size;  // number of elements of x
  int c;         // last-axis length (bias length)
  int act;
  bool has_bias;
  float alpha;
  float gain;
};

enum BiasActKind { kLinear = 0, kLeakyRelu = 1 };

// CUDA launchers (custom_ops/*.cu). `stream` is the CUstream of the op's GPU stream;
// `half` buffers hold IEEE binary16 values (Eigen::half / __half, same bits).
// Return 0 on success or a CUDA error code (see CudaErrorString).
int LaunchUpfirdn2dFloat(void* stream, const Upfirdn2dParams& p, const float* x, const float* k, float* y);
int LaunchUpfirdn2dHalf(void* stream, const Upfirdn2dParams& p, const void* x, const float* k, void* y);
int LaunchBiasActFloat(void* stream, const BiasActParams& p, const float* x, const float* b, float* y);
int LaunchBiasActHalf(void* stream, const BiasActParams& p, const void* x, const void* b, void* y);
// Gradient of leaky ReLU given the forward OUTPUT y: dx = dy * gain * (y * gain > 0 ? 1 : alpha).
int LaunchBiasActGradFloat(void* stream, const BiasActParams& p, const float* dy, const float* y, float* dx);
int LaunchBiasActGradHalf(void* stream, const BiasActParams& p, const void* dy, const void* y, void* dx);
const char* CudaErrorString(int code);

}  // namespace tf_cartoon

#endif  // TF_CARTOON_CUSTOM_OPS_TF_CARTOON_OPS_H_
