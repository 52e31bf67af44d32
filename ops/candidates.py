"""Candidate operations of the DARTS and NAS-Bench-201 spaces, under their published names.

Every constructor has the DARTS signature ``(C, stride, affine)`` so that a space is a list of
names. Constructions follow the reference code exactly:

* DARTS: quark0/darts@f276dd3 ``cnn/operations.py`` (``OPS``, ``SepConv``, ``DilConv``,
  ``FactorizedReduce``, ``ReLUConvBN``, ``Zero``). All convolutions are bias-free.
* NAS-Bench-201: D-X-Y/AutoDL-Projects@f46486e ``xautodl/models/cell_operations.py``
  (``ReLUConvBN`` with ``bias = not affine``, ``POOLING`` without BN when C_in == C_out).

Search-time BN after pooling (DARTS ``MixedOp``) is not part of the op: the DARTS space adds it
when it builds a mixed op, as the reference does, so stand-alone networks stay exact.
:func:`drop_path` (DARTS ``utils.drop_path``) is shared by the evaluation cells and the search
cells that drop whole edge outputs (R-DARTS, SNAS).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ops.polyphase import DilatedDepthwiseConv2d

OpFactory = Callable[[int, int, bool], nn.Module]
_REGISTRY: dict[str, OpFactory] = {}


def register_candidate(name: str) -> Callable[[OpFactory], OpFactory]:
    """File an op constructor under its published name; a duplicate name is an error."""

    def decorate(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY:
            raise ValueError(f"candidate op {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def candidate_names() -> list[str]:
    """All registered op names, in registration order."""
    return list(_REGISTRY)


def build_candidate(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build op ``name`` with C channels in and out.

    Raises:
        KeyError: for an unknown name, listing the accepted ones.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown candidate op {name!r}; accepted: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](C, stride, affine)


# ---------------------------------------------------------------------------------------------
# Building blocks (names as in the reference code)


class Zero(nn.Module):
    """The ``none`` op: zeros, subsampled by the stride (DARTS ``Zero``)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Identity):
    """``skip_connect`` at stride 1; its own class so drop path can recognise and spare it."""


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k, stride, padding, dilation) -> BN.

    ``bias`` is False in DARTS; NAS-Bench-201 uses ``bias = not affine``.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, dilation: int = 1, bias: bool = False,
                 track_running_stats: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride, padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k conv (dilated) -> pointwise 1x1 conv -> BN (DARTS ``DilConv``).

    A dilated depthwise conv is a :class:`DilatedDepthwiseConv2d`: the same parameters, run
    over polyphase components on the CPU where that is exact (several times faster there).
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            (DilatedDepthwiseConv2d if dilation > 1 else nn.Conv2d)(
                C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv-like blocks with dilation 1; only the first one strides (DARTS ``SepConv``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """ReLU -> two 1x1 stride-2 convs on x and on x shifted by one pixel -> concat -> BN.

    Halves the resolution without discarding every other pixel (DARTS ``FactorizedReduce``).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        even = self.conv_1(x)
        odd = self.conv_2(x[:, :, 1:, 1:])
        if odd.shape[-2:] != even.shape[-2:]:  # odd input sizes: pad the shifted branch
            odd = nn.functional.pad(odd, (0, even.shape[-1] - odd.shape[-1], 0, even.shape[-2] - odd.shape[-2]))
        return self.bn(torch.cat([even, odd], dim=1))


# ---------------------------------------------------------------------------------------------
# DARTS candidates (genotypes.PRIMITIVES plus the two extra ops of operations.OPS)


register_candidate("none")(lambda C, stride, affine: Zero(stride))
register_candidate("avg_pool_3x3")(
    lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
register_candidate("max_pool_3x3")(lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
register_candidate("skip_connect")(
    lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine))
register_candidate("sep_conv_3x3")(lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine))
register_candidate("sep_conv_5x5")(lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine))
register_candidate("sep_conv_7x7")(lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine))
register_candidate("dil_conv_3x3")(lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine))
register_candidate("dil_conv_5x5")(lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine))
register_candidate("conv_7x1_1x7")(
    lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    ))

# ---------------------------------------------------------------------------------------------
# NAS-Bench-201 candidates (cell_operations.OPS; ``none``/``skip_connect``/``avg_pool_3x3`` at
# stride 1 coincide with the DARTS ones above). ``bias = not affine`` as in the reference.

register_candidate("nor_conv_1x1")(
    lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine, bias=not affine))
register_candidate("nor_conv_3x3")(
    lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine, bias=not affine))


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and scale survivors by 1 / keep_prob.

    One Bernoulli draw per sample (DARTS ``utils.drop_path``), so the expected output equals x.
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x / keep_prob * mask
