"""Pure-PyTorch references of the fused mixed-op kernels: the fallback and the test oracle.

Same signatures and results as ``torch.ops.oneshot.*`` (schemas in ``csrc/schemas.cpp``),
written with ATen's own ops so autograd derives the gradients the kernels compute by hand.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

SKIP, AVG_POOL, MAX_POOL = 0, 1, 2  # mixed_pool's candidate kinds


def _normalize(value: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    return (value - mean[None, :, None, None]) * torch.rsqrt(var + eps)[None, :, None, None]


def _statistics(value: torch.Tensor, training: bool, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    if training:
        var, mean = torch.var_mean(value, dim=(0, 2, 3), unbiased=False)
        return mean, var
    return running_mean[row].to(value.dtype), running_var[row].to(value.dtype)


def mixed_pool(x: torch.Tensor, weights: torch.Tensor, kinds: Sequence[int], stride: int = 1,
               batchnorm: bool = False, training: bool = True, running_mean: torch.Tensor | None = None,
               running_var: torch.Tensor | None = None, eps: float = 1e-5
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_i weights[i] * candidate_{kinds[i]}(x)`` over skip (0), 3x3 average pooling (1,
    ``count_include_pad=False``) and 3x3 max pooling (2), padding 1, each pool followed by an
    affine-free batch norm when ``batchnorm``.

    Returns:
        the output and the statistics the pools were normalised with, [2, C] each (rows: avg,
        max; biased batch variance when ``training``, an absent pool's row then mean 0,
        variance 1; else a copy of the running statistics; empty tensors without batch norm).
    """
    C = x.shape[1]
    mean = x.new_zeros(2, C) if batchnorm else x.new_empty(0)
    var = x.new_ones(2, C) if batchnorm else x.new_empty(0)
    if batchnorm and not training:  # the running statistics as given, every row
        mean, var = running_mean.to(x.dtype).clone(), running_var.to(x.dtype).clone()
    total = None
    for i, kind in enumerate(kinds):
        if kind == SKIP:
            value = x
        else:
            if kind == AVG_POOL:
                value = F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
            else:
                value = F.max_pool2d(x, 3, stride, 1)
            if batchnorm:
                row = kind - 1
                m, v = _statistics(value, training, running_mean, running_var, row)
                mean[row], var[row] = m.detach(), v.detach()
                value = _normalize(value, m, v, eps)
        term = value * weights[i]
        total = term if total is None else total + term
    return total, mean, var


def weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor, normalize: Sequence[bool],
                 training: bool = True, running_mean: torch.Tensor | None = None,
                 running_var: torch.Tensor | None = None, eps: float = 1e-5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_k weights[k] * BN_k(inputs[k])``, BN_k an affine-free batch norm where
    ``normalize[k]`` and the identity elsewhere.

    Returns:
        the output and the statistics of the normalised inputs, [number normalised, C] each.
    """
    C = inputs[0].shape[1]
    rows = sum(bool(b) for b in normalize)
    mean = inputs[0].new_zeros(rows, C)
    var = inputs[0].new_ones(rows, C)
    total, row = None, 0
    for k, (value, norm) in enumerate(zip(inputs, normalize)):
        if norm:
            m, v = _statistics(value, training, running_mean, running_var, row)
            mean[row], var[row] = m.detach(), v.detach()
            value = _normalize(value, m, v, eps)
            row += 1
        term = value * weights[k]
        total = term if total is None else total + term
    return total, mean, var
