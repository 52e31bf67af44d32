// CPU launcher of the fused mixed-op kernels (ATen parallel loops on OpenMP, no pybind).
//
// One image is one work item: the max-pool scatter of the backward then writes only its own
// image (no atomics), and every reduction is a per-image partial sum in double, added in image
// order, so results do not depend on the thread count. Within an image the loops go pixel by
// pixel with the channels innermost (see pool_pixel).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../mixed_ops.h"

namespace oneshot {
namespace {

using at::Tensor;

template <typename T, typename U>
Strided4<T> view4(const Tensor& t, U* data) {
  return {data, t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
Strided4<const scalar_t> read4(const Tensor& t) {
  return view4<const scalar_t>(t, t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
Strided4<scalar_t> write4(const Tensor& t) {
  return view4<scalar_t>(t, t.mutable_data_ptr<scalar_t>());
}

// Run `per_image(n, partial)` for every image with a zeroed partial-sum row of `width` doubles,
// then add the rows in image order.
template <typename F>
std::vector<double> reduce_images(int64_t N, int64_t width, const F& per_image) {
  std::vector<double> partial(static_cast<size_t>(N * width), 0.0);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) per_image(n, partial.data() + n * width);
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[n * width + i];
  return total;
}

template <typename F>
void for_each_image(int64_t N, const F& per_image) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) per_image(n);
  });
}

std::vector<double> as_doubles(const Tensor& t) {
  Tensor d = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Statistics a launcher normalises with: batch statistics from per-channel sums and sums of
// squares (training), or the running ones. Rounded to the tensor's dtype first, so forward and
// backward use the same values.
struct Stats {
  Tensor mean, var;  // [rows, C], returned to the caller
};

Stats batch_stats(const std::vector<double>& sums, int64_t rows, int64_t C, double count,
                  const at::TensorOptions& options) {
  Tensor mean = at::empty({rows, C}, options.dtype(at::kDouble));
  Tensor var = at::empty({rows, C}, options.dtype(at::kDouble));
  double* m = mean.data_ptr<double>();
  double* v = var.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double s = sums[(2 * r) * C + c], sq = sums[(2 * r + 1) * C + c];
      m[r * C + c] = s / count;
      v[r * C + c] = std::max(sq / count - (s / count) * (s / count), 0.0);
    }
  return {mean.to(options.dtype()), var.to(options.dtype())};
}

template <typename acc_t>
void normalisers(const Tensor& mean, const Tensor& var, double eps, std::vector<acc_t>& mu,
                 std::vector<acc_t>& rstd) {
  const std::vector<double> m = as_doubles(mean), v = as_doubles(var);
  mu.resize(m.size());
  rstd.resize(v.size());
  for (size_t i = 0; i < m.size(); ++i) {
    mu[i] = static_cast<acc_t>(m[i]);
    rstd[i] = inverse_std<acc_t>(static_cast<acc_t>(v[i]), eps);
  }
}

// A copy (never an alias: an op's outputs must not share memory with its inputs).
Tensor running_rows(const std::optional<Tensor>& t, const Tensor& like) {
  return t->detach().to(like.options()).clone(at::MemoryFormat::Contiguous);
}

// Rows of pools that are not among the candidates: mean 0, variance 1.
void neutral_rows(Tensor& mean, Tensor& var, const PoolKinds& kinds) {
  if (!kinds.avg) { mean[0].zero_(); var[0].fill_(1); }
  if (!kinds.max) { mean[1].zero_(); var[1].fill_(1); }
}

// ---------------------------------------------------------------------------------------------
// Pixel-major loops: one output pixel at a time, the channels innermost. Where every tensor of a
// call holds its channels contiguously (channels_last, or a channel slice of it as PC-DARTS
// passes) the channel stride is the constant 1 and the inner loops vectorise; otherwise the same
// loops run with the tensors' own channel strides.

// Both 3x3 pools of one output pixel for all channels: sums (divided later), maxima and, where
// asked, each channel's argmax by ATen's tie rule as a tap of the window, (h - h0) * 3 + (w - w0).
template <bool UNIT_C, typename scalar_t, typename acc_t>
void pool_pixel(const scalar_t* image, int64_t sc, int64_t sh, int64_t sw, const Window& win, int64_t C,
                bool want_avg, bool want_max, bool want_arg, acc_t* sum, scalar_t* max, int32_t* arg) {
  const int64_t step = UNIT_C ? 1 : sc;
  const scalar_t* first = image + win.h0 * sh + win.w0 * sw;
  for (int64_t c = 0; c < C; ++c) {
    sum[c] = acc_t(0);
    max[c] = first[c * step];
  }
  if (want_arg)
    for (int64_t c = 0; c < C; ++c) arg[c] = 0;
  for (int64_t h = win.h0; h < win.h1; ++h) {
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const int32_t tap = static_cast<int32_t>((h - win.h0) * 3 + (w - win.w0));
      const scalar_t* p = image + h * sh + w * sw;
      if (want_avg)
        for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<acc_t>(p[c * step]);
      if (want_max && want_arg) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t v = p[c * step];
          const bool wins = replaces_max(v, max[c]);
          max[c] = wins ? v : max[c];
          arg[c] = wins ? tap : arg[c];
        }
      } else if (want_max) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t v = p[c * step];
          max[c] = replaces_max(v, max[c]) ? v : max[c];
        }
      }
    }
  }
}

// The average as avg_pool2d stores it: the sum over the window divided by its size, rounded to
// the tensor's dtype.
template <typename scalar_t, typename acc_t>
inline acc_t stored_average(acc_t sum, int64_t count) {
  return static_cast<acc_t>(static_cast<scalar_t>(sum / static_cast<acc_t>(count)));
}

// Per-thread scratch of one pixel's channel vectors.
template <typename scalar_t, typename acc_t>
struct PixelScratch {
  std::vector<acc_t> sum, a, b;
  std::vector<scalar_t> max;
  std::vector<int32_t> arg;
  explicit PixelScratch(int64_t C) : sum(C), a(C), b(C), max(C), arg(C) {}
};

// ---------------------------------------------------------------------------------------------
// mixed_pool

struct PoolGeometry {
  int64_t N, C, H, W, Ho, Wo, stride;
  explicit PoolGeometry(const Tensor& x, int64_t stride_)
      : N(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), Ho(pooled_size(x.size(2), stride_)),
        Wo(pooled_size(x.size(3), stride_)), stride(stride_) {}
};

template <bool UNIT_C, typename scalar_t>
void mixed_pool_forward_loops(const Tensor& x, Tensor& out, const std::vector<double>& w, const PoolKinds& kinds,
                              const PoolGeometry& g, bool batchnorm, bool training, Tensor& mean, Tensor& var,
                              const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                              double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C;
  const auto xs = read4<scalar_t>(x);
  const auto os = write4<scalar_t>(out);
  const int64_t xc = UNIT_C ? 1 : xs.sc, oc = UNIT_C ? 1 : os.sc;
  const bool pools = kinds.avg || kinds.max;
  std::vector<acc_t> mu(2 * C, acc_t(0)), rstd(2 * C, acc_t(1));
  if (batchnorm) {
    if (training) {
      const auto sums = reduce_images(g.N, 4 * C, [&](int64_t n, double* p) {
        PixelScratch<scalar_t, acc_t> s(C);
        const scalar_t* image = xs.data + n * xs.sn;
        for (int64_t ho = 0; ho < g.Ho; ++ho)
          for (int64_t wo = 0; wo < g.Wo; ++wo) {
            const Window win = window3x3(ho, wo, g.stride, g.H, g.W);
            pool_pixel<UNIT_C>(image, xs.sc, xs.sh, xs.sw, win, C, kinds.avg, kinds.max, false, s.sum.data(),
                               s.max.data(), s.arg.data());
            for (int64_t c = 0; c < C; ++c) {
              const double a = static_cast<double>(stored_average<scalar_t>(s.sum[c], win.count()));
              const double m = static_cast<double>(s.max[c]);
              p[c] += a;
              p[C + c] += a * a;
              p[2 * C + c] += m;
              p[3 * C + c] += m * m;
            }
          }
      });
      Stats stats = batch_stats(sums, 2, C, static_cast<double>(g.N * g.Ho * g.Wo), x.options());
      mean = stats.mean;
      var = stats.var;
      neutral_rows(mean, var, kinds);
    } else {
      mean = running_rows(running_mean, x);
      var = running_rows(running_var, x);
    }
    normalisers(mean, var, eps, mu, rstd);
  }
  const acc_t w_skip = kinds.skip ? static_cast<acc_t>(w[kinds.index[kSkip]]) : acc_t(0);
  const acc_t w_avg = kinds.avg ? static_cast<acc_t>(w[kinds.index[kAvgPool]]) : acc_t(0);
  const acc_t w_max = kinds.max ? static_cast<acc_t>(w[kinds.index[kMaxPool]]) : acc_t(0);
  for_each_image(g.N, [&](int64_t n) {
    PixelScratch<scalar_t, acc_t> s(C);
    const scalar_t* image = xs.data + n * xs.sn;
    scalar_t* out_image = os.data + n * os.sn;
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const Window win = window3x3(ho, wo, g.stride, g.H, g.W);
        scalar_t* o = out_image + ho * os.sh + wo * os.sw;
        const scalar_t* xp = image + ho * xs.sh + wo * xs.sw;  // the skip input (stride 1 only)
        if (pools)
          pool_pixel<UNIT_C>(image, xs.sc, xs.sh, xs.sw, win, C, kinds.avg, kinds.max, false, s.sum.data(),
                             s.max.data(), s.arg.data());
        for (int64_t c = 0; c < C; ++c) {
          acc_t v = acc_t(0);
          if (kinds.skip) v += w_skip * static_cast<acc_t>(xp[c * xc]);
          if (kinds.avg)
            v += w_avg * normalized(stored_average<scalar_t>(s.sum[c], win.count()), mu[c], rstd[c]);
          if (kinds.max) v += w_max * normalized(static_cast<acc_t>(s.max[c]), mu[C + c], rstd[C + c]);
          o[c * oc] = static_cast<scalar_t>(v);
        }
      }
  });
}

template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor> mixed_pool_forward(const Tensor& x, const std::vector<double>& w,
                                                      const PoolKinds& kinds, int64_t stride, bool batchnorm,
                                                      bool training, const std::optional<Tensor>& running_mean,
                                                      const std::optional<Tensor>& running_var, double eps) {
  const PoolGeometry g(x, stride);
  Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options().memory_format(x.suggest_memory_format()));
  Tensor mean = at::empty({0}, x.options()), var = at::empty({0}, x.options());
  if (x.stride(1) == 1 && out.stride(1) == 1)
    mixed_pool_forward_loops<true, scalar_t>(x, out, w, kinds, g, batchnorm, training, mean, var, running_mean,
                                             running_var, eps);
  else
    mixed_pool_forward_loops<false, scalar_t>(x, out, w, kinds, g, batchnorm, training, mean, var, running_mean,
                                              running_var, eps);
  return {out, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> mixed_pool_cpu(const Tensor& x, const Tensor& weights, at::IntArrayRef kinds,
                                                  int64_t stride, bool batchnorm, bool training,
                                                  const std::optional<Tensor>& running_mean,
                                                  const std::optional<Tensor>& running_var, double eps) {
  const PoolKinds present = check_mixed_pool(x, weights, kinds, stride, batchnorm, training, running_mean,
                                             running_var);
  check_device("mixed_pool", "x", x, at::kCPU);
  check_device("mixed_pool", "weights", weights, at::kCPU);
  check_dtype("mixed_pool", "x", x, false);
  const std::vector<double> w = as_doubles(weights);
  std::tuple<Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "oneshot::mixed_pool", [&] {
    result = mixed_pool_forward<scalar_t>(x, w, present, stride, batchnorm, training, running_mean,
                                          running_var, eps);
  });
  return result;
}

template <bool UNIT_C, typename scalar_t>
std::tuple<Tensor, Tensor> mixed_pool_backward_loops(const Tensor& grad, const Tensor& x, const Tensor& weights,
                                                     const std::vector<double>& w, const PoolKinds& kinds,
                                                     const PoolGeometry& g, bool batchnorm, bool training,
                                                     const Tensor& mean, const Tensor& var, double eps,
                                                     Tensor& grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C;
  const double count = static_cast<double>(g.N * g.Ho * g.Wo);
  const auto xs = read4<scalar_t>(x);
  const auto gs = read4<scalar_t>(grad);
  const auto gxs = write4<scalar_t>(grad_x);
  const int64_t xc = UNIT_C ? 1 : xs.sc, gc = UNIT_C ? 1 : gs.sc, gxc = UNIT_C ? 1 : gxs.sc;
  const bool pools = kinds.avg || kinds.max;
  std::vector<acc_t> mu(2 * C, acc_t(0)), rstd(2 * C, acc_t(1));
  if (batchnorm) normalisers(mean, var, eps, mu, rstd);

  // Pass 1: sum(g), sum(g * avg_hat), sum(g * max_hat), sum(g * x) per channel.
  const auto sums = reduce_images(g.N, 4 * C, [&](int64_t n, double* p) {
    PixelScratch<scalar_t, acc_t> s(C);
    const scalar_t* image = xs.data + n * xs.sn;
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const Window win = window3x3(ho, wo, g.stride, g.H, g.W);
        const scalar_t* gp = gs.data + n * gs.sn + ho * gs.sh + wo * gs.sw;
        const scalar_t* xp = image + ho * xs.sh + wo * xs.sw;
        if (pools)
          pool_pixel<UNIT_C>(image, xs.sc, xs.sh, xs.sw, win, C, kinds.avg, kinds.max, false, s.sum.data(),
                             s.max.data(), s.arg.data());
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gv = static_cast<acc_t>(gp[c * gc]);
          p[c] += gv;
          if (kinds.skip) p[3 * C + c] += static_cast<double>(gv * static_cast<acc_t>(xp[c * xc]));
          if (kinds.avg)
            p[C + c] += static_cast<double>(
                gv * normalized(stored_average<scalar_t>(s.sum[c], win.count()), mu[c], rstd[c]));
          if (kinds.max)
            p[2 * C + c] += static_cast<double>(gv * normalized(static_cast<acc_t>(s.max[c]), mu[C + c], rstd[C + c]));
        }
      }
  });
  std::vector<double> gw(3, 0.0);
  for (int64_t c = 0; c < C; ++c) {
    gw[kAvgPool] += sums[C + c];
    gw[kMaxPool] += sums[2 * C + c];
    gw[kSkip] += sums[3 * C + c];
  }
  const acc_t w_skip = kinds.skip ? static_cast<acc_t>(w[kinds.index[kSkip]]) : acc_t(0);
  const bool batch = batchnorm && training;
  std::vector<BatchNormGrad<acc_t>> coef(2 * C);
  for (int64_t r = 0; r < 2; ++r) {
    const int64_t idx = kinds.index[r == 0 ? kAvgPool : kMaxPool];
    const acc_t wk = idx >= 0 ? static_cast<acc_t>(w[idx]) : acc_t(0);
    for (int64_t c = 0; c < C; ++c)
      coef[r * C + c] = {wk * rstd[r * C + c], batch ? static_cast<acc_t>(sums[c] / count) : acc_t(0),
                         batch ? static_cast<acc_t>(sums[(1 + r) * C + c] / count) : acc_t(0)};
  }

  // Pass 2: each output's gradient into the input positions it came from (this image only).
  for_each_image(g.N, [&](int64_t n) {
    PixelScratch<scalar_t, acc_t> s(C);
    const scalar_t* image = xs.data + n * xs.sn;
    scalar_t* gx_image = gxs.data + n * gxs.sn;
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const Window win = window3x3(ho, wo, g.stride, g.H, g.W);
        const scalar_t* gp = gs.data + n * gs.sn + ho * gs.sh + wo * gs.sw;
        if (kinds.skip) {
          scalar_t* gxp = gx_image + ho * gxs.sh + wo * gxs.sw;
          for (int64_t c = 0; c < C; ++c) gxp[c * gxc] += static_cast<scalar_t>(w_skip * static_cast<acc_t>(gp[c * gc]));
        }
        if (!pools) continue;
        pool_pixel<UNIT_C>(image, xs.sc, xs.sh, xs.sw, win, C, kinds.avg, kinds.max, kinds.max, s.sum.data(),
                           s.max.data(), s.arg.data());
        if (kinds.avg) {
          const acc_t inv_count = acc_t(1) / static_cast<acc_t>(win.count());
          for (int64_t c = 0; c < C; ++c) {
            const acc_t avg_hat = normalized(stored_average<scalar_t>(s.sum[c], win.count()), mu[c], rstd[c]);
            s.a[c] = coef[c](static_cast<acc_t>(gp[c * gc]), avg_hat) * inv_count;
          }
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t ww = win.w0; ww < win.w1; ++ww) {
              scalar_t* gxp = gx_image + h * gxs.sh + ww * gxs.sw;
              for (int64_t c = 0; c < C; ++c) gxp[c * gxc] += static_cast<scalar_t>(s.a[c]);
            }
        }
        if (kinds.max) {
          int64_t tap_offset[9] = {0};  // each tap's place in this image of grad_x
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t ww = win.w0; ww < win.w1; ++ww)
              tap_offset[(h - win.h0) * 3 + (ww - win.w0)] = h * gxs.sh + ww * gxs.sw;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t max_hat = normalized(static_cast<acc_t>(s.max[c]), mu[C + c], rstd[C + c]);
            gx_image[tap_offset[s.arg[c]] + c * gxc] +=
                static_cast<scalar_t>(coef[C + c](static_cast<acc_t>(gp[c * gc]), max_hat));
          }
        }
      }
  });
  Tensor grad_w = at::empty({static_cast<int64_t>(weights.numel())}, weights.options().dtype(at::kDouble));
  for (int64_t kind = 0; kind < 3; ++kind)
    if (kinds.index[kind] >= 0) grad_w.data_ptr<double>()[kinds.index[kind]] = gw[kind];
  return {grad_x, grad_w.to(weights.scalar_type())};
}

template <typename scalar_t>
std::tuple<Tensor, Tensor> mixed_pool_backward_impl(const Tensor& grad, const Tensor& x, const Tensor& weights,
                                                    const std::vector<double>& w, const PoolKinds& kinds,
                                                    int64_t stride, bool batchnorm, bool training,
                                                    const Tensor& mean, const Tensor& var, double eps) {
  const PoolGeometry g(x, stride);
  Tensor grad_x = at::zeros_like(x, x.suggest_memory_format());
  if (x.stride(1) == 1 && grad.stride(1) == 1 && grad_x.stride(1) == 1)
    return mixed_pool_backward_loops<true, scalar_t>(grad, x, weights, w, kinds, g, batchnorm, training, mean, var,
                                                     eps, grad_x);
  return mixed_pool_backward_loops<false, scalar_t>(grad, x, weights, w, kinds, g, batchnorm, training, mean, var,
                                                    eps, grad_x);
}

std::tuple<Tensor, Tensor> mixed_pool_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& weights,
                                                   at::IntArrayRef kinds, int64_t stride, bool batchnorm,
                                                   bool training, const Tensor& mean, const Tensor& var,
                                                   double eps) {
  const PoolKinds present = check_mixed_pool(x, weights, kinds, stride, batchnorm, true, {}, {});
  check_device("mixed_pool_backward", "x", x, at::kCPU);
  check_device("mixed_pool_backward", "grad", grad, at::kCPU);
  check_dtype("mixed_pool_backward", "x", x, false);
  const int64_t Ho = pooled_size(x.size(2), stride), Wo = pooled_size(x.size(3), stride);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == Ho &&
                  grad.size(3) == Wo,
              "oneshot::mixed_pool_backward: grad must have the output's shape [", x.size(0), ", ", x.size(1),
              ", ", Ho, ", ", Wo, "], got ", shape_of(grad));
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "oneshot::mixed_pool_backward: grad has dtype ",
              grad.scalar_type(), " but x has ", x.scalar_type());
  if (batchnorm) {
    check_stats("mixed_pool_backward", "mean", mean, 2, x.size(1), true);
    check_stats("mixed_pool_backward", "var", var, 2, x.size(1), true);
  }
  const std::vector<double> w = as_doubles(weights);
  std::tuple<Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "oneshot::mixed_pool_backward", [&] {
    result = mixed_pool_backward_impl<scalar_t>(grad, x, weights, w, present, stride, batchnorm, training, mean,
                                                var, eps);
  });
  return result;
}

// ---------------------------------------------------------------------------------------------
// weighted_sum

// Strided views of K same-shaped tensors and each one's row in the statistics (-1: not normalised).
template <typename T>
struct Inputs {
  std::vector<Strided4<T>> views;
  std::vector<int64_t> row;
  int64_t rows = 0;
};

template <typename T>
Inputs<T> strided_inputs(at::TensorList tensors, const std::vector<bool>& normalize) {
  Inputs<T> in;
  for (size_t k = 0; k < tensors.size(); ++k) {
    in.views.push_back(view4<T>(tensors[k], tensors[k].template const_data_ptr<std::remove_const_t<T>>()));
    in.row.push_back(normalize[k] ? in.rows++ : -1);
  }
  return in;
}

bool channels_unit_stride(at::TensorList tensors) {
  for (const Tensor& t : tensors)
    if (t.stride(1) != 1) return false;
  return true;
}

template <bool UNIT_C, typename scalar_t>
void weighted_sum_forward_loops(const Inputs<const scalar_t>& in, Tensor& out, const std::vector<double>& w,
                                int64_t N, int64_t C, int64_t H, int64_t W, bool training, Tensor& mean,
                                Tensor& var, const std::optional<Tensor>& running_mean,
                                const std::optional<Tensor>& running_var, double eps, const Tensor& first) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = static_cast<int64_t>(in.views.size());
  const auto os = write4<scalar_t>(out);
  std::vector<acc_t> mu, rstd;
  if (in.rows > 0) {
    if (training) {
      const auto sums = reduce_images(N, 2 * in.rows * C, [&](int64_t n, double* p) {
        for (int64_t k = 0; k < K; ++k) {
          if (in.row[k] < 0) continue;
          const auto& y = in.views[k];
          const int64_t yc = UNIT_C ? 1 : y.sc;
          double* sum = p + 2 * in.row[k] * C;
          double* square = sum + C;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t ww = 0; ww < W; ++ww) {
              const scalar_t* yp = y.data + n * y.sn + h * y.sh + ww * y.sw;
              for (int64_t c = 0; c < C; ++c) {
                const double v = static_cast<double>(yp[c * yc]);
                sum[c] += v;
                square[c] += v * v;
              }
            }
        }
      });
      Stats stats = batch_stats(sums, in.rows, C, static_cast<double>(N * H * W), first.options());
      mean = stats.mean;
      var = stats.var;
    } else {
      mean = running_rows(running_mean, first);
      var = running_rows(running_var, first);
    }
    normalisers(mean, var, eps, mu, rstd);
  }
  // w_k * (y - mu) * rstd = scale * (y - center), per input and channel (centred first: exact
  // where a channel's mean is large against its spread)
  std::vector<acc_t> scale(K * C), center(K * C);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t r = in.row[k];
      scale[k * C + c] = static_cast<acc_t>(w[k]) * (r < 0 ? acc_t(1) : rstd[r * C + c]);
      center[k * C + c] = r < 0 ? acc_t(0) : mu[r * C + c];
    }
  const int64_t oc = UNIT_C ? 1 : os.sc;
  for_each_image(N, [&](int64_t n) {
    std::vector<acc_t> acc(C);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t ww = 0; ww < W; ++ww) {
        for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(0);
        for (int64_t k = 0; k < K; ++k) {
          const auto& y = in.views[k];
          const int64_t yc = UNIT_C ? 1 : y.sc;
          const scalar_t* yp = y.data + n * y.sn + h * y.sh + ww * y.sw;
          const acc_t* sc = scale.data() + k * C;
          const acc_t* ce = center.data() + k * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += sc[c] * (static_cast<acc_t>(yp[c * yc]) - ce[c]);
        }
        scalar_t* o = os.data + n * os.sn + h * os.sh + ww * os.sw;
        for (int64_t c = 0; c < C; ++c) o[c * oc] = static_cast<scalar_t>(acc[c]);
      }
  });
}

template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor> weighted_sum_forward(at::TensorList inputs, const std::vector<double>& w,
                                                        const std::vector<bool>& normalize, bool training,
                                                        const std::optional<Tensor>& running_mean,
                                                        const std::optional<Tensor>& running_var, double eps) {
  const Tensor& first = inputs[0];
  const int64_t N = first.size(0), C = first.size(1), H = first.size(2), W = first.size(3);
  Tensor out = at::empty_like(first, first.suggest_memory_format());
  const auto in = strided_inputs<const scalar_t>(inputs, normalize);
  Tensor mean = at::empty({in.rows, C}, first.options()), var = at::empty({in.rows, C}, first.options());
  if (channels_unit_stride(inputs) && out.stride(1) == 1)
    weighted_sum_forward_loops<true, scalar_t>(in, out, w, N, C, H, W, training, mean, var, running_mean,
                                               running_var, eps, first);
  else
    weighted_sum_forward_loops<false, scalar_t>(in, out, w, N, C, H, W, training, mean, var, running_mean,
                                                running_var, eps, first);
  return {out, mean, var};
}

std::vector<bool> flags(const c10::List<bool>& list) {
  std::vector<bool> out;
  for (bool b : list) out.push_back(b);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> weighted_sum_cpu(at::TensorList inputs, const Tensor& weights,
                                                    const c10::List<bool>& normalize_list, bool training,
                                                    const std::optional<Tensor>& running_mean,
                                                    const std::optional<Tensor>& running_var, double eps) {
  const std::vector<bool> normalize = flags(normalize_list);
  check_weighted_sum(inputs, weights, normalize, training, running_mean, running_var);
  for (const Tensor& t : inputs) check_device("weighted_sum", "inputs", t, at::kCPU);
  check_device("weighted_sum", "weights", weights, at::kCPU);
  check_dtype("weighted_sum", "inputs", inputs[0], false);
  const std::vector<double> w = as_doubles(weights);
  std::tuple<Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "oneshot::weighted_sum", [&] {
    result = weighted_sum_forward<scalar_t>(inputs, w, normalize, training, running_mean, running_var, eps);
  });
  return result;
}

template <bool UNIT_C, typename scalar_t>
Tensor weighted_sum_backward_loops(const Tensor& grad, const Inputs<const scalar_t>& in, std::vector<Tensor>& grads,
                                   const Tensor& weights, const std::vector<double>& w, int64_t N, int64_t C,
                                   int64_t H, int64_t W, bool training, const Tensor& mean, const Tensor& var,
                                   double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = static_cast<int64_t>(in.views.size());
  const double count = static_cast<double>(N * H * W);
  const auto gs = read4<scalar_t>(grad);
  const int64_t gc = UNIT_C ? 1 : gs.sc;
  std::vector<Strided4<scalar_t>> gys;
  for (const Tensor& t : grads) gys.push_back(write4<scalar_t>(t));
  std::vector<acc_t> mu, rstd;
  if (in.rows > 0) normalisers(mean, var, eps, mu, rstd);
  // y_hat = a * (y - b) per input and channel (a = 1, b = 0 where not normalised)
  std::vector<acc_t> a(K * C, acc_t(1)), b(K * C, acc_t(0));
  for (int64_t k = 0; k < K; ++k)
    if (in.row[k] >= 0)
      for (int64_t c = 0; c < C; ++c) {
        a[k * C + c] = rstd[in.row[k] * C + c];
        b[k * C + c] = mu[in.row[k] * C + c];
      }
  // Without batch statistics the input gradients need no reduction: pass 1 writes them too.
  const bool batch = training && in.rows > 0;
  std::vector<acc_t> direct(K * C);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) direct[k * C + c] = static_cast<acc_t>(w[k]) * a[k * C + c];
  const auto sums = reduce_images(N, (1 + K) * C, [&](int64_t n, double* p) {
    std::vector<acc_t> gv(C);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t ww = 0; ww < W; ++ww) {
        const scalar_t* gp = gs.data + n * gs.sn + h * gs.sh + ww * gs.sw;
        for (int64_t c = 0; c < C; ++c) {
          gv[c] = static_cast<acc_t>(gp[c * gc]);
          p[c] += static_cast<double>(gv[c]);
        }
        for (int64_t k = 0; k < K; ++k) {
          const auto& y = in.views[k];
          const int64_t yc = UNIT_C ? 1 : y.sc;
          const scalar_t* yp = y.data + n * y.sn + h * y.sh + ww * y.sw;
          const acc_t* ak = a.data() + k * C;
          const acc_t* bk = b.data() + k * C;
          double* pk = p + (1 + k) * C;
          for (int64_t c = 0; c < C; ++c)
            pk[c] += static_cast<double>(gv[c] * (ak[c] * (static_cast<acc_t>(yp[c * yc]) - bk[c])));
          if (!batch) {
            const auto& gy = gys[k];
            const int64_t gyc = UNIT_C ? 1 : gy.sc;
            scalar_t* gyp = gy.data + n * gy.sn + h * gy.sh + ww * gy.sw;
            const acc_t* dk = direct.data() + k * C;
            for (int64_t c = 0; c < C; ++c) gyp[c * gyc] = static_cast<scalar_t>(dk[c] * gv[c]);
          }
        }
      }
  });
  Tensor grad_w = at::zeros({K}, weights.options().dtype(at::kDouble));
  double* gw = grad_w.data_ptr<double>();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) gw[k] += sums[(1 + k) * C + c];
  if (batch) {
    // gy = scale * (g - mean_g - y_hat * mean_gy) with y_hat = a * (y - b); an input that is not
    // normalised has scale w_k and no mean terms
    std::vector<BatchNormGrad<acc_t>> coef(K * C);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = k * C + c;
        if (in.row[k] < 0)
          coef[i] = {static_cast<acc_t>(w[k]), acc_t(0), acc_t(0)};
        else
          coef[i] = {static_cast<acc_t>(w[k]) * a[i], static_cast<acc_t>(sums[c] / count),
                     static_cast<acc_t>(sums[(1 + k) * C + c] / count)};
      }
    for_each_image(N, [&](int64_t n) {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t ww = 0; ww < W; ++ww) {
          const scalar_t* gp = gs.data + n * gs.sn + h * gs.sh + ww * gs.sw;
          for (int64_t k = 0; k < K; ++k) {
            const auto& y = in.views[k];
            const auto& gy = gys[k];
            const int64_t yc = UNIT_C ? 1 : y.sc, gyc = UNIT_C ? 1 : gy.sc;
            const scalar_t* yp = y.data + n * y.sn + h * y.sh + ww * y.sw;
            scalar_t* gyp = gy.data + n * gy.sn + h * gy.sh + ww * gy.sw;
            const BatchNormGrad<acc_t>* ck = coef.data() + k * C;
            const acc_t* ak = a.data() + k * C;
            const acc_t* bk = b.data() + k * C;
            for (int64_t c = 0; c < C; ++c)
              gyp[c * gyc] = static_cast<scalar_t>(
                  ck[c](static_cast<acc_t>(gp[c * gc]), ak[c] * (static_cast<acc_t>(yp[c * yc]) - bk[c])));
          }
        }
    });
  }
  return grad_w.to(weights.scalar_type());
}

template <typename scalar_t>
std::tuple<std::vector<Tensor>, Tensor> weighted_sum_backward_impl(
    const Tensor& grad, at::TensorList inputs, const Tensor& weights, const std::vector<double>& w,
    const std::vector<bool>& normalize, bool training, const Tensor& mean, const Tensor& var, double eps) {
  const Tensor& first = inputs[0];
  const int64_t N = first.size(0), C = first.size(1), H = first.size(2), W = first.size(3);
  const auto in = strided_inputs<const scalar_t>(inputs, normalize);
  std::vector<Tensor> grads;
  for (const Tensor& t : inputs) grads.push_back(at::empty_like(t, t.suggest_memory_format()));
  bool unit = channels_unit_stride(inputs) && grad.stride(1) == 1;
  for (const Tensor& t : grads) unit = unit && t.stride(1) == 1;
  Tensor grad_w = unit ? weighted_sum_backward_loops<true, scalar_t>(grad, in, grads, weights, w, N, C, H, W,
                                                                     training, mean, var, eps)
                       : weighted_sum_backward_loops<false, scalar_t>(grad, in, grads, weights, w, N, C, H, W,
                                                                      training, mean, var, eps);
  return {grads, grad_w};
}

std::tuple<std::vector<Tensor>, Tensor> weighted_sum_backward_cpu(const Tensor& grad, at::TensorList inputs,
                                                                  const Tensor& weights,
                                                                  const c10::List<bool>& normalize_list,
                                                                  bool training, const Tensor& mean,
                                                                  const Tensor& var, double eps) {
  const std::vector<bool> normalize = flags(normalize_list);
  check_weighted_sum(inputs, weights, normalize, true, {}, {});
  for (const Tensor& t : inputs) check_device("weighted_sum_backward", "inputs", t, at::kCPU);
  check_device("weighted_sum_backward", "grad", grad, at::kCPU);
  check_dtype("weighted_sum_backward", "inputs", inputs[0], false);
  TORCH_CHECK(grad.sizes() == inputs[0].sizes() && grad.scalar_type() == inputs[0].scalar_type(),
              "oneshot::weighted_sum_backward: grad must match the inputs' shape ", shape_of(inputs[0]),
              " and dtype ", inputs[0].scalar_type(), ", got ", shape_of(grad), " ", grad.scalar_type());
  int64_t rows = 0;
  for (bool b : normalize) rows += b;
  if (rows > 0) {
    check_stats("weighted_sum_backward", "mean", mean, rows, inputs[0].size(1), true);
    check_stats("weighted_sum_backward", "var", var, rows, inputs[0].size(1), true);
  }
  const std::vector<double> w = as_doubles(weights);
  std::tuple<std::vector<Tensor>, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "oneshot::weighted_sum_backward", [&] {
    result = weighted_sum_backward_impl<scalar_t>(grad, inputs, weights, w, normalize, training, mean, var, eps);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("mixed_pool", &mixed_pool_cpu);
  m.impl("mixed_pool_backward", &mixed_pool_backward_cpu);
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace oneshot
