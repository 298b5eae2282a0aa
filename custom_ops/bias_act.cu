// CUDA kernels of TfCartoonBiasAct / TfCartoonBiasActGrad (see bias_act.cc).
// Pure CUDA (no TensorFlow headers); elementwise grid-stride loops, float32 arithmetic
// for float32 and float16 tensors.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tf_cartoon_ops.h"

namespace tf_cartoon {
namespace {

__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromF(float v);
template <>
__device__ __forceinline__ float FromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromF<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void BiasActKernel(BiasActParams p, const T* __restrict__ x, const T* __restrict__ b,
                              T* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.size;
       i += int64_t(blockDim.x) * gridDim.x) {
    float v = ToF(x[i]);
    if (p.has_bias) v += ToF(b[i % p.c]);
    if (p.act == kLeakyRelu) v = v > 0.f ? v : v * p.alpha;
    y[i] = FromF<T>(v * p.gain);
  }
}

template <typename T>
__global__ void BiasActGradKernel(BiasActParams p, const T* __restrict__ dy, const T* __restrict__ y,
                                  T* __restrict__ dx) {
  const float pos = p.gain, neg = p.gain * p.alpha;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.size;
       i += int64_t(blockDim.x) * gridDim.x) {
    dx[i] = FromF<T>(ToF(dy[i]) * (ToF(y[i]) * p.gain > 0.f ? pos : neg));
  }
}

constexpr int kThreads = 256;

dim3 Grid(int64_t size) {
  const int64_t b = (size + kThreads - 1) / kThreads;
  return dim3(unsigned(b < (int64_t(1) << 20) ? b : (int64_t(1) << 20)));
}

}  // namespace

int LaunchBiasActFloat(void* stream, const BiasActParams& p, const float* x, const float* b, float* y) {
  if (p.size == 0) return 0;
  BiasActKernel<float><<<Grid(p.size), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, x, b, y);
  return int(cudaGetLastError());
}

int LaunchBiasActHalf(void* stream, const BiasActParams& p, const void* x, const void* b, void* y) {
  if (p.size == 0) return 0;
  BiasActKernel<__half><<<Grid(p.size), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, static_cast<const __half*>(x), static_cast<const __half*>(b), static_cast<__half*>(y));
  return int(cudaGetLastError());
}

int LaunchBiasActGradFloat(void* stream, const BiasActParams& p, const float* dy, const float* y, float* dx) {
  if (p.size == 0) return 0;
  BiasActGradKernel<float><<<Grid(p.size), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, dy, y, dx);
  return int(cudaGetLastError());
}

int LaunchBiasActGradHalf(void* stream, const BiasActParams& p, const void* dy, const void* y, void* dx) {
  if (p.size == 0) return 0;
  BiasActGradKernel<__half><<<Grid(p.size), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, static_cast<const __half*>(dy), static_cast<const __half*>(y), static_cast<__half*>(dx));
  return int(cudaGetLastError());
}

}  // namespace tf_cartoon
