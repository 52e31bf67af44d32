"""Mixed operations: the candidates of one edge and the decision that picks among them.

A decision is made per forward by the algorithm, never stored in the op:

* a weight tensor of shape [K]: dense mixing, every candidate runs (DARTS);
* an ``int``: single path, only that candidate runs, no architecture gradient (SPOS, RSPS,
  a sampled subnet with inherited weights);
* a :class:`SampledPath`: only the chosen candidate runs, and the weights carry the
  straight-through gradient to the architecture parameters (GDAS).

All three go through :func:`weighted_sum`, the one place a fused kernel replaces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

from ops.candidates import Zero, build_candidate


@dataclass(frozen=True)
class SampledPath:
    """One sampled candidate plus straight-through weights.

    Attributes:
        index: the candidate that runs.
        weights: [K]; ``weights[index]`` is 1 in the forward pass and the others 0, while the
            backward pass sees the soft distribution (``hard - soft.detach() + soft``).
    """

    index: int
    weights: torch.Tensor


Decision = Union[torch.Tensor, int, SampledPath]


def weighted_sum(weights: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Sum_k weights[k] * outputs[k], accumulated in place of a list of products.

    A candidate that was not computed (``None``) contributes its weight alone: a value of zero
    in a straight-through one-hot forward that still passes gradient to the architecture
    parameters, as GDAS's reference does (xautodl ``search_model_gdas``).

    Raises:
        ValueError: if the number of weights and outputs differ or nothing was computed.
    """
    if len(weights) != len(outputs):
        raise ValueError(f"{len(weights)} weights for {len(outputs)} candidate outputs")
    total = None
    for w, out in zip(weights, outputs):
        if out is not None:
            total = out * w if total is None else torch.addcmul(total, out, w)
    if total is None:
        raise ValueError("weighted_sum needs at least one computed candidate output")
    for w, out in zip(weights, outputs):
        if out is None:
            total = total + w
    return total


class MixedOp(nn.Module):
    """The candidate ops of one edge, run as the decision says.

    Args:
        candidates: published op names, in the order architecture parameters index them.
        C: channels in and out.
        stride: 1, or 2 on the input edges of a reduction cell.
        affine: BN affine parameters (False in DARTS search).
        bn_after_pool: follow pooling ops by ``BatchNorm2d(C, affine=False)``, as DARTS's
            search-time ``MixedOp`` does (model_search.py); NB201 does not.
    """

    def __init__(self, candidates: Sequence[str], C: int, stride: int = 1, affine: bool = False,
                 bn_after_pool: bool = False):
        super().__init__()
        self.candidates = tuple(candidates)
        ops = []
        for name in self.candidates:
            op = build_candidate(name, C, stride, affine)
            if bn_after_pool and "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        # `none` adds w * 0 to the sum and nothing to any gradient: dense mixing skips it
        self.computed = tuple(k for k, op in enumerate(ops) if not isinstance(op, Zero))

    def forward(self, x: torch.Tensor, decision: Decision) -> torch.Tensor:
        if isinstance(decision, SampledPath):
            outputs: list[torch.Tensor | None] = [None] * len(self.ops)
            outputs[decision.index] = self.ops[decision.index](x)
            return weighted_sum(decision.weights, outputs)
        if isinstance(decision, torch.Tensor):
            if decision.dim() != 1 or decision.shape[0] != len(self.ops):
                raise ValueError(f"dense decision must have shape [{len(self.ops)}], got "
                                 f"{tuple(decision.shape)}")
            if not self.computed:
                return self.ops[0](x) * decision[0]
            weights = decision.unbind(0)
            return weighted_sum([weights[k] for k in self.computed], [self.ops[k](x) for k in self.computed])
        if isinstance(decision, int) and not isinstance(decision, bool):
            if not 0 <= decision < len(self.ops):
                raise IndexError(f"candidate index {decision} out of range for {self.candidates}")
            return self.ops[decision](x)
        raise TypeError(f"a decision is a weight tensor, an int or a SampledPath, not "
                        f"{type(decision).__name__}")

    def extra_repr(self) -> str:
        return f"candidates={list(self.candidates)}"
