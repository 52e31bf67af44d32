"""Mixed operations: the candidates of one edge and the decision that picks among them.

A decision is made per forward by the algorithm, never stored in the op:

* a weight tensor of shape [K]: dense mixing, every candidate runs (DARTS);
* an ``int``: single path, only that candidate runs, no architecture gradient (SPOS, RSPS,
  a sampled subnet with inherited weights);
* a :class:`SampledPath`: only the chosen candidate runs, and the weights carry the
  straight-through gradient to the architecture parameters (GDAS); its ``unsampled_gradient``
  says whether the unsampled candidates' weights take part (xautodl's NB201 cell) or only the
  chosen one's (xautodl's NASNet cell).

All three go through :func:`weighted_sum` (a :class:`SampledPath` with
``unsampled_gradient=False`` is a single product instead), except dense decisions where the
fused kernels are loaded: those run :func:`ops.fused_mixing.fused_mixed_forward`, which keeps
far fewer activations for backward and computes the same numbers.

:class:`PartialChannelMixedOp` is the PC-DARTS edge (Xu et al., "PC-DARTS: Partial Channel
Connections for Memory-Efficient Architecture Search", ICLR 2020; yuhuixu1993/PC-DARTS
``model_search.py``: ``channel_shuffle``, ``MixedOp``): only 1/K of the channels go through the
candidates, the rest bypass them, and :func:`channel_shuffle` mixes the two parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

from ops import kernels
from ops.candidates import Zero, build_candidate
from ops.fused_mixing import fused_mixed_forward


@dataclass(frozen=True)
class SampledPath:
    """One sampled candidate plus straight-through weights.

    Attributes:
        index: the candidate that runs.
        weights: [K]; ``weights[index]`` is 1 in the forward pass and the others 0, while the
            backward pass sees the soft distribution (``hard - soft.detach() + soft``).
        unsampled_gradient: how the weights enter the edge output; the forward value is
            ``ops[index](x)`` either way, only the gradient differs.
            True: ``weights[index] * ops[index](x) + sum_{k != index} weights[k]``, each unsampled
            candidate contributing its (zero) weight alone, so ``d out / d weights[k]`` is 1 for
            every unsampled k (xautodl ``NAS201SearchCell.forward_gdas``, GDAS on NB201).
            False: ``ops[index](x) * weights[index]`` only, so ``d out / d weights[k]`` is 0 for
            k != index (xautodl ``search_cells.py`` ``MixedOp.forward_gdas``, the NASNet/DARTS
            space cell, and NB201's ``forward_gdas_v1``).
    """

    index: int
    weights: torch.Tensor
    unsampled_gradient: bool = True


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
    uncomputed = [w for w, out in zip(weights, outputs) if out is None]
    if uncomputed:  # summed as scalars first, then added in place: no extra full-size tensor
        total = total.add_(torch.stack(uncomputed).sum())  # `total` is a fresh product/sum here
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
        self.stride = stride
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
            chosen = self.ops[decision.index](x)
            if not decision.unsampled_gradient:  # xautodl NASNet MixedOp.forward_gdas
                return chosen * decision.weights[decision.index]
            outputs: list[torch.Tensor | None] = [None] * len(self.ops)
            outputs[decision.index] = chosen
            return weighted_sum(decision.weights, outputs)
        if isinstance(decision, torch.Tensor):
            if decision.dim() != 1 or decision.shape[0] != len(self.ops):
                raise ValueError(f"dense decision must have shape [{len(self.ops)}], got "
                                 f"{tuple(decision.shape)}")
            if decision.device != x.device:  # e.g. a constant decision built on the CPU by a space
                decision = decision.to(x.device)
            if not self.computed:
                return self.ops[0](x) * decision[0]
            if kernels.fused_available(x.device, x.dtype):
                fused = fused_mixed_forward(self.ops, self.computed, self.stride, x, decision)
                if fused is not None:
                    return fused
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


# ---------------------------------------------------------------------------------------------
# Partial channel connections (PC-DARTS)


def _check_groups(x: torch.Tensor, groups: int) -> int:
    if x.dim() != 4:
        raise ValueError(f"channel shuffling takes [B, C, H, W] tensors, got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"groups={groups} must be a positive divisor of the {x.shape[1]} channels")
    return x.shape[1] // groups


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (PC-DARTS ``model_search.channel_shuffle``).

    View [B, C, H, W] as [B, groups, C/groups, H, W], swap dims 1 and 2 and flatten back, so
    output channel ``i * groups + g`` is input channel ``g * C/groups + i``. One copy into a
    tensor of the input's memory format (channels_last stays channels_last).
    """
    per_group = _check_groups(x, groups)
    out = torch.empty_like(x)
    out.unflatten(1, (per_group, groups)).copy_(x.unflatten(1, (groups, per_group)).transpose(1, 2))
    return out


def channel_unshuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`channel_shuffle` with the same ``groups``."""
    per_group = _check_groups(x, groups)
    out = torch.empty_like(x)
    out.unflatten(1, (groups, per_group)).copy_(x.unflatten(1, (per_group, groups)).transpose(1, 2))
    return out


class PartialChannelMixedOp(MixedOp):
    """A PC-DARTS edge: the candidates see 1/K of the channels, the rest bypass them.

    The first C/K input channels go through the candidates (built with C/K channels; DARTS's
    BN after pooling included), the other C - C/K channels pass unchanged, or through
    ``MaxPool2d(2, 2)`` on a stride-2 edge; the output is ``channel_shuffle(cat[op_out,
    bypass], K)`` (yuhuixu1993/PC-DARTS ``model_search.MixedOp``, K = 4).

    Edge normalization (PC-DARTS node = sum_j beta_hat_ij * edge_ij(h_j)) scales the whole edge
    output, bypass included. An algorithm passes it as a dense decision already multiplied by
    the edge's beta_hat; since the candidate weights are a softmax summing to 1, the edge's
    total weight is ``decision.sum()`` and the bypass is scaled by it: by exactly 1 without
    edge normalization, by beta_hat with it, so ``op(x, softmax(a) * b) == b * op(x, softmax(a))``.
    ``int`` and :class:`SampledPath` decisions leave the bypass unscaled.

    Args:
        candidates, C, stride, affine, bn_after_pool: as :class:`MixedOp`; C is the edge's full
            channel count.
        partial_channels: K, the inverse proportion of channels sent through the candidates
            (PC-DARTS ``self.k = 4``). K = 1 is a plain :class:`MixedOp`.

    Raises:
        ValueError: if K is not a positive divisor of C, or the stride is not 1 or 2.
    """

    def __init__(self, candidates: Sequence[str], C: int, stride: int = 1, affine: bool = False,
                 bn_after_pool: bool = False, partial_channels: int = 4):
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must be a positive divisor of the "
                             f"edge's C={C} channels")
        if stride not in (1, 2):
            raise ValueError(f"stride {stride}: a partial-channel edge has stride 1 or 2")
        super().__init__(candidates, C // partial_channels, stride, affine, bn_after_pool)
        self.channels = C
        self.partial_channels = partial_channels
        # model_search.MixedOp: a reduction edge max-pools the bypassed channels to its resolution
        self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, decision: Decision) -> torch.Tensor:
        k = self.partial_channels
        if k == 1:
            return super().forward(x, decision)
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"this edge takes [B, {self.channels}, H, W] inputs, got {tuple(x.shape)}")
        searched = self.channels // k
        out = super().forward(x[:, :searched], decision)
        bypass = self.bypass_pool(x[:, searched:])
        if isinstance(decision, torch.Tensor):  # the edge's total weight: 1, or beta_hat
            bypass = bypass * decision.sum()
        return channel_shuffle(torch.cat([out, bypass], dim=1), k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channels={self.channels}, partial_channels={self.partial_channels}"
