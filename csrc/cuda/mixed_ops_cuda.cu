// CUDA launcher of the fused mixed-op kernels. Semantics: csrc/cpu/mixed_ops_cpu.cpp (the
// reference), per-element math: ../mixed_ops.h, argument checks: ../checks.h.
//
// * Elementwise work runs in grid-stride kernels that visit the output (or, in the pool
//   backward, the input gradient) in the order its memory holds it (channels_last or
//   contiguous); every other tensor is read through its strides (Strided4).
// * Every reduction is deterministic, with no atomics: a per-channel reduction writes one partial
//   sum per block (a fixed tree inside the block) into a buffer, and a second kernel adds the
//   partials in block order. Sums are in double, as on the CPU.
// * The pool backward is a gather: each input element visits the <= 9 outputs whose 3x3 window
//   covers it, recomputes that output's pools and adds its share (for max pooling only where
//   the element is that window's argmax), so each gradient element is written once.
// * Statistics, normalisers and the weight gradients stay on the device: no host sync.
// * weighted_sum passes its inputs' pointers and strides as kernel arguments: at most
//   kMaxInputs (32) inputs per call (checked).
// Light CUDA headers only (no ATen/cuda/CUDAContext.h, which needs cuBLAS/cuSPARSE headers).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../mixed_ops.h"

namespace oneshot {
namespace {

using at::Tensor;

constexpr int kThreads = 256;                 // threads of the elementwise kernels
constexpr int64_t kMaxBlocks = 65536;         // grid-stride cap of the elementwise kernels
constexpr int kReduceThreads = 256;           // a power of two: the in-block tree halves it
constexpr int kGroup = 8;                     // quantities one reduction block accumulates
constexpr int64_t kReduceBlocksTarget = 2048; // blocks of one reduction, all channels together
constexpr int kMaxInputs = 32;                // inputs of weighted_sum (kernel-argument tables)

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

bool is_channels_last(const Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

template <typename scalar_t>
Strided4<const scalar_t> read4(const Tensor& t) {
  return {t.const_data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
Strided4<scalar_t> write4(const Tensor& t) {
  return {t.mutable_data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

int64_t blocks_for(int64_t n) {
  return std::min<int64_t>(std::max<int64_t>((n + kThreads - 1) / kThreads, 1), kMaxBlocks);
}

template <typename T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// One element of a [N, C, H, W] iteration space, decoded from its position in memory order.
struct Pixel {
  int64_t n, c, h, w;
};

__device__ __forceinline__ Pixel decode(int64_t i, int64_t C, int64_t H, int64_t W, bool nhwc) {
  Pixel p;
  if (nhwc) {
    p.c = i % C;
    i /= C;
    p.w = i % W;
    i /= W;
    p.h = i % H;
    p.n = i / H;
  } else {
    p.w = i % W;
    i /= W;
    p.h = i % H;
    i /= H;
    p.c = i % C;
    p.n = i / C;
  }
  return p;
}

__device__ __forceinline__ int64_t grid_start() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_step() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// ---------------------------------------------------------------------------------------------
// Deterministic per-channel sums.
//
// `op(n, c, h, w, q0, acc)` adds quantities q0 .. q0 + kGroup - 1 of element (n, c, h, w) into
// acc. Block (bx, cy, z) sums the elements bx, bx + gridDim.x, ... (in units of blockDim.x) of
// channels cy, cy + gridDim.y, ... for quantity group z, and writes its partials to
// partials[bx][q][c]; sum_partials adds them in block order.

template <typename Op>
__global__ void __launch_bounds__(kReduceThreads)
channel_sums_kernel(const Op op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t nq,
                    double* __restrict__ partials) {
  __shared__ double tree[kGroup][kReduceThreads];
  const int t = threadIdx.x;
  const int64_t q0 = static_cast<int64_t>(blockIdx.z) * kGroup;
  const int64_t HW = H * W, M = N * HW;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    double acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) acc[j] = 0.0;
    for (int64_t i = grid_start(); i < M; i += grid_step()) {
      const int64_t n = i / HW, r = i - n * HW, h = r / W, w = r - h * W;
      op(n, c, h, w, q0, acc);
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) tree[j][t] = acc[j];
    __syncthreads();
    for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
      if (t < s) {
#pragma unroll
        for (int j = 0; j < kGroup; ++j) tree[j][t] += tree[j][t + s];
      }
      __syncthreads();
    }
    if (t == 0) {
      for (int j = 0; j < kGroup && q0 + j < nq; ++j)
        partials[(static_cast<int64_t>(blockIdx.x) * nq + q0 + j) * C + c] = tree[j][0];
    }
    __syncthreads();  // `tree` is reused by the next channel
  }
}

__global__ void sum_partials_kernel(const double* __restrict__ partials, int64_t blocks, int64_t width,
                                    double* __restrict__ out) {
  for (int64_t i = grid_start(); i < width; i += grid_step()) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s += partials[b * width + i];
    out[i] = s;
  }
}

// The [nq, C] double sums over (n, h, w) in [N) x [H) x [W) of op's nq quantities per channel.
template <typename Op>
Tensor channel_sums(const Op& op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t nq,
                    const Tensor& like, cudaStream_t stream) {
  const auto options = like.options().dtype(at::kDouble);
  if (nq == 0 || C == 0) return at::zeros({nq, C}, options);
  const int64_t M = N * H * W;
  const int64_t groups = (nq + kGroup - 1) / kGroup;
  TORCH_CHECK(groups <= 65535, "oneshot: too many reduced quantities (", nq, ") for one launch");
  const int64_t channels = std::min<int64_t>(C, 65535);
  const int64_t per_channel = std::max<int64_t>(1, kReduceBlocksTarget / (channels * groups));
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>({(M + kReduceThreads - 1) / kReduceThreads, per_channel, kMaxBlocks}));
  Tensor partials = at::empty({blocks, nq, C}, options);
  Tensor sums = at::empty({nq, C}, options);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(channels), static_cast<unsigned>(groups));
  channel_sums_kernel<Op><<<grid, kReduceThreads, 0, stream>>>(op, N, C, H, W, nq,
                                                               partials.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_partials_kernel<<<blocks_for(nq * C), kThreads, 0, stream>>>(partials.const_data_ptr<double>(), blocks,
                                                                   nq * C, sums.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sums;
}

// ---------------------------------------------------------------------------------------------
// Statistics and normalisers (as the CPU launcher: batch statistics from sums and sums of
// squares in double, rounded to the tensor dtype; normalisers from those rounded values).

// sums rows 2r, 2r + 1: sum and sum of squares of statistics row r.
template <typename scalar_t>
__global__ void batch_stats_kernel(const double* __restrict__ sums, int64_t rows, int64_t C, double count,
                                   scalar_t* __restrict__ mean, scalar_t* __restrict__ var) {
  for (int64_t i = grid_start(); i < rows * C; i += grid_step()) {
    const int64_t r = i / C, c = i - r * C;
    const double s = sums[(2 * r) * C + c], sq = sums[(2 * r + 1) * C + c];
    const double m = s / count;
    const double v = __dsub_rn(sq / count, __dmul_rn(m, m));  // no FMA: the CPU's rounding
    mean[i] = static_cast<scalar_t>(m);
    var[i] = static_cast<scalar_t>(v < 0.0 ? 0.0 : v);  // std::max(v, 0.0): NaN stays NaN
  }
}

template <typename scalar_t>
std::pair<Tensor, Tensor> batch_stats(const Tensor& sums, int64_t rows, int64_t C, double count,
                                      const Tensor& like, cudaStream_t stream) {
  Tensor mean = at::empty({rows, C}, like.options());
  Tensor var = at::empty({rows, C}, like.options());
  if (rows * C > 0) {
    batch_stats_kernel<scalar_t><<<blocks_for(rows * C), kThreads, 0, stream>>>(
        sums.const_data_ptr<double>(), rows, C, count, mean.mutable_data_ptr<scalar_t>(),
        var.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {mean, var};
}

template <typename acc_t>
__global__ void normalisers_kernel(const double* __restrict__ mean, const double* __restrict__ var, int64_t n,
                                   double eps, acc_t* __restrict__ mu, acc_t* __restrict__ rstd) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) {
    mu[i] = static_cast<acc_t>(mean[i]);
    rstd[i] = inverse_std<acc_t>(static_cast<acc_t>(var[i]), eps);
  }
}

struct Normalisers {
  Tensor mu, rstd;  // acc_t, [rows * C]; undefined without batch norm (then mean 0, invstd 1)
};

// mean/var of any floating dtype and device: read as double, as the CPU's as_doubles does.
template <typename acc_t>
Normalisers normalisers(const Tensor& mean, const Tensor& var, double eps, const Tensor& like,
                        cudaStream_t stream) {
  const Tensor m = mean.detach().to(like.device(), at::kDouble).contiguous();
  const Tensor v = var.detach().to(like.device(), at::kDouble).contiguous();
  const auto options = like.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  Normalisers out{at::empty({m.numel()}, options), at::empty({m.numel()}, options)};
  if (m.numel() > 0) {
    normalisers_kernel<acc_t><<<blocks_for(m.numel()), kThreads, 0, stream>>>(
        m.const_data_ptr<double>(), v.const_data_ptr<double>(), m.numel(), eps,
        out.mu.mutable_data_ptr<acc_t>(), out.rstd.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// A copy (never an alias: an op's outputs must not share memory with its inputs).
Tensor running_rows(const std::optional<Tensor>& t, const Tensor& like) {
  return t->detach().to(like.options()).clone(at::MemoryFormat::Contiguous);
}

// The weight gradients: out[k] = sum over c of sums[src[k]][c], in channel order.
struct WeightRows {
  int32_t src[kMaxInputs];
};

__global__ void weight_grads_kernel(const double* __restrict__ sums, int64_t C, WeightRows rows, int64_t K,
                                    double* __restrict__ out) {
  for (int64_t k = grid_start(); k < K; k += grid_step()) {
    double s = 0.0;
    for (int64_t c = 0; c < C; ++c) s += sums[rows.src[k] * C + c];
    out[k] = s;
  }
}

Tensor weight_grads(const Tensor& sums, int64_t C, const WeightRows& rows, int64_t K, const Tensor& weights,
                    cudaStream_t stream) {
  Tensor out = at::empty({K}, sums.options());
  if (K > 0) {
    weight_grads_kernel<<<1, 32, 0, stream>>>(sums.const_data_ptr<double>(), C, rows, K,
                                              out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out.to(weights.device(), weights.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// mixed_pool

// The candidates present and their positions in `weights` (-1 where absent).
struct Kinds {
  bool skip, avg, max;
  int64_t skip_at, avg_at, max_at;
};

Kinds kinds_of(const PoolKinds& p) {
  return {p.skip, p.avg, p.max, p.index[kSkip], p.index[kAvgPool], p.index[kMaxPool]};
}

// Pool geometry: input H x W, output Ho x Wo.
struct PoolShape {
  int64_t N, C, H, W, Ho, Wo, stride;
};

// Forward statistics: quantities 0..3 = sum and sum of squares of the avg pool (rounded to the
// dtype) and of the max pool, over the outputs.
template <typename scalar_t>
struct PoolStatsOp {
  Strided4<const scalar_t> x;
  PoolShape s;
  bool avg, max;
  __device__ void operator()(int64_t n, int64_t c, int64_t ho, int64_t wo, int64_t,
                             double (&acc)[kGroup]) const {
    using acc_t = acc_type<scalar_t>;
    const auto pooled = pool3x3<scalar_t, acc_t>(x, n, c, window3x3(ho, wo, s.stride, s.H, s.W), avg, max);
    const double a = static_cast<double>(static_cast<scalar_t>(pooled.avg));
    const double m = static_cast<double>(pooled.max);
    acc[0] += a;
    acc[1] += a * a;
    acc[2] += m;
    acc[3] += m * m;
  }
};

template <typename scalar_t>
__global__ void mixed_pool_forward_kernel(Strided4<const scalar_t> x, Strided4<scalar_t> out, PoolShape s,
                                          Kinds kinds, const double* __restrict__ w,
                                          const acc_type<scalar_t>* __restrict__ mu,
                                          const acc_type<scalar_t>* __restrict__ rstd, bool nhwc) {
  using acc_t = acc_type<scalar_t>;
  const acc_t w_skip = kinds.skip ? static_cast<acc_t>(w[kinds.skip_at]) : acc_t(0);
  const acc_t w_avg = kinds.avg ? static_cast<acc_t>(w[kinds.avg_at]) : acc_t(0);
  const acc_t w_max = kinds.max ? static_cast<acc_t>(w[kinds.max_at]) : acc_t(0);
  const bool pools = kinds.avg || kinds.max;
  const int64_t total = s.N * s.C * s.Ho * s.Wo;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const Pixel p = decode(i, s.C, s.Ho, s.Wo, nhwc);
    acc_t v = acc_t(0);
    if (kinds.skip) v += w_skip * static_cast<acc_t>(x.at(p.n, p.c, p.h, p.w));
    if (pools) {
      const auto pooled = pool3x3<scalar_t, acc_t>(x, p.n, p.c, window3x3(p.h, p.w, s.stride, s.H, s.W),
                                                   kinds.avg, kinds.max);
      const acc_t avg = static_cast<acc_t>(static_cast<scalar_t>(pooled.avg));
      if (kinds.avg) {
        const acc_t m = mu ? mu[p.c] : acc_t(0), r = rstd ? rstd[p.c] : acc_t(1);
        v += w_avg * normalized(avg, m, r);
      }
      if (kinds.max) {
        const acc_t m = mu ? mu[s.C + p.c] : acc_t(0), r = rstd ? rstd[s.C + p.c] : acc_t(1);
        v += w_max * normalized(static_cast<acc_t>(pooled.max), m, r);
      }
    }
    out.at(p.n, p.c, p.h, p.w) = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor> mixed_pool_forward(const Tensor& x, const Tensor& w, const PoolKinds& present,
                                                      int64_t stride, bool batchnorm, bool training,
                                                      const std::optional<Tensor>& running_mean,
                                                      const std::optional<Tensor>& running_var, double eps,
                                                      cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const PoolShape s{x.size(0), x.size(1), x.size(2), x.size(3), pooled_size(x.size(2), stride),
                    pooled_size(x.size(3), stride), stride};
  const Kinds kinds = kinds_of(present);
  Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(x.suggest_memory_format()));
  const bool nhwc = is_channels_last(out);
  const auto xs = read4<scalar_t>(x);

  Tensor mean = at::empty({0}, x.options()), var = at::empty({0}, x.options());
  Normalisers norm;
  if (batchnorm) {
    if (training) {
      const PoolStatsOp<scalar_t> op{xs, s, kinds.avg, kinds.max};
      const Tensor sums = channel_sums(op, s.N, s.C, s.Ho, s.Wo, 4, x, stream);
      std::tie(mean, var) =
          batch_stats<scalar_t>(sums, 2, s.C, static_cast<double>(s.N * s.Ho * s.Wo), x, stream);
      // rows of pools that are not among the candidates: mean 0, variance 1
      if (!kinds.avg) { mean[0].zero_(); var[0].fill_(1); }
      if (!kinds.max) { mean[1].zero_(); var[1].fill_(1); }
    } else {
      mean = running_rows(running_mean, x);
      var = running_rows(running_var, x);
    }
    norm = normalisers<acc_t>(mean, var, eps, x, stream);
  }
  mixed_pool_forward_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
      xs, write4<scalar_t>(out), s, kinds, w.const_data_ptr<double>(), optional_ptr<acc_t>(norm.mu),
      optional_ptr<acc_t>(norm.rstd), nhwc);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> mixed_pool_cuda(const Tensor& x, const Tensor& weights, at::IntArrayRef kinds,
                                                   int64_t stride, bool batchnorm, bool training,
                                                   const std::optional<Tensor>& running_mean,
                                                   const std::optional<Tensor>& running_var, double eps) {
  const PoolKinds present = check_mixed_pool(x, weights, kinds, stride, batchnorm, training, running_mean,
                                             running_var);
  check_device("mixed_pool", "x", x, at::kCUDA);
  check_device("mixed_pool", "weights", weights, at::kCUDA);
  check_dtype("mixed_pool", "x", x, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor w = weights.detach().to(x.device(), at::kDouble).contiguous();
  std::tuple<Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "oneshot::mixed_pool", [&] {
    result = mixed_pool_forward<scalar_t>(x, w, present, stride, batchnorm, training, running_mean, running_var,
                                          eps, stream);
  });
  return result;
}

// Backward pass 1: quantities 0..3 = sum(g), sum(g * avg_hat), sum(g * max_hat), sum(g * x)
// over the outputs (the last only with skip, where outputs and inputs coincide).
template <typename scalar_t>
struct PoolGradSumsOp {
  Strided4<const scalar_t> grad, x;
  PoolShape s;
  Kinds kinds;
  const acc_type<scalar_t>* mu;    // [2C] or null (mean 0)
  const acc_type<scalar_t>* rstd;  // [2C] or null (invstd 1)
  __device__ void operator()(int64_t n, int64_t c, int64_t ho, int64_t wo, int64_t,
                             double (&acc)[kGroup]) const {
    using acc_t = acc_type<scalar_t>;
    const acc_t g = static_cast<acc_t>(grad.at(n, c, ho, wo));
    acc[0] += static_cast<double>(g);
    if (kinds.skip) acc[3] += static_cast<double>(g * static_cast<acc_t>(x.at(n, c, ho, wo)));
    if (kinds.avg || kinds.max) {
      const auto pooled = pool3x3<scalar_t, acc_t>(x, n, c, window3x3(ho, wo, s.stride, s.H, s.W), kinds.avg,
                                                   kinds.max);
      if (kinds.avg) {
        const acc_t avg = static_cast<acc_t>(static_cast<scalar_t>(pooled.avg));
        const acc_t m = mu ? mu[c] : acc_t(0), r = rstd ? rstd[c] : acc_t(1);
        acc[1] += static_cast<double>(g * normalized(avg, m, r));
      }
      if (kinds.max) {
        const acc_t m = mu ? mu[s.C + c] : acc_t(0), r = rstd ? rstd[s.C + c] : acc_t(1);
        acc[2] += static_cast<double>(g * normalized(static_cast<acc_t>(pooled.max), m, r));
      }
    }
  }
};

// BatchNormGrad coefficients of both pools, coef[j * 2C + r * C + c] for j = scale, mean_grad,
// mean_proj and r = avg, max.
template <typename acc_t>
__global__ void pool_coef_kernel(const double* __restrict__ sums, const double* __restrict__ w, Kinds kinds,
                                 const acc_t* __restrict__ rstd, bool batch, double count, int64_t C,
                                 acc_t* __restrict__ coef) {
  for (int64_t i = grid_start(); i < 2 * C; i += grid_step()) {
    const int64_t r = i / C, c = i - r * C;
    const int64_t at = r == 0 ? kinds.avg_at : kinds.max_at;
    const acc_t wk = at >= 0 ? static_cast<acc_t>(w[at]) : acc_t(0);
    const acc_t rs = rstd ? rstd[i] : acc_t(1);
    coef[i] = wk * rs;
    coef[2 * C + i] = batch ? static_cast<acc_t>(sums[c] / count) : acc_t(0);
    coef[4 * C + i] = batch ? static_cast<acc_t>(sums[(1 + r) * C + c] / count) : acc_t(0);
  }
}

// Backward pass 2, gather form: one thread per input element (n, c, h, w).
template <typename scalar_t>
__global__ void mixed_pool_backward_kernel(Strided4<const scalar_t> grad, Strided4<const scalar_t> x,
                                           Strided4<scalar_t> grad_x, PoolShape s, Kinds kinds,
                                           const double* __restrict__ w,
                                           const acc_type<scalar_t>* __restrict__ mu,
                                           const acc_type<scalar_t>* __restrict__ rstd,
                                           const acc_type<scalar_t>* __restrict__ coef, bool nhwc) {
  using acc_t = acc_type<scalar_t>;
  const acc_t w_skip = kinds.skip ? static_cast<acc_t>(w[kinds.skip_at]) : acc_t(0);
  const bool pools = kinds.avg || kinds.max;
  const int64_t C = s.C, total = s.N * s.C * s.H * s.W;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const Pixel p = decode(i, C, s.H, s.W, nhwc);
    acc_t sum = acc_t(0);
    // skip needs stride 1: output (h, w) is input (h, w)
    if (kinds.skip) sum += w_skip * static_cast<acc_t>(grad.at(p.n, p.c, p.h, p.w));
    if (pools) {
      const BatchNormGrad<acc_t> avg_grad{coef[p.c], coef[2 * C + p.c], coef[4 * C + p.c]};
      const BatchNormGrad<acc_t> max_grad{coef[C + p.c], coef[3 * C + p.c], coef[5 * C + p.c]};
      const acc_t mu_avg = mu ? mu[p.c] : acc_t(0), rs_avg = rstd ? rstd[p.c] : acc_t(1);
      const acc_t mu_max = mu ? mu[C + p.c] : acc_t(0), rs_max = rstd ? rstd[C + p.c] : acc_t(1);
      // outputs whose window [o * stride - 1, o * stride + 1] holds this row / column
      const int64_t ho0 = std::max<int64_t>(0, (p.h - 1 + s.stride - 1) / s.stride);
      const int64_t ho1 = std::min<int64_t>(s.Ho - 1, (p.h + 1) / s.stride);
      const int64_t wo0 = std::max<int64_t>(0, (p.w - 1 + s.stride - 1) / s.stride);
      const int64_t wo1 = std::min<int64_t>(s.Wo - 1, (p.w + 1) / s.stride);
      for (int64_t ho = ho0; ho <= ho1; ++ho) {
        for (int64_t wo = wo0; wo <= wo1; ++wo) {
          const Window win = window3x3(ho, wo, s.stride, s.H, s.W);
          const auto pooled = pool3x3<scalar_t, acc_t>(x, p.n, p.c, win, kinds.avg, kinds.max);
          const acc_t g = static_cast<acc_t>(grad.at(p.n, p.c, ho, wo));
          if (kinds.avg) {
            const acc_t avg = static_cast<acc_t>(static_cast<scalar_t>(pooled.avg));
            const acc_t inv_count = acc_t(1) / static_cast<acc_t>(win.count());
            sum += avg_grad(g, normalized(avg, mu_avg, rs_avg)) * inv_count;
          }
          if (kinds.max && pooled.argmax_h == p.h && pooled.argmax_w == p.w)
            sum += max_grad(g, normalized(static_cast<acc_t>(pooled.max), mu_max, rs_max));
        }
      }
    }
    grad_x.at(p.n, p.c, p.h, p.w) = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
std::tuple<Tensor, Tensor> mixed_pool_backward_impl(const Tensor& grad, const Tensor& x, const Tensor& weights,
                                                    const Tensor& w, const PoolKinds& present, int64_t stride,
                                                    bool batchnorm, bool training, const Tensor& mean,
                                                    const Tensor& var, double eps, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const PoolShape s{x.size(0), x.size(1), x.size(2), x.size(3), pooled_size(x.size(2), stride),
                    pooled_size(x.size(3), stride), stride};
  const Kinds kinds = kinds_of(present);
  const double count = static_cast<double>(s.N * s.Ho * s.Wo);
  Tensor grad_x = at::empty_like(x, x.suggest_memory_format());  // every element is written
  const bool nhwc = is_channels_last(x);
  const auto xs = read4<scalar_t>(x);
  const auto gs = read4<scalar_t>(grad);
  Normalisers norm;
  if (batchnorm) norm = normalisers<acc_t>(mean, var, eps, x, stream);
  const acc_t* mu = optional_ptr<acc_t>(norm.mu);
  const acc_t* rstd = optional_ptr<acc_t>(norm.rstd);

  const PoolGradSumsOp<scalar_t> op{gs, xs, s, kinds, mu, rstd};
  const Tensor sums = channel_sums(op, s.N, s.C, s.Ho, s.Wo, 4, x, stream);

  Tensor coef = at::empty({6 * s.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  pool_coef_kernel<acc_t><<<blocks_for(2 * s.C), kThreads, 0, stream>>>(
      sums.const_data_ptr<double>(), w.const_data_ptr<double>(), kinds, rstd, batchnorm && training, count, s.C,
      coef.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  mixed_pool_backward_kernel<scalar_t><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
      gs, xs, write4<scalar_t>(grad_x), s, kinds, w.const_data_ptr<double>(), mu, rstd,
      coef.const_data_ptr<acc_t>(), nhwc);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // sums rows: 1 avg, 2 max, 3 skip
  WeightRows rows{};
  if (kinds.avg) rows.src[kinds.avg_at] = 1;
  if (kinds.max) rows.src[kinds.max_at] = 2;
  if (kinds.skip) rows.src[kinds.skip_at] = 3;
  return {grad_x, weight_grads(sums, s.C, rows, weights.numel(), weights, stream)};
}

std::tuple<Tensor, Tensor> mixed_pool_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& weights,
                                                    at::IntArrayRef kinds, int64_t stride, bool batchnorm,
                                                    bool training, const Tensor& mean, const Tensor& var,
                                                    double eps) {
  const PoolKinds present = check_mixed_pool(x, weights, kinds, stride, batchnorm, true, {}, {});
  check_device("mixed_pool_backward", "x", x, at::kCUDA);
  check_device("mixed_pool_backward", "grad", grad, at::kCUDA);
  check_device("mixed_pool_backward", "weights", weights, at::kCUDA);
  check_dtype("mixed_pool_backward", "x", x, /*half_ok=*/true);
  const int64_t Ho = pooled_size(x.size(2), stride), Wo = pooled_size(x.size(3), stride);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == Ho &&
                  grad.size(3) == Wo,
              "oneshot::mixed_pool_backward: grad must have the output's shape [", x.size(0), ", ", x.size(1),
              ", ", Ho, ", ", Wo, "], got ", shape_of(grad));
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "oneshot::mixed_pool_backward: grad has dtype ",
              grad.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "oneshot::mixed_pool_backward: grad is on ", grad.device(),
              " but x is on ", x.device());
  if (batchnorm) {
    check_stats("mixed_pool_backward", "mean", mean, 2, x.size(1), true);
    check_stats("mixed_pool_backward", "var", var, 2, x.size(1), true);
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor w = weights.detach().to(x.device(), at::kDouble).contiguous();
  std::tuple<Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "oneshot::mixed_pool_backward", [&] {
    result = mixed_pool_backward_impl<scalar_t>(grad, x, weights, w, present, stride, batchnorm, training, mean,
                                                var, eps, stream);
  });
  return result;
}

// ---------------------------------------------------------------------------------------------
// weighted_sum

// The inputs (or their gradients) of one call, passed by value as a kernel argument.
template <typename T>
struct Inputs {
  Strided4<T> t[kMaxInputs];
};

// row[k]: statistics row of input k, or -1; input[r]: the input of statistics row r.
struct Rows {
  int32_t row[kMaxInputs];
  int32_t input[kMaxInputs];
};

// Forward statistics: quantities 2r, 2r + 1 = sum and sum of squares of normalised input r.
template <typename scalar_t>
struct SumStatsOp {
  Inputs<const scalar_t> in;
  Rows rows;
  int64_t nrows;
  __device__ void operator()(int64_t n, int64_t c, int64_t h, int64_t w, int64_t q0,
                             double (&acc)[kGroup]) const {
    const int64_t r0 = q0 / 2;
#pragma unroll
    for (int j = 0; j < kGroup / 2; ++j) {
      const int64_t r = r0 + j;
      if (r < nrows) {
        const double v = static_cast<double>(in.t[rows.input[r]].at(n, c, h, w));
        acc[2 * j] += v;
        acc[2 * j + 1] += v * v;
      }
    }
  }
};

template <typename scalar_t>
__device__ __forceinline__ acc_type<scalar_t> input_hat(const Inputs<const scalar_t>& in, const Rows& rows,
                                                        const acc_type<scalar_t>* mu,
                                                        const acc_type<scalar_t>* rstd, int64_t k, int64_t C,
                                                        const Pixel& p) {
  using acc_t = acc_type<scalar_t>;
  const acc_t y = static_cast<acc_t>(in.t[k].at(p.n, p.c, p.h, p.w));
  const int64_t r = rows.row[k];
  return r < 0 ? y : normalized(y, mu[r * C + p.c], rstd[r * C + p.c]);
}

template <typename scalar_t>
__global__ void weighted_sum_forward_kernel(Inputs<const scalar_t> in, Rows rows, int64_t K,
                                            Strided4<scalar_t> out, int64_t N, int64_t C, int64_t H, int64_t W,
                                            const double* __restrict__ w, const acc_type<scalar_t>* __restrict__ mu,
                                            const acc_type<scalar_t>* __restrict__ rstd, bool nhwc) {
  using acc_t = acc_type<scalar_t>;
  const int64_t total = N * C * H * W;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const Pixel p = decode(i, C, H, W, nhwc);
    acc_t v = acc_t(0);
    for (int64_t k = 0; k < K; ++k)
      v += static_cast<acc_t>(w[k]) * input_hat<scalar_t>(in, rows, mu, rstd, k, C, p);
    out.at(p.n, p.c, p.h, p.w) = static_cast<scalar_t>(v);
  }
}

struct InputTables {
  Rows rows{};
  int64_t nrows = 0;
};

InputTables tables_of(const std::vector<bool>& normalize) {
  InputTables t;
  for (size_t k = 0; k < normalize.size(); ++k) {
    t.rows.row[k] = normalize[k] ? static_cast<int32_t>(t.nrows) : -1;
    if (normalize[k]) t.rows.input[t.nrows++] = static_cast<int32_t>(k);
  }
  return t;
}

template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor> weighted_sum_forward(at::TensorList inputs, const Tensor& w,
                                                        const std::vector<bool>& normalize, bool training,
                                                        const std::optional<Tensor>& running_mean,
                                                        const std::optional<Tensor>& running_var, double eps,
                                                        cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const Tensor& first = inputs[0];
  const int64_t K = static_cast<int64_t>(inputs.size());
  const int64_t N = first.size(0), C = first.size(1), H = first.size(2), W = first.size(3);
  Tensor out = at::empty_like(first, first.suggest_memory_format());
  const bool nhwc = is_channels_last(out);
  Inputs<const scalar_t> in{};
  for (int64_t k = 0; k < K; ++k) in.t[k] = read4<scalar_t>(inputs[k]);
  const InputTables tables = tables_of(normalize);
  const int64_t rows = tables.nrows;
  Tensor mean = at::empty({rows, C}, first.options()), var = at::empty({rows, C}, first.options());
  Normalisers norm;
  if (rows > 0) {
    if (training) {
      const SumStatsOp<scalar_t> op{in, tables.rows, rows};
      const Tensor sums = channel_sums(op, N, C, H, W, 2 * rows, first, stream);
      std::tie(mean, var) = batch_stats<scalar_t>(sums, rows, C, static_cast<double>(N * H * W), first, stream);
    } else {
      mean = running_rows(running_mean, first);
      var = running_rows(running_var, first);
    }
    norm = normalisers<acc_t>(mean, var, eps, first, stream);
  }
  if (out.numel() > 0) {
    weighted_sum_forward_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        in, tables.rows, K, write4<scalar_t>(out), N, C, H, W, w.const_data_ptr<double>(),
        optional_ptr<acc_t>(norm.mu), optional_ptr<acc_t>(norm.rstd), nhwc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, mean, var};
}

std::vector<bool> flags(const c10::List<bool>& list) {
  std::vector<bool> out;
  for (bool b : list) out.push_back(b);
  return out;
}

void check_input_count(const char* op, size_t K) {
  TORCH_CHECK(K <= static_cast<size_t>(kMaxInputs), "oneshot::", op, ": the CUDA kernel takes at most ",
              kMaxInputs, " inputs, got ", K);
}

std::tuple<Tensor, Tensor, Tensor> weighted_sum_cuda(at::TensorList inputs, const Tensor& weights,
                                                     const c10::List<bool>& normalize_list, bool training,
                                                     const std::optional<Tensor>& running_mean,
                                                     const std::optional<Tensor>& running_var, double eps) {
  const std::vector<bool> normalize = flags(normalize_list);
  check_weighted_sum(inputs, weights, normalize, training, running_mean, running_var);
  for (const Tensor& t : inputs) check_device("weighted_sum", "inputs", t, at::kCUDA);
  check_device("weighted_sum", "weights", weights, at::kCUDA);
  check_dtype("weighted_sum", "inputs", inputs[0], /*half_ok=*/true);
  check_input_count("weighted_sum", inputs.size());
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor w = weights.detach().to(inputs[0].device(), at::kDouble).contiguous();
  std::tuple<Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "oneshot::weighted_sum", [&] {
    result = weighted_sum_forward<scalar_t>(inputs, w, normalize, training, running_mean, running_var, eps, stream);
  });
  return result;
}

// Backward reduction: quantity 0 = sum(g), quantity 1 + k = sum(g * y_hat_k).
template <typename scalar_t>
struct SumGradSumsOp {
  Strided4<const scalar_t> grad;
  Inputs<const scalar_t> in;
  Rows rows;
  const acc_type<scalar_t>* mu;
  const acc_type<scalar_t>* rstd;
  int64_t C, nq;
  __device__ void operator()(int64_t n, int64_t c, int64_t h, int64_t w, int64_t q0,
                             double (&acc)[kGroup]) const {
    using acc_t = acc_type<scalar_t>;
    const Pixel p{n, c, h, w};
    const acc_t g = static_cast<acc_t>(grad.at(n, c, h, w));
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t q = q0 + j;
      if (q == 0)
        acc[j] += static_cast<double>(g);
      else if (q < nq)
        acc[j] += static_cast<double>(g * input_hat<scalar_t>(in, rows, mu, rstd, q - 1, C, p));
    }
  }
};

// BatchNormGrad coefficients per input and channel, coef[j * KC + k * C + c] for j = scale,
// mean_grad, mean_proj (the last two zero without batch statistics or normalisation).
template <typename acc_t>
__global__ void sum_coef_kernel(const double* __restrict__ sums, const double* __restrict__ w, Rows rows,
                                const acc_t* __restrict__ rstd, bool batch, double count, int64_t K, int64_t C,
                                acc_t* __restrict__ coef) {
  const int64_t KC = K * C;
  for (int64_t i = grid_start(); i < KC; i += grid_step()) {
    const int64_t k = i / C, c = i - k * C;
    const int64_t r = rows.row[k];
    const acc_t wk = static_cast<acc_t>(w[k]);
    if (r < 0) {
      coef[i] = wk;
      coef[KC + i] = acc_t(0);
      coef[2 * KC + i] = acc_t(0);
    } else {
      coef[i] = wk * rstd[r * C + c];
      coef[KC + i] = batch ? static_cast<acc_t>(sums[c] / count) : acc_t(0);
      coef[2 * KC + i] = batch ? static_cast<acc_t>(sums[(1 + k) * C + c] / count) : acc_t(0);
    }
  }
}

template <typename scalar_t>
__global__ void weighted_sum_backward_kernel(Strided4<const scalar_t> grad, Inputs<const scalar_t> in,
                                             Inputs<scalar_t> grads, Rows rows, int64_t K, int64_t N, int64_t C,
                                             int64_t H, int64_t W, const acc_type<scalar_t>* __restrict__ coef,
                                             const acc_type<scalar_t>* __restrict__ mu,
                                             const acc_type<scalar_t>* __restrict__ rstd, bool batch, bool nhwc) {
  using acc_t = acc_type<scalar_t>;
  const int64_t total = N * C * H * W, KC = K * C;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const Pixel p = decode(i, C, H, W, nhwc);
    const acc_t g = static_cast<acc_t>(grad.at(p.n, p.c, p.h, p.w));
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j = k * C + p.c;
      acc_t gk;
      if (batch) {
        const BatchNormGrad<acc_t> bn{coef[j], coef[KC + j], coef[2 * KC + j]};
        gk = bn(g, input_hat<scalar_t>(in, rows, mu, rstd, k, C, p));
      } else {
        gk = coef[j] * g;  // no reduction needed: the CPU's one-pass `scale * g`
      }
      grads.t[k].at(p.n, p.c, p.h, p.w) = static_cast<scalar_t>(gk);
    }
  }
}

template <typename scalar_t>
std::tuple<std::vector<Tensor>, Tensor> weighted_sum_backward_impl(const Tensor& grad, at::TensorList inputs,
                                                                   const Tensor& weights, const Tensor& w,
                                                                   const std::vector<bool>& normalize,
                                                                   bool training, const Tensor& mean,
                                                                   const Tensor& var, double eps,
                                                                   cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const Tensor& first = inputs[0];
  const int64_t K = static_cast<int64_t>(inputs.size());
  const int64_t N = first.size(0), C = first.size(1), H = first.size(2), W = first.size(3);
  const double count = static_cast<double>(N * H * W);
  const bool nhwc = is_channels_last(first);
  const auto gs = read4<scalar_t>(grad);
  Inputs<const scalar_t> in{};
  Inputs<scalar_t> outs{};
  std::vector<Tensor> grads;
  for (int64_t k = 0; k < K; ++k) {
    in.t[k] = read4<scalar_t>(inputs[k]);
    grads.push_back(at::empty_like(inputs[k], inputs[k].suggest_memory_format()));
    outs.t[k] = write4<scalar_t>(grads.back());
  }
  const InputTables tables = tables_of(normalize);
  Normalisers norm;
  if (tables.nrows > 0) norm = normalisers<acc_t>(mean, var, eps, first, stream);
  const acc_t* mu = optional_ptr<acc_t>(norm.mu);
  const acc_t* rstd = optional_ptr<acc_t>(norm.rstd);
  const bool batch = training && tables.nrows > 0;

  const SumGradSumsOp<scalar_t> op{gs, in, tables.rows, mu, rstd, C, 1 + K};
  const Tensor sums = channel_sums(op, N, C, H, W, 1 + K, first, stream);

  Tensor coef = at::empty({3 * K * C}, first.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  if (K * C > 0) {
    sum_coef_kernel<acc_t><<<blocks_for(K * C), kThreads, 0, stream>>>(
        sums.const_data_ptr<double>(), w.const_data_ptr<double>(), tables.rows, rstd, batch, count, K, C,
        coef.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (first.numel() > 0) {
    weighted_sum_backward_kernel<scalar_t><<<blocks_for(first.numel()), kThreads, 0, stream>>>(
        gs, in, outs, tables.rows, K, N, C, H, W, coef.const_data_ptr<acc_t>(), mu, rstd, batch, nhwc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  WeightRows rows{};
  for (int64_t k = 0; k < K; ++k) rows.src[k] = static_cast<int32_t>(1 + k);
  return {grads, weight_grads(sums, C, rows, K, weights, stream)};
}

std::tuple<std::vector<Tensor>, Tensor> weighted_sum_backward_cuda(const Tensor& grad, at::TensorList inputs,
                                                                   const Tensor& weights,
                                                                   const c10::List<bool>& normalize_list,
                                                                   bool training, const Tensor& mean,
                                                                   const Tensor& var, double eps) {
  const std::vector<bool> normalize = flags(normalize_list);
  check_weighted_sum(inputs, weights, normalize, true, {}, {});
  for (const Tensor& t : inputs) check_device("weighted_sum_backward", "inputs", t, at::kCUDA);
  check_device("weighted_sum_backward", "grad", grad, at::kCUDA);
  check_device("weighted_sum_backward", "weights", weights, at::kCUDA);
  check_dtype("weighted_sum_backward", "inputs", inputs[0], /*half_ok=*/true);
  check_input_count("weighted_sum_backward", inputs.size());
  TORCH_CHECK(grad.sizes() == inputs[0].sizes() && grad.scalar_type() == inputs[0].scalar_type(),
              "oneshot::weighted_sum_backward: grad must match the inputs' shape ", shape_of(inputs[0]),
              " and dtype ", inputs[0].scalar_type(), ", got ", shape_of(grad), " ", grad.scalar_type());
  TORCH_CHECK(grad.device() == inputs[0].device(), "oneshot::weighted_sum_backward: grad is on ", grad.device(),
              " but the inputs are on ", inputs[0].device());
  int64_t rows = 0;
  for (bool b : normalize) rows += b;
  if (rows > 0) {
    check_stats("weighted_sum_backward", "mean", mean, rows, inputs[0].size(1), true);
    check_stats("weighted_sum_backward", "var", var, rows, inputs[0].size(1), true);
  }
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor w = weights.detach().to(inputs[0].device(), at::kDouble).contiguous();
  std::tuple<std::vector<Tensor>, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(),
                                  "oneshot::weighted_sum_backward", [&] {
    result = weighted_sum_backward_impl<scalar_t>(grad, inputs, weights, w, normalize, training, mean, var, eps,
                                                  stream);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("mixed_pool", &mixed_pool_cuda);
  m.impl("mixed_pool_backward", &mixed_pool_backward_cuda);
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace oneshot
