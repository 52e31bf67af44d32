"""The ENAS macro search space (registered as ``"enas-macro"``).

Paper: Pham, Guan, Zoph, Le & Dean, "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018 (arXiv 1802.03268), the macro ("designing convolutional networks") search space.
Ref impl: melodyguan/enas@4bcfd73 ``src/cifar10/general_child.py`` (``GeneralChild``: ``_model``,
``_enas_layer`` = the search child, ``_fixed_layer`` = the final child, ``_conv_branch``,
``_pool_branch``, ``_factorized_reduction``), ``src/cifar10/general_controller.py`` (the token
order), ``src/cifar10/image_ops.py`` (``batch_norm``, ``batch_norm_with_mask``),
``src/common_ops.py`` (``create_weight``), ``src/cifar10/main.py`` (flags),
``scripts/cifar10_macro_search.sh`` and ``scripts/cifar10_macro_final.sh`` (sizes and the
published arc), ``README.md`` (the op order). Both scripts run ``search_whole_channels=True``: one
op per layer, which is all this module implements.

**Architecture.** A network has ``L`` layers (12 in the search script). Layer ``i`` picks one op
of :data:`OPS` (the reference's branch ids: 0 conv 3x3, 1 separable conv 3x3, 2 conv 5x5,
3 separable conv 5x5, 4 average pooling, 5 max pooling) and ``i`` skip flags. An Arch maps
``"layer{i}"`` to ``(op, skips)``, ``skips`` a tuple of ``i`` ints in {0, 1}: the reference arc's
tokens of layer ``i``, ``[op, skip_0, ..., skip_{i-1}]``. The canonical string is the
``--child_fixed_arc`` form: every token as an integer, space-separated, layer by layer
(``L + L(L-1)/2`` integers: 78 for 12 layers).

**Which node a skip reads.** The child keeps a list of nodes: node 0 is the stem's output and node
``j + 1`` is layer ``j``'s output. Layer ``i`` runs its op on node ``i`` (the previous layer, or the
stem for layer 0) and its skip flag ``j`` adds node ``j`` (``prev_layers[j]`` in ``_enas_layer`` and
``_fixed_layer``): the stem for ``j = 0``, layer ``j - 1`` otherwise. So the stem can be a skip
input and the previous layer, always the op's input, never is; the flags are the controller's
tokens, their meaning is the child's.

**Body.** Stem: conv 3x3 (no bias) + BN. Pooling after layers ``d - 1`` and ``2d - 1``, ``d = L // 3``
(:func:`pool_layers`; after layers 3 and 7 for 12, 7 and 15 for 24, none below 3 layers): every
node so far, the stem included, passes through its own :class:`FactorizedReduction` (a 1x1 conv of
the even pixels and one of the pixels shifted by one, concatenated, then BN; no ReLU, unlike
DARTS' ``FactorizedReduce``). Head: global average pooling, dropout, linear without bias.
Convolutions are bias-free, "SAME"-padded and stride 1; BN is affine with momentum 0.1 (TF decay
0.9) and eps 1e-5, except the search child's k x k conv BN (``batch_norm_with_mask``, eps 1e-3).

**Search child** (:class:`EnasMacroSupernet`, ``_enas_layer``): the width stays ``C`` (36 in the
search script; the reductions map C to C). Every layer holds six branches with their own weights:
a conv branch is 1x1 conv + BN + ReLU, then the k x k conv (separable: depthwise k x k + pointwise
1x1) + BN + ReLU; a pool branch is 1x1 conv + BN + ReLU, then the 3x3 pool at stride 1 (average
without the padding). From layer 1 on, the op output and the chosen skip nodes are **summed**
(``add_n``) and batch-normalised; layer 0 has no BN after its op.

**Final child** (:class:`EnasMacroNetwork`, ``_fixed_layer``): the width doubles at each pooling
(``C``, ``2C``, ``4C``; the reductions map c to 2c). Conv ops are ReLU + 1x1 conv + BN, then ReLU +
k x k conv + BN; the reference builds a full k x k conv for the separable ops too (``_fixed_layer``
only reads the kernel size from the op id), and so do we. From layer 1 on, the chosen skip nodes
and the op output are **concatenated** (in that order) and projected: ReLU + 1x1 conv to the width
+ BN, also when no skip is chosen. The paper describes this concatenation for the search space
too; the released search child sums instead (melodyguan/enas#90): we follow the code in each.

Where the released code gives no usable answer, and what we chose:

* The final child leaves ops 4 and 5 unimplemented (``pass``: the layer then has no output); the
  final script sets ``child_num_branches=4`` and its arc uses ops 0-3 only. For a searched arch
  with pooling, :class:`EnasMacroNetwork` builds the final child's ReLU + 1x1 conv + BN followed
  by the 3x3 pool.
* ``_enas_layer`` hands ``tf.case`` branch functions ``lambda: y`` that close over one variable
  reassigned per branch; Python binds it late, so as released every op id would run the last
  branch built (max pooling). We run the sampled op, as the paper and the controller intend.
* TF evaluates every branch built outside ``tf.case`` (and updates its BN moving averages) at every
  step; here only the sampled branch runs, so a branch's BN statistics move only when it is
  sampled. Reductions of nodes that no later layer reads are skipped (they change no output).
* Weights: the reference's ``he_normal`` (TF1 ``VarianceScaling(2, fan_in)``: a normal truncated at
  two standard deviations, std ``sqrt(2 / fan_in)``, fan_in with TF's layout, so ``k * k * C`` for
  a depthwise filter); BN weight 1, bias 0.
* No auxiliary head and no drop path: the scripts pass ``--child_use_aux_heads`` and
  ``--child_drop_path_keep_prob`` but ``GeneralChild`` ignores them (its ``**kwargs``), so neither
  network has ``drop_path_prob``.

**Sizes.** Search script: 12 layers, ``out_filters`` 36, dropout 0.1 (keep 0.9); these are the
supernet's defaults. Final script: **24** layers, ``out_filters`` 96, dropout 0.5 (keep 0.5),
``child_num_branches=4``. Its arc (:data:`ENAS_MACRO_ARC`, 300 tokens) therefore has 24 layers,
not the search space's 12: the space reads and builds any depth ``L`` (labels ``layer0`` ..
``layer{L-1}``), while :meth:`EnasMacroSpace.sample` draws 12 layers unless told otherwise.
``build_network`` defaults to ``C=36`` and the arch's own depth; ``C=96`` is the final script's
width. The paper reports 21.3M parameters and 4.23% test error for its macro network (38.0M and
3.87% with 512 filters in the last stage); the released arc in the final child builds to 42.56M
at ``C=96`` (30.95M if its separable op ids were separable convs; :data:`GENOTYPE_META`).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ops.candidates import ReLUConvBN, build_candidate
from supernets.base import Arch, SearchSpace, Supernet
from supernets.registry import register

# The reference's op ids in order (general_child.py branch_0 .. branch_5; README.md).
OPS: tuple[str, ...] = ("conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5", "avg_pool_3x3",
                        "max_pool_3x3")
KERNEL_SIZES: tuple[int, ...] = (3, 3, 5, 5, 3, 3)
SEPARABLE: tuple[bool, ...] = (False, True, False, True, False, False)
POOLS: tuple[int, ...] = (4, 5)
NUM_LAYERS = 12  # --child_num_layers of cifar10_macro_search.sh
SEARCH_CHANNELS = 36  # --child_out_filters of cifar10_macro_search.sh
FINAL_CHANNELS = 96  # --child_out_filters of cifar10_macro_final.sh
FINAL_LAYERS = 24  # --child_num_layers of cifar10_macro_final.sh
BN_MOMENTUM = 0.1  # TF batch_norm decay 0.9
MASKED_BN_EPS = 1e-3  # image_ops.batch_norm_with_mask (the search child's k x k conv BN)

# scripts/cifar10_macro_final.sh fixed_arc, one layer per line: op, then one skip flag per node.
_FINAL_ARC_LAYERS: tuple[str, ...] = (
    "0",
    "3 0",
    "0 1 0",
    "2 0 0 1",
    "2 0 0 0 0",
    "3 1 1 0 1 0",
    "2 0 0 0 0 0 1",
    "2 0 1 1 0 1 1 1",
    "1 0 1 1 1 0 1 0 1",
    "0 0 0 0 0 0 0 0 0 0",
    "2 0 0 0 0 0 1 0 0 0 0",
    "0 1 0 0 1 1 0 0 0 0 1 1",
    "2 0 1 0 0 0 0 0 1 0 1 1 0",
    "1 0 0 1 0 0 0 1 1 1 0 1 0 1",
    "0 1 1 0 1 0 1 0 0 0 0 0 1 0 0",
    "2 0 0 1 0 0 0 0 0 0 0 1 0 1 0 1",
    "2 0 1 0 0 0 1 0 0 1 1 1 1 0 0 1 0",
    "2 0 0 0 0 1 0 1 0 1 0 0 1 0 1 0 0 1",
    "3 0 1 1 0 1 0 0 0 0 0 1 0 1 0 1 0 0 0",
    "3 0 1 1 0 0 0 0 0 0 0 0 0 1 1 0 0 0 0 1",
    "0 1 0 0 1 0 1 1 0 0 0 1 0 0 0 0 0 1 1 0 0",
    "3 0 1 0 1 1 0 0 1 0 1 1 0 1 1 0 1 0 0 1 0 0",
    "0 1 0 1 0 1 0 0 0 0 0 0 0 0 1 0 1 0 0 1 0 0 0",
    "0 1 1 0 0 0 1 1 1 0 1 0 0 0 1 0 1 0 0 1 1 0 0 0",
)
ENAS_MACRO_ARC = " ".join(_FINAL_ARC_LAYERS)  # the canonical string of genotypes["ENAS_MACRO"]

# Reported CIFAR-10 test error (%) and params (millions); ``params`` is the exact count of
# build_network(arch, C=96) (24 layers), as measured.
GENOTYPE_META: dict[str, dict[str, Any]] = {
    "ENAS_MACRO": {
        "test_error": 4.23, "params_m": 21.3, "params": 42_559_392,
        "source": "melodyguan/enas@4bcfd73 scripts/cifar10_macro_final.sh (fixed_arc)",
        "note": "error and params: paper Table 2 (38.0M / 3.87% with 512 filters in the last "
                "stage). The released arc has 24 layers; at the final script's 96 filters the "
                "final child builds to 42.56M (every reduction of this arc is used, so the "
                "reference counts the same), 5.65G multiply-adds at 32x32. Its full k x k convs "
                "for the separable op ids account for 11.6M (30.95M with separable ones); "
                "neither reproduces the paper's 21.3M",
    },
}

Decision = tuple[int, tuple[int, ...]]


def pool_layers(layers: int) -> tuple[int, ...]:
    """The layers after which the reference pools: ``d - 1`` and ``2d - 1``, ``d = layers // 3``
    (``GeneralChild.pool_layers``); none below 3 layers."""
    d = layers // 3
    return (d - 1, 2 * d - 1) if d > 0 else ()


def layer_labels(layers: int = NUM_LAYERS) -> tuple[str, ...]:
    return tuple(f"layer{i}" for i in range(layers))


def live_nodes(skips: Sequence[Sequence[int]], pool: int) -> set[int]:
    """The nodes that a layer after ``pool`` reads (its op input or a skip): the ones whose
    reduction at that pooling matters. Node 0 is the stem, node ``j + 1`` layer ``j``."""
    live = {pool + 1} if pool + 1 < len(skips) else set()
    for i in range(pool + 1, len(skips)):
        live.update(j for j in range(min(i, pool + 2)) if skips[i][j])
    return live


class LayerOptions(Sequence):
    """The options of layer ``i``: every ``(op, skips)`` pair, ``len(OPS) * 2**i`` of them, op-major
    and then the skip flags in binary order (``skips[0]`` most significant); nothing is stored.

    Example:
        >>> LayerOptions(2)[5]
        (1, (0, 1))
        >>> LayerOptions(2).index((1, (0, 1)))
        5
    """

    def __init__(self, layer: int, num_ops: int = len(OPS)):
        self.layer, self.num_ops = layer, num_ops

    def __len__(self) -> int:
        return self.num_ops << self.layer

    def __getitem__(self, k: int) -> Decision:  # type: ignore[override]
        if isinstance(k, slice):
            raise TypeError("LayerOptions cannot be sliced")
        n = len(self)
        k = k + n if k < 0 else k
        if not 0 <= k < n:
            raise IndexError(f"option {k} of layer {self.layer}: it has {n}")
        op, bits = divmod(k, 1 << self.layer)
        return op, tuple((bits >> (self.layer - 1 - j)) & 1 for j in range(self.layer))

    def __contains__(self, value: object) -> bool:
        try:
            check_decision(value, self.layer, self.num_ops)
        except ValueError:
            return False
        return True

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        op, skips = check_decision(value, self.layer, self.num_ops)
        k = (op << self.layer) + sum(s << (self.layer - 1 - j) for j, s in enumerate(skips))
        if not start <= k < (len(self) if stop is None else stop):
            raise ValueError(f"{value!r} is not in the given range")
        return k

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LayerOptions)
                and (self.layer, self.num_ops) == (other.layer, other.num_ops))

    def __hash__(self) -> int:
        return hash((LayerOptions, self.layer, self.num_ops))

    def __repr__(self) -> str:
        return f"LayerOptions(layer={self.layer}: {self.num_ops} ops x {self.layer} skip flags)"


def check_decision(value: Any, layer: int, num_ops: int = len(OPS)) -> Decision:
    """``(op, skips)`` of layer ``layer`` as ints; ValueError naming what is wrong."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and isinstance(value[1], (tuple, list))):
        raise ValueError(f"layer{layer}: decision {value!r} is not (op, skips)")
    op, skips = value
    if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op < num_ops:
        raise ValueError(f"layer{layer}: op {op!r} is not in 0-{num_ops - 1}")
    if len(skips) != layer:
        raise ValueError(f"layer{layer}: {len(skips)} skip flags, expected {layer} (one per earlier node)")
    for j, s in enumerate(skips):
        if isinstance(s, bool) or s not in (0, 1):
            raise ValueError(f"layer{layer}: skip flag {j} is {s!r}, not 0 or 1")
    return op, tuple(skips)


# ---------------------------------------------------------------------------------------------
# Modules


def _stem(in_channels: int, C: int) -> nn.Sequential:
    """conv 3x3 + BN, no ReLU (``stem_conv``)."""
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
                         nn.BatchNorm2d(C, momentum=BN_MOMENTUM))


def _conv_bn_relu(C_in: int, C_out: int) -> nn.Sequential:
    """1x1 conv + BN + ReLU, the first step of every search branch (``inp_conv_1`` / ``conv_1``)."""
    return nn.Sequential(nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, momentum=BN_MOMENTUM),
                         nn.ReLU(inplace=True))


class ConvBranch(nn.Module):
    """A conv branch of the search child (``_conv_branch``): 1x1 conv + BN + ReLU, then the k x k
    conv (``separable``: depthwise k x k, then pointwise 1x1) + BN (eps 1e-3) + ReLU."""

    def __init__(self, C_in: int, C: int, kernel_size: int, separable: bool):
        super().__init__()
        self.inp_conv = _conv_bn_relu(C_in, C)
        if separable:
            convs = [nn.Conv2d(C, C, kernel_size, padding=kernel_size // 2, groups=C, bias=False),
                     nn.Conv2d(C, C, 1, bias=False)]
        else:
            convs = [nn.Conv2d(C, C, kernel_size, padding=kernel_size // 2, bias=False)]
        self.out_conv = nn.Sequential(*convs, nn.BatchNorm2d(C, eps=MASKED_BN_EPS, momentum=BN_MOMENTUM),
                                      nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.inp_conv(x))


class PoolBranch(nn.Module):
    """A pool branch of the search child (``_pool_branch``): 1x1 conv + BN + ReLU, then the 3x3
    pool at stride 1 (:mod:`ops.candidates`' ``avg_pool_3x3`` / ``max_pool_3x3``: TF's "SAME"
    average pooling leaves the padding out, as ``count_include_pad=False``)."""

    def __init__(self, C_in: int, C: int, pool: str):
        super().__init__()
        self.conv = _conv_bn_relu(C_in, C)
        self.pool = build_candidate(pool, C, 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def search_branch(op: int, C: int) -> nn.Module:
    """Branch ``op`` of a search layer of width ``C``."""
    if op in POOLS:
        return PoolBranch(C, C, OPS[op])
    return ConvBranch(C, C, KERNEL_SIZES[op], SEPARABLE[op])


def final_op(op: int, C: int) -> nn.Sequential:
    """Op ``op`` of the final child (``_fixed_layer``): ReLU + 1x1 conv + BN, then ReLU + k x k
    conv + BN (a full conv for the separable ids too, as the reference builds it); for the pools,
    which the reference leaves out, the same 1x1 step followed by the 3x3 pool."""
    first = ReLUConvBN(C, C, 1, 1, 0)
    if op in POOLS:
        return nn.Sequential(first, build_candidate(OPS[op], C, 1, True))
    k = KERNEL_SIZES[op]
    return nn.Sequential(first, ReLUConvBN(C, C, k, 1, k // 2))


class FactorizedReduction(nn.Module):
    """Halve the resolution without dropping pixels (``_factorized_reduction`` at stride 2): a 1x1
    conv on the even pixels and one on the pixels shifted by one (zero-padded at the bottom and
    right), each giving ``C_out // 2`` channels, concatenated, then BN. No ReLU."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"a factorized reduction needs an even width, got {C_out}")
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def initialize_weights(network: nn.Module) -> None:
    """The reference's ``create_weight`` default, ``he_normal``: a normal truncated at two standard
    deviations with std ``sqrt(2 / fan_in)``, fan_in as TF counts it (``k * k * C_in`` for a conv,
    ``k * k * C`` for a depthwise filter, ``in_features`` for the classifier); BN weight 1, bias 0."""
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            fan_in = k * m.in_channels if m.groups == m.in_channels > 1 else k * m.weight.shape[1]
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        truncated_normal_(m.weight, math.sqrt(2.0 / fan_in))


@torch.no_grad()
def truncated_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std^2) with every draw beyond two standard deviations drawn again (TF1's
    ``truncated_normal``); a few times faster than ``nn.init.trunc_normal_`` on large tensors."""
    if weight.is_meta:
        return weight
    flat = weight.view(-1)
    flat.normal_(0.0, std)
    redraw = (flat.abs() > 2 * std).nonzero().squeeze(1)
    while redraw.numel():
        values = flat.new_empty(redraw.numel()).normal_(0.0, std)
        flat[redraw] = values
        redraw = redraw[values.abs() > 2 * std]
    return weight


class _Body(nn.Module):
    """What both networks share: the stem, the pooling positions and the head."""

    def _build_ends(self, layers: int, C: int, last_channels: int, num_classes: int, dropout: float,
                    in_channels: int) -> None:
        if layers < 1:
            raise ValueError(f"an ENAS macro network needs at least 1 layer, got {layers}")
        self.pools = pool_layers(layers)
        if self.pools and C % 2:
            raise ValueError(f"C={C}: the factorized reductions need an even width")
        self.stem_conv = _stem(in_channels, C)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last_channels, num_classes, bias=False)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean((2, 3))))


class SearchLayer(nn.Module):
    """Layer ``index`` of the search child: the six branches of :data:`OPS` and, from layer 1 on,
    the BN after the sum of the op output and the chosen skip nodes."""

    def __init__(self, index: int, C: int):
        super().__init__()
        self.index = index
        self.branches = nn.ModuleList(search_branch(op, C) for op in range(len(OPS)))
        self.skip_bn = nn.BatchNorm2d(C, momentum=BN_MOMENTUM) if index > 0 else None

    def forward(self, nodes: Sequence[torch.Tensor], op: int, skips: Sequence[int]) -> torch.Tensor:
        out = self.branches[op](nodes[self.index])
        if self.skip_bn is None:
            return out
        for j, s in enumerate(skips):
            if s:
                out = out + nodes[j]
        return self.skip_bn(out)


class EnasMacroSupernet(Supernet, _Body):
    """The ENAS macro search child (``_enas_layer``, see the module docstring): ``layers`` layers of
    six weight-sharing branches at width ``C`` throughout; skip inputs are summed.

    ``choices["layer{i}"]`` is :class:`LayerOptions` ``(i)``: every ``(op, skips)`` pair, ``op`` an
    index of :data:`OPS` and ``skips`` ``i`` flags, flag ``j`` reading node ``j`` (0 = the stem,
    ``j`` = layer ``j - 1``). ``forward(x, decisions)`` takes one such pair per label, as
    :meth:`EnasMacroSpace.decisions` gives them. The labels are not cell edges: ``edges`` is empty.

    Args:
        num_classes: classifier outputs.
        C: width of every layer (search script: 36).
        layers: number of layers (12); the pooling positions follow :func:`pool_layers`.
        in_channels: image channels.
        dropout: before the classifier (search script keep_prob 0.9: 0.1).
    """

    def __init__(self, num_classes: int = 10, C: int = SEARCH_CHANNELS, layers: int = NUM_LAYERS,
                 in_channels: int = 3, dropout: float = 0.1):
        super().__init__()
        self._build_ends(layers, C, C, num_classes, dropout, in_channels)
        self.num_layers, self.C = layers, C
        self.labels = layer_labels(layers)
        self.choices = {label: LayerOptions(i) for i, label in enumerate(self.labels)}  # type: ignore[misc]
        self.layers = nn.ModuleList(SearchLayer(i, C) for i in range(layers))
        # Per pooling, one reduction per node so far: the stem and layers 0..p.
        self.reductions = nn.ModuleList(nn.ModuleList(FactorizedReduction(C, C) for _ in range(p + 2))
                                        for p in self.pools)
        initialize_weights(self)

    def read_decisions(self, decisions: Mapping[str, Any]) -> list[Decision]:
        """The (op, skips) of every layer, checked; KeyError/ValueError name the problem."""
        if len(decisions) != len(self.labels):
            self.check_decisions(decisions)
        try:
            return [check_decision(decisions[label], i) for i, label in enumerate(self.labels)]
        except KeyError:
            self.check_decisions(decisions)
            raise

    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any]) -> torch.Tensor:
        """Logits of the subnet ``decisions`` (``{"layer{i}": (op, skips)}``)."""
        chosen = self.read_decisions(decisions)
        skips = [s for _, s in chosen]
        nodes: list[Any] = [self.stem_conv(x)]
        for i, (layer, (op, flags)) in enumerate(zip(self.layers, chosen)):
            nodes.append(layer(nodes, op, flags))
            if i in self.pools:
                live = live_nodes(skips, i)
                reductions = self.reductions[self.pools.index(i)]
                nodes = [reductions[j](n) if j in live else None for j, n in enumerate(nodes)]
        return self.forward_head(nodes[-1])


class FixedLayer(nn.Module):
    """Layer ``index`` of the final child: its op and, from layer 1 on, the projection of the
    concatenated [chosen skip nodes, op output] (ReLU + 1x1 conv + BN)."""

    def __init__(self, index: int, op: int, skips: Sequence[int], C: int):
        super().__init__()
        self.index, self.op_index, self.skips = index, op, tuple(skips)
        self.op = final_op(op, C)
        self.proj = ReLUConvBN((sum(self.skips) + 1) * C, C, 1, 1, 0) if index > 0 else None

    def forward(self, nodes: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.op(nodes[self.index])
        if self.proj is None:
            return out
        return self.proj(torch.cat([nodes[j] for j, s in enumerate(self.skips) if s] + [out], dim=1))

    def extra_repr(self) -> str:
        return f"index={self.index}, op={OPS[self.op_index]}, skips={self.skips}"


class EnasMacroNetwork(_Body):
    """The stand-alone ENAS macro network (the final child, ``_fixed_layer``; see the module
    docstring): the width doubles at each pooling and skip inputs are concatenated, then projected.

    Reductions exist only for the nodes a later layer reads (the reference also builds, and counts,
    the others, which nothing uses). Final script: 24 layers, ``C=96``, dropout 0.5.

    Args:
        layers: ``(op, skips)`` per layer, as :meth:`EnasMacroSpace.decisions` gives them.
        num_classes, in_channels: classifier outputs, image channels.
        C: width of the first stage (``out_filters``).
        dropout: before the classifier (final script keep_prob 0.5: 0.5).
    """

    def __init__(self, layers: Sequence[Decision], num_classes: int = 10, C: int = SEARCH_CHANNELS,
                 in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        chosen = [check_decision(d, i) for i, d in enumerate(layers)]
        num_layers = len(chosen)
        pools = pool_layers(num_layers)
        self._build_ends(num_layers, C, C << len(pools), num_classes, dropout, in_channels)
        self.arc = tuple(chosen)
        skips = [s for _, s in chosen]
        widths, c = [], C
        for i in range(num_layers):
            widths.append(c)
            c *= 2 if i in pools else 1
        self.layers = nn.ModuleList(FixedLayer(i, op, s, w)
                                    for i, ((op, s), w) in enumerate(zip(chosen, widths)))
        self.reductions = nn.ModuleList(
            nn.ModuleDict({str(j): FactorizedReduction(widths[p], 2 * widths[p])
                           for j in sorted(live_nodes(skips, p))})
            for p in pools)
        initialize_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes: list[Any] = [self.stem_conv(x)]
        for i, layer in enumerate(self.layers):
            nodes.append(layer(nodes))
            if i in self.pools:
                reductions = self.reductions[self.pools.index(i)]
                nodes = [reductions[str(j)](n) if str(j) in reductions else None
                         for j, n in enumerate(nodes)]
        return self.forward_head(nodes[-1])


# ---------------------------------------------------------------------------------------------
# The registered space


@register
class EnasMacroSpace(SearchSpace):
    """The ENAS macro space: per layer one of 6 ops and a skip flag per earlier node; 12 layers
    hold 6^12 * 2^66 (about 1.6e29) archs (see the module docstring).

    Example:
        >>> space = supernets.get("enas-macro")
        >>> arch = space.genotypes["ENAS_MACRO"]
        >>> len(arch), arch["layer2"]
        (24, (0, (1, 0)))
    """

    name = "enas-macro"
    ops = OPS
    num_layers = NUM_LAYERS

    def __init__(self) -> None:
        self.genotypes: dict[str, Arch] = {"ENAS_MACRO": self.parse(ENAS_MACRO_ARC)}
        self.genotype_meta = GENOTYPE_META

    # --- encoding ---------------------------------------------------------------------------
    @staticmethod
    def _help(layers: int = NUM_LAYERS) -> str:
        ops = ", ".join(f"{k} {name}" for k, name in enumerate(OPS))
        return (f"expected --child_fixed_arc form: integers separated by spaces, layer by layer, "
                f"layer i giving its op ({ops}) then i skip flags 0/1; L + L(L-1)/2 integers for "
                f"L layers ({layers * (layers + 1) // 2} for {layers})")

    def layers_of(self, arch: Arch) -> list[Decision]:
        """The (op, skips) of every layer of ``arch``, checked (any depth)."""
        super().check(arch)
        labels = list(arch)
        if labels != list(layer_labels(len(labels))) or not labels:
            raise ValueError(f"an {self.name} arch has the labels layer0..layer{{L-1}} in order, "
                             f"got {labels}")
        return [check_decision(arch[label], i) for i, label in enumerate(labels)]

    def check(self, arch: Arch) -> Arch:
        """Also check the labels and the (op, skips) values, so a hand-made Arch fails early."""
        self.layers_of(arch)
        return arch

    def from_tokens(self, tokens: Iterable[int]) -> Arch:
        """The reference's flat token list (``sample_arc``) -> Arch; ValueError as :meth:`parse`."""
        return self.parse(" ".join(str(int(t)) for t in tokens))

    def to_tokens(self, arch: Arch) -> list[int]:
        """Arch -> the flat token list: per layer the op, then its skip flags."""
        return [t for op, skips in self.layers_of(arch) for t in (op, *skips)]

    def parse_string(self, text: str) -> Arch:
        """``"0 3 0 0 1 0 ..."`` (any whitespace; the ``--child_fixed_arc`` form) or an Arch JSON
        object -> Arch.

        Raises:
            ValueError: one line naming the bad token, op, skip flag or count, and the format.
        """
        shown = text if len(text) <= 60 else text[:57] + "..."
        tokens = text.split()
        for k, token in enumerate(tokens):
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"{self.name} arch {shown!r}: token {k} {token!r} is not a "
                                 f"non-negative integer; {self._help()}")
        n = len(tokens)
        layers = (math.isqrt(8 * n + 1) - 1) // 2
        if n == 0 or layers * (layers + 1) // 2 != n:
            nearest = max(layers, 1)
            raise ValueError(f"{self.name} arch {shown!r} has {n} integers, which is L + L(L-1)/2 for "
                             f"no number of layers L; {self._help(nearest)}")
        values, k = [int(t) for t in tokens], 0
        choices = {}
        for i in range(layers):
            op, skips = values[k], tuple(values[k + 1:k + 1 + i])
            if op >= len(OPS):
                raise ValueError(f"{self.name} arch {shown!r}: layer {i} (token {k}) has op {op}, not "
                                 f"in 0-{len(OPS) - 1}; {self._help(layers)}")
            for j, s in enumerate(skips):
                if s > 1:
                    raise ValueError(f"{self.name} arch {shown!r}: layer {i} skip flag {j} (token "
                                     f"{k + 1 + j}) is {s}, not 0 or 1; {self._help(layers)}")
            choices[f"layer{i}"] = (op, skips)
            k += 1 + i
        return Arch(self.name, choices)

    def format(self, arch: Arch) -> str:
        """Arch -> the ``--child_fixed_arc`` string: all tokens, single spaces."""
        return " ".join(map(str, self.to_tokens(arch)))

    # --- sampling and evolution -------------------------------------------------------------
    def sample(self, rng: random.Random | None = None, layers: int = NUM_LAYERS) -> Arch:
        """Uniform: per layer the op uniform over the 6, each skip flag a fair coin (what the
        reference controller draws with zero logits). ``layers``: depth (12 as searched)."""
        rng = rng or random.Random()
        choices = {}
        for i, label in enumerate(layer_labels(layers)):
            op = rng.randrange(len(OPS))
            choices[label] = (op, tuple(rng.randrange(2) for _ in range(i)))
        return Arch(self.name, choices)

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change one token, uniform over all ``L + L(L-1)/2``: an op to another op, or a skip flag
        flipped."""
        rng = rng or random.Random()
        tokens = self.to_tokens(arch)
        k = rng.randrange(len(tokens))
        i = (math.isqrt(8 * k + 1) - 1) // 2  # the layer of token k: layer i starts at i(i+1)/2
        if k == i * (i + 1) // 2:
            tokens[k] = rng.choice([op for op in range(len(OPS)) if op != tokens[k]])
        else:
            tokens[k] = 1 - tokens[k]
        return self.from_tokens(tokens)

    def resample(self, arch: Arch, probability: float, rng: random.Random | None = None) -> Arch:
        """Each layer redrawn with ``probability``, from a sample of the arch's own depth."""
        rng = rng or random.Random()
        fresh = self.sample(rng, layers=len(self.layers_of(arch)))
        return Arch(self.name, {k: (fresh[k] if rng.random() < probability else arch[k]) for k in arch})

    def crossover(self, a: Arch, b: Arch, rng: random.Random | None = None) -> Arch:
        if len(self.layers_of(a)) != len(self.layers_of(b)):
            raise ValueError(f"crossover of archs with {len(a)} and {len(b)} layers")
        return super().crossover(a, b, rng)

    def enumerate(self) -> Iterator[Arch]:
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate "
                                  f"({len(OPS)}^{NUM_LAYERS} x 2^{NUM_LAYERS * (NUM_LAYERS - 1) // 2} "
                                  "architectures)")

    # --- networks -----------------------------------------------------------------------------
    def build_supernet(self, num_classes: int = 10, C: int = SEARCH_CHANNELS, layers: int = NUM_LAYERS,
                       in_channels: int = 3, dropout: float = 0.1) -> EnasMacroSupernet:
        return EnasMacroSupernet(num_classes, C, layers, in_channels, dropout)

    def build_network(self, arch: Arch, num_classes: int = 10, C: int = SEARCH_CHANNELS,
                      layers: int | None = None, in_channels: int = 3,
                      dropout: float = 0.5) -> EnasMacroNetwork:
        """The final child of ``arch``. ``layers``: None takes the arch's depth; a number must
        equal it (the supernet's option passed on). ``C=96`` is the final script's width.

        Raises:
            ValueError: ``layers`` differs from the arch's depth.
        """
        chosen = self.layers_of(arch)
        if layers is not None and layers != len(chosen):
            raise ValueError(f"layers={layers}, but the arch has {len(chosen)} layers")
        return EnasMacroNetwork(chosen, num_classes, C, in_channels, dropout)

    def network_options(self, supernet_options: Mapping[str, Any]) -> dict[str, Any]:
        """Width, depth and image channels carry over; the dropout does not (search 0.1, final 0.5)."""
        return {k: v for k, v in supernet_options.items() if k in ("C", "layers", "in_channels")}

    def decisions(self, arch: Arch) -> dict[str, Decision]:
        return {f"layer{i}": d for i, d in enumerate(self.layers_of(arch))}

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """ENAS has no architecture weights to discretize.

        Raises:
            ValueError: always; select by sampling (the controller's or :meth:`sample`) instead.
        """
        raise ValueError(f"space {self.name!r}: ENAS has no architecture weights to discretize; "
                         "use a sampled selection (the controller's samples or space.sample)")


__all__ = ["OPS", "NUM_LAYERS", "SEARCH_CHANNELS", "FINAL_CHANNELS", "FINAL_LAYERS", "ENAS_MACRO_ARC",
           "GENOTYPE_META", "EnasMacroSpace", "EnasMacroSupernet", "EnasMacroNetwork", "SearchLayer",
           "FixedLayer", "ConvBranch", "PoolBranch", "FactorizedReduction", "LayerOptions",
           "pool_layers", "layer_labels", "live_nodes", "check_decision", "search_branch", "final_op",
           "initialize_weights", "truncated_normal_"]
