"""The ENAS micro (cell) search space, registered as ``"enas-micro"``.

Paper: Pham, Guan, Zoph, Le & Dean, "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018 (arXiv 1802.03268).
Ref impl: melodyguan/enas@4bcfd73 (TensorFlow 1) ``src/cifar10/micro_child.py`` (``MicroChild``:
``_model``; the search child ``_enas_layer``, ``_enas_cell``, ``_enas_conv``; the child of a fixed
arc ``_fixed_layer``, ``_fixed_conv``, ``_fixed_combine``; both share ``_maybe_calibrate_size``,
``_factorized_reduction``, ``_apply_drop_path``), ``src/cifar10/micro_controller.py``
(``_build_sampler``: the token order), ``src/cifar10/image_ops.py`` (``batch_norm``: affine,
decay 0.9, eps 1e-5; ``drop_path``), ``src/cifar10/main.py`` (flag defaults) and
``scripts/cifar10_micro_search.sh`` / ``scripts/cifar10_micro_final.sh`` (the sizes).

A cell has two inputs (state 0: the cell before the previous one, state 1: the previous one) and
:data:`NUM_NODES` = 5 computed nodes 2..6. Node i adds two branches, ``op_x(state[x_index]) +
op_y(state[y_index])``, with indices in 0..i-1 (the controller draws them independently, so they
may be equal) and ops from :data:`OPS`, in the reference's op ids (``_fixed_layer``: 0, 1 are the
separable convs of ``f_sizes = [3, 5]``, 2 average pooling, 3 max pooling, 4 identity; the same
order as ``_enas_cell``'s output list). The cell outputs the states no node reads ("loose ends"),
the unused inputs included. An Arch maps ``"normal/2"`` .. ``"normal/6"``, ``"reduce/2"`` ..
``"reduce/6"`` to ``((x_index, x_op), (y_index, y_op))``, the controller's four tokens per node
(index_1, op_1, index_2, op_2). Its canonical string is the reference's ``--child_fixed_arc``:
the 40 tokens separated by single spaces, the normal cell's 20 then the reduction cell's 20
(:data:`ENAS_MICRO_ARC`, from cifar10_micro_final.sh).

Both networks have a 3x3 stem conv to 3C + BN and ``layers + 2`` cells: ``layers`` normal cells
(the reference's ``child_num_layers``) and two reduction cells, at positions ``layers // 3`` and
``2 * (layers // 3) + 1`` (``_model``'s ``pool_layers``), each doubling the channels; then ReLU,
global average pooling, dropout and a bias-free linear classifier. Every cell first calibrates its
inputs to C channels at the resolution of state 1 (``_maybe_calibrate_size``: state 0 gets ReLU +
factorized reduction when it is twice as large, else a ReLU-1x1 conv-BN when its channels differ;
state 1 a ReLU-1x1 conv-BN when its channels differ). The search child and the fixed-arc child
then differ (this module keeps both as the reference has them):

* search child (:class:`EnasMicroSupernet`, ``_enas_layer``): every branch has its own weights per
  (cell, node, branch x/y, op, input index) (``_enas_conv`` gathers row ``prev_cell`` of stacked
  weights; x and y live in different variable scopes); a reduction cell first applies a
  factorized reduction (no ReLU) to the previous cell's output and runs a stride-1 cell on
  (previous output, its reduction), which calibration turns into (ReLU + factorized reduction of
  the previous output, its reduction); the next cell's state 0 is that reduction. The loose ends
  are concatenated and projected back to C by ReLU, a 1x1 conv whose weight is gathered per
  state (``final_conv``) and BN.
* fixed child (:class:`EnasMicroNetwork`, ``_fixed_layer``): a ReLU-1x1 conv-BN on state 1 after
  calibration (``layer_base``); one op per branch; a reduction cell strides the branches that read
  states 0 and 1 (identity becomes a factorized reduction without ReLU); the loose ends are
  concatenated without projection (``_fixed_combine``; an unused input of a reduction cell gets a
  factorized reduction first), so a cell outputs (number of loose ends) x C channels. Drop path on
  every non-identity branch in training, the auxiliary head after cell ``2 * (layers // 3) + 2``.

Deviations from the TF code, all without effect on shapes, parameter counts or FLOPs:

* stride-2 padding: TF "SAME" on an even input pads only bottom/right (3x3: 0/1, 5x5: 1/2) while
  the PyTorch ops here (:mod:`ops.candidates`, shared with DARTS) pad k // 2 on every side, so the
  strided windows of a reduction cell sit one pixel up-left of TF's. Stride 1 is identical.
* search-child BN: TF's separable convs in the search child keep no moving statistics and the
  whole search child always normalizes with batch statistics (``_model`` forces ``is_training``;
  so does its reward, with dropout on). Here every BN tracks running statistics and follows the
  module's train/eval mode; an ENAS controller that scores in training mode gets the reference's
  behaviour.
* initialization: PyTorch's defaults (the reference uses he_normal on its flattened, per-input
  stacked weights, whose fan-in is then the number of inputs).
* the auxiliary head's second conv has the size of its input map (``[hw, hw]``): 2x2, the value at
  32x32 input, fixed here.
* drop path: the reference ramps the keep probability per step; :class:`EnasMicroNetwork` reads
  ``drop_path_prob`` at each forward and scales it by depth as the reference does (see there), and
  the retraining loop ramps it per epoch.
"""
from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ops.candidates import FactorizedReduce, Identity, ReLUConvBN, build_candidate
from supernets.base import Arch, SearchSpace, Supernet
from ops.candidates import drop_path
from supernets.labels import node_index
from supernets.registry import register

# The reference's op ids (micro_child.py ``_fixed_layer`` / ``_enas_cell``), in index order.
OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
IDENTITY = OPS.index("identity")
NUM_NODES = 5  # child_num_cells
NUM_STATES = NUM_NODES + 2  # two inputs and the computed nodes
CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
NODES: tuple[int, ...] = tuple(range(2, 2 + NUM_NODES))
LABELS: tuple[str, ...] = tuple(f"{cell_type}/{i}" for cell_type in CELL_TYPES for i in NODES)
NUM_TOKENS = 4 * len(LABELS)  # index_1, op_1, index_2, op_2 per node
# scripts/cifar10_micro_final.sh ``fixed_arc``: normal cell, then reduction cell.
ENAS_MICRO_ARC = ("0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 "
                  "1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1")
FORMAT_HELP = (f"expected {NUM_TOKENS} integers separated by spaces (--child_fixed_arc): the normal "
               "cell's 20 then the reduction cell's 20, per node i = 2..6 'index_1 op_1 index_2 op_2' "
               f"with indices in 0..i-1 and ops in 0..{len(OPS) - 1} ({', '.join(OPS)})")

NodeChoice = tuple[tuple[int, int], tuple[int, int]]

# Reported CIFAR-10 result of the published cell; ``params`` is the exact count of
# ``build_network(arch, C=36, layers=15)`` (the final script's size), auxiliary head excluded.
GENOTYPE_META: dict[str, dict[str, Any]] = {
    "ENAS_MICRO": {
        "test_error": 2.89, "params_m": 4.6, "params": 3_894_372, "params_with_auxiliary": 4_389_220,
        "source": "melodyguan/enas@4bcfd73 scripts/cifar10_micro_final.sh (fixed_arc)",
        "note": "error and params_m: ENAS paper (2.89% with cutout, 3.54% without, 4.6M; recalled, "
                "not re-checked against the PDF). The released arc at the final script's size (C=36, "
                "15 layers = 17 cells) builds to 3.89M as micro_child.py constructs it (4.39M with the "
                "auxiliary head), so the paper's 4.6M is not reproduced by the released code; the "
                "script trains 630 epochs with the auxiliary head, dropout 0.2, drop-path keep 0.6",
    },
}


def node_options(node: int) -> tuple[NodeChoice, ...]:
    """Every admissible decision of node ``node``: all ``((x_index, x_op), (y_index, y_op))`` with
    indices in 0..node-1 and ops in 0..4, x-major (node i has (5 i)^2 of them)."""
    branch = [(j, op) for j in range(node) for op in range(len(OPS))]
    return tuple((x, y) for x in branch for y in branch)


def reduction_layers(layers: int) -> tuple[int, int]:
    """Positions of the two reduction cells among the ``layers + 2`` cells (``_model``:
    ``pool_distance = num_layers // 3``, ``pool_layers = [d, 2 d + 1]``)."""
    distance = layers // 3
    return distance, 2 * distance + 1


def aux_position(layers: int) -> int:
    """The cell whose output feeds the auxiliary head (``aux_head_indices``: the one after the
    second reduction)."""
    return reduction_layers(layers)[1] + 1


def loose_ends(pairs: Sequence[NodeChoice]) -> tuple[int, ...]:
    """States no node reads, in order (inputs 0 and 1 included): what a cell concatenates."""
    used = {j for x, y in pairs for j in (x[0], y[0])}
    return tuple(k for k in range(2 + len(pairs)) if k not in used)


# ---------------------------------------------------------------------------------------------
# Ops


def factorized_reduce(C_in: int, C_out: int, relu: bool) -> FactorizedReduce:
    """``_factorized_reduction`` at stride 2: two 1x1 convs on x and on x shifted by one pixel,
    concatenated, BN. The reference has no ReLU in it; calibration puts one before it
    (``relu=True``, the DARTS op), while the search child's reduction, the strided identity and
    ``_fixed_combine`` use it bare (``relu=False``)."""
    module = FactorizedReduce(C_in, C_out, affine=True)
    if not relu:
        module.relu = nn.Identity()  # type: ignore[assignment]
    return module


def build_op(op: int, C: int, stride: int) -> nn.Module:
    """Op id ``op`` with C channels in and out.

    The separable convs are ``_fixed_conv`` / ``_enas_conv``: twice (ReLU, depthwise kxk conv,
    pointwise 1x1 conv, BN), the first strided: DARTS's ``SepConv`` at C_in == C_out. The pools are
    3x3 with padding 1 (average pooling without the padding in its count, as TF's 'SAME'). After
    calibration every state has C channels, so the reference's 1x1 conv after a pool (only when
    the channels differ) never exists. Identity at stride 2 is a factorized reduction without ReLU.
    """
    name = OPS[op]
    if name == "identity":
        return Identity() if stride == 1 else factorized_reduce(C, C, relu=False)
    return build_candidate(name, C, stride, True)


def calibration(C_in: int, C: int, halve: bool) -> nn.Module:
    """``_maybe_calibrate_size`` for one input: ReLU + factorized reduction when the input is twice
    the size of state 1 (state 0 only), else ReLU-1x1 conv-BN when its channels differ, else
    nothing."""
    if halve:
        return factorized_reduce(C_in, C, relu=True)
    if C_in != C:
        return ReLUConvBN(C_in, C, 1, 1, 0)
    return nn.Identity()


class LooseEndProjection(nn.Module):
    """The search child's ``final_conv``: ReLU, a 1x1 conv from the concatenated loose ends to C
    channels, BN. The conv weight is stored per state (``weight[k]`` maps state k's C channels to
    the output, as the reference's ``[num_cells + 2, C * C]`` variable) and the rows of the loose
    ends are gathered in state order, so a state keeps its weights whichever others are loose."""

    def __init__(self, num_states: int, C: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_states, C, C))  # [state, out, in]
        bound = 1.0 / math.sqrt(C)  # nn.Conv2d's default init for a C-input 1x1 conv
        nn.init.uniform_(self.weight, -bound, bound)
        self.bn = nn.BatchNorm2d(C)

    def forward(self, states: Sequence[torch.Tensor], loose: Sequence[int]) -> torch.Tensor:
        x = F.relu(torch.cat([states[k] for k in loose], dim=1))
        weight = torch.cat([self.weight[k] for k in loose], dim=1)  # [out, len(loose) * C]
        return self.bn(F.conv2d(x, weight[:, :, None, None]))


class AuxiliaryHead(nn.Module):
    """The reference's ``aux_head`` (micro_child.py ``_model``): ReLU, 5x5 average pool stride 3
    (no padding), 1x1 conv to 128, BN, ReLU, a ``[hw, hw]`` conv to 768 with TF 'SAME' padding
    (its output keeps the hw x hw size), BN, ReLU, global average pooling, bias-free linear.

    Unlike DARTS's head the 768-conv is padded (bottom/right for hw = 2) and pooled afterwards,
    and the classifier has no bias. ``pooled_size`` is hw: 2 for the 8x8 map of a 32x32 input.
    """

    def __init__(self, C: int, num_classes: int, pooled_size: int = 2):
        super().__init__()
        before = (pooled_size - 1) // 2
        after = pooled_size - 1 - before
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # not in place: the cell output goes on to the next cells
            nn.AvgPool2d(5, stride=3, padding=0),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.ZeroPad2d((before, after, before, after)),
            nn.Conv2d(128, 768, pooled_size, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(768, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _Head(nn.Module):
    """Stem and classifier shared by the supernet and the network (``_model``)."""

    def _build_ends(self, num_classes: int, C: int, C_last: int, in_channels: int,
                    dropout: float) -> None:
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * C, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(3 * C))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # child_keep_prob: 0.9 in search, 0.8 in the final run
        self.classifier = nn.Linear(C_last, num_classes, bias=False)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU, global pooling, dropout, linear (the reference's ``fc`` has no bias)."""
        return self.classifier(self.dropout(self.global_pooling(F.relu(x)).flatten(1)))


def _check_layers(C: int, layers: int) -> None:
    if layers < 1 or C < 1:
        raise ValueError(f"an ENAS micro network needs C >= 1 and layers >= 1, got C={C}, layers={layers}")


# ---------------------------------------------------------------------------------------------
# Supernet (the search child)


class SearchCell(nn.Module):
    """One cell of the search child (``_enas_layer``); see the module docstring.

    ``nodes["node{i}"]["x" | "y"][j][op]`` is the op of node i's x or y branch when it reads state
    j: separate weights per (node, branch, input, op). Only the chosen op of each branch runs (the
    reference computes all five and keeps one; the unchosen ones have no effect on the output, the
    gradients or any statistics).
    """

    def __init__(self, cell_type: str, C_prev_prev: int, C_prev: int, C: int, reduction: bool):
        super().__init__()
        self.cell_type, self.reduction = cell_type, reduction
        self.labels = tuple(f"{cell_type}/{i}" for i in NODES)
        self.reduce: nn.Module | None = None
        # _model: x = _factorized_reduction(x); layers = [layers[-1], x]: the cell before the
        # previous one is dropped and the reduction is also the next cell's state 0 (asked about,
        # unanswered, in melodyguan/enas#48; the fixed child keeps both inputs).
        if reduction:
            self.reduce = factorized_reduce(C_prev, C, relu=False)
            self.preprocess0 = calibration(C_prev, C, halve=True)
            self.preprocess1 = calibration(C, C, halve=False)  # nothing: already C channels
        else:
            self.preprocess0 = calibration(C_prev_prev, C, halve=False)
            self.preprocess1 = calibration(C_prev, C, halve=False)
        self.nodes = nn.ModuleDict({
            f"node{i}": nn.ModuleDict({
                branch: nn.ModuleList(nn.ModuleDict({name: build_op(op, C, 1) for op, name in enumerate(OPS)})
                                      for _ in range(i))
                for branch in ("x", "y")})
            for i in NODES})
        self.combine = LooseEndProjection(NUM_STATES, C)

    def node_states(self, s0: torch.Tensor, s1: torch.Tensor,
                    pairs: Sequence[NodeChoice]) -> list[torch.Tensor]:
        """The 7 states from the calibrated inputs: the inputs, then node i = x + y."""
        states = [s0, s1]
        for i, ((xj, xo), (yj, yo)) in zip(NODES, pairs):
            node = self.nodes[f"node{i}"]
            states.append(node["x"][xj][OPS[xo]](states[xj]) + node["y"][yj][OPS[yo]](states[yj]))
        return states

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                pairs: Sequence[NodeChoice]) -> tuple[torch.Tensor, torch.Tensor]:
        """(state 0 of the next cell, this cell's output)."""
        if self.reduce is not None:
            s0, s1 = s1, self.reduce(s1)
        states = self.node_states(self.preprocess0(s0), self.preprocess1(s1), pairs)
        return s1, self.combine(states, loose_ends(pairs))


class EnasMicroSupernet(Supernet, _Head):
    """The ENAS micro search child (micro_child.py with ``fixed_arc=None``): ``layers`` normal and
    2 reduction cells of :class:`SearchCell`, every cell output projected back to its C channels.

    ``forward(x, decisions)`` takes ``decisions[label] = ((x_index, x_op), (y_index, y_op))`` for
    the 10 labels (:meth:`EnasMicroSpace.decisions`); normal cells share the ``normal/...`` ones,
    reduction cells the ``reduce/...`` ones. ``choices[label]`` lists every admissible decision of
    that node (:func:`node_options`), so a decision is one of its options itself, not an index.
    ``edges`` is empty: a label names a node, not an edge.

    The search script trains with dropout 0.1 (``child_keep_prob=0.9``, the default here) and an
    auxiliary head (weight 0.4; ``auxiliary=True``: ``forward`` then returns ``(logits,
    aux_logits)`` in training mode); it has no drop path in the search child.
    """

    def __init__(self, num_classes: int = 10, C: int = 20, layers: int = 6, in_channels: int = 3,
                 dropout: float = 0.1, auxiliary: bool = False):
        super().__init__()
        _check_layers(C, layers)
        self.choices: dict[str, tuple[NodeChoice, ...]] = {
            label: node_options(node_index(label)) for label in LABELS}
        self._admissible = {label: frozenset(options) for label, options in self.choices.items()}
        self.auxiliary = auxiliary
        self.aux_position = aux_position(layers)
        reductions = reduction_layers(layers)
        C_prev_prev = C_prev = 3 * C
        C_curr, C_aux, cells = C, C, []
        for layer_id in range(layers + 2):
            reduction = layer_id in reductions
            if reduction:
                C_curr *= 2
            cells.append(SearchCell("reduce" if reduction else "normal", C_prev_prev, C_prev, C_curr,
                                    reduction))
            C_prev_prev, C_prev = (C_curr if reduction else C_prev), C_curr
            if layer_id == self.aux_position:
                C_aux = C_curr
        self.cells = nn.ModuleList(cells)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(C_aux, num_classes)
        self._build_ends(num_classes, C, C_curr, in_channels, dropout)

    def node_pairs(self, decisions: Mapping[str, Any]) -> dict[str, tuple[NodeChoice, ...]]:
        """Cell type -> the 5 node decisions, checked.

        Raises:
            KeyError: missing or unknown labels (named).
            ValueError: a decision that is not one of the label's options.
        """
        self.check_decisions(decisions)
        pairs: dict[str, list[NodeChoice]] = {cell_type: [] for cell_type in CELL_TYPES}
        for label in LABELS:
            value = decisions[label]
            try:
                value = tuple(tuple(branch) for branch in value)
                admissible = value in self._admissible[label]
            except TypeError:
                admissible = False
            if not admissible:
                node = node_index(label)
                raise ValueError(f"decision {label}={decisions[label]!r} is not ((x_index, x_op), "
                                 f"(y_index, y_op)) with indices in 0..{node - 1} and ops in "
                                 f"0..{len(OPS) - 1}")
            pairs[label.split("/")[0]].append(value)
        return {cell_type: tuple(p) for cell_type, p in pairs.items()}

    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any]
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pairs = self.node_pairs(decisions)
        with_aux = self.auxiliary and self.training
        logits_aux = None
        s0 = s1 = self.stem(x)
        for layer_id, cell in enumerate(self.cells):
            s0, s1 = cell(s0, s1, pairs[cell.cell_type])
            if with_aux and layer_id == self.aux_position:
                logits_aux = self.auxiliary_head(s1)
        logits = self.forward_head(s1)
        return (logits, logits_aux) if with_aux else logits


# ---------------------------------------------------------------------------------------------
# Stand-alone network (the child of a fixed arc)


class FixedCell(nn.Module):
    """One cell of a fixed arc (``_fixed_layer``); see the module docstring.

    ``ops[2 n]`` / ``ops[2 n + 1]`` are the x / y branch of node n + 2. The output has
    ``out_channels = len(concat) * C`` channels: the loose ends, concatenated.
    """

    def __init__(self, pairs: Sequence[NodeChoice], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, prev_prev_larger: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = calibration(C_prev_prev, C, halve=prev_prev_larger)
        self.preprocess1 = calibration(C_prev, C, halve=False)
        self.base = ReLUConvBN(C, C, 1, 1, 0)  # layer_base: always, even at C channels
        ops, meta = [], []
        for x, y in pairs:
            for j, op in (x, y):
                ops.append(build_op(op, C, 2 if reduction and j < 2 else 1))
                meta.append((j, op != IDENTITY))  # drop path on ops 0..3 only
        self.ops = nn.ModuleList(ops)
        self.op_meta: tuple[tuple[int, bool], ...] = tuple(meta)
        self.concat = loose_ends(pairs)
        # _fixed_combine: a loose input of a reduction cell is twice the nodes' size
        self.concat_reduce = nn.ModuleDict({str(k): factorized_reduce(C, C, relu=False)
                                            for k in self.concat if reduction and k < 2})
        self.out_channels = len(self.concat) * C

    def node_states(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> list[torch.Tensor]:
        """The 7 states from the calibrated inputs (state 1 after ``base``)."""
        states = [s0, s1]
        use_drop = self.training and drop_prob > 0.0
        for n in range(NUM_NODES):
            node = None
            for k in (2 * n, 2 * n + 1):
                j, droppable = self.op_meta[k]
                out = self.ops[k](states[j])
                if use_drop and droppable:
                    out = drop_path(out, drop_prob)
                node = out if node is None else node + out
            states.append(node)
        return states

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = self.node_states(self.preprocess0(s0), self.base(self.preprocess1(s1)), drop_prob)
        return torch.cat([self.concat_reduce[str(k)](states[k]) if str(k) in self.concat_reduce
                          else states[k] for k in self.concat], dim=1)


class EnasMicroNetwork(_Head):
    """The stand-alone network of an arch (micro_child.py with ``--child_fixed_arc``).

    The published training (cifar10_micro_final.sh) uses C=36 (``child_out_filters``), layers=15
    (``child_num_layers``: 15 normal + 2 reduction cells), the auxiliary head (weight 0.4),
    dropout 0.2 (``child_keep_prob=0.8``) and drop-path keep probability 0.6 (``drop_path_prob``
    0.4 here). The defaults here are the search child's size (C=20, layers=6) with every training
    extra off.

    ``drop_path_prob`` is a public attribute read at every forward; cell ``l`` (0-based) of the
    ``layers + 2`` drops each non-identity branch with probability ``drop_path_prob * (l + 1) /
    (layers + 2)`` (``_apply_drop_path``'s depth ratio; its step ratio is the retraining loop's
    ramp of ``drop_path_prob``). ``forward`` returns logits, or ``(logits, aux_logits)`` when the
    auxiliary head exists and the module is training.
    """

    def __init__(self, pairs: Mapping[str, Sequence[NodeChoice]], num_classes: int = 10, C: int = 20,
                 layers: int = 6, auxiliary: bool = False, drop_path_prob: float = 0.0,
                 in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        _check_layers(C, layers)
        self.drop_path_prob = drop_path_prob
        self.auxiliary = auxiliary
        self.aux_position = aux_position(layers)
        reductions = reduction_layers(layers)
        C_prev_prev = C_prev = 3 * C
        C_curr, C_aux, prev_prev_larger, cells = C, C, False, []
        for layer_id in range(layers + 2):
            reduction = layer_id in reductions
            if reduction:
                C_curr *= 2
            cell = FixedCell(pairs["reduce" if reduction else "normal"], C_prev_prev, C_prev, C_curr,
                             reduction, prev_prev_larger)
            cells.append(cell)
            C_prev_prev, C_prev, prev_prev_larger = C_prev, cell.out_channels, reduction
            if layer_id == self.aux_position:
                C_aux = C_prev
        self.cells = nn.ModuleList(cells)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(C_aux, num_classes)
        self._build_ends(num_classes, C, C_prev, in_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with_aux = self.auxiliary and self.training
        logits_aux = None
        s0 = s1 = self.stem(x)
        num_cells = len(self.cells)
        for layer_id, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob * (layer_id + 1) / num_cells)
            if with_aux and layer_id == self.aux_position:
                logits_aux = self.auxiliary_head(s1)
        logits = self.forward_head(s1)
        return (logits, logits_aux) if with_aux else logits


# ---------------------------------------------------------------------------------------------
# The registered space


@register
class EnasMicroSpace(SearchSpace):
    """The ENAS micro space: 2 cell types x 5 nodes x (2 inputs, 2 ops) (see the module docstring).

    Example:
        >>> space = supernets.get("enas-micro")
        >>> arch = space.genotypes["ENAS_MICRO"]
        >>> arch["normal/2"], space.parse(space.format(arch)) == arch
        (((0, 2), (0, 0)), True)
    """

    name = "enas-micro"
    ops = OPS
    cell_types = CELL_TYPES
    labels = LABELS

    def __init__(self) -> None:
        self.genotypes: dict[str, Arch] = {"ENAS_MICRO": self.parse(ENAS_MICRO_ARC)}
        self.genotype_meta = GENOTYPE_META

    # --- encoding ---------------------------------------------------------------------------
    def _choices(self, arch: Arch) -> dict[str, NodeChoice]:
        """The node choices of a checked arch, in label order."""
        super().check(arch)
        if tuple(arch) != LABELS:
            raise ValueError(f"an {self.name} arch has the labels {', '.join(LABELS)} in this order, "
                             f"got {list(arch)}")
        choices = {}
        for label in LABELS:
            value, node = arch[label], node_index(label)
            if not (isinstance(value, tuple) and len(value) == 2
                    and all(isinstance(b, tuple) and len(b) == 2 and 0 <= b[0] < node
                            and 0 <= b[1] < len(OPS) for b in value)):
                raise ValueError(f"{self.name} arch: {label}={value!r} is not ((x_index, x_op), "
                                 f"(y_index, y_op)) with indices in 0..{node - 1} and ops in "
                                 f"0..{len(OPS) - 1}")
            choices[label] = value
        return choices

    def check(self, arch: Arch) -> Arch:
        """Also check the labels and values, so a hand-made Arch fails early."""
        self._choices(arch)
        return arch

    def tokens(self, arch: Arch) -> list[int]:
        """The 40 controller tokens: per node index_1, op_1, index_2, op_2; normal cell first."""
        return [t for (xj, xo), (yj, yo) in self._choices(arch).values() for t in (xj, xo, yj, yo)]

    def from_tokens(self, tokens: Sequence[int]) -> Arch:
        """Inverse of :meth:`tokens` (checked)."""
        if len(tokens) != NUM_TOKENS:
            raise ValueError(f"{self.name} arch has {len(tokens)} tokens; {FORMAT_HELP}")
        t = list(tokens)
        return self.check(Arch(self.name, {label: ((t[4 * k], t[4 * k + 1]), (t[4 * k + 2], t[4 * k + 3]))
                                           for k, label in enumerate(LABELS)}))

    def parse_string(self, text: str) -> Arch:
        """``"0 2 0 0 ... 1 1"`` (40 integers, any whitespace) or an Arch JSON object -> Arch.

        Raises:
            ValueError: one line naming the problem (a non-integer token, the count, an index out
                of range for its node, an op out of range) and the format.
        """
        body = text
        shown = body if len(body) <= 100 else body[:97] + "..."
        tokens = body.split()
        for k, token in enumerate(tokens):
            if not re.fullmatch(r"-?[0-9]+", token):
                raise ValueError(f"{self.name} arch {shown!r}: token {k + 1} {token!r} is not an "
                                 f"integer; {FORMAT_HELP}")
        if len(tokens) != NUM_TOKENS:
            raise ValueError(f"{self.name} arch {shown!r} has {len(tokens)} integers; {FORMAT_HELP}")
        values = [int(token) for token in tokens]
        for k, value in enumerate(values):
            label = LABELS[k // 4]
            node = node_index(label)
            field = ("index_1", "op_1", "index_2", "op_2")[k % 4]
            size = node if k % 2 == 0 else len(OPS)
            if not 0 <= value < size:
                what = (f"an input index of node {node} is in 0..{node - 1}" if k % 2 == 0
                        else f"an op is in 0..{len(OPS) - 1}")
                raise ValueError(f"{self.name} arch {shown!r}: token {k + 1} ({label} {field}) = "
                                 f"{value} is out of range: {what}; {FORMAT_HELP}")
        return self.from_tokens(values)

    def format(self, arch: Arch) -> str:
        """Arch -> the ``--child_fixed_arc`` string: 40 integers, single spaces."""
        return " ".join(map(str, self.tokens(arch)))

    # --- sampling and evolution -------------------------------------------------------------
    def sample(self, rng: random.Random | None = None) -> Arch:
        """Every token uniform and independent: indices over 0..node-1 (the two may be equal),
        ops over the 5."""
        rng = rng or random.Random()
        choices = {}
        for label in LABELS:
            node = node_index(label)
            choices[label] = tuple((rng.randrange(node), rng.randrange(len(OPS))) for _ in range(2))
        return Arch(self.name, choices)

    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change one uniformly chosen token (an index or an op) to a different value."""
        rng = rng or random.Random()
        tokens = self.tokens(arch)
        k = rng.randrange(NUM_TOKENS)
        size = node_index(LABELS[k // 4]) if k % 2 == 0 else len(OPS)
        tokens[k] = rng.choice([v for v in range(size) if v != tokens[k]])
        return self.from_tokens(tokens)

    # --- networks -----------------------------------------------------------------------------
    def build_supernet(self, num_classes: int = 10, C: int = 20, layers: int = 6, in_channels: int = 3,
                       dropout: float = 0.1, auxiliary: bool = False) -> EnasMicroSupernet:
        """The search child of cifar10_micro_search.sh (C=20, 6 layers, dropout 0.1; its auxiliary
        head is ``auxiliary=True``)."""
        return EnasMicroSupernet(num_classes, C, layers, in_channels, dropout, auxiliary)

    def network_options(self, supernet_options: Mapping[str, Any]) -> dict[str, Any]:
        """Width, depth and input channels only: dropout and the auxiliary head are training
        settings that differ between search and retraining (0.1 vs 0.2 dropout)."""
        return {k: supernet_options[k] for k in ("C", "layers", "in_channels") if k in supernet_options}

    def build_network(self, arch: Arch, num_classes: int = 10, C: int = 20, layers: int = 6,
                      auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3,
                      dropout: float = 0.0) -> EnasMicroNetwork:
        """The child of a fixed arc. Defaults: the search size (C=20, 6 layers); the published
        training (cifar10_micro_final.sh) is C=36, layers=15, auxiliary=True, dropout=0.2 and
        drop-path keep 0.6 (``drop_path_prob=0.4``, ramped by the retraining loop)."""
        choices = self._choices(arch)
        pairs = {cell_type: tuple(choices[f"{cell_type}/{i}"] for i in NODES) for cell_type in CELL_TYPES}
        return EnasMicroNetwork(pairs, num_classes, C, layers, auxiliary, drop_path_prob, in_channels,
                                dropout)

    def decisions(self, arch: Arch) -> dict[str, NodeChoice]:
        """Per label the node's ``((x_index, x_op), (y_index, y_op))``: the Arch values."""
        return dict(self._choices(arch))

    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """ENAS has no architecture weights: its controller samples architectures."""
        raise ValueError(f"{self.name} has no architecture weights to discretize (ENAS's controller "
                         "samples architectures): use a sampled selection such as best_of_n")


__all__ = ["OPS", "NUM_NODES", "CELL_TYPES", "NODES", "LABELS", "ENAS_MICRO_ARC", "GENOTYPE_META",
           "EnasMicroSpace", "EnasMicroSupernet", "EnasMicroNetwork", "SearchCell", "FixedCell",
           "LooseEndProjection", "AuxiliaryHead", "build_op", "calibration", "factorized_reduce",
           "loose_ends", "node_options", "reduction_layers", "aux_position"]
