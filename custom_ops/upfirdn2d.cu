// CUDA kernels of TfCartoonUpfirdn2d (see upfirdn2d.cc for the definition).
//
// Pure CUDA: no TensorFlow headers, so any nvcc can compile it. One thread per output
// element; consecutive threads take consecutive channels, so NHWC loads and stores
// are coalesced. Accumulation is float32 for float32 and float16 tensors.
//   * general kernel: any kernel size, up / down factors and pads (taps found per output);
//   * fast paths: 4x4 kernel with up, down in {1, 2} (same factor on both axes): the
//     kernel sits in shared memory and the tap loops are unrolled at compile time.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tf_cartoon_ops.h"

namespace tf_cartoon {
namespace {

template <typename T>
__device__ __forceinline__ float Load(const T* p);
template <>
__device__ __forceinline__ float Load<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float Load<__half>(const __half* p) { return __half2float(p[0]); }

template <typename T>
__device__ __forceinline__ T Store(float v);
template <>
__device__ __forceinline__ float Store<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half Store<__half>(float v) { return __float2half_rn(v); }

// a mod b in [0, b) for b > 0.
__device__ __forceinline__ int PosMod(int a, int b) {
  const int r = a % b;
  return r < 0 ? r + b : r;
}

// Output element i -> (n, oy, ox, c) of the NHWC output.
struct OutIndex {
  int64_t n;
  int oy, ox, c;
};

__device__ __forceinline__ OutIndex Decompose(int64_t i, const Upfirdn2dParams& p) {
  OutIndex o;
  o.c = int(i % p.c);
  int64_t r = i / p.c;
  o.ox = int(r % p.out_w);
  r /= p.out_w;
  o.oy = int(r % p.out_h);
  o.n = r / p.out_h;
  return o;
}

template <typename T>
__global__ void Upfirdn2dGeneral(Upfirdn2dParams p, const T* __restrict__ x, const float* __restrict__ k,
                                 T* __restrict__ y, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const OutIndex o = Decompose(i, p);
    // Samples of the zero-inserted signal under the kernel: j = o * down - pad0 + t;
    // only j divisible by up carry an input sample (j / up), met with weight k[K - 1 - t].
    const int jy0 = o.oy * p.downy - p.pady0;
    const int jx0 = o.ox * p.downx - p.padx0;
    const int ty0 = PosMod(-jy0, p.upy);
    const int tx0 = PosMod(-jx0, p.upx);
    const T* xn = x + o.n * p.in_h * int64_t(p.in_w) * p.c + o.c;
    float acc = 0.f;
    for (int ty = ty0; ty < p.kh; ty += p.upy) {
      const int iy = (jy0 + ty) / p.upy;  // exact division
      if (iy < 0 || iy >= p.in_h) continue;
      const float* krow = k + (p.kh - 1 - ty) * p.kw + (p.kw - 1);
      const T* xrow = xn + int64_t(iy) * p.in_w * p.c;
      for (int tx = tx0; tx < p.kw; tx += p.upx) {
        const int ix = (jx0 + tx) / p.upx;
        if (ix < 0 || ix >= p.in_w) continue;
        acc += __ldg(krow - tx) * Load(xrow + int64_t(ix) * p.c);
      }
    }
    y[i] = Store<T>(acc);
  }
}

template <typename T, int UP, int DOWN>
__global__ void Upfirdn2dK4(Upfirdn2dParams p, const T* __restrict__ x, const float* __restrict__ k,
                            T* __restrict__ y, int64_t total) {
  __shared__ float ks[16];
  if (threadIdx.x < 16) ks[threadIdx.x] = k[threadIdx.x];
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const OutIndex o = Decompose(i, p);
    const int jy0 = o.oy * DOWN - p.pady0;
    const int jx0 = o.ox * DOWN - p.padx0;
    const int ty0 = UP == 1 ? 0 : PosMod(-jy0, UP);
    const int tx0 = UP == 1 ? 0 : PosMod(-jx0, UP);
    const T* xn = x + o.n * p.in_h * int64_t(p.in_w) * p.c + o.c;
    float acc = 0.f;
#pragma unroll
    for (int a = 0; a < 4 / UP; ++a) {  // ty0 < UP and UP divides 4: every tap lies in the kernel
      const int ty = ty0 + a * UP;
      const int iy = (jy0 + ty) / UP;
      if (iy < 0 || iy >= p.in_h) continue;
      const T* xrow = xn + int64_t(iy) * p.in_w * p.c;
#pragma unroll
      for (int b = 0; b < 4 / UP; ++b) {
        const int tx = tx0 + b * UP;
        const int ix = (jx0 + tx) / UP;
        if (ix < 0 || ix >= p.in_w) continue;
        acc += ks[(3 - ty) * 4 + (3 - tx)] * Load(xrow + int64_t(ix) * p.c);
      }
    }
    y[i] = Store<T>(acc);
  }
}

constexpr int kThreads = 256;

int64_t Blocks(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return b < (int64_t(1) << 20) ? b : (int64_t(1) << 20);  // grid-stride loops cover the rest
}

template <typename T>
int Launch(void* stream, const Upfirdn2dParams& p, const T* x, const float* k, T* y) {
  const int64_t total = p.n * p.out_h * int64_t(p.out_w) * p.c;
  if (total == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(unsigned(Blocks(total))), block(kThreads);
  const bool k4 = p.kh == 4 && p.kw == 4 && p.upx == p.upy && p.downx == p.downy && p.upx <= 2 && p.downx <= 2;
  if (k4 && p.upx == 1 && p.downx == 1) {
    Upfirdn2dK4<T, 1, 1><<<grid, block, 0, s>>>(p, x, k, y, total);
  } else if (k4 && p.upx == 2 && p.downx == 1) {
    Upfirdn2dK4<T, 2, 1><<<grid, block, 0, s>>>(p, x, k, y, total);
  } else if (k4 && p.upx == 1 && p.downx == 2) {
    Upfirdn2dK4<T, 1, 2><<<grid, block, 0, s>>>(p, x, k, y, total);
  } else if (k4 && p.upx == 2 && p.downx == 2) {
    Upfirdn2dK4<T, 2, 2><<<grid, block, 0, s>>>(p, x, k, y, total);
  } else {
    Upfirdn2dGeneral<T><<<grid, block, 0, s>>>(p, x, k, y, total);
  }
  return int(cudaGetLastError());
}

}  // namespace

int LaunchUpfirdn2dFloat(void* stream, const Upfirdn2dParams& p, const float* x, const float* k, float* y) {
  return Launch<float>(stream, p, x, k, y);
}

int LaunchUpfirdn2dHalf(void* stream, const Upfirdn2dParams& p, const void* x, const float* k, void* y) {
  return Launch<__half>(stream, p, static_cast<const __half*>(x), k, static_cast<__half*>(y));
}

const char* CudaErrorString(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace tf_cartoon
