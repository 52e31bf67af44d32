"""Elastic ops of Once-for-All (Cai et al., ICLR 2020): one max-size weight serves every smaller
choice.

:class:`ElasticDepthwiseConv2d` is OFA's elastic kernel (mit-han-lab/once-for-all
``elastic_nn/modules/dynamic_op.py`` ``DynamicSeparableConv2d``): one depthwise weight at the
largest kernel size (7); a smaller kernel is the centre crop of the next larger *transformed*
kernel, multiplied (flattened, per channel) by a learned ks²x ks² matrix initialised to the
identity: 7 -> 5 through ``matrix_7to5`` (25x25), 5 -> 3 through ``matrix_5to3`` (9x9), so the 3x3
kernel is the centre of the transformed 5x5. ``transform=False`` is the plain centre crop. The
padding is "same" for the active size (k // 2), and the first ``C`` channels serve an input of C
channels (elastic width).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def centre(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` window of the last two dimensions."""
    start = kernel.shape[-1] // 2 - size // 2
    return kernel[..., start:start + size, start:start + size]


class ElasticDepthwiseConv2d(nn.Module):
    """A depthwise conv whose kernel size (and channel count) is chosen per forward.

    Args:
        max_channels: channels of the widest use.
        kernel_sizes: the odd sizes it serves, e.g. (3, 5, 7); the largest is stored.
        stride: the conv's stride.
        transform: learn the kernel transformation matrices (OFA ``KERNEL_TRANSFORM_MODE = 1``);
            False: a smaller kernel is the plain centre crop.
    """

    def __init__(self, max_channels: int, kernel_sizes: Sequence[int] = (3, 5, 7), stride: int = 1,
                 transform: bool = True):
        super().__init__()
        sizes = sorted(set(int(k) for k in kernel_sizes))
        if not sizes or any(k % 2 == 0 or k < 1 for k in sizes):
            raise ValueError(f"kernel_sizes {tuple(kernel_sizes)}: odd positive sizes")
        self.kernel_sizes, self.stride, self.max_channels = tuple(sizes), stride, max_channels
        self.weight = nn.Parameter(torch.empty(max_channels, 1, sizes[-1], sizes[-1]))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default, as OFA builds it
        self.matrices = nn.ParameterDict()
        if transform:
            for small, large in zip(sizes, sizes[1:]):
                self.matrices[f"{large}to{small}"] = nn.Parameter(torch.eye(small * small))

    def active_weight(self, channels: int, kernel_size: int) -> torch.Tensor:
        """The [channels, 1, k, k] kernel of this choice, transformed down from the largest."""
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size}: this conv serves {self.kernel_sizes}")
        if not 1 <= channels <= self.max_channels:
            raise ValueError(f"{channels} channels: this conv serves 1..{self.max_channels}")
        kernel = self.weight[:channels]
        for larger, smaller in zip(reversed(self.kernel_sizes), reversed(self.kernel_sizes[:-1])):
            if larger <= kernel_size:
                break
            kernel = centre(kernel, smaller)
            key = f"{larger}to{smaller}"
            if key in self.matrices:  # per channel: the flattened kernel times the matrix (F.linear)
                kernel = F.linear(kernel.reshape(channels, smaller * smaller),
                                  self.matrices[key]).view(channels, 1, smaller, smaller)
        return kernel

    def forward(self, x: torch.Tensor, kernel_size: int | None = None) -> torch.Tensor:
        size = self.kernel_sizes[-1] if kernel_size is None else kernel_size
        channels = x.shape[1]
        return F.conv2d(x, self.active_weight(channels, size), None, self.stride, size // 2, 1, channels)
