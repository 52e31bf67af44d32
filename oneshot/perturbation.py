"""Perturbation-based architecture selection (DARTS-PT).

Wang et al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021; reference
code ruocwang/darts-pt. What the reference does, and what this module follows:

* **Op selection** (``nasbench201/projection.py`` ``pt_project.project``, ``sota/cnn/projection.py``
  ``project_op``): take an undecided edge, and for every candidate op measure the supernet's
  validation accuracy with that op's weight set to 0 in the *projected* weights
  (``get_projected_weights()``: softmax(alpha), with the edges decided so far replaced by their
  one-hot). The rest of the edge keeps its weights: there is **no renormalization**
  (``weights[eid] * proj_mask``). ``--proj_crit acc`` keeps the op whose removal gives the
  lowest accuracy (strict ``<``, so the first op on ties); the edge is then fixed to that op
  (``project_op``: ``proj_weights[eid][opid] = 1``, one-hot from then on).
* **Edge order**: ``--edge_decision random`` (the only choice there), uniform over the
  undecided edges (``np.random.choice``).
* **Accuracy measurement**: ``infer(..., eval=False, weights=...)`` runs the whole validation
  queue under ``torch.no_grad`` with the network in *train* mode ("disable running stats for
  projection": BatchNorm normalizes with batch statistics). Here the same, on the given
  ``val_batches``; BatchNorm running statistics, which train mode would update, are restored.
* **Topology** (DARTS space only, ``sota/cnn/projection.py`` ``project_edge``): after all ops are
  fixed, for a random node remove, one at a time, the input edge whose removal (all its weights
  set to 0) leaves the *highest* accuracy, until two inputs remain. NAS-Bench-201 keeps every edge.
* **Rounds**: in the DARTS space each projection decides one normal and one reduce edge (or node)
  (``pt_project``: ``project_op(..., 'normal')`` then ``'reduce'``); NB201 has one cell type.
* **Fine-tuning between projections**: ``proj_intv`` epochs (``--proj_intv 5`` in
  ``exp_scripts/darts-proj-201.sh`` and ``darts-proj-sota.sh``) of the usual bilevel training
  (alpha step, then weight step) on the projected network, weight SGD reset to lr
  ``learning_rate / 10`` with the search's momentum and weight decay (``model.reset_optimizer``;
  the DARTS space adds cosine annealing to ``learning_rate_min`` over the tuning epochs).
  NB201 tunes ``proj_intv * (num_edges - 1)`` = 25 epochs, the DARTS space ``proj_intv * (14 + 4
  - 1) + 1`` = 86.

Where this module differs:

* tuning is ``tune_steps`` SGD steps of the supernet weights between rounds (default 0: pure
  perturbation selection on the trained supernet, no tuning), at constant lr ``learning_rate /
  10``, with the search's momentum, weight decay and gradient clipping; the architecture
  parameters of undecided edges are **not** updated during tuning (the reference keeps taking
  alpha steps). The published setting is ``proj_intv`` = 5 epochs per round: pass
  ``tune_steps = 5 * len(train_loader)`` to match its length;
* DARTS space: ``none`` is not a candidate of the op selection (a genotype cannot hold it), so
  each edge is fixed to one of the seven other ops;
* the scores of all edges use the same fixed ``val_batches`` (the reference iterates its shuffled
  validation queue each time).
"""
from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from supernets import Arch

if TYPE_CHECKING:
    from oneshot.algorithms.base import SearchAlgorithm

SPACES = ("nb201", "darts")


@torch.no_grad()
def masked_accuracy(model: "SearchAlgorithm", weights: dict[str, torch.Tensor],
                    batches: Sequence[Any]) -> float:
    """Image-weighted accuracy of the dense supernet under ``weights`` on ``batches``.

    BatchNorm in train mode (batch statistics) as the reference's ``infer(eval=False)``; the
    running statistics it updates are put back, so scoring leaves the model as it was.
    """
    buffers = {name: b.clone() for name, b in model.supernet.named_buffers()}
    was_training = model.training
    model.train()
    try:
        correct, images = 0.0, 0
        for x, y in batches:
            x, y = x.to(model.device), y.to(model.device)
            _, accuracy = model.loss_and_accuracy((x, y), weights)
            correct += float(accuracy) * int(y.shape[0])
            images += int(y.shape[0])
    finally:
        model.train(was_training)
        for name, b in model.supernet.named_buffers():
            b.copy_(buffers[name])
    return correct / images


def _tune(model: "SearchAlgorithm", weights: dict[str, torch.Tensor], train_iter: Iterable[Any],
          steps: int, optimizer: torch.optim.Optimizer) -> None:
    """``steps`` SGD steps of the supernet weights with the projected ``weights`` held fixed."""
    model.train()
    for _ in range(steps):
        batch = next(train_iter)
        if len(batch) == 3 and isinstance(batch[0], dict):  # CombinedLoader: (batch, idx, loader idx)
            batch = batch[0]
        if isinstance(batch, dict):  # the bilevel loader: {"train": (x, y), "val": (x, y)}
            batch = batch["train"]
        x, y = (t.to(model.device) for t in batch)
        optimizer.zero_grad()
        loss, _ = model.loss_and_accuracy((x, y), weights)
        loss.backward()
        if model.hparams.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.supernet.parameters(), model.hparams.grad_clip)
        optimizer.step()


def perturbation_select(model: "SearchAlgorithm", val_batches: Iterable[Any], train_loader: Iterable[Any] | None = None,
                        tune_steps: int = 0, rng: random.Random | int | None = None,
                        num_batches: int | None = None) -> tuple[Arch, dict[str, Any]]:
    """DARTS-PT selection on a trained supernet.

    Args:
        model: a differentiable search algorithm (its ``arch_weights()`` are the start).
        val_batches: (x, y) batches the accuracies are measured on; the first ``num_batches``
            (all when None) are taken once and reused for every measurement.
        train_loader: batches for the fine-tuning, (x, y) or the search's {"train", "val"} dicts;
            cycled. Needed when ``tune_steps`` > 0.
        tune_steps: weight SGD steps after each round but the last (0: no tuning; the paper
            tunes 5 epochs per round, see the module docstring).
        rng: ``random.Random`` or seed of the random edge (and node) order.
        num_batches: how many of ``val_batches`` to use.

    Returns:
        The arch and the scores: per edge label, the accuracy with each op removed (the
        candidate's index order; ``None`` where an op was not a candidate), in ``"ops"``; the
        order edges were decided in, ``"edge_order"``; the unperturbed accuracy before each
        round, ``"base_accuracy"``; DARTS space only, per node the accuracy with each input
        edge removed at each elimination, ``"nodes"``.

    Raises:
        NotImplementedError: for a space other than ``nb201`` and ``darts``.
        ValueError: bad ``tune_steps``/``num_batches``, no batches, or tuning without a loader.
    """
    space = model.space.name
    if space not in SPACES:
        raise NotImplementedError(f"perturbation selection for the {space!r} space is not "
                                  f"implemented; supported: {', '.join(SPACES)}")
    if tune_steps < 0:
        raise ValueError(f"tune_steps={tune_steps}: must be at least 0")
    if tune_steps and train_loader is None:
        raise ValueError(f"tune_steps={tune_steps} needs a train_loader to tune on")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches={num_batches}: score on at least one batch")
    batches = list(val_batches if num_batches is None else itertools.islice(iter(val_batches), num_batches))
    if not batches:
        raise ValueError("val_batches yielded nothing: perturbation selection needs at least one batch")
    generator = rng if isinstance(rng, random.Random) else random.Random(rng)

    weights = {k: w.detach().clone() for k, w in model.arch_weights().items()}
    labels = list(weights)
    groups = ["normal", "reduce"] if space == "darts" else [""]
    undecided = {g: [k for k in labels if k.startswith(g)] for g in groups}
    excluded = set()
    if space == "darts":
        from supernets.darts import NONE_INDEX, NODE_LABELS
        excluded = {NONE_INDEX}

    optimizer = None
    train_iter = None
    if tune_steps:
        h = model.hparams
        # reference: model.reset_optimizer(args.learning_rate / 10, momentum, weight_decay)
        optimizer = torch.optim.SGD(model.supernet.parameters(), lr=h.learning_rate / 10,
                                    momentum=h.momentum, weight_decay=h.weight_decay)
        train_iter = itertools.cycle(train_loader)

    scores: dict[str, Any] = {"ops": {}, "edge_order": [], "base_accuracy": []}
    was_training = model.training
    rounds = max(len(v) for v in undecided.values())
    node_rounds = 0
    if space == "darts":
        nodes = {g: [n for n in NODE_LABELS if n.startswith(g)] for g in groups}
        node_rounds = max(len(v) for v in nodes.values())
        scores["nodes"] = {}
        kept_inputs: dict[str, list[int]] = {}
    try:
        for round_index in range(rounds + node_rounds):
            scores["base_accuracy"].append(masked_accuracy(model, weights, batches))
            for g in groups:
                if round_index < rounds:
                    if not undecided[g]:
                        continue
                    label = generator.choice(undecided[g])  # --edge_decision random
                    undecided[g].remove(label)
                    accuracies: list[float | None] = []
                    for op in range(len(weights[label])):
                        if op in excluded:
                            accuracies.append(None)
                            continue
                        masked = dict(weights)
                        masked[label] = weights[label].clone()
                        masked[label][op] = 0  # no renormalization, as the reference
                        accuracies.append(masked_accuracy(model, masked, batches))
                    # proj_crit acc: lowest accuracy when removed; strict <: first on ties
                    best = min((i for i, a in enumerate(accuracies) if a is not None),
                               key=lambda i: (accuracies[i], i))
                    weights[label] = F.one_hot(torch.tensor(best), len(weights[label])).to(weights[label])
                    scores["ops"][label] = accuracies
                    scores["edge_order"].append(label)
                else:
                    if not nodes[g]:
                        continue
                    node = generator.choice(nodes[g])
                    nodes[g].remove(node)
                    inputs = list(range(int(node.split("/")[1])))
                    trace = []
                    while len(inputs) > 2:
                        removed = {}
                        for j in inputs:
                            masked = dict(weights)
                            masked[f"{node}<-{j}"] = torch.zeros_like(weights[f"{node}<-{j}"])
                            removed[j] = masked_accuracy(model, masked, batches)
                        # project_edge: drop the edge whose removal leaves the highest accuracy
                        # (`not compare(crit, extrema)` with `<`: the last one on ties)
                        drop = max(inputs, key=lambda j: (removed[j], j))
                        trace.append({str(j): a for j, a in removed.items()})
                        inputs.remove(drop)
                        weights[f"{node}<-{drop}"] = torch.zeros_like(weights[f"{node}<-{drop}"])
                    kept_inputs[node] = inputs
                    scores["nodes"][node] = trace
            if tune_steps and round_index < rounds + node_rounds - 1:
                _tune(model, weights, train_iter, tune_steps, optimizer)
    finally:
        model.train(was_training)

    def op_of(label: str) -> int:
        return int(weights[label].argmax())

    if space == "nb201":
        arch = Arch(space, {label: op_of(label) for label in labels})
    else:
        arch = Arch(space, {node: tuple((op_of(f"{node}<-{j}"), j) for j in kept_inputs[node])
                            for node in NODE_LABELS})
    return model.space.check(arch), scores
