"""The DARTS CNN search space: supernet, stand-alone CIFAR and ImageNet networks, genotypes.

Paper: "DARTS: Differentiable Architecture Search", Liu, Simonyan, Yang, ICLR 2019.
Ref impl: quark0/darts@f276dd3 ``cnn/genotypes.py`` (primitives, published genotypes),
``cnn/model_search.py`` (``Cell``, ``Network``, ``Network.genotype``: the supernet and the
discretization rule) and ``cnn/model.py`` (``Cell``, ``NetworkCIFAR``, ``AuxiliaryHeadCIFAR``, ``NetworkImageNet``,
``AuxiliaryHeadImageNet``),
``cnn/utils.py`` (``drop_path``). PC-DARTS' genotype: yuhuixu1993/PC-DARTS@b74702f
``genotypes.py``; GDAS' DARTS-space genotype: D-X-Y/AutoDL-Projects@94a149b
``xautodl/nas_infer_model/DXYs/genotypes.py``.

A cell has two inputs (0 = s_{k-2}, 1 = s_{k-1}) and four intermediate nodes 2..5; node i reads
every earlier state j < i through one edge. Supernet edge labels are ``"{cell_type}/{i}<-{j}"``
(14 normal then 14 reduce, node by node, inputs in order: the DARTS alpha row order). An
:class:`~supernets.base.Arch` of this space is node-based so that a genotype round-trips exactly:
label ``"{cell_type}/{i}"`` -> ``((op_index, input), (op_index, input))`` in genotype order.

GDAS's NASNet-space search network (D-X-Y/AutoDL-Projects ``xautodl/models/cell_searchs/``
``search_model_gdas_nasnet.py`` ``NASNetworkGDAS``, ``search_cells.py`` ``NASNetSearchCell``,
``xautodl/models/cell_operations.py`` ``POOLING``) differs from DARTS's in two construction details,
both supernet options here with DARTS's behaviour as the default: no BN after the pooling ops
(``bn_after_pool=False``) and a BN + ReLU before the global pooling (``last_activation=True``).
Its genotype rule (``NASNetworkGDAS.genotype``) is :meth:`DartsSpace.discretize_pairs`.
"""
from __future__ import annotations

import ast
import random
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from ops.candidates import FactorizedReduce, Identity, ReLUConvBN, build_candidate, drop_path
from ops.mixed import MixedOp, PartialChannelMixedOp, SampledPath
from supernets.registry import register
from supernets.base import Arch, SearchSpace, Supernet, check_edge_weights
from supernets.labels import cell_of, edge_label, node_index, node_of

# genotypes.PRIMITIVES, in index order (the column order of alphas_normal / alphas_reduce).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
NONE_INDEX = PRIMITIVES.index("none")
CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
STEPS = 4  # model_search.py Network(steps=4): intermediate nodes 2..5
NODES: tuple[int, ...] = tuple(range(2, 2 + STEPS))
CONCAT: list[int] = list(NODES)  # every published cell concatenates nodes [2, 3, 4, 5]

EdgeDecision = Union[torch.Tensor, int, SampledPath, None]
GenotypeEntry = tuple[str, int]


def edge_labels(steps: int = STEPS) -> list[str]:
    """Supernet edge labels in DARTS order: normal cell first, node by node, inputs in order."""
    return [edge_label(f"{cell_type}/{i}", j) for cell_type in CELL_TYPES
            for i in range(2, 2 + steps) for j in range(i)]


def node_labels() -> list[str]:
    """Arch labels: one per intermediate node, normal cell first."""
    return [f"{cell_type}/{i}" for cell_type in CELL_TYPES for i in NODES]


EDGE_LABELS: tuple[str, ...] = tuple(edge_labels())
NODE_LABELS: tuple[str, ...] = tuple(node_labels())


def check_edge_candidates(edge_candidates: Mapping[str, Sequence[Sequence[str]]] | None, steps: int = STEPS
                          ) -> dict[str, list[list[str]]] | None:
    """``{"normal": [[op, ...] per edge], "reduce": [...]}`` checked: every edge of both cell types,
    known ops in PRIMITIVES order, none empty."""
    if edge_candidates is None:
        return None
    edges = sum(range(2, 2 + steps))
    if set(edge_candidates) != set(CELL_TYPES):
        raise ValueError(f"edge_candidates needs the cell types {list(CELL_TYPES)}, got {sorted(edge_candidates)}")
    checked = {}
    for cell_type in CELL_TYPES:
        lists = [list(ops) for ops in edge_candidates[cell_type]]
        if len(lists) != edges:
            raise ValueError(f"edge_candidates[{cell_type!r}] has {len(lists)} edges; a cell of {steps} "
                             f"nodes has {edges}")
        for k, ops in enumerate(lists):
            unknown = [op for op in ops if op not in PRIMITIVES]
            if unknown or not ops or ops != sorted(set(ops), key=PRIMITIVES.index):
                raise ValueError(f"edge_candidates[{cell_type!r}][{k}] = {ops}: give distinct ops of "
                                 f"{', '.join(PRIMITIVES)}, in that order, at least one")
        checked[cell_type] = lists
    return checked


def candidates_per_label(edge_candidates: Mapping[str, Sequence[Sequence[str]]] | None, steps: int = STEPS
                         ) -> dict[str, tuple[str, ...]]:
    """Edge label -> its candidates: ``edge_candidates[cell_type][k]`` for the k-th edge of the cell,
    every op of PRIMITIVES where None."""
    labels = edge_labels(steps)
    per_cell = len(labels) // len(CELL_TYPES)
    return {label: PRIMITIVES if edge_candidates is None else tuple(edge_candidates[cell_of(label)][k % per_cell])
            for k, label in enumerate(labels)}


def candidates_per_cell(per_label: Mapping[str, Sequence[str]]) -> dict[str, list[list[str]]]:
    """The inverse of :func:`candidates_per_label`: ``{"normal": [[op, ...] per edge], "reduce": ...}``."""
    out: dict[str, list[list[str]]] = {cell_type: [] for cell_type in CELL_TYPES}
    for label, ops in per_label.items():
        out[cell_of(label)].append(list(ops))
    return out


# ---------------------------------------------------------------------------------------------
# Supernet (model_search.py)


class SearchCell(nn.Module):
    """A DARTS search cell: every intermediate node sums a MixedOp over all earlier states.

    The edges are kept as one flat ModuleList in label order, with a parallel tuple of
    ``(label, input index, closes node)`` so the forward is a single loop without lookups.
    With ``partial_channels`` K > 1 the edges are PC-DARTS :class:`PartialChannelMixedOp`
    (ops and the BN after pooling built with C/K channels, as PC-DARTS model_search.py).
    ``bn_after_pool=False`` leaves the pooling ops bare (xautodl ``cell_operations.POOLING``).
    """

    def __init__(self, cell_type: str, steps: int, multiplier: int, C_prev_prev: int, C_prev: int,
                 C: int, reduction: bool, reduction_prev: bool, affine: bool = False,
                 partial_channels: int = 1, bn_after_pool: bool = True, auxiliary_skip: bool = False,
                 edge_candidates: Sequence[Sequence[str]] | None = None, skip_dropout: bool = False):
        super().__init__()
        self.cell_type = cell_type
        self.reduction = reduction
        self.multiplier = multiplier
        # model_search.py Cell: FactorizedReduce after a reduction cell, else a 1x1 ReLUConvBN.
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        mixed_ops, auxiliary_ops, meta = [], [], []
        for i in range(2, 2 + steps):
            for j in range(i):
                stride = 2 if reduction and j < 2 else 1  # only the cell inputs are strided
                candidates = PRIMITIVES if edge_candidates is None else tuple(edge_candidates[len(meta)])
                # DARTS- model_search.py MixedOp: its own FactorizedReduce on strided edges
                auxiliary_ops.append(FactorizedReduce(C, C, affine=False) if stride == 2 else Identity())
                mixed_ops.append(
                    MixedOp(candidates, C, stride, affine=affine, bn_after_pool=bn_after_pool)
                    if partial_channels == 1 else
                    PartialChannelMixedOp(candidates, C, stride, affine=affine,
                                          bn_after_pool=bn_after_pool,
                                          partial_channels=partial_channels))
                if skip_dropout and stride == 1 and "skip_connect" in candidates:
                    # P-DARTS model_search.py MixedOp: nn.Sequential(Identity, nn.Dropout(p))
                    ops = mixed_ops[-1].ops
                    k = candidates.index("skip_connect")
                    ops[k] = nn.Sequential(ops[k], nn.Dropout(0.0))
                meta.append((edge_label(f"{cell_type}/{i}", j), j, j == i - 1))
        self.mixed_ops = nn.ModuleList(mixed_ops)
        self.auxiliary_ops = nn.ModuleList(auxiliary_ops) if auxiliary_skip else None
        self.edge_meta: tuple[tuple[str, int, bool], ...] = tuple(meta)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, decisions: Mapping[str, EdgeDecision],
                drop_prob: float = 0.0, auxiliary_weight: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        node: torch.Tensor | None = None
        auxiliary = self.auxiliary_ops if self.auxiliary_ops is not None and auxiliary_weight else None
        drop = self.training and drop_prob > 0.0
        for k, (op, (label, j, closes_node)) in enumerate(zip(self.mixed_ops, self.edge_meta)):
            decision = decisions[label]
            if decision is not None:  # None: the edge is absent from a discrete genotype
                out = op(states[j], decision)
                if auxiliary is not None:  # DARTS-: beta * skip(x) outside the softmax
                    out = out + auxiliary_weight * auxiliary[k](states[j])
                if drop:  # R-DARTS / SNAS: drop path on every edge's output
                    out = drop_path(out, drop_prob)
                node = out if node is None else node + out
            if closes_node:
                if node is None:
                    raise ValueError(f"every edge into {node_of(label)} is None; a node needs "
                                     "at least one edge with a decision")
                states.append(node)
                node = None
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(Supernet):
    """The DARTS search network (model_search.py ``Network``).

    ``forward(x, decisions)`` takes one decision per edge label (a [8] weight tensor, an int,
    a SampledPath, or None for an absent edge); normal cells share the ``normal/...`` decisions
    and reduction cells the ``reduce/...`` ones, as DARTS shares alphas_normal / alphas_reduce.
    ``partial_channels`` K > 1 builds PC-DARTS partial-channel edges (K must divide C).

    ``bn_after_pool`` (default True, DARTS model_search.py ``MixedOp``) follows every pooling
    candidate by a non-affine BN; GDAS's NASNet search cell has none (xautodl
    ``cell_operations.POOLING``). ``last_activation`` (default False, DARTS) adds xautodl
    ``NASNetworkGDAS.lastact``, an affine BN + ReLU on the last cell's output before the global
    pooling. The defaults leave DARTS's parameters and state dict keys unchanged.

    ``edge_candidates`` (P-DARTS's switches) gives each edge its own candidates:
    ``{"normal": [[op, ...] x 14], "reduce": [...]}`` in PRIMITIVES order, so ``choices[label]``
    is that edge's tuple and a dense decision has one weight per candidate of the edge.
    ``skip_dropout`` follows every stride-1 ``skip_connect`` by a dropout whose rate
    :meth:`set_skip_dropout` sets (P-DARTS).

    Two attributes that algorithms set between steps, read at every forward (0 = off):
    ``edge_drop_path_prob`` drops whole samples of every edge's output in training (R-DARTS's
    ScheduledDropPath, SNAS's search drop path), and ``auxiliary_skip_weight`` is DARTS-'s beta,
    the weight of the auxiliary skip that ``auxiliary_skip=True`` adds to every edge outside the
    softmax (an identity; on strided edges its own affine-free FactorizedReduce, as DARTS-'s
    ``MixedOp.auxiliary_op``).
    """

    def __init__(self, num_classes: int = 10, C: int = 16, layers: int = 8, steps: int = 4,
                 multiplier: int = 4, stem_multiplier: int = 3, affine: bool = False,
                 in_channels: int = 3, partial_channels: int = 1, bn_after_pool: bool = True,
                 last_activation: bool = False, auxiliary_skip: bool = False,
                 edge_candidates: Mapping[str, Sequence[Sequence[str]]] | None = None,
                 skip_dropout: bool = False):
        super().__init__()
        self.edge_drop_path_prob = 0.0
        self.auxiliary_skip_weight = 1.0 if auxiliary_skip else 0.0
        candidates = check_edge_candidates(edge_candidates, steps)
        self.choices: dict[str, tuple[str, ...]] = candidates_per_label(candidates, steps)
        self.steps, self.multiplier = steps, multiplier
        C_curr = stem_multiplier * C
        # The stem BN is the only affine BN of the search network (model_search.py Network).
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)  # channels double at reductions
            if reduction:
                C_curr *= 2
            cells.append(SearchCell("reduce" if reduction else "normal", steps, multiplier,
                                    C_prev_prev, C_prev, C_curr, reduction, reduction_prev, affine,
                                    partial_channels, bn_after_pool, auxiliary_skip,
                                    None if candidates is None else candidates["reduce" if reduction else "normal"],
                                    skip_dropout))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.cells = nn.ModuleList(cells)
        # NASNetworkGDAS.lastact: BatchNorm2d(C_prev) (affine, PyTorch's default) then ReLU
        self.lastact: nn.Module | None = (nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
                                          if last_activation else None)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def set_skip_dropout(self, p: float) -> None:
        """The rate of every skip dropout (``skip_dropout=True``)."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(p)

    def forward(self, x: torch.Tensor, decisions: Mapping[str, EdgeDecision]) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        try:
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1, decisions, self.edge_drop_path_prob, self.auxiliary_skip_weight)
        except KeyError:
            self.check_decisions(decisions)  # a KeyError naming the missing labels, if any
            raise
        if self.lastact is not None:
            s1 = self.lastact(s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


# ---------------------------------------------------------------------------------------------
# Stand-alone network (model.py)


def node_groups(genotype: Sequence[GenotypeEntry] | Sequence[Sequence[GenotypeEntry]]
                ) -> list[list[GenotypeEntry]]:
    """A cell's entries per intermediate node: a flat DARTS list (two per node) is chunked."""
    entries = list(genotype)
    if entries and isinstance(entries[0], (list, tuple)) and len(entries[0]) == 2 and isinstance(entries[0][0], str):
        return [list(entries[k:k + 2]) for k in range(0, len(entries), 2)]
    return [list(node) for node in entries]


class Cell(nn.Module):
    """A discrete cell built from a genotype, with affine BN.

    ``sparse=False``: DARTS's cell (model.py ``Cell``): two entries per node, nodes 2..5
    concatenated, drop path on every op output except :class:`~ops.candidates.Identity`.
    ``sparse=True``: FairDARTS's cell (xiaomi-automl/FairDARTS ``fairdarts/model.py``
    ``DCOCell``): a node holds 0 to 2 entries; only nodes with an entry exist and are
    concatenated (so the cell outputs ``multiplier = len(nodes) * C`` channels); an entry reading
    a node that does not exist is skipped; drop path applies once per node to its sum, Identity
    included.
    """

    def __init__(self, genotype: Sequence[GenotypeEntry] | Sequence[Sequence[GenotypeEntry]],
                 C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 concat: Sequence[int] = CONCAT, sparse: bool = False):
        super().__init__()
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.reduction, self.sparse = reduction, sparse
        nodes = node_groups(genotype)
        built = {0, 1} | {2 + n for n, node in enumerate(nodes) if node}
        self.concat = tuple(2 + n for n, node in enumerate(nodes) if node) if sparse else tuple(concat)
        self.multiplier = len(self.concat)
        if not self.multiplier:
            raise ValueError("the cell keeps no node (every node lost its inputs at the threshold); "
                             "it has no output to build a network from")
        ops, meta = [], []  # meta: (node, input, droppable, closes the node)
        for n, node in enumerate(nodes):
            live = [(name, j) for name, j in node if j in built] if sparse else node
            if not live and (node or not sparse):
                raise ValueError(f"node {2 + n} has no input it can read ({node}): a DARTS cell needs "
                                 "entries for every node; a FairDARTS cell an entry from a node that exists")
            for k, (name, j) in enumerate(live):
                op = build_candidate(name, C, 2 if reduction and j < 2 else 1, True)
                ops.append(op)
                meta.append((2 + n, j, not isinstance(op, Identity), k == len(live) - 1))
        self.ops = nn.ModuleList(ops)
        self.op_meta: tuple[tuple[int, int, bool, bool], ...] = tuple(meta)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        use_drop = self.training and drop_prob > 0.0
        for op, (node, j, droppable, closes_node) in zip(self.ops, self.op_meta):
            out = op(states[j])
            if use_drop and droppable and not self.sparse:
                out = drop_path(out, drop_prob)
            states[node] = out if node not in states else states[node] + out
            if closes_node and use_drop and self.sparse:  # DCOCell: once per node, on its sum
                states[node] = drop_path(states[node], drop_prob)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier of DARTS's evaluation networks (model.py ``AuxiliaryHead*``): ReLU,
    5x5 average pool, 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, [BN,] ReLU, linear.

    The two published heads differ only in the pool stride and the BN after the 2x2 conv.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, bn_after_conv: bool):
        super().__init__()
        layers = [nn.ReLU(inplace=True),
                  nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
                  nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
                  nn.Conv2d(128, 768, 2, bias=False)]
        if bn_after_conv:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadCIFAR(AuxiliaryHead):
    """On the 8x8 output of cell 2*layers//3 (model.py, weight 0.4 in train.py): 5x5/3 pool to 2x2."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=3, bn_after_conv=True)


def stack_cells(genotype: Mapping[str, Sequence[Any]], C: int, layers: int, C_prev_prev: int,
                C_prev: int, reduction_prev: bool, aux_position: int, sparse: bool = False
                ) -> tuple[nn.ModuleList, int, int]:
    """The cells of an evaluation network (model.py ``NetworkCIFAR``/``NetworkImageNet``):
    reductions at layers//3 and 2*layers//3 double the channels; ``sparse`` builds FairDARTS's
    cells (:class:`Cell`). Returns the cells, the output channels of the last cell and of cell
    ``aux_position`` (the auxiliary head's input)."""
    cells, C_curr, C_aux = [], C, C_prev
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cell = Cell(genotype["reduce" if reduction else "normal"], C_prev_prev, C_prev, C_curr,
                    reduction, reduction_prev, sparse=sparse)
        cells.append(cell)
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        if i == aux_position:
            C_aux = C_prev
    return nn.ModuleList(cells), C_prev, C_aux


def run_cells(network: nn.Module, s0: torch.Tensor, s1: torch.Tensor
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cells, pooling and classifier of an evaluation network; (logits, aux logits) when training
    with an auxiliary head."""
    with_aux = network.auxiliary and network.training
    logits_aux = None
    for i, cell in enumerate(network.cells):
        s0, s1 = s1, cell(s0, s1, network.drop_path_prob)
        if with_aux and i == network.aux_position:
            logits_aux = network.auxiliary_head(s1)
    logits = network.classifier(network.global_pooling(s1).flatten(1))
    return (logits, logits_aux) if with_aux else logits


class NetworkCIFAR(nn.Module):
    """The DARTS evaluation network (model.py ``NetworkCIFAR``): C=36, 20 cells for CIFAR-10.

    ``drop_path_prob`` is a public attribute read at every forward; the retraining loop ramps
    it per epoch (train.py: 0.2 * epoch / epochs). ``forward`` returns logits, or
    ``(logits, aux_logits)`` when the auxiliary head exists and the module is training.
    """

    def __init__(self, genotype: Mapping[str, Sequence[Any]], num_classes: int = 10,
                 C: int = 36, layers: int = 20, auxiliary: bool = False,
                 drop_path_prob: float = 0.0, in_channels: int = 3, stem_multiplier: int = 3,
                 sparse: bool = False):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.auxiliary = auxiliary
        self.aux_position = 2 * layers // 3
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        self.cells, C_prev, C_aux = stack_cells(genotype, C, layers, C_curr, C_curr, reduction_prev=False,
                                                aux_position=self.aux_position, sparse=sparse)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        return run_cells(self, s0, s1)


class AuxiliaryHeadImageNet(AuxiliaryHead):
    """Auxiliary classifier on the output of cell 2*layers//3 (model.py ``AuxiliaryHeadImageNet``).

    model.py's docstring says "assuming input size 14x14", but cell 2*layers//3 is the second
    reduction cell, so at 224x224 the head sees 7x7 (5x5/2 pool -> 2x2, 2x2 conv -> 1x1), as the
    CIFAR head sees 8x8. As in DARTS, the BatchNorm after the 2x2 conv is left out: model.py
    comments it out "for consistency with the experiments in the paper".
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=2, bn_after_conv=False)


class NetworkImageNet(nn.Module):
    """The DARTS ImageNet mobile network (model.py ``NetworkImageNet``): C=48, 14 cells, 224x224.

    Two strided stems reduce 224 -> 28 (stem0: 3x3/2 conv to C/2, BN, ReLU, 3x3/2 conv to C, BN;
    stem1: ReLU, 3x3/2 conv, BN), so the first cell's s_{k-2} (stem0, 56x56) is twice the size
    of its s_{k-1} (stem1, 28x28) and gets a FactorizedReduce (``reduction_prev=True``). After
    the two reduction cells the map is 7x7 and AvgPool2d(7) pools it, so the input must be 224
    (as in DARTS). ``drop_path_prob`` and ``forward`` behave as in :class:`NetworkCIFAR`.
    """

    def __init__(self, genotype: Mapping[str, Sequence[Any]], num_classes: int = 1000,
                 C: int = 48, layers: int = 14, auxiliary: bool = False,
                 drop_path_prob: float = 0.0, in_channels: int = 3, sparse: bool = False):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.auxiliary = auxiliary
        self.aux_position = 2 * layers // 3
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # reduction_prev: stem0's output is twice stem1's resolution, so cell 0 reduces its s0
        self.cells, C_prev, C_aux = stack_cells(genotype, C, layers, C, C, reduction_prev=True,
                                                aux_position=self.aux_position, sparse=sparse)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = nn.AvgPool2d(7)  # model.py: a fixed 7x7 pool, not adaptive
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return run_cells(self, s0, self.stem1(s0))


NETWORKS: dict[str, type[nn.Module]] = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet}


# ---------------------------------------------------------------------------------------------
# Published genotypes (two (op, input) entries per node, nodes 2..5, concat [2, 3, 4, 5]; FairDARTS's
# (op, to, from) entries, 0 to 2 per node)

_PUBLISHED: dict[str, dict[str, list[tuple[Any, ...]]]] = {
    # quark0/darts@f276dd3 cnn/genotypes.py DARTS_V1 (first order)
    "DARTS_V1": {
        "normal": [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                   ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                   ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    },
    # quark0/darts@f276dd3 cnn/genotypes.py DARTS_V2 (second order; DARTS = DARTS_V2)
    "DARTS_V2": {
        "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                   ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                   ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    },
    # yuhuixu1993/PC-DARTS@b74702f genotypes.py PC_DARTS_cifar
    "PC_DARTS": {
        "normal": [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                   ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        "reduce": [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                   ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    },
    # D-X-Y/AutoDL-Projects@94a149b xautodl/nas_infer_model/DXYs/genotypes.py GDAS_V1 (written
    # there as one pair of entries per node; flattened here). Some third-party copies end the
    # reduce cell with ('sep_conv_5x5', 2) instead of 1; the official file has 1.
    "GDAS": {
        "normal": [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
                   ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)],
        "reduce": [("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
                   ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)],
    },

    # chenxin061/pdarts@b880e87 genotypes.py PDARTS
    "PDARTS": {
        "normal": [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                   ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        "reduce": [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                   ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    },
    # xiangning-chen/SmoothDARTS@d3dbfed sota/cnn/genotypes.py c10_s5_random (SDARTS-RS)
    "SDARTS_RS": {
        "normal": [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0),
                   ("sep_conv_3x3", 3), ("skip_connect", 1), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2)],
        "reduce": [("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                   ("dil_conv_5x5", 3), ("max_pool_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_5x5", 3)],
    },
    # xiangning-chen/SmoothDARTS@d3dbfed sota/cnn/genotypes.py c10_s5_pgd (SDARTS-ADV)
    "SDARTS_ADV": {
        "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
                   ("sep_conv_5x5", 0), ("dil_conv_3x3", 3), ("dil_conv_3x3", 4), ("skip_connect", 0)],
        "reduce": [("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                   ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 2), ("sep_conv_5x5", 4)],
    },
    # Meituan-AutoML/DARTS-@adb81a8 src/eval/genotypes.py cifar10_s0_best = cifar10_s0_0
    "DARTS_MINUS": {
        "normal": [("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2),
                   ("skip_connect", 1), ("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 0)],
        "reduce": [("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                   ("skip_connect", 2), ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 3)],
    },

    # xiangning-chen/DrNAS@f2caa4d DARTS-space/genotypes.py DrNAS_cifar10
    "DRNAS": {
        "normal": [("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
                   ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 3)],
        "reduce": [("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
                   ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("skip_connect", 4), ("sep_conv_5x5", 1)],
    },
    # xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py FairDARTS_a .. FairDARTS_g: entries are
    # (op, to, from); nodes without an entry are absent from the cell (fairdarts/model.py DCOCell)
    "FAIRDARTS_A": {
        "normal": [("sep_conv_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("max_pool_3x3", 4, 0), ("sep_conv_3x3", 5, 0)],
        "reduce": [("max_pool_3x3", 2, 0), ("avg_pool_3x3", 2, 1), ("avg_pool_3x3", 3, 0), ("dil_conv_5x5", 3, 1),
                   ("avg_pool_3x3", 4, 0), ("sep_conv_5x5", 4, 1), ("skip_connect", 5, 0), ("skip_connect", 5, 1)],
    },
    "FAIRDARTS_B": {
        "normal": [("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("sep_conv_3x3", 3, 1), ("dil_conv_3x3", 4, 0),
                   ("sep_conv_5x5", 4, 1), ("dil_conv_5x5", 5, 1)],
        "reduce": [("skip_connect", 2, 0), ("dil_conv_3x3", 2, 1), ("skip_connect", 3, 0), ("dil_conv_3x3", 3, 1),
                   ("max_pool_3x3", 4, 0), ("sep_conv_3x3", 4, 1), ("skip_connect", 5, 2), ("max_pool_3x3", 5, 0)],
    },
    "FAIRDARTS_C": {
        "normal": [("max_pool_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("dil_conv_3x3", 4, 0), ("dil_conv_5x5", 4, 2),
                   ("skip_connect", 5, 3), ("sep_conv_3x3", 5, 0)],
        "reduce": [("dil_conv_3x3", 2, 1), ("dil_conv_5x5", 2, 0), ("dil_conv_3x3", 3, 0), ("sep_conv_3x3", 3, 1),
                   ("sep_conv_5x5", 4, 0), ("sep_conv_5x5", 4, 3), ("sep_conv_5x5", 5, 0), ("skip_connect", 5, 1)],
    },
    "FAIRDARTS_D": {
        "normal": [("sep_conv_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("dil_conv_3x3", 3, 1), ("max_pool_3x3", 3, 0),
                   ("dil_conv_3x3", 4, 0), ("dil_conv_3x3", 4, 1), ("sep_conv_3x3", 5, 0), ("dil_conv_5x5", 5, 1)],
        "reduce": [("max_pool_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("avg_pool_3x3", 3, 0), ("dil_conv_5x5", 3, 2),
                   ("dil_conv_3x3", 4, 3), ("avg_pool_3x3", 4, 0), ("avg_pool_3x3", 5, 0), ("skip_connect", 5, 3)],
    },
    "FAIRDARTS_E": {
        "normal": [("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("dil_conv_3x3", 4, 1), ("dil_conv_3x3", 4, 2),
                   ("dil_conv_3x3", 5, 0), ("dil_conv_5x5", 5, 1)],
        "reduce": [("max_pool_3x3", 2, 1), ("max_pool_3x3", 2, 0), ("max_pool_3x3", 3, 1), ("max_pool_3x3", 3, 0),
                   ("sep_conv_5x5", 4, 1), ("max_pool_3x3", 4, 0), ("avg_pool_3x3", 5, 0), ("dil_conv_5x5", 5, 1)],
    },
    "FAIRDARTS_F": {
        "normal": [("max_pool_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("dil_conv_3x3", 3, 1), ("sep_conv_5x5", 4, 1),
                   ("sep_conv_3x3", 5, 0), ("sep_conv_3x3", 5, 1)],
        "reduce": [("max_pool_3x3", 2, 0), ("max_pool_3x3", 2, 1), ("max_pool_3x3", 3, 0), ("dil_conv_3x3", 3, 1),
                   ("dil_conv_3x3", 4, 2), ("max_pool_3x3", 4, 0), ("max_pool_3x3", 5, 0), ("sep_conv_3x3", 5, 1)],
    },
    "FAIRDARTS_G": {
        "normal": [("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("skip_connect", 4, 3), ("sep_conv_5x5", 4, 1),
                   ("dil_conv_3x3", 5, 0), ("sep_conv_3x3", 5, 1)],
        "reduce": [("avg_pool_3x3", 2, 1), ("skip_connect", 2, 0), ("skip_connect", 3, 2), ("max_pool_3x3", 3, 1),
                   ("sep_conv_5x5", 4, 3), ("max_pool_3x3", 4, 0), ("dil_conv_3x3", 5, 1), ("dil_conv_3x3", 5, 4)],
    },
}

# Reported CIFAR-10 test error (%) and params (millions, auxiliary head excluded); ``params`` is
# the exact count of ``build_network(arch)`` at C=36, 20 cells, auxiliary excluded, as measured.
GENOTYPE_META: dict[str, dict[str, Any]] = {
    "DARTS_V1": {"test_error": 3.00, "test_error_std": 0.14, "params_m": 3.3, "params": 3_169_414,
                 "source": "quark0/darts@f276dd3 cnn/genotypes.py (DARTS_V1)",
                 # Its normal cell is 5 sep_conv_3x3 + 3 skips, DARTS_V2's 5 sep_conv_3x3 + 2 skips
                 # + 1 dil_conv_3x3: so it builds to 3.17M, not the paper's 3.3M.
                 "note": "error: DARTS paper Table 1 (with cutout); the paper's 3.3M does not match "
                         "the released genotype, which builds to 3.17M"},
    "DARTS_V2": {"test_error": 2.76, "test_error_std": 0.09, "params_m": 3.3, "params": 3_349_342,
                 "source": "quark0/darts@f276dd3 cnn/genotypes.py (DARTS_V2)",
                 "note": "error: README and paper Table 1, 10 runs with cutout"},
    "PC_DARTS": {"test_error": 2.57, "test_error_std": 0.07, "params_m": 3.6, "params": 3_634_678,
                 "source": "yuhuixu1993/PC-DARTS@b74702f genotypes.py (PC_DARTS_cifar)",
                 "note": "error and params: PC-DARTS README (std from the paper)"},
    "GDAS": {"test_error": 2.93, "test_error_std": None, "params_m": 3.4, "params": 3_368_782,
             "source": "D-X-Y/AutoDL-Projects@94a149b xautodl/nas_infer_model/DXYs/genotypes.py "
                       "(GDAS_V1)",
             "note": "error and params: GDAS paper (CVPR 2019), searched reduction cell; not "
                     "re-checked against the paper"},
    "PDARTS": {"test_error": 2.50, "test_error_std": None, "params_m": 3.4, "params": 3_433_798,
               "source": "chenxin061/pdarts@b880e87 genotypes.py (PDARTS)",
               "note": "error and params: P-DARTS paper, CIFAR-10; not re-checked against the paper"},
    "SDARTS_RS": {"test_error": 2.67, "test_error_std": 0.03, "params_m": 3.4, "params": 3_606_166,
                  "source": "xiangning-chen/SmoothDARTS@d3dbfed sota/cnn/genotypes.py (c10_s5_random)",
                  "note": "error and params as recalled from the SDARTS paper's table, not re-checked; "
                          "the released genotype builds to 3.61M"},
    "SDARTS_ADV": {"test_error": 2.61, "test_error_std": 0.02, "params_m": 3.3, "params": 3_344_806,
                   "source": "xiangning-chen/SmoothDARTS@d3dbfed sota/cnn/genotypes.py (c10_s5_pgd)",
                   "note": "error and params as recalled from the SDARTS paper's table, not re-checked"},
    "DARTS_MINUS": {"test_error": 2.59, "test_error_std": 0.08, "params_m": 3.5, "params": 3_454_318,
                    "source": "Meituan-AutoML/DARTS-@adb81a8 src/eval/genotypes.py (cifar10_s0_best)",
                    "note": "error and params as recalled from the DARTS- paper (S0, CIFAR-10), not "
                            "re-checked; the code's default --arch DARTS_MINUS_CIFAR10_S5_Best does not exist"},
    "DRNAS": {"test_error": 2.46, "test_error_std": 0.03, "params_m": 4.1, "params": 4_099_294,
              "source": "xiangning-chen/DrNAS@f2caa4d DARTS-space/genotypes.py (DrNAS_cifar10)",
              "note": "error and params: DrNAS README (auxiliary head excluded, utils.count_parameters_in_MB); "
                      "its evaluation network follows the pools by an affine-free BN (DARTS-space/operations.py), "
                      "which adds no parameters"},
    "FAIRDARTS_A": {"test_error": None, "test_error_std": None, "params_m": 2.83, "params": 2_360_782,
                     "params_with_auxiliary": 2_837_208,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_a)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
    "FAIRDARTS_B": {"test_error": None, "test_error_std": None, "params_m": 3.88, "params": 3_407_878,
                     "params_with_auxiliary": 3_884_304,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_b)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
    "FAIRDARTS_C": {"test_error": None, "test_error_std": None, "params_m": 2.59, "params": 2_598_814,
                     "params_with_auxiliary": 3_075_240,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_c)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop without the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
    "FAIRDARTS_D": {"test_error": None, "test_error_std": None, "params_m": 3.84, "params": 3_365_542,
                     "params_with_auxiliary": 3_841_968,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_d)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated; two inputs everywhere, so retrain it with cell: fairdarts for its per-node drop path"},
    "FAIRDARTS_E": {"test_error": None, "test_error_std": None, "params_m": 3.12, "params": 2_643_742,
                     "params_with_auxiliary": 3_120_168,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_e)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
    "FAIRDARTS_F": {"test_error": None, "test_error_std": None, "params_m": 3.62, "params": 3_151_054,
                     "params_with_auxiliary": 3_627_480,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_f)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
    "FAIRDARTS_G": {"test_error": None, "test_error_std": None, "params_m": 3.375, "params": 2_899_054,
                     "params_with_auxiliary": 3_375_480,
                     "source": "xiaomi-automl/FairDARTS@270cfc9 fairdarts/genotypes.py (FairDARTS_g)",
                     "note": "params: FairDARTS README/genotypes.py, counted by thop with the auxiliary head "
                             "(truncated from the count here); a FairDARTS cell: only nodes "
                             "with an input are concatenated"},
}


# ---------------------------------------------------------------------------------------------
# The registered space


def _literal(node: ast.AST, what: str) -> Any:
    """A literal value of the genotype text; ``range(a, b)`` is accepted (DARTS prints it)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords):
        bounds = [_literal(arg, what) for arg in node.args]
        if not 1 <= len(bounds) <= 3 or not all(isinstance(b, int) for b in bounds):
            raise ValueError(f"{what}: range() takes 1 to 3 ints, got {ast.unparse(node)!r}")
        return list(range(*bounds))
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise ValueError(f"{what} must be a literal value, got {ast.unparse(node)!r}") from err


@register
class DartsSpace(SearchSpace):
    """The DARTS CNN space: 8 ops, 14 edges per cell, normal and reduce cells.

    Example:
        >>> darts = supernets.get("darts")
        >>> arch = darts.genotypes["DARTS_V2"]
        >>> darts.parse(darts.format(arch)) == arch
        True
    """

    name = "darts"
    primitives = PRIMITIVES
    cell_types = CELL_TYPES

    def __init__(self) -> None:
        self.genotypes: dict[str, Arch] = {key: self._arch_from_lists(value, key)
                                           for key, value in _PUBLISHED.items()}
        self.genotype_meta = GENOTYPE_META

    # --- encoding ---------------------------------------------------------------------------
    def _arch_from_lists(self, cells: Mapping[str, Sequence[Any]], where: str = "genotype") -> Arch:
        """Validated cells -> Arch. A cell is DARTS's flat list of ``(op, input)`` entries, two per
        intermediate node; AutoDL's one pair of entries per node; or FairDARTS's ``(op, to, from)``
        entries, 0 to 2 per node (nodes without one are absent from FairDARTS's cell)."""
        choices: dict[str, Any] = {}
        for cell_type in CELL_TYPES:
            entries = list(cells[cell_type])
            # AutoDL writes one pair of entries per node: flatten it.
            if len(entries) == STEPS and all(isinstance(e, (list, tuple)) and len(e) == 2
                                             and all(isinstance(x, (list, tuple)) for x in e)
                                             for e in entries):
                entries = [x for e in entries for x in e]
            if all(isinstance(e, (list, tuple)) and len(e) == 3 for e in entries):  # [] too: no node kept
                nodes = self._fairdarts_nodes(entries, cell_type, where)
            else:
                if len(entries) != 2 * STEPS:
                    raise ValueError(f"{where}: {cell_type} has {len(entries)} entries; a DARTS genotype "
                                     f"needs {2 * STEPS} (2 per intermediate node, nodes 2..5), or "
                                     "FairDARTS's (op, to, from) entries")
                nodes = [entries[2 * n: 2 * n + 2] for n in range(STEPS)]
            for n, node in enumerate(nodes):
                choices[f"{cell_type}/{2 + n}"] = tuple(
                    self._entry(entry, 2 + n, f"{where}: {cell_type} node {2 + n}") for entry in node)
        return Arch(self.name, choices)

    @staticmethod
    def _fairdarts_nodes(entries: Sequence[Any], cell_type: str, where: str) -> list[list[Any]]:
        """FairDARTS ``(op, to, from)`` entries grouped by node, their order kept within a node."""
        nodes: list[list[Any]] = [[] for _ in NODES]
        for entry in entries:
            op, to, source = entry
            if not (isinstance(to, int) and 2 <= to < 2 + STEPS):
                raise ValueError(f"{where}: {cell_type} entry {tuple(entry)!r}: node {to!r} is not an "
                                 f"intermediate node (accepted 2..{1 + STEPS})")
            nodes[to - 2].append((op, source))
        for n, node in enumerate(nodes):
            if len(node) > 2:
                raise ValueError(f"{where}: {cell_type} node {2 + n} has {len(node)} entries; FairDARTS's "
                                 "sparse cells keep at most 2 per node")
        return nodes

    @staticmethod
    def _entry(entry: Any, node: int, where: str) -> tuple[int, int]:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool)):
            raise ValueError(f"{where}: entry {entry!r}; expected ('op_name', input_index)")
        op, j = entry
        if op not in PRIMITIVES:
            raise ValueError(f"{where}: unknown op {op!r}; accepted: {', '.join(PRIMITIVES)}")
        if not 0 <= j < node:
            raise ValueError(f"{where}: input {j} is out of range for node {node} (accepted 0..{node - 1})")
        return PRIMITIVES.index(op), j

    def _node_choices(self, arch: Arch) -> dict[str, tuple[tuple[int, int], ...]]:
        """Arch -> its 8 node choices (0 to 2 entries each), checked; KeyError on wrong labels,
        ValueError on bad values."""
        self.check(arch)
        if list(arch) != list(NODE_LABELS):
            raise KeyError(f"a darts arch has the labels {list(NODE_LABELS)}, got {list(arch)}")
        choices = {}
        for label in NODE_LABELS:
            node = node_index(label)
            value = arch[label]
            if not (isinstance(value, tuple) and len(value) <= 2
                    and all(isinstance(p, tuple) and len(p) == 2 for p in value)):
                raise ValueError(f"{label} is {value!r}; expected ((op_index, input), (op_index, input)) "
                                 "(FairDARTS cells: 0 to 2 such entries)")
            for op, j in value:
                if not 0 <= op < len(PRIMITIVES):
                    raise ValueError(f"{label}: op index {op} out of range 0..{len(PRIMITIVES) - 1}")
                if not 0 <= j < node:
                    raise ValueError(f"{label}: input {j} out of range for node {node} "
                                     f"(accepted 0..{node - 1})")
            choices[label] = value
        return choices

    def is_sparse(self, arch: Arch) -> bool:
        """A FairDARTS cell: some node without exactly two entries (built as FairDARTS builds it)."""
        return any(len(entries) != 2 for entries in self._node_choices(arch).values())

    def node_entries(self, arch: Arch) -> dict[str, list[list[GenotypeEntry]]]:
        """Arch -> ``{"normal": [[(op_name, input), ...] per node 2..5], "reduce": [...]}``."""
        choices = self._node_choices(arch)
        return {cell_type: [[(PRIMITIVES[op], j) for op, j in choices[f"{cell_type}/{node}"]] for node in NODES]
                for cell_type in CELL_TYPES}

    def genotype_lists(self, arch: Arch) -> dict[str, list[GenotypeEntry]]:
        """Arch -> ``{"normal": [(op_name, input) x 8], "reduce": [...]}``, genotype order."""
        return {cell_type: [entry for node in nodes for entry in node]
                for cell_type, nodes in self.node_entries(arch).items()}

    def parse_string(self, text: str) -> Arch:
        """``Genotype(normal=[...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=...)``
        -> Arch, read with ``ast`` (never ``eval``); ``range(2, 6)`` is accepted as a concat."""
        if text.startswith("|") or ("~" in text and not text.startswith("Genotype")):
            raise ValueError(f"{text!r}: this looks like a NAS-Bench-201 string; use --space nb201")
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError as err:
            raise ValueError(f"cannot read {text!r} as a DARTS genotype: {err.msg}; expected "
                             "Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], "
                             "reduce=[...], reduce_concat=[2, 3, 4, 5])") from err
        func = getattr(tree, "func", None)
        func_name = getattr(func, "id", None) or getattr(func, "attr", None)
        if not isinstance(tree, ast.Call) or func_name != "Genotype":
            raise ValueError(f"{text!r} is not a DARTS genotype; expected Genotype(normal=[...], "
                             "normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])")
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        if len(tree.args) > len(fields):
            raise ValueError(f"Genotype takes at most {len(fields)} positional fields {fields}")
        values: dict[str, Any] = {}
        for field, node in zip(fields, tree.args):
            values[field] = _literal(node, field)
        for keyword in tree.keywords:
            if keyword.arg in ("connectN", "connects"):  # AutoDL's extra fields, always None
                continue
            if keyword.arg not in fields or keyword.arg in values:
                raise ValueError(f"unexpected or repeated Genotype field {keyword.arg!r}; "
                                 f"accepted: {', '.join(fields)}")
            values[keyword.arg] = _literal(keyword.value, keyword.arg)
        missing = [f for f in fields if f not in values]
        if missing:
            raise ValueError(f"Genotype is missing {', '.join(missing)}")
        for cell_type in CELL_TYPES:
            concat = values[f"{cell_type}_concat"]
            if not isinstance(concat, (list, tuple)) or list(concat) != CONCAT:
                raise ValueError(f"{cell_type}_concat is {concat!r}; the DARTS space concatenates "
                                 f"the intermediate nodes {CONCAT} only")
            if not isinstance(values[cell_type], (list, tuple)):
                raise ValueError(f"{cell_type} must be a list of (op, input) entries")
        return self._arch_from_lists(values, where="genotype")

    def format(self, arch: Arch) -> str:
        """Arch -> the repr of DARTS' ``Genotype`` namedtuple (lists, concat [2, 3, 4, 5]); a
        FairDARTS cell in FairDARTS's form, ``(op, to, from)`` entries."""
        if self.is_sparse(arch):
            cells = {cell_type: [(op, 2 + n, j) for n, node in enumerate(nodes) for op, j in node]
                     for cell_type, nodes in self.node_entries(arch).items()}
        else:
            cells = self.genotype_lists(arch)
        return (f"Genotype(normal={cells['normal']!r}, normal_concat={CONCAT!r}, "
                f"reduce={cells['reduce']!r}, reduce_concat={CONCAT!r})")

    # --- sampling and evolution -------------------------------------------------------------
    def sample(self, rng: random.Random | None = None) -> Arch:
        """Per node two distinct inputs among the earlier states, ops among the 7 non-none ones."""
        rng = rng or random.Random()
        ops = [k for k in range(len(PRIMITIVES)) if k != NONE_INDEX]
        choices = {}
        for label in NODE_LABELS:
            node = node_index(label)
            inputs = rng.sample(range(node), 2)
            choices[label] = tuple((rng.choice(ops), j) for j in inputs)
        return Arch(self.name, choices)

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change the op or the input of one entry of one node; inputs of a node stay distinct."""
        rng = rng or random.Random()
        choices = dict(self._node_choices(arch))
        mutable = [label for label in NODE_LABELS if len(choices[label]) == 2]
        if not mutable:
            raise ValueError("mutate changes a node of two entries; this FairDARTS cell has none")
        label = rng.choice(mutable)
        node = node_index(label)
        entries = [list(pair) for pair in choices[label]]
        k = rng.randrange(2)
        other_inputs = [j for j in range(node) if j not in (entries[0][1], entries[1][1])]
        if other_inputs and rng.random() < 0.5:
            entries[k][1] = rng.choice(other_inputs)
        else:
            entries[k][0] = rng.choice([o for o in range(len(PRIMITIVES))
                                        if o not in (NONE_INDEX, entries[k][0])])
        choices[label] = tuple(tuple(e) for e in entries)
        return Arch(self.name, choices)

    # --- networks -----------------------------------------------------------------------------
    def build_supernet(self, num_classes: int = 10, C: int = 16, layers: int = 8, steps: int = 4,
                       multiplier: int = 4, stem_multiplier: int = 3, affine: bool = False,
                       in_channels: int = 3, partial_channels: int = 1, bn_after_pool: bool = True,
                       last_activation: bool = False, auxiliary_skip: bool = False,
                       edge_candidates: Mapping[str, Sequence[Sequence[str]]] | None = None,
                       skip_dropout: bool = False) -> DartsSupernet:
        """The search network of train_search.py (8 cells, C=16 by default); ``partial_channels``
        K > 1 gives PC-DARTS's (model_search.py, K = 4); ``bn_after_pool=False`` and
        ``last_activation=True`` give GDAS's NASNet-space one (xautodl ``NASNetworkGDAS``);
        ``auxiliary_skip=True`` DARTS-'s (an auxiliary skip on every edge); ``edge_candidates`` and
        ``skip_dropout`` P-DARTS's (a candidate set per edge, dropout after skips)."""
        return DartsSupernet(num_classes, C, layers, steps, multiplier, stem_multiplier, affine,
                             in_channels, partial_channels, bn_after_pool, last_activation,
                             auxiliary_skip, edge_candidates, skip_dropout)

    def network_options(self, supernet_options: Mapping[str, Any]) -> dict[str, Any]:
        """None: the search supernet (8 cells, C=16) is not the network a genotype is evaluated
        as (20 cells, C=36), so costs are those of the evaluation network."""
        return {}

    def build_network(self, arch: Arch, num_classes: int = 10, C: int = 36, layers: int = 20,
                      auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3,
                      network: str = "cifar", cell: str = "auto") -> NetworkCIFAR | NetworkImageNet:
        """The evaluation network: ``network="cifar"`` is train.py's (20 cells, C=36 by default),
        ``"imagenet"`` train_imagenet.py's mobile one (pass C=48, layers=14; 224x224 input).
        ``cell``: ``darts`` (model.py ``Cell``), ``fairdarts`` (FairDARTS's ``DCOCell``: only
        nodes with an entry, drop path per node) or ``auto``, FairDARTS's where a node does not
        have exactly two entries. A FairDARTS genotype with two entries everywhere (FAIRDARTS_D)
        builds to the same parameters either way; only drop path differs: pass ``fairdarts``."""
        if network not in NETWORKS:
            raise ValueError(f"network={network!r}; accepted: {', '.join(NETWORKS)}")
        if cell not in ("auto", "darts", "fairdarts"):
            raise ValueError(f"cell={cell!r}; accepted: auto, darts, fairdarts")
        sparse = cell == "fairdarts" or (cell == "auto" and self.is_sparse(arch))
        if sparse is False and self.is_sparse(arch):
            raise ValueError("cell='darts' needs two entries per node; this is a FairDARTS cell (cell: auto)")
        return NETWORKS[network](self.node_entries(arch), num_classes, C, layers, auxiliary,
                                 drop_path_prob, in_channels, sparse=sparse)

    def decisions(self, arch: Arch) -> dict[str, int | torch.Tensor | None]:
        """Per supernet edge: the op index of a selected edge, None for an absent one.

        A node whose two entries read the same input (possible with GDAS's pair rule,
        :meth:`discretize_pairs`) gets, on that edge, a dense [8] decision holding 1 at each of
        its two ops (2 if the same op is listed twice): the supernet edge then outputs
        ``op_a(x) + op_b(x)``, as the stand-alone cell sums its two entries. A dense decision
        runs every non-``none`` candidate of that edge (the others scaled by 0), so it costs
        more than an int and, in training mode, updates their BatchNorm statistics too.
        """
        choices = self._node_choices(arch)
        out: dict[str, int | torch.Tensor | None] = dict.fromkeys(EDGE_LABELS)
        for label, entries in choices.items():
            for op, j in entries:
                edge = edge_label(label, j)
                if out[edge] is None:
                    out[edge] = op
                else:  # a second op on the same input: a dense decision selecting both
                    both = torch.zeros(len(PRIMITIVES))
                    both[out[edge]] += 1.0
                    both[op] += 1.0
                    out[edge] = both
        return out

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """DARTS rule (model_search.py ``Network.genotype``) on per-edge normalized weights.

        For each node, rank its incoming edges by their largest non-``none`` weight, keep the
        top 2 (stable: ties keep the lower input first), and give each its non-``none`` argmax
        op (first index on ties).
        """
        check_edge_weights(weights, EDGE_LABELS, PRIMITIVES)
        choices = {}
        for label in NODE_LABELS:
            node = node_index(label)
            rows = []
            for j in range(node):
                rows.append(weights[edge_label(label, j)].detach().float().cpu().tolist())
            ops = [k for k in range(len(PRIMITIVES)) if k != NONE_INDEX]
            best_op = [max(ops, key=lambda k: (row[k], -k)) for row in rows]  # first max
            kept = sorted(range(node), key=lambda j: -rows[j][best_op[j]])[:2]
            choices[label] = tuple((best_op[j], j) for j in kept)
        return Arch(self.name, choices)

    def discretize_threshold(self, weights: Mapping[str, torch.Tensor], threshold: float = 0.85) -> Arch:
        """FairDARTS's ``threshold_sparse`` rule (``fairdarts/utils.py`` ``parse``) on per-edge
        weights (sigmoids): per node, the top 2 input edges by their strongest non-``none`` op,
        each kept with that op only if its weight reaches ``threshold``. A node may keep 0, 1 or 2
        inputs (a FairDARTS cell, :meth:`build_network`)."""
        check_edge_weights(weights, EDGE_LABELS, PRIMITIVES)
        ops = [k for k in range(len(PRIMITIVES)) if k != NONE_INDEX]
        choices = {}
        for label in NODE_LABELS:
            node = node_index(label)
            rows = [weights[edge_label(label, j)].detach().float().cpu().tolist() for j in range(node)]
            best_op = [max(ops, key=lambda k: (row[k], -k)) for row in rows]
            kept = sorted(range(node), key=lambda j: -rows[j][best_op[j]])[:2]
            choices[label] = tuple((best_op[j], j) for j in kept if rows[j][best_op[j]] >= threshold)
        return Arch(self.name, choices)

    def discretize_pairs(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """GDAS's NASNet-space rule (xautodl ``search_model_gdas_nasnet.py``
        ``NASNetworkGDAS.genotype``) on per-edge normalized weights.

        For each node, rank every (op, input) pair over all its incoming edges and all
        non-``none`` ops by weight and keep the top 2, best first. Unlike :meth:`discretize`, the
        two pairs may share an input (two ops of one edge). Ties keep the lower input first, then
        the lower op index of :data:`PRIMITIVES` (the reference's stable sort does the same in
        its own op order, which lists the ops differently).
        """
        check_edge_weights(weights, EDGE_LABELS, PRIMITIVES)
        choices = {}
        for label in NODE_LABELS:
            node = node_index(label)
            pairs = []  # (weight, op, input), inputs then ops in order
            for j in range(node):
                row = weights[edge_label(label, j)].detach().float().cpu().tolist()
                pairs.extend((row[k], k, j) for k in range(len(PRIMITIVES)) if k != NONE_INDEX)
            best = sorted(pairs, key=lambda p: -p[0])[:2]  # stable: ties keep the order above
            choices[label] = tuple((k, j) for _, k, j in best)
        return Arch(self.name, choices)
