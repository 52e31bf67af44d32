// The schemas of the fused mixed-op kernels: the one place they are declared. Kernels are
// registered per device in cpu/ and cuda/; autograd and fake (meta) implementations are
// registered from Python (ops/kernels/registration.py), next to the pure-PyTorch references.
#include <torch/library.h>

TORCH_LIBRARY(oneshot, m) {
  // w_skip * x + w_avg * BN(avgpool3x3(x)) + w_max * BN(maxpool3x3(x)) over the candidates in
  // `kinds` (0 skip, 1 avg pool, 2 max pool; weights[i] belongs to kinds[i]). Returns the output
  // and the per-pool statistics it normalised with, [2, C] each (rows: avg, max; biased batch
  // variance in training, the running statistics otherwise; empty without batch norm).
  m.def("mixed_pool(Tensor x, Tensor weights, int[] kinds, int stride, bool batchnorm, "
        "bool training, Tensor? running_mean, Tensor? running_var, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("mixed_pool_backward(Tensor grad, Tensor x, Tensor weights, int[] kinds, int stride, "
        "bool batchnorm, bool training, Tensor mean, Tensor var, float eps) -> (Tensor, Tensor)");
  // sum_k w_k * BN_k(inputs[k]), BN_k affine-free where normalize[k]. Returns the output and the
  // statistics of the normalised inputs, [number normalised, C] each.
  m.def("weighted_sum(Tensor[] inputs, Tensor weights, bool[] normalize, bool training, "
        "Tensor? running_mean, Tensor? running_var, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("weighted_sum_backward(Tensor grad, Tensor[] inputs, Tensor weights, bool[] normalize, "
        "bool training, Tensor mean, Tensor var, float eps) -> (Tensor[], Tensor)");
}
