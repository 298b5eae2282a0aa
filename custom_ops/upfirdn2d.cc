// TfCartoonUpfirdn2d: upsample (zero insertion), pad / crop, FIR-filter, downsample.
//
// The definition is the one of tf_cartoon/ops/upfirdn2d.py (the reference's), per axis:
//   u[j] = x[j / up] if j % up == 0 else 0            (zero insertion)
//   y[o] = sum_t u[o * down - pad0 + t] * k[K - 1 - t]  (true convolution, decimated)
// with u = 0 outside [0, in * up). Output size: (in * up + pad0 + pad1 - K) / down + 1.
// Layout: x and y NHWC; the kernel [kh, kw] is float32 and shared by every channel.
//
// The gradient (registered in tf_cartoon/ops/custom.py) is this same op with the kernel
// flipped, up and down swapped and adjusted pads, so gradients of any order exist.
//
// CPU kernel: float32, parallel over (batch x output rows) with TF's intra-op thread pool.
// GPU kernels (custom_ops/upfirdn2d.cu, built when TF_CARTOON_WITH_CUDA is defined):
// float32 and float16 (accumulated in float32).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_cartoon_ops.h"
#ifdef TF_CARTOON_WITH_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace tensorflow {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
using ::tf_cartoon::Upfirdn2dParams;

// Output length along one axis, or an error naming the axis when the padded input
// is shorter than the kernel (the Python wrapper checks this first; this is the
// guard for graphs built by hand).
absl::Status OutDim(InferenceContext* c, DimensionHandle in, DimensionHandle k, int up, int down, int p0,
                    int p1, const char* axis, DimensionHandle* out) {
  if (!c->ValueKnown(in) || !c->ValueKnown(k)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  const int64_t padded = c->Value(in) * up + p0 + p1;
  if (padded < c->Value(k)) {
    return errors::InvalidArgument("TfCartoonUpfirdn2d: padded ", axis, " ", padded,
                                   " is smaller than the kernel (", c->Value(k), ")");
  }
  *out = c->MakeDim((padded - c->Value(k)) / down + 1);
  return absl::OkStatus();
}

REGISTER_OP("TfCartoonUpfirdn2d")
    .Input("x: T")
    .Input("kernel: float")
    .Output("y: T")
    .Attr("T: {float, half}")
    .Attr("upx: int >= 1 = 1")
    .Attr("upy: int >= 1 = 1")
    .Attr("downx: int >= 1 = 1")
    .Attr("downy: int >= 1 = 1")
    .Attr("padx0: int = 0")
    .Attr("padx1: int = 0")
    .Attr("pady0: int = 0")
    .Attr("pady1: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, k;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &k));
      int upx, upy, downx, downy, px0, px1, py0, py1;
      TF_RETURN_IF_ERROR(c->GetAttr("upx", &upx));
      TF_RETURN_IF_ERROR(c->GetAttr("upy", &upy));
      TF_RETURN_IF_ERROR(c->GetAttr("downx", &downx));
      TF_RETURN_IF_ERROR(c->GetAttr("downy", &downy));
      TF_RETURN_IF_ERROR(c->GetAttr("padx0", &px0));
      TF_RETURN_IF_ERROR(c->GetAttr("padx1", &px1));
      TF_RETURN_IF_ERROR(c->GetAttr("pady0", &py0));
      TF_RETURN_IF_ERROR(c->GetAttr("pady1", &py1));
      DimensionHandle oh, ow;
      TF_RETURN_IF_ERROR(OutDim(c, c->Dim(x, 1), c->Dim(k, 0), upy, downy, py0, py1, "height", &oh));
      TF_RETURN_IF_ERROR(OutDim(c, c->Dim(x, 2), c->Dim(k, 1), upx, downx, px0, px1, "width", &ow));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), oh, ow, c->Dim(x, 3)}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
upfirdn2d on an NHWC tensor (tf_cartoon): zero insertion by (upx, upy), pad by
(padx0, padx1, pady0, pady1) (negative entries crop), true convolution with the 2-D
float32 `kernel`, keep every (downx, downy)-th sample.
)doc");

// Attributes and output size shared by the CPU and GPU kernels.
class Upfirdn2dBase : public OpKernel {
 public:
  explicit Upfirdn2dBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("upx", &upx_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("upy", &upy_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("downx", &downx_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("downy", &downy_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padx0", &px0_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padx1", &px1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pady0", &py0_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pady1", &py1_));
  }

 protected:
  // Validates the inputs, allocates y and fills p (y may be empty: nothing to compute).
  absl::Status Prepare(OpKernelContext* ctx, Upfirdn2dParams* p, Tensor** y) {
    const Tensor& x = ctx->input(0);
    const Tensor& k = ctx->input(1);
    if (x.dims() != 4) {
      return errors::InvalidArgument("TfCartoonUpfirdn2d: x must be NHWC (rank 4), got shape ",
                                     x.shape().DebugString());
    }
    if (k.dims() != 2 || k.dim_size(0) < 1 || k.dim_size(1) < 1) {
      return errors::InvalidArgument("TfCartoonUpfirdn2d: kernel must be a non-empty 2-D tensor, got shape ",
                                     k.shape().DebugString());
    }
    const int64_t n = x.dim_size(0), h = x.dim_size(1), w = x.dim_size(2), c = x.dim_size(3);
    const int64_t kh = k.dim_size(0), kw = k.dim_size(1);
    const int64_t ph = h * upy_ + py0_ + py1_, pw = w * upx_ + px0_ + px1_;
    if (ph < kh || pw < kw) {
      return errors::InvalidArgument("TfCartoonUpfirdn2d: padded input ", ph, "x", pw,
                                     " is smaller than the kernel ", kh, "x", kw, " (x shape ",
                                     x.shape().DebugString(), ")");
    }
    const int64_t oh = (ph - kh) / downy_ + 1, ow = (pw - kw) / downx_ + 1;
    // Coordinates are ints in the kernels; offsets are 64-bit.
    constexpr int64_t kMax = std::numeric_limits<int>::max() / 4;
    if (h >= kMax || w >= kMax || c >= kMax || kh >= kMax || kw >= kMax || ph >= kMax || pw >= kMax) {
      return errors::InvalidArgument("TfCartoonUpfirdn2d: dimensions too large: x ", x.shape().DebugString());
    }
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({n, oh, ow, c}), y));
    *p = Upfirdn2dParams{n, int(h), int(w), int(c), int(oh), int(ow), int(kh), int(kw),
                         upx_, upy_, downx_, downy_, px0_, py0_};
    return absl::OkStatus();
  }

  int upx_, upy_, downx_, downy_, px0_, px1_, py0_, py1_;
};

// ---------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------

// The taps of one axis: for output position o, `taps` pairs (input index, kernel index).
// Positions with fewer valid taps are padded with (0, k) where kernel index k selects
// a zero weight, so that every output runs the same (unrollable) loop.
struct AxisTaps {
  int taps;
  std::vector<int> src;
  std::vector<int> widx;
};

AxisTaps MakeTaps(int out, int in, int k, int up, int down, int pad0) {
  AxisTaps a;
  a.taps = (k + up - 1) / up;  // K consecutive samples of u hold at most ceil(K / up) inputs
  a.src.assign(static_cast<size_t>(out) * a.taps, 0);
  a.widx.assign(static_cast<size_t>(out) * a.taps, k);
  for (int o = 0; o < out; ++o) {
    int cnt = 0;
    for (int t = 0; t < k; ++t) {
      const int64_t j = int64_t(o) * down - pad0 + t;  // index into the zero-inserted signal
      if (j < 0 || j % up != 0 || j / up >= in) continue;
      a.src[size_t(o) * a.taps + cnt] = int(j / up);
      a.widx[size_t(o) * a.taps + cnt] = k - 1 - t;  // true convolution: the kernel is flipped
      ++cnt;
    }
  }
  return a;
}

constexpr int kBlock = 16;  // channels accumulated in registers at once

// One output row (n, oy). TY / TX > 0: compile-time tap counts (the 4x4-kernel fast
// paths: 4 taps for factor 1, 2 taps for factor 2); 0: runtime counts.
template <int TY, int TX>
void Upfirdn2dRow(const Upfirdn2dParams& p, const float* x, const float* kp, const AxisTaps& ry,
                  const AxisTaps& rx, int64_t row, float* y) {
  const int ty = TY > 0 ? TY : ry.taps;
  const int tx = TX > 0 ? TX : rx.taps;
  const int C = p.c;
  const int kwp = p.kw + 1;  // row stride of the zero-padded kernel
  const int64_t n = row / p.out_h;
  const int oy = int(row % p.out_h);
  const float* xn = x + n * p.in_h * int64_t(p.in_w) * C;
  absl::InlinedVector<const float*, 8> in_rows(ty), k_rows(ty);
  for (int a = 0; a < ty; ++a) {
    in_rows[a] = xn + int64_t(ry.src[size_t(oy) * ty + a]) * p.in_w * C;
    k_rows[a] = kp + int64_t(ry.widx[size_t(oy) * ty + a]) * kwp;  // row kh: all zeros
  }
  float* out = y + row * p.out_w * int64_t(C);
  for (int ox = 0; ox < p.out_w; ++ox) {
    const int* cs = &rx.src[size_t(ox) * tx];
    const int* cw = &rx.widx[size_t(ox) * tx];
    float* o = out + int64_t(ox) * C;
    for (int c0 = 0; c0 < C; c0 += kBlock) {
      float acc[kBlock] = {0};
      if (C - c0 >= kBlock) {
        for (int a = 0; a < ty; ++a) {
          const float* src = in_rows[a] + c0;
          const float* krow = k_rows[a];
          for (int b = 0; b < tx; ++b) {
            const float wgt = krow[cw[b]];
            const float* s = src + int64_t(cs[b]) * C;
            for (int i = 0; i < kBlock; ++i) acc[i] += wgt * s[i];
          }
        }
        for (int i = 0; i < kBlock; ++i) o[c0 + i] = acc[i];
      } else {
        const int cb = C - c0;
        for (int a = 0; a < ty; ++a) {
          const float* src = in_rows[a] + c0;
          const float* krow = k_rows[a];
          for (int b = 0; b < tx; ++b) {
            const float wgt = krow[cw[b]];
            const float* s = src + int64_t(cs[b]) * C;
            for (int i = 0; i < cb; ++i) acc[i] += wgt * s[i];
          }
        }
        for (int i = 0; i < cb; ++i) o[c0 + i] = acc[i];
      }
    }
  }
}

class Upfirdn2dCpuOp : public Upfirdn2dBase {
 public:
  using Upfirdn2dBase::Upfirdn2dBase;

  void Compute(OpKernelContext* ctx) override {
    Upfirdn2dParams p;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &p, &y));
    if (y->NumElements() == 0) return;
    const float* x = ctx->input(0).flat<float>().data();
    const float* k = ctx->input(1).flat<float>().data();
    // Kernel with one extra zero row and column: padding taps point there.
    std::vector<float> kp(size_t(p.kh + 1) * (p.kw + 1), 0.f);
    for (int i = 0; i < p.kh; ++i)
      for (int j = 0; j < p.kw; ++j) kp[size_t(i) * (p.kw + 1) + j] = k[size_t(i) * p.kw + j];
    const AxisTaps ry = MakeTaps(p.out_h, p.in_h, p.kh, p.upy, p.downy, p.pady0);
    const AxisTaps rx = MakeTaps(p.out_w, p.in_w, p.kw, p.upx, p.downx, p.padx0);
    float* out = y->flat<float>().data();
    auto rows = [&](auto row_fn) {
      const int64_t total = p.n * p.out_h;
      const int64_t cost = int64_t(p.out_w) * p.c * ry.taps * rx.taps * 2 + 64;  // ~cycles per row
      auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
      workers->ParallelFor(total, thread::ThreadPool::SchedulingParams::Adaptive(cost),
                           [&](int64_t begin, int64_t end) {
                             for (int64_t r = begin; r < end; ++r) row_fn(r);
                           });
    };
    if (ry.taps == 4 && rx.taps == 4) {
      rows([&](int64_t r) { Upfirdn2dRow<4, 4>(p, x, kp.data(), ry, rx, r, out); });
    } else if (ry.taps == 2 && rx.taps == 2) {
      rows([&](int64_t r) { Upfirdn2dRow<2, 2>(p, x, kp.data(), ry, rx, r, out); });
    } else {
      rows([&](int64_t r) { Upfirdn2dRow<0, 0>(p, x, kp.data(), ry, rx, r, out); });
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("TfCartoonUpfirdn2d").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        Upfirdn2dCpuOp);

// ---------------------------------------------------------------------------------------
// GPU (kernels in upfirdn2d.cu)
// ---------------------------------------------------------------------------------------
#ifdef TF_CARTOON_WITH_CUDA

template <typename T>
class Upfirdn2dGpuOp : public Upfirdn2dBase {
 public:
  using Upfirdn2dBase::Upfirdn2dBase;

  void Compute(OpKernelContext* ctx) override {
    Upfirdn2dParams p;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &p, &y));
    if (y->NumElements() == 0) return;
    void* stream = ctx->op_device_context()->stream()->platform_specific_handle().stream;
    const float* k = ctx->input(1).flat<float>().data();
    int err;
    if constexpr (std::is_same_v<T, float>) {
      err = ::tf_cartoon::LaunchUpfirdn2dFloat(stream, p, ctx->input(0).flat<float>().data(), k,
                                               y->flat<float>().data());
    } else {
      err = ::tf_cartoon::LaunchUpfirdn2dHalf(stream, p, ctx->input(0).flat<T>().data(), k,
                                              y->flat<T>().data());
    }
    OP_REQUIRES(ctx, err == 0,
                errors::Internal("TfCartoonUpfirdn2d CUDA launch failed: ", ::tf_cartoon::CudaErrorString(err)));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfCartoonUpfirdn2d").Device(DEVICE_GPU).TypeConstraint<float>("T"),
                        Upfirdn2dGpuOp<float>);
REGISTER_KERNEL_BUILDER(Name("TfCartoonUpfirdn2d").Device(DEVICE_GPU).TypeConstraint<Eigen::half>("T"),
                        Upfirdn2dGpuOp<Eigen::half>);

#endif  // TF_CARTOON_WITH_CUDA

}  // namespace
}  // namespace tensorflow
