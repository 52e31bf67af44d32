"""Static MobileNetV3 layers as Once-for-All builds them (mit-han-lab/once-for-all
``ofa/utils/layers.py`` ``ConvLayer``/``MBConvLayer``, ``ofa/utils/pytorch_modules.py``
``SEModule``, ``make_divisible``): the pieces of a stand-alone OFA subnet, with no elastic
machinery. Convolutions are bias-free except the SE's; padding is "same"; BN then activation.
"""
from __future__ import annotations

from torch import nn
import torch

ACTIVATIONS = {"relu": nn.ReLU, "h_swish": nn.Hardswish}
SE_REDUCTION = 4  # OFA SEModule.REDUCTION
CHANNEL_DIVISIBLE = 8  # OFA MyNetwork.CHANNEL_DIVISIBLE


def make_divisible(value: float, divisor: int = CHANNEL_DIVISIBLE, min_value: int | None = None) -> int:
    """The TF MobileNet rounding: nearest multiple of ``divisor``, at least ``min_value``, never
    more than 10% below ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r}: use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def se_channels(channels: int) -> int:
    """The SE's hidden width for ``channels`` inputs (OFA: make_divisible(C // 4, 8))."""
    return make_divisible(channels // SE_REDUCTION)


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> activation; ``bn=False`` and ``act=None`` drop those parts."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: str | None = "relu", bn: bool = True, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)
        if act is not None:
            self.act = activation(act)


class SqueezeExcite(nn.Module):
    """x * hard_sigmoid(expand(relu(reduce(mean(x))))), both 1x1 convs with bias."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = se_channels(channels) if hidden is None else hidden
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(y))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (absent when ``middle == in``), depthwise k x k, SE,
    1x1 projection; the identity shortcut where stride is 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 middle_channels: int, act: str, use_se: bool, expand: bool = True):
        super().__init__()
        self.inverted_bottleneck = ConvBNAct(in_channels, middle_channels, 1, act=act) if expand else None
        self.depth_conv = ConvBNAct(middle_channels, middle_channels, kernel_size, stride, act=act,
                                    groups=middle_channels)
        self.se = SqueezeExcite(middle_channels) if use_se else None
        self.point_linear = ConvBNAct(middle_channels, out_channels, 1, act=None)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        y = self.depth_conv(y)
        if self.se is not None:
            y = self.se(y)
        y = self.point_linear(y)
        return y + x if self.residual else y


def init_he_fout(module: nn.Module) -> None:
    """OFA ``init_models(net, 'he_fout')``: conv weights N(0, 2 / (k*k*out)), conv biases 0, BN
    weight 1 and bias 0, linear weights U(+-1/sqrt(in)) with bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.weight.shape[1] ** 0.5
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
