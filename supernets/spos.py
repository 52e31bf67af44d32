"""The Single Path One-Shot search space (registered as ``"spos"`` and ``"spos-channels"``).

Paper: Guo, Zhang, Mu, Heng, Liu, Wei & Sun, "Single Path One-Shot Neural Architecture Search
with Uniform Sampling", ECCV 2020 (arXiv 1904.00420).
Ref impl: megvii-model/SinglePathOneShot@36eed6c ``src/Supernet/network.py``
(``ShuffleNetV2_OneShot``: supernet and ``_initialize_weights``), ``src/Supernet/blocks.py``
(``Shufflenet``, ``Shuffle_Xception``, ``channel_shuffle``), ``src/Supernet/flops.py``
(``get_flops``, ``op_flops_dict`` lookup) and ``src/Evaluation/template/{network,blocks}.py``
(the stand-alone network with ``channels_scales``).

A ShuffleNetV2-like backbone: stem conv 3x3 s2, four stages of [4, 4, 8, 4] choice blocks (the
first of each stage has stride 2), conv 1x1 to 1024, global pooling, dropout, linear. Every choice
block picks one of 4 units, :data:`BLOCKS`, so the space holds 4^20 (about 1.1e12) archs. An Arch
maps ``"block{i}"`` to that index; its canonical string is the README's tuple without brackets,
e.g. :data:`README_ARCH`. ``"spos-channels"`` adds the paper's channel search, which the released
code leaves out (only the scale list survives, as a comment): ``"channels{i}"`` indexes
:data:`CHANNEL_SCALES`, the factor on block i's mid channels; its string is ``"blocks;channels"``.

Module names follow the reference (``first_conv``, ``features``, ``branch_main``, ``branch_proj``,
``conv_last``, ``classifier``), so its state-dict keys are ours (without DataParallel's
``module.``); the supernet's ``features.{i}.{choice}`` is its ``features[i][choice]``.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ops.mixed import channel_unshuffle
from supernets.base import Arch, SearchSpace, Supernet, count_parameters
from supernets.registry import register

# The 4 units in the reference's order (flops.py ``blocks_keys``): the index an arch stores.
BLOCKS: tuple[str, ...] = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
# Mid-channel factors of the channel search (network.py's commented ``scale_list``).
CHANNEL_SCALES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
NUM_BLOCKS = 20  # sum of the default stage_blocks
# The README's searched arch: 323M FLOPs (multiply-adds), 3.5M params, 25.6 / 8.0 top-1/5 error.
README_ARCH = "2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3"

# Keyword options of build_supernet, build_network and cost, with their defaults (the reference's).
DEFAULT_OPTIONS: dict[str, Any] = {
    "stem_channels": 16, "stage_channels": (64, 160, 320, 640), "stage_blocks": (4, 4, 8, 4),
    "last_channels": 1024, "dropout": 0.1, "in_channels": 3,
}


def channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``channel_shuffle``: (even-indexed channels, odd-indexed channels).

    A stride-1 unit passes the first half on and sends the second through its main branch.
    That is :func:`ops.mixed.channel_unshuffle` with 2 groups (channel ``2i + g`` goes to
    position ``g * C/2 + i``) cut in two.
    """
    return channel_unshuffle(x, 2).chunk(2, dim=1)


# ---------------------------------------------------------------------------------------------
# Blocks

# A branch is a list of (conv, source width, target width, ReLU after its BN): "pw" is a 1x1
# conv, "dw" a depthwise kxk conv; the first dw carries the block's stride. Every conv is
# followed by its BN (and the ReLU if marked), as in the reference's flat nn.Sequential.
_SHUFFLE_MAIN = (("pw", "in", "mid", True), ("dw", "mid", "mid", False), ("pw", "mid", "out", True))
_XCEPTION_MAIN = (("dw", "in", "in", False), ("pw", "in", "mid", True), ("dw", "mid", "mid", False),
                  ("pw", "mid", "mid", True), ("dw", "mid", "mid", False), ("pw", "mid", "out", True))
_PROJECTION = (("dw", "in", "in", False), ("pw", "in", "in", True))


def _branch(spec: Sequence[tuple[str, str, str, bool]], widths: Mapping[str, int], kernel_size: int,
            stride: int, affine: bool) -> tuple[nn.Sequential, tuple[tuple[bool, bool], ...]]:
    """The layers of ``spec`` and, per layer, whether its input / output is the mid width."""
    layers: list[nn.Module] = []
    narrow: list[tuple[bool, bool]] = []
    for conv, source, target, relu in spec:
        c_in, c_out = widths[source], widths[target]
        if conv == "dw":
            layers.append(nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=c_in,
                                    bias=False))
            stride = 1
        else:
            layers.append(nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False))
        layers.append(nn.BatchNorm2d(c_out, affine=affine))
        narrow += [(source == "mid", target == "mid"), (target == "mid", target == "mid")]
        if relu:
            layers.append(nn.ReLU(inplace=True))
            narrow.append((False, False))
    return nn.Sequential(*layers), tuple(narrow)


def _narrow_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, c: int) -> torch.Tensor:
    """``bn`` on its first ``c`` channels: their affine parameters and running statistics (which
    training updates in place), with nn.BatchNorm2d's own rules for momentum and batch stats."""
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or bn.running_mean is None
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean[:c] if track and bn.running_mean is not None else None,
                        bn.running_var[:c] if track and bn.running_var is not None else None,
                        bn.weight[:c] if bn.weight is not None else None,
                        bn.bias[:c] if bn.bias is not None else None, use_batch_stats, factor, bn.eps)


def _run_narrow(layers: nn.Sequential, narrow: Sequence[tuple[bool, bool]], x: torch.Tensor,
                c: int) -> torch.Tensor:
    """A branch built at the maximal mid width run at mid width ``c``: every tensor that touches
    the mid channels keeps its first ``c`` of them (weights, depthwise groups, BN statistics)."""
    for layer, (narrow_in, narrow_out) in zip(layers, narrow):
        if isinstance(layer, nn.Conv2d) and (narrow_in or narrow_out):
            weight = layer.weight[:c] if narrow_out else layer.weight
            depthwise = layer.groups > 1
            if narrow_in and not depthwise:
                weight = weight[:, :c]
            x = F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation,
                         c if depthwise else 1)
        elif isinstance(layer, nn.BatchNorm2d) and narrow_out:
            x = _narrow_batch_norm(layer, x, c)
        else:
            x = layer(x)
    return x


class SplitBlock(nn.Module):
    """A ShuffleNetV2-style unit (reference ``Shufflenet`` / ``Shuffle_Xception``).

    Stride 1: :func:`channel_split`; the even channels pass, the odd ones go through the main
    branch. Stride 2: a projection branch (dw kxk s2 + BN + pw + BN + ReLU) and the main branch
    both read the whole input. Output: ``cat(passed or projected, main)``.

    Args:
        in_channels: channels the branches read (the reference's ``inp``): the block input at
            stride 2, half of it at stride 1.
        out_channels: block output; the main branch gives ``out_channels - in_channels``.
        mid_channels: width inside the main branch (``out_channels // 2`` by default in SPOS);
            ``forward(x, mid)`` may run it narrower (channel search).
        stride: 1 or 2.
        affine: BN affine parameters (False in the supernet, True stand-alone).
    """

    main_spec: tuple[tuple[str, str, str, bool], ...] = ()

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, kernel_size: int,
                 stride: int, affine: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"an SPOS block has stride 1 or 2, got {stride}")
        if out_channels <= in_channels or mid_channels < 1:
            raise ValueError(f"an SPOS block needs out_channels > in_channels and mid_channels >= 1, "
                             f"got in={in_channels}, out={out_channels}, mid={mid_channels}")
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.kernel_size, self.stride = kernel_size, stride
        widths = {"in": in_channels, "mid": mid_channels, "out": out_channels - in_channels}
        self.branch_main, self._narrow = _branch(self.main_spec, widths, kernel_size, stride, affine)
        if stride == 2:  # the reference's projection: same kernel as the unit (3 for Xception)
            self.branch_proj, _ = _branch(_PROJECTION, widths, kernel_size, stride, affine)

    def forward(self, x: torch.Tensor, mid: int | None = None) -> torch.Tensor:
        """``mid``: run the main branch on its first ``mid`` mid channels (None: all of them)."""
        if self.stride == 1:
            passed, x = channel_split(x)
        else:
            passed = self.branch_proj(x)
        if mid is None or mid == self.mid_channels:
            main = self.branch_main(x)
        else:
            main = _run_narrow(self.branch_main, self._narrow, x, mid)
        return torch.cat((passed, main), 1)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, mid={self.mid_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}")


class ShuffleNetBlock(SplitBlock):
    """Main branch pw + BN + ReLU, dw kxk (stride) + BN, pw + BN + ReLU (reference ``Shufflenet``)."""

    main_spec = _SHUFFLE_MAIN

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, kernel_size: int = 3,
                 stride: int = 1, affine: bool = True):
        if kernel_size not in (3, 5, 7):
            raise ValueError(f"a ShuffleNet unit has kernel size 3, 5 or 7, got {kernel_size}")
        super().__init__(in_channels, out_channels, mid_channels, kernel_size, stride, affine)


class XceptionBlock(SplitBlock):
    """Main branch of three (dw 3x3 + BN, pw + BN + ReLU) pairs, the first dw with the stride
    (reference ``Shuffle_Xception``)."""

    main_spec = _XCEPTION_MAIN

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1,
                 affine: bool = True):
        super().__init__(in_channels, out_channels, mid_channels, 3, stride, affine)


def build_block(choice: int, in_channels: int, out_channels: int, mid_channels: int, stride: int,
                affine: bool = True) -> SplitBlock:
    """The unit ``BLOCKS[choice]``."""
    name = BLOCKS[choice]
    if name == "xception_3x3":
        return XceptionBlock(in_channels, out_channels, mid_channels, stride, affine)
    return ShuffleNetBlock(in_channels, out_channels, mid_channels, int(name[-1]), stride, affine)


# ---------------------------------------------------------------------------------------------
# Backbone


def block_layout(stem_channels: int = 16, stage_channels: Sequence[int] = (64, 160, 320, 640),
                 stage_blocks: Sequence[int] = (4, 4, 8, 4)) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) per choice block, as :class:`SplitBlock` takes them."""
    if len(stage_channels) != len(stage_blocks) or min(stage_blocks, default=0) < 1:
        raise ValueError(f"stage_channels {tuple(stage_channels)} and stage_blocks "
                         f"{tuple(stage_blocks)} need one positive entry per stage each")
    layout, channels = [], stem_channels
    for out, repeats in zip(stage_channels, stage_blocks):
        if out % 2 or out <= channels:
            raise ValueError(f"stage_channels {tuple(stage_channels)}: each stage needs an even "
                             f"width above the previous one ({channels})")
        layout += [(channels, out, 2)] + [(out // 2, out, 1)] * (repeats - 1)
        channels = out
    return layout


def mid_widths(out_channels: int, scales: Sequence[float] = CHANNEL_SCALES) -> tuple[int, ...]:
    """Mid channels of a block per scale: ``int(out_channels // 2 * scale)`` as the reference."""
    return tuple(int(out_channels // 2 * scale) for scale in scales)


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine), nn.ReLU(inplace=True))


def initialize_weights(network: nn.Module) -> None:
    """The reference's ``_initialize_weights``: the stem conv N(0, 0.01) (the reference picks it by
    'first' in the module name: only ``first_conv``), other convs N(0, 1 / weight.shape[1]),
    affine BN weight 1 and bias 1e-4, running mean 0, linear N(0, 0.01)."""
    for name, m in network.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.01 if "first" in name else 1.0 / m.weight.shape[1])
        elif isinstance(m, nn.BatchNorm2d):
            if m.affine:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0.0001)
            if m.running_mean is not None:
                nn.init.zeros_(m.running_mean)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)


class _Backbone(nn.Module):
    """Stem, head and the forward around the blocks that the supernet and the network share."""

    def _build_ends(self, num_classes: int, stem_channels: int, last_in: int, last_channels: int,
                    dropout: float, in_channels: int, affine: bool) -> None:
        self.first_conv = _conv_bn_relu(in_channels, stem_channels, 3, 2, affine)  # no max pool
        self.conv_last = _conv_bn_relu(last_in, last_channels, 1, 1, affine)
        # The reference's AvgPool2d(7) is global pooling at 224x224 input (7x7 features);
        # adaptive pooling to 1x1 equals it there and works at any resolution.
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes, bias=False))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage output -> logits."""
        return self.classifier(self.dropout(self.globalpool(self.conv_last(x)).flatten(1)))


class SposSupernet(Supernet, _Backbone):
    """The SPOS supernet (reference Supernet ``ShuffleNetV2_OneShot``): every choice block holds
    the 4 units of :data:`BLOCKS`, and only the chosen one runs. Every BN is affine=False.

    ``forward(x, decisions)`` takes ``{"block{i}": unit index}`` and, with ``channel_search``,
    ``{"channels{i}": index into CHANNEL_SCALES}``; the units are then built at the widest mid
    width (1.6x) and run on its first ``int(out // 2 * scale)`` mid channels.

    Args:
        num_classes: classifier outputs.
        stem_channels, stage_channels, stage_blocks, last_channels: widths and depths (reference:
            16, (64, 160, 320, 640), (4, 4, 8, 4), 1024).
        dropout: before the classifier (0.1).
        in_channels: image channels.
        channel_search: add the channel choices.
    """

    def __init__(self, num_classes: int = 1000, stem_channels: int = 16,
                 stage_channels: Sequence[int] = (64, 160, 320, 640),
                 stage_blocks: Sequence[int] = (4, 4, 8, 4), last_channels: int = 1024,
                 dropout: float = 0.1, in_channels: int = 3, channel_search: bool = False):
        super().__init__()
        layout = block_layout(stem_channels, stage_channels, stage_blocks)
        self.channel_search = channel_search
        self.block_labels = tuple(f"block{i}" for i in range(len(layout)))
        self.channel_labels = tuple(f"channels{i}" for i in range(len(layout))) if channel_search else ()
        self.choices = {label: BLOCKS for label in self.block_labels}
        self.choices.update({label: CHANNEL_SCALES for label in self.channel_labels})
        self._sizes = tuple(len(options) for options in self.choices.values())
        # Per block: the mid width of each channel choice (one width, out // 2, without search).
        self.widths = tuple(mid_widths(out) if channel_search else (out // 2,) for _, out, _ in layout)
        if min(min(w) for w in self.widths) < 1:
            raise ValueError(f"stage_channels {tuple(stage_channels)} are too narrow for the channel "
                             f"scales {CHANNEL_SCALES}: a mid width rounds to 0")
        self._build_ends(num_classes, stem_channels, layout[-1][1], last_channels, dropout,
                         in_channels, affine=False)
        self.features = nn.ModuleList(
            nn.ModuleList(build_block(b, c_in, c_out, max(widths), stride, affine=False)
                          for b in range(len(BLOCKS)))
            for (c_in, c_out, stride), widths in zip(layout, self.widths))
        initialize_weights(self)

    def forward(self, x: torch.Tensor, decisions: Mapping[str, int]) -> torch.Tensor:
        """Logits; ``decisions`` holds an int for every label of :attr:`choices`."""
        if len(decisions) != len(self.choices):
            self.check_decisions(decisions)
        try:
            blocks = [decisions[label] for label in self.block_labels]
            channels = [decisions[label] for label in self.channel_labels] or [0] * len(blocks)
        except KeyError:
            self.check_decisions(decisions)
            raise
        for label, value, size in zip(self.choices, blocks + channels, self._sizes):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
                raise ValueError(f"decision {label}={value!r} is not an int in 0..{size - 1}")
        x = self.first_conv(x)
        for units, b, widths, c in zip(self.features, blocks, self.widths, channels):
            x = units[b](x, widths[c])
        return self.forward_head(x)


class SposNetwork(_Backbone):
    """The stand-alone network of one arch (reference Evaluation ``ShuffleNetV2_OneShot``): the
    chosen units with affine BNs; ``channel_scales`` scales each block's mid channels.

    Args:
        blocks: unit index per choice block (``sum(stage_blocks)`` of them).
        num_classes, stem_channels, stage_channels, stage_blocks, last_channels, dropout,
            in_channels: as :class:`SposSupernet`.
        channel_scales: mid-channel factor per block (None: 1.0 everywhere).
    """

    def __init__(self, blocks: Sequence[int], num_classes: int = 1000, stem_channels: int = 16,
                 stage_channels: Sequence[int] = (64, 160, 320, 640),
                 stage_blocks: Sequence[int] = (4, 4, 8, 4), last_channels: int = 1024,
                 dropout: float = 0.1, in_channels: int = 3,
                 channel_scales: Sequence[float] | None = None):
        super().__init__()
        layout = block_layout(stem_channels, stage_channels, stage_blocks)
        scales = [1.0] * len(layout) if channel_scales is None else list(channel_scales)
        if len(blocks) != len(layout) or len(scales) != len(layout):
            raise ValueError(f"{len(layout)} choice blocks, got {len(blocks)} units and "
                             f"{len(scales)} channel scales")
        self.blocks, self.channel_scales = tuple(blocks), tuple(scales)
        self._build_ends(num_classes, stem_channels, layout[-1][1], last_channels, dropout,
                         in_channels, affine=True)
        self.features = nn.Sequential(*[
            build_block(b, c_in, c_out, mid_widths(c_out, (scale,))[0], stride, affine=True)
            for b, scale, (c_in, c_out, stride) in zip(blocks, scales, layout)])
        initialize_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(self.first_conv(x)))


# ---------------------------------------------------------------------------------------------
# Cost lookup table


@dataclass(frozen=True)
class CostTable:
    """Params and FLOPs of the stand-alone network by parts (the reference's ``op_flops_dict``).

    ``fixed``: (params, FLOPs) of stem and head; ``blocks[i][unit][channel]``: (params, FLOPs) of
    block i as that unit at that channel choice (one channel entry without channel search).
    FLOPs are torch.utils.flop_counter's (2 per multiply-add of convs and matmuls, nothing for BN,
    ReLU or pooling), measured on the modules; macs = FLOPs / 2 is then the reference's "FLOPs"
    (its get_flops hooks sum multiply-adds of convs and linears only).
    """

    fixed: tuple[int, int]
    blocks: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]

    def cost(self, units: Sequence[int], channels: Sequence[int] | None = None) -> dict[str, float]:
        params, flops = self.fixed
        for entry, b, c in zip(self.blocks, units, channels or (0,) * len(units)):
            p, f = entry[b][c]
            params += p
            flops += f
        return {"params": params, "flops": float(flops), "macs": flops / 2}


@torch.no_grad()
def _measure(module: nn.Module, shape: Sequence[int], forward: Any = None) -> tuple[int, torch.Size]:
    """FLOPs of one forward of zeros of ``shape`` in eval mode, and the output shape."""
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        out = (forward or module)(torch.zeros(tuple(shape)))
    return counter.get_total_flops(), out.shape


@functools.lru_cache(maxsize=32)
def _cost_table(channel_search: bool, num_classes: int, input_size: tuple[int, ...],
                options: tuple[tuple[str, Any], ...]) -> CostTable:
    """Measure every (block, unit, channel) once; identical blocks (same widths, stride and input
    size, as in the reference's table keys) are measured once."""
    kwargs = dict(options)
    layout = block_layout(kwargs["stem_channels"], kwargs["stage_channels"], kwargs["stage_blocks"])
    ends = SposNetwork([0] * len(layout), num_classes, **kwargs)
    shape = (1, *input_size[1:])
    stem_flops, shape = _measure(ends.first_conv, shape)
    measured: dict[tuple[Any, ...], tuple[int, int, torch.Size]] = {}
    blocks = []
    for c_in, c_out, stride in layout:
        units, out_shape = [], shape
        for b in range(len(BLOCKS)):
            per_channel = []
            for mid in (mid_widths(c_out) if channel_search else (c_out // 2,)):
                key = (b, c_in, c_out, mid, stride, tuple(shape))
                if key not in measured:
                    block = build_block(b, c_in, c_out, mid, stride, affine=True)
                    measured[key] = (count_parameters(block), *_measure(block, shape))
                p, f, out_shape = measured[key]
                per_channel.append((p, f))
            units.append(tuple(per_channel))
        blocks.append(tuple(units))
        shape = out_shape
    head_flops, _ = _measure(ends, shape, ends.forward_head)
    fixed_params = sum(count_parameters(m) for m in (ends.first_conv, ends.conv_last, ends.classifier))
    return CostTable((fixed_params, stem_flops + head_flops), tuple(blocks))


# ---------------------------------------------------------------------------------------------
# Registered spaces


@register
class SposSpace(SearchSpace):
    """SPOS block search: 20 choice blocks x 4 units (see the module docstring).

    Example:
        >>> space = supernets.get("spos")
        >>> round(space.cost(space.parse(README_ARCH))["macs"] / 1e6)  # 224x224, 1000 classes
        323
    """

    name = "spos"
    blocks = BLOCKS
    channel_scales = CHANNEL_SCALES
    channel_search = False  # "spos-channels" (SposChannelsSpace) sets it
    num_blocks = NUM_BLOCKS

    def __init__(self) -> None:
        self.block_labels = tuple(f"block{i}" for i in range(self.num_blocks))
        self.channel_labels = (tuple(f"channels{i}" for i in range(self.num_blocks))
                               if self.channel_search else ())
        self.labels = self.block_labels + self.channel_labels
        self.sizes = ((len(BLOCKS),) * self.num_blocks
                      + (len(CHANNEL_SCALES),) * len(self.channel_labels))

    # --- encoding ---------------------------------------------------------------------------
    def _values(self, arch: Arch) -> tuple[int, ...]:
        """The choices of a checked arch in label order (linear time: cost() runs it per call)."""
        super().check(arch)
        choices = arch.to_json()["choices"]
        if tuple(choices) != self.labels:
            raise ValueError(f"a {self.name} arch has the labels block0..block{self.num_blocks - 1}"
                             + (f", channels0..channels{self.num_blocks - 1}" if self.channel_search
                                else "") + f" in this order, got {list(choices)}")
        values = tuple(choices.values())
        for label, value, size in zip(self.labels, values, self.sizes):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
                raise ValueError(f"{self.name} arch: {label}={value!r} is not in 0..{size - 1}")
        return values

    def check(self, arch: Arch) -> Arch:
        """Also check the labels and indices, so a hand-made Arch fails early."""
        self._values(arch)
        return arch

    def _help(self) -> str:
        text = (f"one per choice block, each 0-{len(BLOCKS) - 1}: {', '.join(BLOCKS)}")
        if self.channel_search:
            text += (f"; then ';' and {self.num_blocks} channel choices, each "
                     f"0-{len(CHANNEL_SCALES) - 1}: mid-channel scales {', '.join(map(str, CHANNEL_SCALES))}")
        return text

    def _parse_part(self, text: str, part: str, what: str, size: int) -> list[int]:
        part = part.strip()
        if part[:1] in "([" and part[-1:] in ")]":
            part = part[1:-1]
        tokens = [token.strip() for token in part.split(",")]
        for k, token in enumerate(tokens):
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"{self.name} arch {text!r}: {what} choice {k} {token!r} is not a "
                                 f"choice index; expected {self.num_blocks} comma-separated numbers "
                                 f"({self._help()})")
        if len(tokens) != self.num_blocks:
            raise ValueError(f"{self.name} arch {text!r} has {len(tokens)} {what} choices, expected "
                             f"{self.num_blocks} ({self._help()})")
        values = [int(token) for token in tokens]
        for k, value in enumerate(values):
            if value >= size:
                raise ValueError(f"{self.name} arch {text!r}: {what} {k} has choice {value}, not in "
                                 f"0-{size - 1} ({self._help()})")
        return values

    def parse_string(self, text: str) -> Arch:
        """``"2,1,...,3"`` (``"(2, 1, ...)"`` or ``"[2, 1, ...]"`` too), with ``";channels"`` for
        spos-channels, or an Arch JSON object -> Arch.

        Raises:
            ValueError: one line naming the bad part (count, token or choice) and the format.
        """
        parts = text.split(";")
        if len(parts) != (2 if self.channel_search else 1):
            hint = ("use --space spos-channels for block and channel choices" if not self.channel_search
                    else "separate the block and the channel choices by one ';'")
            raise ValueError(f"{self.name} arch {text!r} has {len(parts)} part(s) separated by ';'; "
                             f"{hint} ({self._help()})")
        values = self._parse_part(text, parts[0], "block", len(BLOCKS))
        if self.channel_search:
            values += self._parse_part(text, parts[1], "channels", len(CHANNEL_SCALES))
        return Arch(self.name, zip(self.labels, values))

    def format(self, arch: Arch) -> str:
        """Arch -> ``"2,1,...,3"`` (spos-channels: ``"2,1,...,3;4,4,...,4"``)."""
        values = self._values(arch)
        n = self.num_blocks
        text = ",".join(map(str, values[:n]))
        return text + ";" + ",".join(map(str, values[n:])) if self.channel_search else text

    # --- sampling and evolution -------------------------------------------------------------
    def sample(self, rng: random.Random | None = None) -> Arch:
        """Every choice uniform and independent."""
        rng = rng or random.Random()
        return Arch(self.name, {label: rng.randrange(size) for label, size in zip(self.labels, self.sizes)})

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change one uniformly chosen choice (unit or channel) to a different option."""
        rng = rng or random.Random()
        values = list(self._values(arch))
        k = rng.randrange(len(values))
        values[k] = rng.choice([v for v in range(self.sizes[k]) if v != values[k]])
        return Arch(self.name, zip(self.labels, values))

    def enumerate(self) -> Iterator[Arch]:
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate "
                                  f"({len(BLOCKS)}^{self.num_blocks}"
                                  + (f" x {len(CHANNEL_SCALES)}^{self.num_blocks}" if self.channel_search
                                     else "") + " architectures)")

    # --- networks -----------------------------------------------------------------------------
    def _check_depth(self, stage_blocks: Sequence[int]) -> None:
        if sum(stage_blocks) != self.num_blocks:
            raise ValueError(f"space {self.name!r} has {self.num_blocks} choice blocks: stage_blocks "
                             f"must sum to {self.num_blocks}, got {tuple(stage_blocks)}")

    def build_supernet(self, num_classes: int = 1000, stem_channels: int = 16,
                       stage_channels: Sequence[int] = (64, 160, 320, 640),
                       stage_blocks: Sequence[int] = (4, 4, 8, 4), last_channels: int = 1024,
                       dropout: float = 0.1, in_channels: int = 3) -> SposSupernet:
        self._check_depth(stage_blocks)
        return SposSupernet(num_classes, stem_channels, stage_channels, stage_blocks, last_channels,
                            dropout, in_channels, channel_search=self.channel_search)

    def build_network(self, arch: Arch, num_classes: int = 1000, stem_channels: int = 16,
                      stage_channels: Sequence[int] = (64, 160, 320, 640),
                      stage_blocks: Sequence[int] = (4, 4, 8, 4), last_channels: int = 1024,
                      dropout: float = 0.1, in_channels: int = 3) -> SposNetwork:
        self._check_depth(stage_blocks)
        values = self._values(arch)
        n = self.num_blocks
        scales = [CHANNEL_SCALES[c] for c in values[n:]] if self.channel_search else None
        return SposNetwork(values[:n], num_classes, stem_channels, stage_channels, stage_blocks,
                           last_channels, dropout, in_channels, channel_scales=scales)

    def decisions(self, arch: Arch) -> dict[str, int]:
        return dict(zip(self.labels, self._values(arch)))

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """Argmax per label (first index on ties); SPOS itself selects by evolution instead.

        Raises:
            KeyError: a label is missing or unknown (the message lists the expected labels).
            ValueError: a weight vector has the wrong number of entries.
        """
        missing = [label for label in self.labels if label not in weights]
        unknown = [label for label in weights if label not in self.labels]
        if missing or unknown:
            raise KeyError(f"weights do not match the choices: missing {missing}, unknown {unknown}; "
                           f"expected labels {list(self.labels)}")
        choices = {}
        for label, size in zip(self.labels, self.sizes):
            w = torch.as_tensor(weights[label]).detach()
            if tuple(w.shape) != (size,):
                raise ValueError(f"weights[{label!r}] has shape {tuple(w.shape)}, expected ({size},)")
            choices[label] = int(w.argmax().item())
        return Arch(self.name, choices)

    # --- costs --------------------------------------------------------------------------------
    def cost_table(self, num_classes: int = 1000, input_size: tuple[int, ...] = (1, 3, 224, 224),
                   **options: Any) -> CostTable:
        """The lookup table of :meth:`cost`, measured once per (classes, input size, options).

        Raises:
            ValueError: an unknown option, or stage_blocks not summing to 20.
        """
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for space {self.name!r}; "
                             f"accepted: {', '.join(DEFAULT_OPTIONS)}")
        merged = {**DEFAULT_OPTIONS, **options}
        self._check_depth(merged["stage_blocks"])
        key = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in merged.items())
        return _cost_table(self.channel_search, num_classes, tuple(input_size), key)

    def cost(self, arch: Arch, num_classes: int = 1000, input_size: tuple[int, ...] = (1, 3, 224, 224),
             **options: Any) -> dict[str, float]:
        """Params and FLOPs of the stand-alone network, as :func:`~supernets.base.network_cost`
        reports them (the tests check equality), summed from :meth:`cost_table`: a few
        microseconds per call once the table exists, for the FLOPs-constrained sampler.
        Defaults: 224x224 input, 1000 classes (ImageNet, as the reference)."""
        values = self._values(arch)
        table = self.cost_table(num_classes, input_size, **options)
        n = self.num_blocks
        return table.cost(values[:n], values[n:] if self.channel_search else None)

    def costs(self, archs: Iterable[Arch], num_classes: int = 1000,
              input_size: tuple[int, ...] = (1, 3, 224, 224), **options: Any) -> Iterator[dict[str, float]]:
        table = self.cost_table(num_classes, input_size, **options)
        n = self.num_blocks
        for arch in archs:
            values = self._values(arch)
            yield table.cost(values[:n], values[n:] if self.channel_search else None)


@register
class SposChannelsSpace(SposSpace):
    """SPOS block and channel search (the paper's section 4; not in the released code): per block
    a unit and a mid-channel scale from :data:`CHANNEL_SCALES`. The supernet slices one 1.6x-wide
    weight per unit; the stand-alone network is built at the exact widths."""

    name = "spos-channels"
    channel_search = True


__all__ = ["BLOCKS", "CHANNEL_SCALES", "NUM_BLOCKS", "README_ARCH", "DEFAULT_OPTIONS", "SposSpace",
           "SposChannelsSpace", "SposSupernet", "SposNetwork", "SplitBlock", "ShuffleNetBlock",
           "XceptionBlock", "CostTable", "build_block", "block_layout", "mid_widths", "channel_split",
           "initialize_weights"]
