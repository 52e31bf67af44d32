// Per-element math of the fused mixed-op kernels, shared by the CPU launcher (cpu/) and the
// CUDA launcher (cuda/). Nothing here allocates or loops over a tensor: a launcher owns the
// iteration order, the parallelism and the reductions; this header owns what one element is.
//
// The ops (schemas in schemas.cpp, references in ops/kernels/reference.py):
//   mixed_pool   : w_skip * x + w_avg * BN(avgpool3x3(x)) + w_max * BN(maxpool3x3(x))
//                  pools with padding 1, avg with count_include_pad=False, max with ATen's tie
//                  rule; BN optional, affine-free, batch or running statistics.
//   weighted_sum : sum_k w_k * BN_k(y_k), each BN_k optional and affine-free.
// Backward recomputes the pools and the normalised values: nothing is saved but the inputs,
// the weights and the per-channel statistics.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ONESHOT_HD __host__ __device__ __forceinline__
#else
#define ONESHOT_HD inline
#endif

namespace oneshot {

// Candidate kinds of mixed_pool, as the `kinds` argument numbers them.
constexpr int64_t kSkip = 0;
constexpr int64_t kAvgPool = 1;
constexpr int64_t kMaxPool = 2;

// A 4-D tensor seen through its strides (any memory format).
template <typename T>
struct Strided4 {
  T* data;
  int64_t sn, sc, sh, sw;
  ONESHOT_HD T& at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data[n * sn + c * sc + h * sh + w * sw];
  }
};

// The input rows/columns [h0, h1) x [w0, w1) that a 3x3, padding-1 window at output (ho, wo)
// covers, clipped to the input: padding contributes nothing (count_include_pad=False, and max
// pooling pads with -inf).
struct Window {
  int64_t h0, h1, w0, w1;
  ONESHOT_HD int64_t count() const { return (h1 - h0) * (w1 - w0); }
};

ONESHOT_HD int64_t pooled_size(int64_t size, int64_t stride) {
  return (size + 2 - 3) / stride + 1;  // kernel 3, padding 1, floor mode
}

ONESHOT_HD Window window3x3(int64_t ho, int64_t wo, int64_t stride, int64_t H, int64_t W) {
  const int64_t hs = ho * stride - 1, ws = wo * stride - 1;
  Window win;
  win.h0 = hs < 0 ? 0 : hs;
  win.h1 = hs + 3 > H ? H : hs + 3;
  win.w0 = ws < 0 ? 0 : ws;
  win.w1 = ws + 3 > W ? W : ws + 3;
  return win;
}

// Both pools of one window and channel. `argmax_h/argmax_w` is the first position in row-major
// order that holds the maximum, and a NaN takes the place of anything before it (ATen's
// max_pool2d rule: `val > max || isnan(val)`), so gradients land where ATen puts them, ties included.
template <typename T, typename acc_t>
struct Pooled {
  acc_t avg;
  T max;
  int64_t argmax_h, argmax_w;
};

// Whether `v` takes the place of the running maximum `current` (ATen's rule; v != v is isnan).
template <typename T>
ONESHOT_HD bool replaces_max(T v, T current) {
  return v > current || v != v;
}

template <typename T, typename acc_t>
ONESHOT_HD Pooled<T, acc_t> pool3x3(const Strided4<const T>& x, int64_t n, int64_t c,
                                    const Window& win, bool want_avg, bool want_max) {
  Pooled<T, acc_t> p;
  acc_t sum = acc_t(0);
  p.max = x.at(n, c, win.h0, win.w0);
  p.argmax_h = win.h0;
  p.argmax_w = win.w0;
  for (int64_t h = win.h0; h < win.h1; ++h) {
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const T v = x.at(n, c, h, w);
      if (want_avg) sum += static_cast<acc_t>(v);
      if (want_max && replaces_max(v, p.max)) {
        p.max = v;
        p.argmax_h = h;
        p.argmax_w = w;
      }
    }
  }
  p.avg = sum / static_cast<acc_t>(win.count());
  return p;
}

// Affine-free batch norm of one value: (v - mean) * invstd.
template <typename acc_t>
ONESHOT_HD acc_t normalized(acc_t v, acc_t mean, acc_t invstd) {
  return (v - mean) * invstd;
}

template <typename acc_t>
ONESHOT_HD acc_t inverse_std(acc_t var, double eps) {
#if defined(__CUDA_ARCH__)
  return acc_t(1) / sqrt(var + static_cast<acc_t>(eps));
#else
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
#endif
}

// Gradient of one normalised input, d loss / d v for v -> w * (v - mean) * invstd, given the
// per-channel coefficients of the backward of batch norm:
//   training (batch statistics): invstd * (w*g - w*sum(g)/M - v_hat * w*sum(g*v_hat)/M)
//   evaluation (running statistics): invstd * w * g
// `BatchNormGrad` holds w*invstd, the mean of g and the mean of g*v_hat (zero in evaluation).
template <typename acc_t>
struct BatchNormGrad {
  acc_t scale;       // w * invstd
  acc_t mean_grad;   // sum(g) / M, or 0
  acc_t mean_proj;   // sum(g * v_hat) / M, or 0
  ONESHOT_HD acc_t operator()(acc_t g, acc_t v_hat) const {
    return scale * (g - mean_grad - v_hat * mean_proj);
  }
};

}  // namespace oneshot
