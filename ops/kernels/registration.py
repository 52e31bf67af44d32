"""Autograd and fake (meta) implementations of the ``oneshot::`` ops, registered from Python.

The C++ library defines the schemas and the device kernels; this module tells autograd that
the gradient of ``mixed_pool`` is ``mixed_pool_backward`` (and the same for ``weighted_sum``),
saving only the inputs, the weights and the per-channel statistics, and tells fake-tensor
tracing (``torch.compile``, ``opcheck``) the shapes and layouts of the outputs.
The statistics outputs carry no gradient: they only feed the BN running averages.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch._prims_common import suggest_memory_format

_registered = False


def _pooled(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1


def _fake_mixed_pool(x, weights, kinds, stride, batchnorm, training, running_mean, running_var, eps):
    N, C, H, W = x.shape
    out = torch.empty((N, C, _pooled(H, stride), _pooled(W, stride)), dtype=x.dtype, device=x.device,
                      memory_format=suggest_memory_format(x))
    stats = (2, C) if batchnorm else (0,)
    return out, x.new_empty(stats), x.new_empty(stats)


def _fake_mixed_pool_backward(grad, x, weights, kinds, stride, batchnorm, training, mean, var, eps):
    return torch.empty_like(x, memory_format=suggest_memory_format(x)), torch.empty_like(weights)


def _fake_weighted_sum(inputs, weights, normalize, training, running_mean, running_var, eps):
    first = inputs[0]
    rows = sum(bool(b) for b in normalize)
    out = torch.empty_like(first, memory_format=suggest_memory_format(first))
    return out, first.new_empty((rows, first.shape[1])), first.new_empty((rows, first.shape[1]))


def _fake_weighted_sum_backward(grad, inputs, weights, normalize, training, mean, var, eps):
    grads = [torch.empty_like(t, memory_format=suggest_memory_format(t)) for t in inputs]
    return grads, torch.empty_like(weights)


def _setup_mixed_pool(ctx: Any, inputs: Sequence[Any], output: Sequence[torch.Tensor]) -> None:
    x, weights, kinds, stride, batchnorm, training, _, _, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weights, mean, var)
    ctx.arguments = (list(kinds), stride, batchnorm, training, eps)
    ctx.mark_non_differentiable(mean, var)


def _mixed_pool_backward(ctx: Any, grad: torch.Tensor, _grad_mean: Any, _grad_var: Any):
    x, weights, mean, var = ctx.saved_tensors
    kinds, stride, batchnorm, training, eps = ctx.arguments
    grad_x, grad_weights = torch.ops.oneshot.mixed_pool_backward(
        grad, x, weights, kinds, stride, batchnorm, training, mean, var, eps)
    return grad_x, grad_weights, None, None, None, None, None, None, None


def _setup_weighted_sum(ctx: Any, inputs: Sequence[Any], output: Sequence[torch.Tensor]) -> None:
    tensors, weights, normalize, training, _, _, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(weights, mean, var, *tensors)
    ctx.arguments = (list(normalize), training, eps)
    ctx.mark_non_differentiable(mean, var)


def _weighted_sum_backward(ctx: Any, grad: torch.Tensor, _grad_mean: Any, _grad_var: Any):
    weights, mean, var, *tensors = ctx.saved_tensors
    normalize, training, eps = ctx.arguments
    grad_inputs, grad_weights = torch.ops.oneshot.weighted_sum_backward(
        grad, tensors, weights, normalize, training, mean, var, eps)
    return list(grad_inputs), grad_weights, None, None, None, None, None


def _no_double_backward(ctx: Any, *grads: Any):
    raise RuntimeError("oneshot: differentiating the fused kernels' backward (double backward, e.g. a "
                       "Hessian-vector product) is not supported; build that graph inside "
                       "`ops.kernels.use_fused(False)`, which computes the same numbers")


def _setup_nothing(ctx: Any, inputs: Sequence[Any], output: Any) -> None:
    pass


def register() -> None:
    """Register fake and autograd implementations; idempotent. The library must be loaded."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("oneshot::mixed_pool")(_fake_mixed_pool)
    torch.library.register_fake("oneshot::mixed_pool_backward")(_fake_mixed_pool_backward)
    torch.library.register_fake("oneshot::weighted_sum")(_fake_weighted_sum)
    torch.library.register_fake("oneshot::weighted_sum_backward")(_fake_weighted_sum_backward)
    torch.library.register_autograd("oneshot::mixed_pool", _mixed_pool_backward,
                                    setup_context=_setup_mixed_pool)
    torch.library.register_autograd("oneshot::weighted_sum", _weighted_sum_backward,
                                    setup_context=_setup_weighted_sum)
    for op in ("oneshot::mixed_pool_backward", "oneshot::weighted_sum_backward"):  # loud, not silently wrong
        torch.library.register_autograd(op, _no_double_backward, setup_context=_setup_nothing)
    _registered = True
