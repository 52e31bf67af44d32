// Argument checks shared by the CPU and CUDA launchers: a bad call ends in an error that names
// the tensor and what was expected, before any kernel touches memory.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mixed_ops.h"

namespace oneshot {

inline std::string shape_of(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

inline void check_device(const char* op, const char* name, const at::Tensor& t, at::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, "oneshot::", op, ": ", name, " is on ", t.device(),
              " but this kernel runs on ", c10::DeviceTypeName(device, true),
              "; move every tensor of the call to one device");
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, bool half_ok) {
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kDouble ||
                  (half_ok && (dt == at::kHalf || dt == at::kBFloat16));
  TORCH_CHECK(ok, "oneshot::", op, ": ", name, " has dtype ", dt, "; this device's kernel takes ",
              half_ok ? "float32, float64, float16 or bfloat16" : "float32 or float64");
}

inline void check_weights(const char* op, const at::Tensor& weights, int64_t count) {
  TORCH_CHECK(weights.dim() == 1 && weights.numel() == count, "oneshot::", op,
              ": weights must have shape [", count, "] (one per candidate), got ", shape_of(weights));
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "oneshot::", op,
              ": weights must be floating point, got ", weights.scalar_type());
}

inline void check_stats(const char* op, const char* name, const std::optional<at::Tensor>& t,
                        int64_t rows, int64_t C, bool required) {
  if (!t.has_value() || !t->defined()) {
    TORCH_CHECK(!required, "oneshot::", op, ": ", name, " is required when training=False (the ",
                "running statistics to normalise with)");
    return;
  }
  TORCH_CHECK(t->dim() == 2 && t->size(0) == rows && t->size(1) == C, "oneshot::", op, ": ", name,
              " must have shape [", rows, ", ", C, "], got ", shape_of(*t));
}

// Which pool kinds are present, checked: each kind at most once, skip only at stride 1.
struct PoolKinds {
  bool skip = false, avg = false, max = false;
  int64_t index[3] = {-1, -1, -1};  // position of each kind in `kinds` / `weights`
};

inline PoolKinds check_mixed_pool(const at::Tensor& x, const at::Tensor& weights, at::IntArrayRef kinds,
                                  int64_t stride, bool batchnorm, bool training,
                                  const std::optional<at::Tensor>& running_mean,
                                  const std::optional<at::Tensor>& running_var) {
  TORCH_CHECK(x.dim() == 4, "oneshot::mixed_pool: x must be a 4-D [N, C, H, W] tensor, got shape ",
              shape_of(x));
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0,
              "oneshot::mixed_pool: x must be non-empty, got shape ", shape_of(x));
  TORCH_CHECK(stride == 1 || stride == 2, "oneshot::mixed_pool: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(!kinds.empty() && kinds.size() <= 3, "oneshot::mixed_pool: kinds must list 1 to 3 of ",
              "0 (skip), 1 (avg pool), 2 (max pool), got ", kinds);
  PoolKinds present;
  for (size_t i = 0; i < kinds.size(); ++i) {
    const int64_t k = kinds[i];
    TORCH_CHECK(k >= 0 && k <= 2 && present.index[k] < 0, "oneshot::mixed_pool: kinds must be distinct ",
                "values of 0 (skip), 1 (avg pool), 2 (max pool), got ", kinds);
    present.index[k] = static_cast<int64_t>(i);
  }
  present.skip = present.index[kSkip] >= 0;
  present.avg = present.index[kAvgPool] >= 0;
  present.max = present.index[kMaxPool] >= 0;
  TORCH_CHECK(!present.skip || stride == 1, "oneshot::mixed_pool: skip (kind 0) is the identity and ",
              "needs stride 1; a stride-2 skip_connect is FactorizedReduce, not a pool");
  check_weights("mixed_pool", weights, static_cast<int64_t>(kinds.size()));
  const bool running = batchnorm && !training;
  check_stats("mixed_pool", "running_mean", running_mean, 2, x.size(1), running);
  check_stats("mixed_pool", "running_var", running_var, 2, x.size(1), running);
  return present;
}

inline void check_weighted_sum(at::TensorList inputs, const at::Tensor& weights,
                               const std::vector<bool>& normalize, bool training,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var) {
  TORCH_CHECK(!inputs.empty(), "oneshot::weighted_sum: inputs must hold at least one tensor");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(first.dim() == 4, "oneshot::weighted_sum: inputs[0] must be a 4-D [N, C, H, W] tensor, ",
              "got shape ", shape_of(first));
  for (size_t k = 1; k < inputs.size(); ++k) {
    TORCH_CHECK(inputs[k].sizes() == first.sizes(), "oneshot::weighted_sum: inputs[", k, "] has shape ",
                shape_of(inputs[k]), " but inputs[0] has ", shape_of(first), "; every input must match");
    TORCH_CHECK(inputs[k].scalar_type() == first.scalar_type(), "oneshot::weighted_sum: inputs[", k,
                "] has dtype ", inputs[k].scalar_type(), " but inputs[0] has ", first.scalar_type());
    TORCH_CHECK(inputs[k].device() == first.device(), "oneshot::weighted_sum: inputs[", k, "] is on ",
                inputs[k].device(), " but inputs[0] is on ", first.device());
  }
  TORCH_CHECK(normalize.size() == inputs.size(), "oneshot::weighted_sum: normalize has ", normalize.size(),
              " flags for ", inputs.size(), " inputs");
  check_weights("weighted_sum", weights, static_cast<int64_t>(inputs.size()));
  int64_t normalized = 0;
  for (bool b : normalize) normalized += b;
  const bool running = normalized > 0 && !training;
  check_stats("weighted_sum", "running_mean", running_mean, normalized, first.size(1), running);
  check_stats("weighted_sum", "running_var", running_var, normalized, first.size(1), running);
}

}  // namespace oneshot
