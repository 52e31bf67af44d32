"""Dense mixing of an edge's candidates through the fused kernels (:mod:`ops.kernels`).

A DARTS edge computes ``sum_k w_k * op_k(x)``. Run candidate by candidate, autograd keeps every
``op_k(x)`` for the weight gradient, every pool's output and argmax indices, every batch norm's
output, and one ``relu(x)`` per convolution. Here the candidates are split into:

* the parameter-free ones (skip, 3x3 average and max pooling, each pool optionally followed by
  an affine-free BN: DARTS's search-time ``MixedOp``), all computed by one ``mixed_pool`` call
  that keeps nothing but ``x``;
* the ones ending in an affine-free BN (sep/dil convs, ReLU-conv-BN): run up to that BN, the BN
  and the weighted sum done by one ``weighted_sum`` call that keeps only the pre-BN outputs
  (which the BN kept anyway); those that start with a ReLU share one ``relu(x)``;
* anything else, run as it is and summed by the same ``weighted_sum`` call.

The result equals the candidate-by-candidate sum within fp32 rounding, BN running statistics
included. Where an edge does not fit (BNs in different modes or with different eps), the
caller falls back to the unfused path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ops import kernels
from ops.candidates import Identity
from ops.kernels.reference import AVG_POOL, MAX_POOL, SKIP


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules a plain ``nn.Sequential`` tree applies, in order; [module] for anything else."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _affine_free_bn(module: nn.Module) -> bool:
    return type(module) is nn.BatchNorm2d and not module.affine


def _pool_kind(module: nn.Module, stride: int) -> int | None:
    if isinstance(module, (Identity, nn.Identity)) and stride == 1:
        return SKIP
    if (type(module) is nn.AvgPool2d and module.kernel_size in (3, (3, 3)) and module.padding in (1, (1, 1))
            and module.stride in (stride, (stride, stride)) and not module.ceil_mode
            and not module.count_include_pad and module.divisor_override is None):
        return AVG_POOL
    if (type(module) is nn.MaxPool2d and module.kernel_size in (3, (3, 3)) and module.padding in (1, (1, 1))
            and module.stride in (stride, (stride, stride)) and module.dilation in (1, (1, 1))
            and not module.ceil_mode and not module.return_indices):
        return MAX_POOL
    return None


@dataclass
class EdgePlan:
    """How one edge's computed candidates map onto the fused ops."""

    pool_index: list[int] = field(default_factory=list)  # candidate index per pool kind
    pool_kinds: list[int] = field(default_factory=list)
    pool_bns: list[nn.BatchNorm2d | None] = field(default_factory=list)
    sum_index: list[int] = field(default_factory=list)  # candidate index per weighted_sum input
    sum_bodies: list[list[nn.Module]] = field(default_factory=list)  # modules up to the final BN
    sum_after_relu: list[bool] = field(default_factory=list)  # body starts after a shared relu(x)
    sum_bns: list[nn.BatchNorm2d | None] = field(default_factory=list)


def plan_edge(ops: Sequence[nn.Module], computed: Sequence[int], stride: int) -> EdgePlan:
    """Sort an edge's computed candidates into pools, BN-ended bodies and the rest."""
    plan = EdgePlan()
    for k in computed:
        leaves = _leaves(ops[k])
        kind = _pool_kind(leaves[0], stride) if len(leaves) <= 2 else None
        bn = leaves[-1] if len(leaves) == 2 and _affine_free_bn(leaves[-1]) else None
        if kind is not None and (len(leaves) == 1 or (bn is not None and kind != SKIP)):
            plan.pool_index.append(k)
            plan.pool_kinds.append(kind)
            plan.pool_bns.append(bn)
            continue
        plan.sum_index.append(k)
        if len(leaves) > 1 and _affine_free_bn(leaves[-1]):
            body = leaves[:-1]
            after_relu = type(body[0]) is nn.ReLU and not body[0].inplace
            plan.sum_bodies.append(body[1:] if after_relu else body)
            plan.sum_after_relu.append(after_relu)
            plan.sum_bns.append(leaves[-1])
        else:
            plan.sum_bodies.append([ops[k]])
            plan.sum_after_relu.append(False)
            plan.sum_bns.append(None)
    return plan


def _uses_batch_statistics(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _one_mode(bns: Sequence[nn.BatchNorm2d]) -> tuple[bool, float] | None:
    """(batch statistics?, eps) shared by all ``bns``, or None where they differ."""
    modes = {(_uses_batch_statistics(bn), float(bn.eps)) for bn in bns}
    if len(modes) > 1 or any(not _uses_batch_statistics(bn) and bn.running_mean is None for bn in bns):
        return None
    return modes.pop() if modes else (True, 1e-5)


def _running(bns: Sequence[nn.BatchNorm2d | None], channels: int, like: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    means = [bn.running_mean if bn is not None else like.new_zeros(channels) for bn in bns]
    variances = [bn.running_var if bn is not None else like.new_ones(channels) for bn in bns]
    return torch.stack(means), torch.stack(variances)


@torch.no_grad()
def _update_running_statistics(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does to its buffers after normalising with batch statistics."""
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    bn.running_mean.mul_(1.0 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1.0 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


def _run(body: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in body:
        x = module(x)
    return x


def fused_mixed_forward(ops: Sequence[nn.Module], computed: Sequence[int], stride: int, x: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor | None:
    """``sum_k weights[k] * ops[k](x)`` over the computed candidates through the fused kernels,
    or None where the edge does not fit them."""
    plan = plan_edge(ops, computed, stride)
    pool_bns = [bn for bn in plan.pool_bns if bn is not None]
    sum_bns = [bn for bn in plan.sum_bns if bn is not None]
    if pool_bns and len(pool_bns) != sum(kind != SKIP for kind in plan.pool_kinds):
        return None  # one pool with BN, one without: not a shape the kernel takes
    pool_mode, sum_mode = _one_mode(pool_bns), _one_mode(sum_bns)
    if pool_mode is None or sum_mode is None:
        return None
    out = None
    if plan.sum_index:
        shared = F.relu(x) if any(plan.sum_after_relu) else None
        inputs = [_run(body, shared if after_relu else x)
                  for body, after_relu in zip(plan.sum_bodies, plan.sum_after_relu)]
        batch, eps = sum_mode
        running = (None, None) if batch or not sum_bns else _running(sum_bns, inputs[0].shape[1], inputs[0])
        out, mean, var = kernels.weighted_sum(inputs, weights[plan.sum_index], [bn is not None for bn in plan.sum_bns],
                                              batch, running[0], running[1], eps)
        if batch:
            count = inputs[0].shape[0] * inputs[0].shape[2] * inputs[0].shape[3]
            for row, bn in enumerate(sum_bns):
                _update_running_statistics(bn, mean[row], var[row], count)
    if plan.pool_index:
        batch, eps = pool_mode
        by_row = [None, None]  # the BN after the avg pool (row 0) and after the max pool (row 1)
        for kind, bn in zip(plan.pool_kinds, plan.pool_bns):
            if kind != SKIP:
                by_row[kind - 1] = bn
        running = (None, None)
        if pool_bns and not batch:
            running = _running(by_row, x.shape[1], x)
        pooled, mean, var = kernels.mixed_pool(x, weights[plan.pool_index], plan.pool_kinds, stride, bool(pool_bns),
                                               batch, running[0], running[1], eps)
        if pool_bns and batch:
            count = pooled.shape[0] * pooled.shape[2] * pooled.shape[3]
            for row, bn in enumerate(by_row):
                if bn is not None:
                    _update_running_statistics(bn, mean[row], var[row], count)
        out = pooled if out is None else out + pooled
    return out
