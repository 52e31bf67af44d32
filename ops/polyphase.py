"""Dilated depthwise convolution as an undilated one over polyphase components.

DARTS's ``dil_conv_3x3``/``dil_conv_5x5`` are depthwise convolutions with dilation 2, and on the
CPU ATen has no fast kernel for them: forward and backward run 3-5x slower than the undilated
convolution with the same number of products. With "same" padding, a dilation-d convolution
only ever combines pixels whose coordinates agree modulo d, so it splits exactly:

* stride 1, H and W divisible by d: the input's d x d polyphase components (``x[..., a::d, b::d]``)
  are stacked along the batch, convolved without dilation (padding divided by d), and
  interleaved back;
* stride d: only component (0, 0) is ever read; the output is its undilated convolution.

Every output is the same sum of the same products (the order of additions inside the
convolution may differ: fp32 rounding). Elsewhere (other strides, odd sizes with stride 1, CUDA,
the reference path of :func:`ops.kernels.use_fused`) the module is a plain ``nn.Conv2d``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ops import kernels


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class DilatedDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C, k, stride, padding, dilation, groups=C, bias=False)`` whose CPU forward
    runs undilated over polyphase components where that is exact (same parameters, same
    state dict)."""

    def _polyphase_route(self, x: torch.Tensor) -> str | None:
        """"split" (stride 1), "subsample" (stride == dilation) or None (plain convolution)."""
        if x.device.type != "cpu" or x.dim() != 4 or not kernels.fused_enabled():
            return None
        (dh, dw), (kh, kw) = _pair(self.dilation), _pair(self.kernel_size)
        (sh, sw), (ph, pw) = _pair(self.stride), _pair(self.padding)
        same = ph == dh * (kh - 1) // 2 and pw == dw * (kw - 1) // 2 and kh % 2 == 1 and kw % 2 == 1
        if (dh != dw or dh < 2 or not same or self.groups != self.in_channels or self.bias is not None
                or self.padding_mode != "zeros"):
            return None
        if sh == sw == 1 and x.shape[2] % dh == 0 and x.shape[3] % dw == 0:
            return "split"
        if sh == sw == dh:
            return "subsample"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self._polyphase_route(x)
        if route is None:
            return super().forward(x)
        d = _pair(self.dilation)[0]
        padding = tuple(p // d for p in _pair(self.padding))
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if route == "subsample":
            y = F.conv2d(x[:, :, ::d, ::d], self.weight, self.bias, 1, padding, 1, self.groups)
        else:
            y = _PolyphaseConv.apply(x, self.weight, d, padding, self.groups, channels_last)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def _split(x: torch.Tensor, d: int, channels_last: bool) -> torch.Tensor:
    """[N, C, H, W] -> its d x d polyphase components stacked on the batch, [N*d*d, C, H/d, W/d]."""
    N, C, H, W = x.shape
    phases = x.reshape(N, C, H // d, d, W // d, d).permute(0, 3, 5, 1, 2, 4).reshape(N * d * d, C, H // d, W // d)
    return phases.contiguous(memory_format=torch.channels_last) if channels_last else phases


def _merge(y: torch.Tensor, d: int) -> torch.Tensor:
    """The inverse of :func:`_split`: interleave the components back into [N, C, H, W]."""
    Nd, C, h, w = y.shape
    N = Nd // (d * d)
    return y.reshape(N, d, d, C, h, w).permute(0, 3, 4, 1, 5, 2).reshape(N, C, h * d, w * d)


class _PolyphaseConv(torch.autograd.Function):
    """Depthwise conv over the polyphase components of x that saves x itself, not the split
    copy: the split is recomputed in backward (a cheap copy), so the saved memory is what
    ``nn.Conv2d`` saves (x, which the ReLU before it keeps anyway). Differentiable twice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, d: int, padding: tuple[int, int],
                groups: int, channels_last: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.d, ctx.padding, ctx.groups, ctx.channels_last = d, padding, groups, channels_last
        return _merge(F.conv2d(_split(x, d, channels_last), weight, None, 1, padding, 1, groups), d)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        d, padding = ctx.d, ctx.padding
        phases = _split(x, d, ctx.channels_last)
        grad_phases = _split(grad_out, d, ctx.channels_last)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_phases, phases, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0],
            ctx.groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return (_merge(grad_x, d) if grad_x is not None else None), grad_w, None, None, None, None
