"""Once-for-All's elastic MobileNetV3 space ("ofa-mbv3"; Cai et al., ICLR 2020).

Construction as mit-han-lab/once-for-all ``elastic_nn/networks/ofa_mbv3.py`` builds it: a fixed
3x3 stride-2 stem (h-swish) and a fixed first block (expand 1, k3, ReLU, identity shortcut), then
5 stages of up to 4 elastic MBConv blocks

=====  ======  ======  =======  ====
stage  width   stride  act      SE
=====  ======  ======  =======  ====
1      24      2       relu     no
2      40      2       relu     yes
3      80      2       h_swish  no
4      112     1       h_swish  yes
5      160     2       h_swish  yes
=====  ======  ======  =======  ====

and the head 1x1 conv to 960 (BN, h-swish), global pool, 1x1 conv to 1280 (no BN, h-swish),
dropout 0.1, linear. Widths are ``make_divisible(w * width_mult, 8)``; a block's middle width is
``make_divisible(round(in * e), 8)``; the first block of a stage carries its stride.

An Arch holds *values*, not option indices: ``resolution`` (128..224 in steps of 4),
``stageS.depth`` (2, 3, 4) and per block ``stageS.blockB.kernel`` (3, 5, 7) and
``stageS.blockB.expand`` (3, 4, 6), 46 choices. As in OFA, the kernel and expand of the blocks a
depth skips are part of the Arch but do nothing. Canonical string, stage groups separated by dots::

    r224-d44444-k7777.7777.7777.7777.7777-e6666.6666.6666.6666.6666

The supernet's decisions are the same values; its ``choices`` list the values it serves (a
training phase enables a subset, :mod:`oneshot.algorithms.ofa`). :func:`extract_network` turns a
supernet and an Arch into the plain :class:`OfaMobileNetV3` with the inherited weights.
"""
from __future__ import annotations

import random
import re
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ops.elastic import ElasticMBConv, copy_batchnorm
from ops.mobilenet import ConvBNAct, MBConv, init_he_fout, make_divisible
from supernets.base import Arch, SearchSpace, Supernet, network_cost
from supernets.registry import register

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # stem, first block, 5 stages, head, last
STAGES = ((2, "relu", False), (2, "relu", True), (2, "h_swish", False), (1, "h_swish", True),
          (2, "h_swish", True))  # (first stride, activation, SE) per elastic stage
KERNEL_SIZES, EXPAND_RATIOS, DEPTHS = (3, 5, 7), (3, 4, 6), (2, 3, 4)
RESOLUTIONS = (128, 224, 4)  # (smallest, largest, step): OFA's 25 sizes
NUM_STAGES, MAX_DEPTH = 5, 4
RESOLUTION = "resolution"


def depth_label(stage: int) -> str:
    return f"stage{stage}.depth"


def kernel_label(stage: int, block: int) -> str:
    return f"stage{stage}.block{block}.kernel"


def expand_label(stage: int, block: int) -> str:
    return f"stage{stage}.block{block}.expand"


def block_positions() -> Iterator[tuple[int, int]]:
    """(stage, block) of the 20 elastic blocks, 1-based, in network order."""
    return ((s, b) for s in range(1, NUM_STAGES + 1) for b in range(1, MAX_DEPTH + 1))


def resolution_list(resolutions: Sequence[int]) -> tuple[int, ...]:
    """(low, high, step) -> every size from low to high inclusive."""
    low, high, step = (int(v) for v in resolutions)
    if not (0 < low <= high and step > 0):
        raise ValueError(f"resolutions {tuple(resolutions)}: (low, high, step) with 0 < low <= high, step > 0")
    return tuple(range(low, high + 1, step))


def space_choices(kernel_sizes: Sequence[int] = KERNEL_SIZES, expand_ratios: Sequence[int] = EXPAND_RATIOS,
                  depths: Sequence[int] = DEPTHS, resolutions: Sequence[int] = RESOLUTIONS) -> dict[str, tuple[int, ...]]:
    """label -> allowed values, in Arch order (resolution, depths, kernels, expands)."""
    choices: dict[str, tuple[int, ...]] = {RESOLUTION: resolution_list(resolutions)}
    choices.update({depth_label(s): tuple(sorted(depths)) for s in range(1, NUM_STAGES + 1)})
    choices.update({kernel_label(s, b): tuple(sorted(kernel_sizes)) for s, b in block_positions()})
    choices.update({expand_label(s, b): tuple(sorted(expand_ratios)) for s, b in block_positions()})
    return choices


def stage_widths(width_mult: float = 1.0, base_widths: Sequence[int] = BASE_WIDTHS) -> list[int]:
    if len(base_widths) != 9:
        raise ValueError(f"base_widths has {len(base_widths)} entries: give 9 (stem, first block, "
                         "5 stages, head, last), as OFA's [16, 16, 24, 40, 80, 112, 160, 960, 1280]")
    return [make_divisible(w * width_mult) for w in base_widths]


class _Ends(nn.Module):
    """Stem, first block and head, shared by the supernet and the static network."""

    def _build_ends(self, widths: list[int], in_channels: int, num_classes: int, dropout: float) -> None:
        self.stem = ConvBNAct(in_channels, widths[0], 3, 2, act="h_swish")
        self.first_block = MBConv(widths[0], widths[1], 3, 1, widths[0], "relu", False, expand=False)
        self.final_expand = ConvBNAct(widths[6], widths[7], 1, act="h_swish")
        self.feature_mix = ConvBNAct(widths[7], widths[8], 1, act="h_swish", bn=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[8], num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix(self.final_expand(x).mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


class OfaMobileNetV3(_Ends):
    """The stand-alone network of one Arch (OFA's ``MobileNetV3`` of a subnet config)."""

    def __init__(self, arch: Arch, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 base_widths: Sequence[int] = BASE_WIDTHS, dropout: float = 0.1):
        super().__init__()
        widths = stage_widths(width_mult, base_widths)
        self._build_ends(widths, in_channels, num_classes, dropout)
        blocks, channels = [], widths[1]
        for s, (stride, act, se) in enumerate(STAGES, start=1):
            for b in range(1, arch[depth_label(s)] + 1):
                e = arch[expand_label(s, b)]
                blocks.append(MBConv(channels, widths[s + 1], arch[kernel_label(s, b)], stride if b == 1 else 1,
                                     make_divisible(round(channels * e)), act, se))
                channels = widths[s + 1]
        self.blocks = nn.Sequential(*blocks)
        init_he_fout(self)
        self.resolution = int(arch[RESOLUTION])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.first_block(self.stem(x))))


class OfaMobileNetV3Supernet(Supernet, _Ends):
    """The elastic supernet; ``forward(x, decisions)`` runs the subnet the decisions (values per
    label, see the module docstring) choose on ``x`` already at its resolution.

    Args:
        num_classes, in_channels: of the data.
        width_mult: OFA's width multiplier (1.0 and 1.2 are released).
        base_widths: the 9 base widths before the multiplier (smaller ones for CPU toys).
        kernel_sizes, expand_ratios, depths: the values the supernet serves.
        resolutions: (low, high, step) of the input sizes.
        dropout: before the classifier (0.1).
        transform_kernels: OFA's kernel transformation matrices (False: plain centre crops).
        bn_momentum, bn_eps: of every BatchNorm (OFA: 0.1, 1e-5).
    """

    resolution_choice = RESOLUTION

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 base_widths: Sequence[int] = BASE_WIDTHS, kernel_sizes: Sequence[int] = KERNEL_SIZES,
                 expand_ratios: Sequence[int] = EXPAND_RATIOS, depths: Sequence[int] = DEPTHS,
                 resolutions: Sequence[int] = RESOLUTIONS, dropout: float = 0.1, transform_kernels: bool = True,
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        if max(depths) > MAX_DEPTH or min(depths) < 1:
            raise ValueError(f"depths {tuple(depths)}: each stage has 1..{MAX_DEPTH} blocks")
        self.choices = space_choices(kernel_sizes, expand_ratios, depths, resolutions)
        self.widths = stage_widths(width_mult, base_widths)
        self._build_ends(self.widths, in_channels, num_classes, dropout)
        self.stages = nn.ModuleList()
        channels = self.widths[1]
        for s, (stride, act, se) in enumerate(STAGES, start=1):
            blocks = nn.ModuleList()
            for b in range(1, max(depths) + 1):
                blocks.append(ElasticMBConv(channels, self.widths[s + 1], kernel_sizes, expand_ratios,
                                            stride if b == 1 else 1, act, se, transform_kernels))
                channels = self.widths[s + 1]
            self.stages.append(blocks)
        init_he_fout(self)
        for block in self.elastic_blocks():
            block.depth_conv.reset_he_fout()
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum, m.eps = bn_momentum, bn_eps

    def elastic_blocks(self) -> Iterator[ElasticMBConv]:
        return (block for stage in self.stages for block in stage)

    def prepare_input(self, x: torch.Tensor, decisions: Mapping[str, Any]) -> torch.Tensor:
        """The batch at the decisions' resolution (a value here), resized bilinearly."""
        size = int(decisions[RESOLUTION])
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def check_decisions(self, decisions: Mapping[str, Any]) -> None:
        """Raise ValueError naming the first value this supernet does not serve."""
        super().check_decisions(decisions)
        for label, options in self.choices.items():
            if decisions[label] not in options:
                raise ValueError(f"{label} = {decisions[label]} is not served by this supernet "
                                 f"(it serves {', '.join(map(str, options))})")

    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any]) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for s, stage in enumerate(self.stages, start=1):
            for b, block in enumerate(stage[:decisions[depth_label(s)]], start=1):
                x = block(x, decisions[kernel_label(s, b)], decisions[expand_label(s, b)])
        return self.head(x)

    @torch.no_grad()
    def reorder_middle(self, band_stage: int = 0) -> None:
        """OFA's channel re-ordering before a width phase, in every elastic block."""
        for block in self.elastic_blocks():
            block.reorder_middle(band_stage)


@torch.no_grad()
def extract_network(supernet: OfaMobileNetV3Supernet, arch: Arch) -> OfaMobileNetV3:
    """The static network of ``arch`` with the supernet's weights and BN statistics (transformed
    kernels, sliced channels); in eval mode it computes what the supernet computes for ``arch``."""
    supernet.check_decisions(arch)
    network = OfaMobileNetV3(arch, supernet.classifier.out_features, supernet.stem.conv.in_channels,
                             dropout=supernet.dropout.p, base_widths=supernet.widths)
    blocks = []
    for s, stage in enumerate(supernet.stages, start=1):
        for b, block in enumerate(stage[:arch[depth_label(s)]], start=1):
            blocks.append(block.extract(arch[kernel_label(s, b)], arch[expand_label(s, b)]))
    network.blocks = nn.Sequential(*blocks)
    for name in ("stem", "first_block", "final_expand", "feature_mix", "classifier"):
        for mine, theirs in zip(getattr(network, name).modules(), getattr(supernet, name).modules()):
            if isinstance(mine, nn.BatchNorm2d):
                copy_batchnorm(theirs, mine)  # with eps and momentum
            elif isinstance(mine, (nn.Conv2d, nn.Linear)):
                mine.load_state_dict(theirs.state_dict())
    return network.to(supernet.classifier.weight.device).train(supernet.training)


_ARCH = re.compile(r"r(\d+)-d(\d{5})-k(\d{4}(?:\.\d{4}){4})-e(\d{4}(?:\.\d{4}){4})")


@register
class OfaMbv3Space(SearchSpace):
    """OFA's MobileNetV3 space (module docstring); 1000 classes at 224 by default."""

    name = "ofa-mbv3"
    default_num_classes = 1000

    def __init__(self, choices: Mapping[str, Sequence[int]] | None = None):
        self.choices = dict(space_choices() if choices is None else choices)

    def restricted(self, choices: Mapping[str, Sequence[int]]) -> "OfaMbv3Space":
        """The same space whose sampling, mutation and extremes stay inside ``choices`` (a
        supernet's values, or a training phase's): every strategy that samples through
        ``model.space`` then proposes only subnets the phase trained."""
        return OfaMbv3Space({label: tuple(options) for label, options in choices.items()})

    def parse_string(self, text: str) -> Arch:
        match = _ARCH.fullmatch(text)
        if match is None:
            raise ValueError(f"not an ofa-mbv3 arch: {text[:80]!r}; expected r<size>-d<5 depths>-"
                             "k<4 kernels>.<...x5>-e<4 expands>.<...x5>, e.g. "
                             "r224-d44444-k7777.7777.7777.7777.7777-e6666.6666.6666.6666.6666")
        resolution, depths, kernels, expands = match.groups()
        kernels, expands = kernels.replace(".", ""), expands.replace(".", "")
        values = {RESOLUTION: int(resolution)}
        values.update({depth_label(s): int(depths[s - 1]) for s in range(1, NUM_STAGES + 1)})
        values.update({kernel_label(s, b): int(kernels[i]) for i, (s, b) in enumerate(block_positions())})
        values.update({expand_label(s, b): int(expands[i]) for i, (s, b) in enumerate(block_positions())})
        return self.validate(Arch(self.name, values))

    def validate(self, arch: Arch) -> Arch:
        """The Arch if every value is one the space has (any resolution from 8 to 1024)."""
        allowed = space_choices()
        if set(arch) != set(allowed):
            raise ValueError(f"an ofa-mbv3 arch has the labels {list(allowed)[:3]}...; got {list(arch)[:3]}...")
        for label, options in allowed.items():
            if label == RESOLUTION:
                if not 8 <= arch[label] <= 1024:
                    raise ValueError(f"resolution {arch[label]}: between 8 and 1024 pixels")
            elif arch[label] not in options:
                raise ValueError(f"{label} = {arch[label]}: one of {', '.join(map(str, options))}")
        return arch

    def check(self, arch: Arch) -> Arch:
        return self.validate(super().check(arch))

    def format(self, arch: Arch) -> str:
        arch = self.check(arch)

        def groups(label: Any) -> str:
            return ".".join("".join(str(arch[label(s, b)]) for b in range(1, MAX_DEPTH + 1))
                            for s in range(1, NUM_STAGES + 1))

        depths = "".join(str(arch[depth_label(s)]) for s in range(1, NUM_STAGES + 1))
        return f"r{arch[RESOLUTION]}-d{depths}-k{groups(kernel_label)}-e{groups(expand_label)}"

    def sample(self, rng: random.Random | None = None,
               choices: Mapping[str, Sequence[int]] | None = None) -> Arch:
        """OFA ``sample_active_subnet``: every value drawn uniformly from ``choices`` (default the
        space's own, see :meth:`restricted`)."""
        rng = rng or random.Random()
        choices = self.choices if choices is None else choices
        return Arch(self.name, {label: rng.choice(tuple(options)) for label, options in choices.items()})

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        rng = rng or random.Random()
        label = rng.choice([k for k, v in self.choices.items() if len(v) > 1])
        options = [v for v in self.choices[label] if v != arch[label]]
        return Arch(self.name, {**dict(arch), label: rng.choice(options)})

    def largest(self, choices: Mapping[str, Sequence[int]] | None = None) -> Arch:
        """Every value at its maximum (the full network at the largest resolution)."""
        choices = self.choices if choices is None else choices
        return Arch(self.name, {label: max(options) for label, options in choices.items()})

    def smallest(self, choices: Mapping[str, Sequence[int]] | None = None) -> Arch:
        choices = self.choices if choices is None else choices
        return Arch(self.name, {label: min(options) for label, options in choices.items()})

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> OfaMobileNetV3Supernet:
        return OfaMobileNetV3Supernet(num_classes=num_classes, **options)

    def build_network(self, arch: Arch, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                      base_widths: Sequence[int] = BASE_WIDTHS, dropout: float = 0.1) -> OfaMobileNetV3:
        return OfaMobileNetV3(self.check(arch), num_classes, in_channels, width_mult, base_widths, dropout)

    def decisions(self, arch: Arch) -> dict[str, Any]:
        return dict(self.check(arch))

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        raise ValueError("ofa-mbv3 has no architecture weights to discretize: choose a subnet with the "
                         "predictor selection (or evolution, best_of_n)")

    def cost(self, arch: Arch, num_classes: int = 1000, input_size: tuple[int, ...] | None = None,
             in_channels: int = 3, width_mult: float = 1.0, base_widths: Sequence[int] = BASE_WIDTHS,
             **options: Any) -> dict[str, float]:
        """Parameters and multiply-adds of the stand-alone network at the arch's own resolution
        (``input_size`` gives only the channel count), counted from the construction rules in
        microseconds (evolution costs tens of thousands of candidates); tests hold the count
        equal to torch's flop counter on the built network (:func:`measured_cost`)."""
        arch = self.check(arch)
        if input_size is not None:
            in_channels = int(input_size[1])
        params, macs = rule_cost(arch, num_classes, in_channels, stage_widths(width_mult, base_widths))
        return {"params": params, "flops": 2.0 * macs, "macs": float(macs)}


def measured_cost(arch: Arch, num_classes: int = 1000, in_channels: int = 3, **options: Any) -> dict[str, float]:
    """:func:`~supernets.base.network_cost` of the built network at the arch's resolution."""
    size = int(arch[RESOLUTION])
    network = OfaMobileNetV3(arch, num_classes, in_channels, **options)
    return network_cost(network, (1, in_channels, size, size))


def rule_cost(arch: Arch, num_classes: int, in_channels: int, widths: Sequence[int]) -> tuple[int, int]:
    """(parameters, multiply-adds) of a subnet: convs (bias-free but the SE's), BN affine pairs,
    the classifier; a conv's multiply-adds at its output size ("same" padding: ceil(size / stride))."""
    params = macs = 0
    size = int(arch[RESOLUTION])

    def conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, bias: bool = False,
             pooled: bool = False, bn: bool = True) -> None:
        nonlocal params, macs, size
        size = size if pooled else -(-size // stride)
        weights = cout * (cin // groups) * k * k
        params += weights + (cout if bias else 0) + (2 * cout if bn else 0)
        macs += weights * (1 if pooled else size * size)

    conv(in_channels, widths[0], 3, 2)
    conv(widths[0], widths[0], 3, groups=widths[0]), conv(widths[0], widths[1])  # first block, expand 1
    cin = widths[1]
    for s, (stride, _, se) in enumerate(STAGES, start=1):
        for b in range(1, arch[depth_label(s)] + 1):
            middle = make_divisible(round(cin * arch[expand_label(s, b)]))
            conv(cin, middle)
            conv(middle, middle, arch[kernel_label(s, b)], stride if b == 1 else 1, groups=middle)
            if se:
                hidden = make_divisible(middle // 4)
                conv(middle, hidden, bias=True, pooled=True, bn=False)
                conv(hidden, middle, bias=True, pooled=True, bn=False)
            conv(middle, widths[s + 1])
            cin = widths[s + 1]
    conv(cin, widths[7])
    conv(widths[7], widths[8], pooled=True, bn=False)
    params += widths[8] * num_classes + num_classes
    macs += widths[8] * num_classes
    return params, macs
