"""P-DARTS: Progressive differentiable architecture search (Chen, Xie, Wu, Tian, ICCV 2019).

Reference: chenxin061/pdarts@b880e87 ``train_search.py`` (the stages, pruning, dropout schedule,
the final rule with its skip limit: ``get_min_k``, ``get_min_k_no_zero``, ``keep_1_on``,
``keep_2_branches``, ``delete_min_sk_prob``, ``parse_network``) and ``model_search.py``.

A P-DARTS search is three runs of this module, one per stage (``stage`` 0, 1, 2): 5, 11 and 17
cells with 8, 5 and 3 candidates per edge. Each stage builds its supernet from scratch, as the
code does: only the candidate sets ("switches") carry over, computed from the previous stage's
checkpoint (``prune_from``) by dropping the 3, then 2 candidates of lowest softmax weight per
edge (``none`` like any other). What differs within a stage from first-order DARTS: a dropout
after every stride-1 skip, its rate r of the stage falling as r (E - e - 1) / E in the 10
warm-up epochs (weights only) and as r exp(-0.2 (e - 10)) after them; the architecture gradient
clipped to 5. The last stage's export is P-DARTS's final rule: per edge ``none`` is dropped and
the best remaining candidate kept, each node keeps its 2 strongest edges (genes in input order),
and while the normal cell has more than ``max_skips`` skips, the weakest selected skip's weight is
zeroed and the rule rerun (the code logs the cell for every limit 8..0; the paper's is 2).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from oneshot.algorithms.base import all_reduce_mean, with_space_option
from oneshot.algorithms.darts import DartsSearch
from oneshot.checkpoints import read_checkpoint
from supernets import Arch
from supernets.darts import EDGE_LABELS, NODE_LABELS, PRIMITIVES, candidates_per_cell, candidates_per_label
from supernets.labels import edge_label, node_index

STAGE_LAYERS = (5, 11, 17)  # --layers 5, add_layers [0, 6, 12]
NUM_TO_DROP = (3, 2, 2)  # train_search.py num_to_drop


def drop_lowest(candidates: Sequence[str], weights: Sequence[float], drop: int, none_first: bool = False) -> list[str]:
    """``get_min_k`` (``none_first``: ``get_min_k_no_zero``): remove the ``drop`` candidates of
    lowest weight, first minimum on ties; ``none_first`` removes ``none`` first when present."""
    kept, weights = list(candidates), list(weights)
    if none_first and "none" in kept:
        k = kept.index("none")
        del kept[k], weights[k]
        drop -= 1
    for _ in range(drop):
        k = min(range(len(weights)), key=lambda i: (weights[i], i))
        del kept[k], weights[k]
    return kept


def prune_candidates(candidates: Mapping[str, Sequence[str]], weights: Mapping[str, Sequence[float]],
                     drop: int) -> dict[str, list[list[str]]]:
    """The next stage's ``edge_candidates``: per edge label, ``drop`` lowest-weight candidates removed."""
    return candidates_per_cell({label: drop_lowest(candidates[label], weights[label], drop) for label in EDGE_LABELS})


def final_genotype(candidates: Mapping[str, Sequence[str]], weights: Mapping[str, Sequence[float]],
                   max_skips: int | None = 2) -> Arch:
    """P-DARTS's last-stage rule on the softmax weights of each edge's (3) candidates."""
    probs = {label: [0.0 if op == "none" else float(w) for op, w in zip(candidates[label], weights[label])]
             for label in EDGE_LABELS}

    def derive() -> dict[str, tuple[tuple[int, int], ...]]:
        choices = {}
        for node_label in NODE_LABELS:
            node = node_index(node_label)
            best = {}  # input -> (strength, op index in PRIMITIVES)
            for j in range(node):
                label = edge_label(node_label, j)
                kept = drop_lowest(candidates[label], probs[label], len(candidates[label]) - 1, none_first=True)[0]
                best[j] = (probs[label][list(candidates[label]).index(kept)], PRIMITIVES.index(kept))
            inputs = sorted(range(node), key=lambda j: -best[j][0])[:2]
            choices[node_label] = tuple((best[j][1], j) for j in sorted(inputs))  # parse_network: input order
        return choices

    choices = derive()
    skip = PRIMITIVES.index("skip_connect")
    normal = [label for label in NODE_LABELS if label.startswith("normal/")]
    while max_skips is not None:
        selected = [(edge_label(label, j), op) for label in normal for op, j in choices[label] if op == skip]
        if len(selected) <= max_skips:
            break
        weakest = min(selected, key=lambda e: probs[e[0]][list(candidates[e[0]]).index("skip_connect")])[0]
        probs[weakest][list(candidates[weakest]).index("skip_connect")] = 0.0  # delete_min_sk_prob
        choices = derive()
    return Arch("darts", choices)


class PDartsSearch(DartsSearch):
    """One stage of P-DARTS (first-order DARTS with skip dropout on a pruned candidate set).

    Args:
        stage: 0, 1 or 2.
        prune_from: the previous stage's checkpoint (stages 1 and 2); its alphas give this stage's
            candidates. Ignored when ``space_options`` already holds ``edge_candidates`` (a resumed
            or reloaded run).
        stage_layers: cells per stage (5, 11, 17).
        dropout_rates: the skip dropout rate per stage (README command [0.1, 0.4, 0.7]; the
            code's default is zeros).
        arch_warmup_epochs: epochs of weight steps only at the start of the stage (10).
        dropout_decay: the exponential decay rate after the warm-up (``scale_factor`` 0.2).
        arch_grad_clip: max norm of the alpha gradient (5).
        max_skips: the skip_connect limit of the final normal cell (2); None: no limit.
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch` (first order).
    """

    def __init__(self, *args: Any, stage: int = 0, prune_from: str | None = None,
                 stage_layers: tuple[int, int, int] = STAGE_LAYERS,
                 dropout_rates: tuple[float, float, float] = (0.0, 0.0, 0.0), arch_warmup_epochs: int = 10,
                 dropout_decay: float = 0.2, arch_grad_clip: float = 5.0, max_skips: int | None = 2,
                 **kwargs: Any):
        if stage not in (0, 1, 2):
            raise ValueError(f"stage={stage}; P-DARTS has the stages 0, 1, 2")
        if len(stage_layers) != 3 or len(dropout_rates) != 3:
            raise ValueError("stage_layers and dropout_rates take one value per stage (3)")
        options = dict((args[1] if len(args) >= 2 else kwargs.get("space_options")) or {})
        if stage and "edge_candidates" not in options:
            if not prune_from:
                raise ValueError(f"stage {stage} starts from the previous stage: set prune_from to its "
                                 "checkpoint (runs/.../checkpoints/last.ckpt)")
            args, kwargs = with_space_option(args, kwargs, "edge_candidates", _pruned(prune_from, stage))
        args, kwargs = with_space_option(args, kwargs, "layers", int(stage_layers[stage]))
        args, kwargs = with_space_option(args, kwargs, "skip_dropout", True)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        # the effective options, candidates included, so a checkpoint rebuilds without prune_from
        self.hparams["space_options"] = dict(self.space_options)
        if self.hparams.unrolled:
            raise ValueError("P-DARTS's architecture step is first order; set unrolled: false")

    # --- the stage's schedule ---------------------------------------------------------------
    def skip_dropout_rate(self, epoch: int, epochs: int) -> float:
        """train_search.py: r (E - e - 1) / E in the warm-up, r exp(-(e - warm-up) * 0.2) after."""
        h = self.hparams
        rate = float(h.dropout_rates[h.stage])
        if epoch < h.arch_warmup_epochs:
            return rate * (epochs - epoch - 1) / epochs
        return rate * math.exp(-(epoch - h.arch_warmup_epochs) * h.dropout_decay)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        rate = self.skip_dropout_rate(self.current_epoch, self.planned_epochs())
        self.supernet.set_skip_dropout(rate)
        self.log("skip_dropout", rate, on_epoch=True, sync_dist=True)

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor | None:
        if self.current_epoch < self.hparams.arch_warmup_epochs:
            return None
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        loss = self.supernet_loss(val_batch)
        self.manual_backward(loss)
        all_reduce_mean([a.grad for a in self.architecture_parameters()])
        if self.hparams.arch_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.architecture_parameters(), self.hparams.arch_grad_clip)
        arch_optimizer.step()
        return loss.detach()

    # --- export -------------------------------------------------------------------------------
    def export_rule(self) -> Arch:
        """The last stage: P-DARTS's final rule; before it, DARTS's rule on the current weights."""
        if self.eigenvalue_early_stop.stopped or self.hparams.stage < 2:
            return super().export_rule()
        weights = {k: w.detach().cpu().tolist() for k, w in self.arch_weights().items()}
        return final_genotype(self.supernet.choices, weights, self.hparams.max_skips)

    def arch_record(self, arch: Arch) -> dict[str, Any]:
        record = super().arch_record(arch)
        if self.selection is None and not self.eigenvalue_early_stop.stopped:
            record["rule"] = (f"P-DARTS final rule, at most {self.hparams.max_skips} skips in the normal cell"
                              if self.hparams.stage == 2 else
                              f"stage {self.hparams.stage} of 3: DARTS's rule on the current weights")
            record["edge_candidates"] = {label: list(ops) for label, ops in self.supernet.choices.items()}
        return record


def _pruned(checkpoint_path: str, stage: int) -> dict[str, list[list[str]]]:
    """The candidates of ``stage`` from the checkpoint of stage - 1: its lowest weights dropped."""
    checkpoint = read_checkpoint(checkpoint_path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if checkpoint["oneshot"]["algorithm"] != "PDartsSearch" or hparams.get("stage") != stage - 1:
        raise ValueError(f"prune_from {checkpoint_path}: a PDartsSearch checkpoint of stage {stage - 1} is "
                         f"needed, got {checkpoint['oneshot']['algorithm']} stage {hparams.get('stage')}")
    candidates = candidates_per_label((hparams.get("space_options") or {}).get("edge_candidates"))
    state = checkpoint["state_dict"]
    weights = {label: F.softmax(state[f"alphas.{label}"].float(), dim=-1).tolist() for label in EDGE_LABELS}
    return prune_candidates(candidates, weights, NUM_TO_DROP[stage - 1])
