"""Elastic ops of Once-for-All (Cai et al., ICLR 2020): one max-size weight serves every smaller
choice (mit-han-lab/once-for-all ``elastic_nn/modules/dynamic_op.py`` and ``dynamic_layers.py``).

:class:`ElasticDepthwiseConv2d` is OFA's elastic kernel (mit-han-lab/once-for-all
``elastic_nn/modules/dynamic_op.py`` ``DynamicSeparableConv2d``): one depthwise weight at the
largest kernel size (7); a smaller kernel is the centre crop of the next larger *transformed*
kernel, multiplied (flattened, per channel) by a learned ks²x ks² matrix initialised to the
identity: 7 -> 5 through ``matrix_7to5`` (25x25), 5 -> 3 through ``matrix_5to3`` (9x9), so the 3x3
kernel is the centre of the transformed 5x5. ``transform=False`` is the plain centre crop. The
padding is "same" for the active size (k // 2), and the first ``C`` channels serve an input of C
channels (elastic width).

Elastic width slices the first channels of one max-width tensor: :class:`ElasticPointwiseConv2d`
(weight ``[:out, :in]``), :class:`ElasticBatchNorm2d` (parameters *and* running statistics
``[:C]``; a training step updates the slice in place), :class:`ElasticSqueezeExcite` (hidden
width ``make_divisible(C // 4, 8)`` of the active C). :class:`ElasticMBConv` puts them together
as OFA's ``DynamicMBConvLayer``: middle width ``make_divisible(round(in * e), 8)``, kernel k;
:meth:`ElasticMBConv.reorder_middle` sorts the middle channels by importance before a width
phase, and :meth:`ElasticMBConv.extract` returns the static :class:`~ops.mobilenet.MBConv` of one
choice with the inherited weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ops.mobilenet import MBConv, activation, make_divisible, se_channels


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

    def reset_he_fout(self) -> None:
        """OFA's ``he_fout``: N(0, 2 / (k*k*out)) of the max-size depthwise conv; matrices identity."""
        k = self.kernel_sizes[-1]
        nn.init.normal_(self.weight, 0.0, (2.0 / (k * k * self.max_channels)) ** 0.5)


class ElasticPointwiseConv2d(nn.Module):
    """A bias-free 1x1 conv whose input and output widths are the first channels of its weight."""

    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)

    def active_weight(self, out_channels: int, in_channels: int) -> torch.Tensor:
        return self.conv.weight[:out_channels, :in_channels]

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        out = self.conv.out_channels if out_channels is None else out_channels
        return F.conv2d(x, self.active_weight(out, x.shape[1]))


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of the input's width: weight, bias and running
    statistics sliced as OFA's ``DynamicBatchNorm2d`` does (in train mode the slice of the
    running statistics is updated in place, with the module's momentum)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        mean = None if self.running_mean is None else self.running_mean[:channels]
        var = None if self.running_var is None else self.running_var[:channels]
        weight = None if self.weight is None else self.weight[:channels]
        bias = None if self.bias is None else self.bias[:channels]
        return F.batch_norm(x, mean if (not self.training or self.track_running_stats) else None,
                            var if (not self.training or self.track_running_stats) else None,
                            weight, bias, use_batch, factor, self.eps)


class ElasticSqueezeExcite(nn.Module):
    """OFA's ``DynamicSE``: for C active channels, hidden ``make_divisible(C // 4, 8)``; reduce
    weight ``[:hidden, :C]``, expand weight ``[:C, :hidden]``, biases sliced alike."""

    def __init__(self, max_channels: int):
        super().__init__()
        hidden = se_channels(max_channels)
        self.reduce = nn.Conv2d(max_channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, max_channels, 1, bias=True)

    def active(self, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reduce weight, reduce bias, expand weight, expand bias) of ``channels`` inputs."""
        hidden = se_channels(channels)
        return (self.reduce.weight[:hidden, :channels], self.reduce.bias[:hidden],
                self.expand.weight[:channels, :hidden], self.expand.bias[:channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduce_w, reduce_b, expand_w, expand_b = self.active(x.shape[1])
        y = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), reduce_w, reduce_b))
        return x * F.hardsigmoid(F.conv2d(y, expand_w, expand_b))


def middle_channels(in_channels: int, expand_ratio: float) -> int:
    """OFA's middle width of an MBConv: make_divisible(round(in * e), 8)."""
    return make_divisible(round(in_channels * expand_ratio))


class ElasticMBConv(nn.Module):
    """OFA's ``DynamicMBConvLayer``: an inverted residual block with elastic kernel and expand
    ratio (the input and output widths are fixed); the identity shortcut where stride is 1 and
    the widths match.

    Args:
        in_channels, out_channels: the block's widths.
        kernel_sizes: depthwise kernel choices (largest stored).
        expand_ratios: expand ratio choices (largest sets the stored middle width).
        stride: of the depthwise conv.
        act: ``relu`` or ``h_swish``.
        use_se: a squeeze-excite after the depthwise conv.
        transform: learned kernel transformation matrices (else plain centre crops).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int],
                 expand_ratios: Sequence[float], stride: int, act: str, use_se: bool, transform: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.act_name, self.use_se = act, use_se
        self.expand_ratios = tuple(sorted(expand_ratios))
        middle = middle_channels(in_channels, self.expand_ratios[-1])
        self.expand_conv = ElasticPointwiseConv2d(in_channels, middle)
        self.expand_bn = ElasticBatchNorm2d(middle)
        self.depth_conv = ElasticDepthwiseConv2d(middle, kernel_sizes, stride, transform)
        self.depth_bn = ElasticBatchNorm2d(middle)
        self.se = ElasticSqueezeExcite(middle) if use_se else None
        self.project_conv = ElasticPointwiseConv2d(middle, out_channels)
        self.project_bn = ElasticBatchNorm2d(out_channels)
        self.act = activation(act)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor, kernel_size: int, expand_ratio: float) -> torch.Tensor:
        middle = middle_channels(x.shape[1], expand_ratio)
        y = self.act(self.expand_bn(self.expand_conv(x, middle)))
        y = self.act(self.depth_bn(self.depth_conv(y, kernel_size)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        return y + x if self.residual else y

    @torch.no_grad()
    def extract(self, kernel_size: int, expand_ratio: float) -> MBConv:
        """The static block of this choice with the inherited weights and BN statistics."""
        middle = middle_channels(self.in_channels, expand_ratio)
        block = MBConv(self.in_channels, self.out_channels, kernel_size, self.stride, middle,
                       self.act_name, self.use_se)
        block.inverted_bottleneck.conv.weight.copy_(self.expand_conv.active_weight(middle, self.in_channels))
        copy_batchnorm(self.expand_bn, block.inverted_bottleneck.bn)
        block.depth_conv.conv.weight.copy_(self.depth_conv.active_weight(middle, kernel_size))
        copy_batchnorm(self.depth_bn, block.depth_conv.bn)
        if self.se is not None:
            for tensor, value in zip((block.se.reduce.weight, block.se.reduce.bias, block.se.expand.weight,
                                      block.se.expand.bias), self.se.active(middle)):
                tensor.copy_(value)
        block.point_linear.conv.weight.copy_(self.project_conv.active_weight(self.out_channels, middle))
        copy_batchnorm(self.project_bn, block.point_linear.bn)
        return block.to(self.project_conv.conv.weight.device)

    @torch.no_grad()
    def reorder_middle(self, band_stage: int = 0) -> torch.Tensor:
        """OFA ``re_organize_middle_weights(expand_ratio_stage)``: sort the middle channels by the
        L1 norm of the projection's input slices, descending, and permute every tensor that
        touches them (expansion conv and BN, depthwise conv and BN, SE; the SE's hidden units
        by their own L1 norm). With ``band_stage`` s > 0 the widths of the s + 1 largest expand
        ratios are bands, each pushed below the next-wider one, so channels inside a narrower
        width that is already trained stay inside it. Returns the permutation.
        """
        importance = self.project_conv.conv.weight.abs().sum((0, 2, 3)).double()  # float64: the band
        # offsets below would round away importance differences under 2^-6 in float32 (the
        # reference's precision), shuffling near-ties inside a band
        if band_stage > 0:
            widths = [middle_channels(self.in_channels, e) for e in sorted(self.expand_ratios, reverse=True)]
            right, offset = len(importance), -len(widths) * 1e5
            for left in widths[:band_stage + 1]:
                importance[left:right] += offset
                offset += 1e5
                right = left
        order = torch.sort(importance, descending=True, stable=True).indices
        self.project_conv.conv.weight.copy_(self.project_conv.conv.weight[:, order])
        for bn in (self.depth_bn, self.expand_bn):
            permute_batchnorm(bn, order)
        self.depth_conv.weight.copy_(self.depth_conv.weight[order])
        self.expand_conv.conv.weight.copy_(self.expand_conv.conv.weight[order])
        if self.se is not None:
            se = self.se
            se.expand.weight.copy_(se.expand.weight[order]), se.expand.bias.copy_(se.expand.bias[order])
            se.reduce.weight.copy_(se.reduce.weight[:, order])
            hidden_order = torch.sort(se.expand.weight.abs().sum((0, 2, 3)), descending=True, stable=True).indices
            se.expand.weight.copy_(se.expand.weight[:, hidden_order])
            se.reduce.weight.copy_(se.reduce.weight[hidden_order]), se.reduce.bias.copy_(se.reduce.bias[hidden_order])
        return order


def permute_batchnorm(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    """Permute a BatchNorm's channels: affine parameters and running statistics."""
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if tensor is not None:
            tensor.copy_(tensor[order])


def copy_batchnorm(source: nn.BatchNorm2d, target: nn.BatchNorm2d) -> None:
    """The first ``target.num_features`` channels of ``source`` into ``target`` (parameters,
    running statistics, eps and momentum)."""
    c = target.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(source, name)
        if value is not None:
            getattr(target, name).copy_(value[:c])
    target.num_batches_tracked.copy_(source.num_batches_tracked)
    target.eps, target.momentum = source.eps, source.momentum
