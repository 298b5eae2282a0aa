// TfCartoonBiasAct / TfCartoonBiasActGrad: fused bias + activation (one pass over memory).
//
//   y  = act(x + b) * gain,  b along the LAST axis (channels in NHWC, features in [N, F]),
//        act = identity ("linear") or leaky ReLU with slope alpha ("lrelu")
//   dx = dy * gain * (y * gain > 0 ? 1 : alpha)          (TfCartoonBiasActGrad, lrelu only)
//
// The gradient op reads the forward OUTPUT y (its sign is the sign of x + b when
// alpha >= 0), so the forward input need not be kept. TfCartoonBiasActGrad is linear in
// dy with a piecewise-constant factor, so its own gradient is itself (w.r.t. dy) and
// zero (w.r.t. y): second-order gradients (R1, path length) come for free. The Python
// side (tf_cartoon/ops/custom.py) registers both gradients.
//
// CPU kernels: float32, parallel with TF's intra-op thread pool. GPU kernels
// (custom_ops/bias_act.cu, with TF_CARTOON_WITH_CUDA): float32 and float16.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

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
using ::tf_cartoon::BiasActParams;

REGISTER_OP("TfCartoonBiasAct")
    .Input("x: T")
    .Input("b: T")
    .Output("y: T")
    .Attr("T: {float, half}")
    .Attr("act: {'linear', 'lrelu'} = 'lrelu'")
    .Attr("alpha: float = 0.2")
    .Attr("gain: float = 1.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, b;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &b));
      // b is either empty (no bias) or as long as x's last axis.
      DimensionHandle bn = c->Dim(b, 0), cn = c->Dim(x, -1);
      if (c->ValueKnown(bn) && c->Value(bn) != 0 && c->ValueKnown(cn) && c->Value(bn) != c->Value(cn)) {
        return errors::InvalidArgument("TfCartoonBiasAct: bias of length ", c->Value(bn),
                                       " does not match the last axis of x (", c->Value(cn), ")");
      }
      c->set_output(0, x);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fused bias + activation (tf_cartoon): act(x + b) * gain with b along the last axis of x
(b empty: no bias); act is "linear" or "lrelu" (leaky ReLU with slope alpha).
)doc");

REGISTER_OP("TfCartoonBiasActGrad")
    .Input("dy: T")
    .Input("y: T")
    .Output("dx: T")
    .Attr("T: {float, half}")
    .Attr("alpha: float = 0.2")
    .Attr("gain: float = 1.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle s;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &s));
      c->set_output(0, s);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of TfCartoonBiasAct's leaky ReLU w.r.t. x + b, from the forward output y:
dx = dy * gain * (y * gain > 0 ? 1 : alpha).
)doc");

absl::Status CheckBias(const Tensor& x, const Tensor& b) {
  if (x.dims() < 1) {
    return errors::InvalidArgument("TfCartoonBiasAct: x must have rank >= 1, got shape ", x.shape().DebugString());
  }
  if (b.dims() != 1 || (b.dim_size(0) != 0 && b.dim_size(0) != x.dim_size(x.dims() - 1))) {
    return errors::InvalidArgument("TfCartoonBiasAct: bias of shape ", b.shape().DebugString(),
                                   " does not match the last axis of x ", x.shape().DebugString());
  }
  if (x.dim_size(x.dims() - 1) > (int64_t(1) << 30)) {
    return errors::InvalidArgument("TfCartoonBiasAct: last axis too long: ", x.shape().DebugString());
  }
  return absl::OkStatus();
}

class BiasActBase : public OpKernel {
 public:
  explicit BiasActBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    if (ctx->HasAttr("act")) {
      std::string act;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("act", &act));
      act_ = act == "lrelu" ? ::tf_cartoon::kLeakyRelu : ::tf_cartoon::kLinear;
    }
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &alpha_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gain", &gain_));
  }

 protected:
  int act_ = ::tf_cartoon::kLeakyRelu;
  float alpha_, gain_;
};

// Elements per work unit of the CPU kernels.
constexpr int64_t kChunk = 16384;

// Rows [r0, r1) of x viewed as [rows, c]. Branch-free bodies (the activation is a select of
// the multiplier) so that the compiler vectorizes them; b is never null (zeros when no bias).
void BiasActRows(const float* x, const float* b, float* y, int64_t c, int64_t r0, int64_t r1, bool lrelu,
                 float alpha, float gain) {
  const float pos = gain, neg = lrelu ? gain * alpha : gain;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    for (int64_t i = 0; i < c; ++i) {
      const float v = xr[i] + b[i];
      yr[i] = v * (v > 0.f ? pos : neg);
    }
  }
}

void BiasActGradRange(const float* dy, const float* y, float* dx, int64_t i0, int64_t i1, float alpha,
                      float gain) {
  const float pos = gain, neg = gain * alpha;
  for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] * (y[i] * gain > 0.f ? pos : neg);
}

class BiasActCpuOp : public BiasActBase {
 public:
  using BiasActBase::BiasActBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckBias(x, b));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    const int64_t size = x.NumElements();
    if (size == 0) return;
    const int64_t c = x.dim_size(x.dims() - 1);
    std::vector<float> zeros;
    const float* bp = b.NumElements() ? b.flat<float>().data() : (zeros.assign(c, 0.f), zeros.data());
    const float* xp = x.flat<float>().data();
    float* yp = y->flat<float>().data();
    const bool lrelu = act_ == ::tf_cartoon::kLeakyRelu;
    const float alpha = alpha_, gain = gain_;
    // Work unit = a run of whole rows (so the bias index needs no division per element).
    const int64_t rows = size / c;
    const int64_t rows_per_unit = std::max<int64_t>(1, kChunk / c);
    const int64_t units = (rows + rows_per_unit - 1) / rows_per_unit;
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    workers->ParallelFor(units, thread::ThreadPool::SchedulingParams::Adaptive(rows_per_unit * c),
                         [=](int64_t begin, int64_t end) {
                           BiasActRows(xp, bp, yp, c, begin * rows_per_unit, std::min(rows, end * rows_per_unit),
                                       lrelu, alpha, gain);
                         });
  }
};

class BiasActGradCpuOp : public BiasActBase {
 public:
  using BiasActBase::BiasActBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == y.shape(),
                errors::InvalidArgument("TfCartoonBiasActGrad: dy ", dy.shape().DebugString(), " and y ",
                                        y.shape().DebugString(), " differ in shape"));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, dy.shape(), &dx));
    const int64_t size = dy.NumElements();
    if (size == 0) return;
    const float* dyp = dy.flat<float>().data();
    const float* yp = y.flat<float>().data();
    float* dxp = dx->flat<float>().data();
    const float alpha = alpha_, gain = gain_;
    const int64_t units = (size + kChunk - 1) / kChunk;
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    workers->ParallelFor(units, thread::ThreadPool::SchedulingParams::Adaptive(kChunk),
                         [=](int64_t begin, int64_t end) {
                           BiasActGradRange(dyp, yp, dxp, begin * kChunk, std::min(size, end * kChunk), alpha,
                                            gain);
                         });
  }
};

REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasAct").Device(DEVICE_CPU).TypeConstraint<float>("T"), BiasActCpuOp);
REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasActGrad").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        BiasActGradCpuOp);

#ifdef TF_CARTOON_WITH_CUDA

template <typename T>
class BiasActGpuOp : public BiasActBase {
 public:
  using BiasActBase::BiasActBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckBias(x, b));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    const BiasActParams p{x.NumElements(), int(x.dim_size(x.dims() - 1)), act_, b.NumElements() > 0, alpha_,
                          gain_};
    if (p.size == 0) return;
    void* stream = ctx->op_device_context()->stream()->platform_specific_handle().stream;
    const T* bp = p.has_bias ? b.flat<T>().data() : nullptr;
    int err;
    if constexpr (std::is_same_v<T, float>) {
      err = ::tf_cartoon::LaunchBiasActFloat(stream, p, x.flat<T>().data(), bp, y->flat<T>().data());
    } else {
      err = ::tf_cartoon::LaunchBiasActHalf(stream, p, x.flat<T>().data(), bp, y->flat<T>().data());
    }
    OP_REQUIRES(ctx, err == 0,
                errors::Internal("TfCartoonBiasAct CUDA launch failed: ", ::tf_cartoon::CudaErrorString(err)));
  }
};

template <typename T>
class BiasActGradGpuOp : public BiasActBase {
 public:
  using BiasActBase::BiasActBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == y.shape(),
                errors::InvalidArgument("TfCartoonBiasActGrad: dy ", dy.shape().DebugString(), " and y ",
                                        y.shape().DebugString(), " differ in shape"));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, dy.shape(), &dx));
    const BiasActParams p{dy.NumElements(), 1, ::tf_cartoon::kLeakyRelu, false, alpha_, gain_};
    if (p.size == 0) return;
    void* stream = ctx->op_device_context()->stream()->platform_specific_handle().stream;
    int err;
    if constexpr (std::is_same_v<T, float>) {
      err = ::tf_cartoon::LaunchBiasActGradFloat(stream, p, dy.flat<T>().data(), y.flat<T>().data(),
                                                 dx->flat<T>().data());
    } else {
      err = ::tf_cartoon::LaunchBiasActGradHalf(stream, p, dy.flat<T>().data(), y.flat<T>().data(),
                                                dx->flat<T>().data());
    }
    OP_REQUIRES(ctx, err == 0,
                errors::Internal("TfCartoonBiasActGrad CUDA launch failed: ", ::tf_cartoon::CudaErrorString(err)));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasAct").Device(DEVICE_GPU).TypeConstraint<float>("T"),
                        BiasActGpuOp<float>);
REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasAct").Device(DEVICE_GPU).TypeConstraint<Eigen::half>("T"),
                        BiasActGpuOp<Eigen::half>);
REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasActGrad").Device(DEVICE_GPU).TypeConstraint<float>("T"),
                        BiasActGradGpuOp<float>);
REGISTER_KERNEL_BUILDER(Name("TfCartoonBiasActGrad").Device(DEVICE_GPU).TypeConstraint<Eigen::half>("T"),
                        BiasActGradGpuOp<Eigen::half>);

#endif  // TF_CARTOON_WITH_CUDA

}  // namespace
}  // namespace tensorflow
