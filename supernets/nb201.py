"""The NAS-Bench-201 search space (registered as ``"nb201"``).

Paper: Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search", ICLR 2020 (arXiv 2001.00326).
Ref impl: D-X-Y/AutoDL-Projects@f46486e ``xautodl/models/cell_operations.py`` (ops,
``ResNetBasicblock``), ``cell_searchs/search_cells.py`` (``NAS201SearchCell``),
``cell_searchs/search_model_darts.py`` (``TinyNetworkDarts``: the search macro skeleton),
``cell_infers/cells.py`` (``InferCell``), ``cell_infers/tiny_network.py`` (``TinyNetwork``) and
``exps/NAS-Bench-201/main.py::generate_meta_info`` (benchmark index order).

A cell is a 4-node DAG: node 0 is the cell input, node i = sum over j < i of op_{i<-j}(node j),
the cell output is node 3. Each of the 6 edges picks one of 5 ops, so the space holds
5^6 = 15,625 cells; one cell is repeated in all 15 cell positions of the network.
"""
from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ops.candidates import ReLUConvBN, build_candidate, drop_path
from ops.mixed import Decision, MixedOp, PartialChannelMixedOp
from supernets.registry import register
from supernets.base import Arch, SearchSpace, Supernet, check_edge_weights
from supernets.labels import edge_label, split_edge

# Candidate ops in the reference order (cell_operations.NAS_BENCH_201): the order of the columns
# of alpha and of the op digits in the benchmark index.
PRIMITIVES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

# Edge labels "i<-j" (edge from node j to node i): xautodl's sorted edge keys, which are also the
# rows of alpha (search_cells.NAS201SearchCell.edge_keys) and the digit order of the benchmark index.
EDGES: tuple[str, ...] = ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")

NUM_NODES = 4  # max_nodes = 4 in every NB201 config (node 0 = input, node 3 = output)
NUM_ARCHS = len(PRIMITIVES) ** len(EDGES)  # 15,625
INDEX_SEED = 88  # generate_meta_info: random.seed(88); random.shuffle(all_archs)

_EDGE_NODES: tuple[tuple[int, int], ...] = tuple(
    (int(node), source) for node, source in map(split_edge, EDGES))
_OP_INDEX = {name: k for k, name in enumerate(PRIMITIVES)}
_FORMAT_HELP = ("expected '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' (node 1 reads node 0, node 2 "
                "reads nodes 0 and 1, node 3 reads nodes 0, 1 and 2)")


def _node_inputs(items: Sequence[Any]) -> list[list[tuple[Any, int]]]:
    """Group per-edge ``items`` (in EDGES order) by target node: [[(item, source), ...] per node 1..3]."""
    grouped: list[list[tuple[Any, int]]] = [[] for _ in range(NUM_NODES - 1)]
    for item, (target, source) in zip(items, _EDGE_NODES):
        grouped[target - 1].append((item, source))
    return grouped


def _disable_running_stats(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by one without running statistics.

    The shared op registry builds BNs with running stats; xautodl's search cells take
    ``track_running_stats`` as an argument (the scripts' ``--track_running_stats 0/1``), so the
    search supernet rebuilds its cell BNs when it is off. A fresh BN has the same (default) init.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(child.num_features, eps=child.eps,
                                                 momentum=child.momentum, affine=child.affine,
                                                 track_running_stats=False))
        else:
            _disable_running_stats(child)


# ---------------------------------------------------------------------------------------------
# Blocks


class ResNetBasicblock(nn.Module):
    """The reduction block between the three stages (xautodl ``ResNetBasicblock``, stride 2).

    ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3) plus a shortcut AvgPool2d(2, 2) -> Conv1x1 (no
    BN, no bias). The reference builds it with its default ``affine=True`` and running stats in
    both the search and the stand-alone network; convs are bias-free (``bias = not affine``).
    """

    def __init__(self, C_in: int, C_out: int, stride: int = 2):
        super().__init__()
        if stride != 2:
            raise ValueError(f"the NB201 reduction block has stride 2, got {stride}")
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine=True, bias=False)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine=True, bias=False)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False),
        )
        self.in_channels, self.out_channels = C_in, C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201SearchCell(nn.Module):
    """All 6 edges as :class:`MixedOp` over :data:`PRIMITIVES` (xautodl ``NAS201SearchCell``).

    ``forward(x, decisions)`` takes one decision per edge, in :data:`EDGES` order. With
    ``partial_channels`` K > 1 the edges are PC-DARTS :class:`PartialChannelMixedOp` edges, whose
    ops have C/K channels.
    """

    def __init__(self, C: int, affine: bool = False, track_running_stats: bool = True,
                 partial_channels: int = 1):
        super().__init__()
        self.edges = nn.ModuleDict({
            label: (MixedOp(PRIMITIVES, C, 1, affine) if partial_channels == 1
                    else PartialChannelMixedOp(PRIMITIVES, C, 1, affine, partial_channels=partial_channels))
            for label in EDGES})
        if not track_running_stats:
            _disable_running_stats(self)
        # Per target node: ((edge position, label), source node). Ops are looked up by label at
        # run time, so an edge module swapped in later (e.g. a partial-channel edge) is used.
        self._node_inputs = _node_inputs(list(enumerate(EDGES)))

    def forward(self, x: torch.Tensor, decisions: Sequence[Decision], drop_prob: float = 0.0,
                auxiliary_weight: float = 0.0) -> torch.Tensor:
        nodes = [x]
        edges = self.edges
        drop = self.training and drop_prob > 0.0
        for inputs in self._node_inputs:
            out = None
            for (e, label), source in inputs:
                y = edges[label](nodes[source], decisions[e])
                if auxiliary_weight:  # DARTS-: beta * x outside the softmax (every edge has stride 1)
                    y = y + auxiliary_weight * nodes[source]
                if drop:  # R-DARTS / SNAS: drop path on every edge's output
                    y = drop_path(y, drop_prob)
                out = y if out is None else out + y
            nodes.append(out)
        return nodes[-1]


class NB201InferCell(nn.Module):
    """The stand-alone cell of one arch (xautodl ``InferCell``).

    Edges whose op is ``none`` are not built: they add zeros, and ``Zero`` has no parameters
    and no FLOPs, so outputs, parameter counts and FLOPs equal the reference's. A node whose
    inputs are all ``none`` is zeros, as the reference's sum of ``x.mul(0.)`` terms.
    """

    def __init__(self, arch: Arch, C: int):
        super().__init__()
        self.layers = nn.ModuleDict()
        for label in EDGES:
            name = PRIMITIVES[arch[label]]
            if name != "none":
                # affine BN with running stats, conv bias = not affine = False (InferCell defaults).
                self.layers[label] = build_candidate(name, C, 1, affine=True)
        # Per target node: (label, source node) of its built (non-``none``) edges.
        self._node_inputs = [[(label, source) for label, source in inputs if label in self.layers]
                             for inputs in _node_inputs(EDGES)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        layers = self.layers
        for inputs in self._node_inputs:
            if not inputs:
                nodes.append(torch.zeros_like(x))
                continue
            out = None
            for label, source in inputs:
                y = layers[label](nodes[source])
                out = y if out is None else out + y
            nodes.append(out)
        return nodes[-1]


def _stage_layout(C: int, N: int) -> list[tuple[int, bool]]:
    """(channels, is_reduction) per position: N cells at C, ResNet block, N at 2C, block, N at 4C
    (``layer_channels`` / ``layer_reductions`` in TinyNetwork and TinyNetworkDarts)."""
    return ([(C, False)] * N + [(2 * C, True)] + [(2 * C, False)] * N + [(4 * C, True)]
            + [(4 * C, False)] * N)


# ---------------------------------------------------------------------------------------------
# Supernet


class NB201Supernet(Supernet):
    """The NB201 weight-sharing supernet (xautodl ``TinyNetworkDarts`` without its alphas).

    Stem Conv3x3 + BN, N search cells at C, ResNet block to 2C, N cells, ResNet block to 4C, N
    cells, then BN + ReLU, global average pooling and a linear classifier. All 15 search cells
    share the 6 edge labels, so one decision per label drives every cell.

    Args:
        num_classes: classifier outputs.
        C: channels of the first stage (16 in NB201).
        N: search cells per stage (5 in NB201).
        affine: affine BN in the cells (False in every NB201 search script).
        track_running_stats: running statistics in the cells' BNs (the scripts' BN flag).
        in_channels: image channels.
        partial_channels: K of PC-DARTS partial channel connections (1: every channel searched).
        auxiliary_skip: DARTS-'s auxiliary skip on every edge, weighted by the attribute
            ``auxiliary_skip_weight`` (an identity: NB201's edges all have stride 1).

    The attributes ``edge_drop_path_prob`` and ``auxiliary_skip_weight`` are set by algorithms
    between steps (0 = off), as on the DARTS supernet.
    """

    def __init__(self, num_classes: int = 10, C: int = 16, N: int = 5, affine: bool = False,
                 track_running_stats: bool = True, in_channels: int = 3, partial_channels: int = 1,
                 auxiliary_skip: bool = False):
        super().__init__()
        self.edge_drop_path_prob = 0.0
        self.auxiliary_skip_weight = 1.0 if auxiliary_skip else 0.0
        self.choices = {label: PRIMITIVES for label in EDGES}
        # Stem, ResNet blocks and lastact use default BNs (affine, running stats) in the reference.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        cells = []
        for channels, reduction in _stage_layout(C, N):
            cells.append(ResNetBasicblock(channels // 2, channels, 2) if reduction
                         else NB201SearchCell(channels, affine, track_running_stats, partial_channels))
        self.cells = nn.ModuleList(cells)
        channels = 4 * C
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self._is_search_cell = tuple(isinstance(cell, NB201SearchCell) for cell in self.cells)

    def forward(self, x: torch.Tensor, decisions: Mapping[str, Decision]) -> torch.Tensor:
        """Logits; ``decisions`` maps every label of :attr:`edges` to a decision."""
        if len(decisions) != len(EDGES):
            self.check_decisions(decisions)
        try:
            per_edge = [decisions[label] for label in EDGES]
        except KeyError:
            self.check_decisions(decisions)
            raise
        feature = self.stem(x)
        for cell, searched in zip(self.cells, self._is_search_cell):
            feature = (cell(feature, per_edge, self.edge_drop_path_prob, self.auxiliary_skip_weight)
                       if searched else cell(feature))
        out = self.global_pooling(self.lastact(feature)).flatten(1)
        return self.classifier(out)


# ---------------------------------------------------------------------------------------------
# Stand-alone network


class NB201Network(nn.Module):
    """The benchmark's stand-alone network of one arch (xautodl ``TinyNetwork``); returns logits."""

    def __init__(self, arch: Arch, num_classes: int = 10, C: int = 16, N: int = 5,
                 in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        self.cells = nn.Sequential(*[
            ResNetBasicblock(channels // 2, channels, 2) if reduction else NB201InferCell(arch, channels)
            for channels, reduction in _stage_layout(C, N)])
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.global_pooling(self.lastact(self.cells(self.stem(x)))).flatten(1)
        return self.classifier(out)


# ---------------------------------------------------------------------------------------------
# Benchmark index order and notable archs


@functools.lru_cache(maxsize=1)
def _index_table() -> tuple[tuple[tuple[int, ...], ...], dict[tuple[int, ...], int]]:
    """(index -> op digits, op digits -> index), built once.

    generate_meta_info lists every cell with the edge digits in EDGES order and op digits in
    PRIMITIVES order, the last edge varying fastest, then shuffles with ``random.seed(88)``. A
    private ``random.Random(88)`` draws the same permutation without touching the global RNG.
    """
    cells = list(itertools.product(range(len(PRIMITIVES)), repeat=len(EDGES)))
    random.Random(INDEX_SEED).shuffle(cells)
    return tuple(cells), {cell: i for i, cell in enumerate(cells)}


# Benchmark indices checked against the NB201 CIFAR-10 table (reference/protocols-and-groundtruth.md, (e)).
NOTABLE_ARCHS: dict[str, int] = {
    "all_skip_darts_collapse": 1835,  # DARTS-V1/V2 result: 54.30 CIFAR-10 test
    "best_cifar10": 6111,  # best CIFAR-10 valid (91.61) and test (94.37, tied with 13714)
    "all_none": 1651,  # chance level
}


# ---------------------------------------------------------------------------------------------
# Registered space


@register
class NB201Space(SearchSpace):
    """NAS-Bench-201: 6 edges x 5 ops, C=16, N=5, with the exact benchmark index order.

    Example:
        >>> space = supernets.get("nb201")
        >>> space.index(space.parse("|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
        ...                         "|skip_connect~0|skip_connect~1|skip_connect~2|"))
        1835
    """

    name = "nb201"
    primitives = PRIMITIVES
    edge_labels = EDGES
    num_archs = NUM_ARCHS

    # --- encoding ---------------------------------------------------------------------------
    def check(self, arch: Arch) -> Arch:
        """Also check the labels and op indices, so a hand-made Arch fails early."""
        super().check(arch)
        if tuple(arch) != EDGES:
            raise ValueError(f"an nb201 arch has the labels {list(EDGES)} in this order, got {list(arch)}")
        for label in EDGES:
            op = arch[label]
            if not isinstance(op, int) or not 0 <= op < len(PRIMITIVES):
                raise ValueError(f"edge {label}: op index {op!r} is not in 0..{len(PRIMITIVES) - 1} "
                                 f"({', '.join(PRIMITIVES)})")
        return arch

    def parse_string(self, text: str) -> Arch:
        """NB201 string (or an Arch JSON object) -> Arch.

        Raises:
            ValueError: naming the malformed part, the bad token and the accepted ops/format.
        """
        nodes = text.split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ValueError(f"NB201 string {text!r} has {len(nodes)} node(s) separated by '+', "
                             f"not {NUM_NODES - 1}; {_FORMAT_HELP}")
        choices: dict[str, int] = {}
        for target, node in enumerate(nodes, start=1):
            if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
                raise ValueError(f"node {target} {node!r} of {text!r} must be enclosed in '|'; "
                                 f"{_FORMAT_HELP}")
            tokens = node[1:-1].split("|")
            if len(tokens) != target:
                raise ValueError(f"node {target} {node!r} of {text!r} has {len(tokens)} input(s), "
                                 f"not {target}; {_FORMAT_HELP}")
            for token in tokens:
                op, sep, source = token.partition("~")
                if not sep or not source.isdigit():
                    raise ValueError(f"token {token!r} in node {target} of {text!r} is not "
                                     f"'op~input'; {_FORMAT_HELP}")
                if op not in _OP_INDEX:
                    raise ValueError(f"unknown op {op!r} in token {token!r} of {text!r}; "
                                     f"accepted ops: {', '.join(PRIMITIVES)}")
                label = edge_label(target, int(source))
                if int(source) >= target:
                    raise ValueError(f"token {token!r}: node {target} can only read nodes "
                                     f"0..{target - 1}; {_FORMAT_HELP}")
                if label in choices:
                    raise ValueError(f"token {token!r}: node {target} reads node {int(source)} "
                                     f"twice in {text!r}; {_FORMAT_HELP}")
                choices[label] = _OP_INDEX[op]
        return Arch(self.name, {label: choices[label] for label in EDGES})

    def format(self, arch: Arch) -> str:
        """Arch -> ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        self.check(arch)
        nodes = ["|" + "|".join(f"{PRIMITIVES[arch[label]]}~{source}" for label, source in inputs) + "|"
                 for inputs in _node_inputs(EDGES)]
        return "+".join(nodes)

    # --- benchmark index --------------------------------------------------------------------
    def index(self, arch: Arch) -> int:
        """NAS-Bench-201 / NATS-Bench TSS benchmark index of ``arch``."""
        self.check(arch)
        return _index_table()[1][tuple(arch[label] for label in EDGES)]

    def from_index(self, index: int) -> Arch:
        """The arch at benchmark ``index``; IndexError outside 0..15624."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_ARCHS:
            raise IndexError(f"NB201 benchmark index {index!r} out of range 0..{NUM_ARCHS - 1}")
        return Arch(self.name, zip(EDGES, _index_table()[0][index]))

    def enumerate(self) -> Iterator[Arch]:
        """All 15,625 archs in benchmark index order."""
        for digits in _index_table()[0]:
            yield Arch(self.name, zip(EDGES, digits))

    def isomorphism_key(self, arch: Arch) -> str:
        """One string per class of cells that compute the same function (6,466 classes).

        NAS-Bench-201's rule (xautodl ``CellStructure.to_unique_str(consider_zero=True)``): a
        node is the sorted sum of its inputs; ``skip_connect`` passes its input's expression on,
        ``none`` (or an input that is already zero) contributes zero, any other op wraps it.
        Rank studies average ground truth over a class ("de-isomorphism", aw_nas).
        """
        self.check(arch)
        expressions = {0: "0"}
        for node, inputs in enumerate(_node_inputs(EDGES), start=1):
            terms = []
            for label, source in inputs:
                op, expression = PRIMITIVES[arch[label]], expressions[source]
                if op == "none" or expression == "#":
                    terms.append("#")
                elif op == "skip_connect":
                    terms.append(expression)
                else:
                    terms.append(f"({expression})@{op}")
            expressions[node] = "+".join(sorted(terms))
        return expressions[len(expressions) - 1]

    # --- sampling and evolution -------------------------------------------------------------
    def sample(self, rng: random.Random | None = None) -> Arch:
        rng = rng or random.Random()
        return Arch(self.name, {label: rng.randrange(len(PRIMITIVES)) for label in EDGES})

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change the op of one uniformly chosen edge to one of the 4 other ops."""
        rng = rng or random.Random()
        self.check(arch)
        label = rng.choice(EDGES)
        new_op = rng.choice([k for k in range(len(PRIMITIVES)) if k != arch[label]])
        return Arch(self.name, {k: (new_op if k == label else arch[k]) for k in EDGES})

    # --- networks -----------------------------------------------------------------------------
    def build_supernet(self, num_classes: int = 10, C: int = 16, N: int = 5, affine: bool = False,
                       track_running_stats: bool = True, in_channels: int = 3,
                       partial_channels: int = 1, auxiliary_skip: bool = False) -> NB201Supernet:
        """The search network; ``partial_channels`` K > 1 gives PC-DARTS edges (K must divide C);
        ``auxiliary_skip`` DARTS-'s."""
        return NB201Supernet(num_classes, C, N, affine, track_running_stats, in_channels,
                             partial_channels, auxiliary_skip)

    def build_network(self, arch: Arch, num_classes: int = 10, C: int = 16, N: int = 5,
                      in_channels: int = 3) -> NB201Network:
        return NB201Network(self.check(arch), num_classes, C, N, in_channels)

    def costs(self, archs: Iterable[Arch], num_classes: int = 10,
              input_size: tuple[int, ...] = (1, 3, 32, 32), **options: Any) -> Iterator[dict[str, float]]:
        """Costs of many archs from 25 measured networks instead of one network each.

        A cell's parameters and FLOPs are the sums over its edges (the resolution of a stage is
        fixed), so cost(arch) = cost(all-none) + the measured increment of each edge's op. The
        tests check this against full builds; the whole space takes seconds instead of minutes.
        """
        empty = {label: 0 for label in EDGES}
        base = self.cost(Arch(self.name, empty), num_classes, input_size, **options)
        increment = {}
        for label in EDGES:
            for op in range(1, len(PRIMITIVES)):
                single = self.cost(Arch(self.name, {**empty, label: op}), num_classes, input_size, **options)
                increment[label, op] = {key: single[key] - base[key] for key in base}
        for arch in archs:
            self.check(arch)
            total = dict(base)
            for label in EDGES:
                if arch[label]:
                    for key, value in increment[label, arch[label]].items():
                        total[key] += value
            yield total

    def decisions(self, arch: Arch) -> dict[str, int]:
        self.check(arch)
        return {label: arch[label] for label in EDGES}

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """Argmax per edge over all 5 ops, ``none`` included (NB201 paper / xautodl ``genotype()``).

        Raises:
            KeyError: a label is missing or unknown (the message lists the expected labels).
            ValueError: a weight vector does not have 5 entries.
        """
        check_edge_weights(weights, EDGES, PRIMITIVES)
        choices = {}
        for label in EDGES:
            w = torch.as_tensor(weights[label])
            choices[label] = int(w.detach().argmax().item())
        return Arch(self.name, choices)


__all__ = ["EDGES", "PRIMITIVES", "NUM_ARCHS", "NOTABLE_ARCHS", "NB201Space", "NB201Supernet",
           "NB201Network", "NB201SearchCell", "NB201InferCell", "ResNetBasicblock"]
