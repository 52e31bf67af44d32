"""Perturbation-based architecture selection (DARTS-PT).

Wang et al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021; reference
code ruocwang/darts-pt. What the reference does, and what this module follows:

* **Op selection** (``nasbench201/projection.py`` ``pt_project.project``, ``sota/cnn/projection.py``
  ``project_op``): take an undecided edge, and for every candidate op measure the supernet's
  validation accuracy (or loss) with that op's weight set to 0 in the *projected* weights
  (``get_projected_weights()``: softmax(alpha), with the edges decided so far replaced by their
  one-hot). The rest of the edge keeps its weights: there is **no renormalization**
  (``weights[eid] * proj_mask``). ``--proj_crit acc`` keeps the op whose removal gives the
  lowest accuracy, ``--proj_crit loss`` the one whose removal gives the highest loss (strict
  comparisons, so the first op on ties); the edge is then one-hot on that op from then on.
* **Edge order**: ``--edge_decision random`` (the only choice there), uniform over the
  undecided edges (``np.random.choice``).
* **Measurement**: ``infer(..., eval=False, weights=...)`` runs the validation queue under
  ``torch.no_grad`` with the network in *train* mode ("disable running stats for projection":
  BatchNorm normalizes with batch statistics). Here the same, on the given ``val_batches``;
  the BatchNorm running statistics that train mode would update are restored.
* **Topology** (DARTS space only, ``sota/cnn/projection.py`` ``project_edge``; the result is
  applied by ``project_edge`` of ``sota/cnn/model_search_darts_proj.py``): after all ops are fixed,
  take a random node among those with more than two inputs (``nid2eids``: nodes 3, 4, 5; node 2
  has exactly two and is never a candidate). Every measurement starts from fresh
  ``get_projected_weights()`` and sets only the *measured* input edge to 0 (all its weights): an
  input eliminated earlier for the same node is not zeroed in later measurements, since the
  model's projection is only updated once the node is done. The reference sweeps the remaining
  inputs and drops the one whose removal leaves the *highest* accuracy (*lowest* loss; ``not
  compare``, so the last on ties), repeating until two remain; so it keeps the two inputs whose
  removal hurts most (the lower input on ties). Then the dropped inputs' projected weights are all
  0 and the two kept ones stay one-hot on their ops. ``genotype()`` takes, per node, the two inputs
  with the largest non-``none`` weight (a stable sort: the lower input on ties; node 2 keeps both
  of its inputs), which are the kept two unless one is one-hot on ``none``. All the same here:
  the same zeroing, drops, tie rule, projected weights and genotype parse. NAS-Bench-201 keeps
  every edge.
* **Rounds**: in the DARTS space each round decides one normal and one reduce edge (or node)
  (``project_op(..., 'normal')`` then ``'reduce'``); ``pt_project`` makes ``num_edges +
  len(nid2eids)`` = 14 + 3 = 17 rounds: 14 op rounds, then 3 node rounds (nodes 3, 4, 5; none for
  node 2), as here. NB201 has one cell type and one round per edge (6).
* **Tuning between rounds** (``proj_interval`` = ``--proj_intv``, 5 in ``exp_scripts/*proj*.sh``):
  epochs of the search's bilevel training on the projected network: per training batch one
  first-order architecture step on a validation batch (``architect.step`` is called without
  ``eta``/``network_optimizer``), then one weight step (``model.step``) with gradient clipping;
  the weight SGD is reset to lr ``learning_rate / 10`` with the search's momentum and weight decay
  (``model.reset_optimizer``). The DARTS code builds a cosine scheduler over the tuning epochs but
  never steps it, so the lr stays at ``learning_rate / 10`` in both spaces, as here. The reference
  projects at ``epoch % proj_intv == 0`` and at the last of ``proj_intv * (rounds - 1)`` (NB201,
  ``nasbench201/projection.py`` ``pt_project``) or ``proj_intv * (rounds - 1) + 1`` (DARTS,
  ``sota/cnn/projection.py`` ``pt_project``: ``num_projs = 14 + 3 - 1 = 16``, so ``16 * proj_intv
  + 1`` epochs, projecting at 0, ``proj_intv``, ..., ``16 * proj_intv``) tuning epochs: every gap
  is ``proj_intv`` epochs except NB201's last, ``proj_intv - 1``; DARTS has 16 gaps for its 17
  rounds. :func:`tuning_epochs` gives those gaps.

Where this module differs:

* the epoch(s) the reference trains after its last projection are skipped: they cannot change
  the architecture;
* the architecture optimizer continues the search's Adam state when ``arch_optimizer_state``
  is given (``oneshot discretize`` passes the checkpoint's, as the reference keeps its
  ``architect.optimizer``); without it a fresh Adam with the search's settings is used;
  ``tune_batches`` can shorten each tuning epoch;
* DARTS space: by default ``none`` is not a candidate of the op selection (a genotype cannot
  hold it), so each edge is fixed to one of the seven other ops. ``none_candidate=True`` is the
  reference: ``none`` may win an edge, and the genotype then reads that edge the way DARTS's
  ``genotype()`` parses it, as the first other op (all its weights are 0 there);
* every measurement uses the same fixed ``val_batches``, by default the whole validation set
  as the reference's ``infer`` (which reshuffles its queue each time; with BatchNorm in train
  mode the batch composition changes the result slightly);
* topology: each input of a node is measured once. The reference re-measures the remaining
  inputs in every sweep of ``project_edge``, but with the same weights (only its reshuffled queue
  differs), so on the fixed ``val_batches`` the repeats would give the same numbers; the drops are
  made from the single measurements, in the reference's order and with its tie rule.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from oneshot.batchnorm import preserved_batchnorm
from oneshot.selection.best_of_n import score_architecture
from oneshot.selection.protocol import DifferentiableSupernet
from supernets import Arch
from supernets.labels import edge_label, node_index


SPACES = ("nb201", "darts")
CRITERIA = ("acc", "loss")
Measurement = dict[str, float]  # {"acc": validation accuracy, "loss": validation loss}


@torch.no_grad()
def masked_scores(model: DifferentiableSupernet, weights: dict[str, torch.Tensor],
                  batches: Sequence[Any]) -> Measurement:
    """Image-weighted accuracy and loss of the dense supernet under ``weights`` on ``batches``.

    BatchNorm in train mode (batch statistics) as the reference's ``infer(eval=False)``; the
    running statistics it updates are put back, so scoring leaves the model as it was.
    """
    was_training = model.training
    with preserved_batchnorm(model.supernet):
        model.train()
        accuracy, loss = score_architecture(model, weights, batches)
    model.train(was_training)
    return {"acc": accuracy, "loss": loss}


def harm(measurement: Measurement, criterion: str) -> float:
    """How much a removal hurts: the accuracy lost (``acc``) or the loss reached (``loss``)."""
    return -measurement["acc"] if criterion == "acc" else measurement["loss"]


def tuning_epochs(space: str, rounds: int, proj_interval: int) -> list[int]:
    """Tuning epochs after each round but the last, as the reference schedules them.

    The reference projects at ``epoch % proj_intv == 0`` and at its last epoch: DARTS trains
    ``proj_intv * (rounds - 1) + 1`` epochs (17 rounds: 16 gaps of ``proj_intv``, the epoch after
    the last projection is not a gap), NB201 ``proj_intv * (rounds - 1)`` (its last gap is
    ``proj_intv - 1``).
    """
    gaps = [proj_interval] * max(rounds - 1, 0)
    if space == "nb201" and gaps and proj_interval > 1:
        gaps[-1] = proj_interval - 1  # projects at the last of proj_intv * (edges - 1) epochs
    return gaps


def projected_weights(model: DifferentiableSupernet, decided: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``get_projected_weights()``: the architecture distribution with decided edges replaced."""
    weights = model.arch_weights()
    weights.update(decided)
    return weights


def _train_and_val(batch: Any) -> tuple[Any, Any]:
    """(train batch, validation batch or None) from a bilevel or a plain loader's batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[0], dict):
        batch = batch[0]  # CombinedLoader: (batch, batch index, loader index)
    if isinstance(batch, dict):
        return batch["train"], batch.get("val")
    return batch, None


def tune(model: DifferentiableSupernet, decided: dict[str, torch.Tensor], loader: Iterable[Any],
         weight_optimizer: torch.optim.Optimizer, arch_optimizer: torch.optim.Optimizer,
         max_batches: int | None = None) -> None:
    """One tuning epoch: per batch a first-order architecture step on the validation half of the
    bilevel batch (skipped for plain batches), then a weight step, both on the projected network."""
    model.train()
    for step, batch in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        train_batch, val_batch = _train_and_val(batch)
        if val_batch is not None:
            arch_optimizer.zero_grad()
            val_batch = tuple(t.to(model.device) for t in val_batch)
            loss, _ = model.loss_and_accuracy(val_batch, projected_weights(model, decided))
            loss.backward()
            arch_optimizer.step()
        weight_optimizer.zero_grad()
        weights = {k: w.detach() for k, w in projected_weights(model, decided).items()}
        loss, _ = model.loss_and_accuracy(tuple(t.to(model.device) for t in train_batch), weights)
        loss.backward()
        if model.hparams.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.supernet.parameters(), model.hparams.grad_clip)
        weight_optimizer.step()
    arch_optimizer.zero_grad()
    weight_optimizer.zero_grad()


def perturbation_select(model: DifferentiableSupernet, val_batches: Iterable[Any], train_loader: Iterable[Any] | None = None,
                        proj_interval: int = 0, rng: random.Random | int | None = None,
                        num_batches: int | None = None, criterion: str = "acc",
                        tune_batches: int | None = None, none_candidate: bool = False,
                        arch_optimizer_state: dict[str, Any] | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[Arch, dict[str, Any]]:
    """DARTS-PT selection on a trained supernet (tuning changes the model's weights and alphas).

    Args:
        model: a differentiable search algorithm (its ``arch_weights()`` are the start).
        val_batches: (x, y) batches the removals are measured on; the first ``num_batches``
            (all when None) are taken once and reused for every measurement.
        train_loader: the search's bilevel loader ({"train", "val"} batches) for the tuning;
            plain (x, y) batches tune the weights only. Needed when ``proj_interval`` > 0.
        proj_interval: tuning epochs between rounds (``--proj_intv``; the paper's 5, 0: none).
        rng: ``random.Random`` or seed of the random edge (and node) order.
        num_batches: how many of ``val_batches`` to measure on.
        criterion: ``acc`` or ``loss`` (``--proj_crit``).
        tune_batches: at most this many batches per tuning epoch (None: whole epochs).
        none_candidate: DARTS space: ``none`` may win an edge, as in the reference.
        arch_optimizer_state: the search's architecture Adam ``state_dict`` to continue tuning with.
        progress: called with one line per decision and per tuning epoch (e.g. ``print``).

    Returns:
        The arch and the scores: per edge label, the {"acc", "loss"} with each op removed (the
        candidate's index order; ``None`` where an op was not a candidate), in ``"ops"``; the
        order edges were decided in, ``"edge_order"``; the unperturbed measurement before each
        round, ``"base"``; the tuning epochs after each round, ``"tuning_epochs"``; DARTS space
        only, per node with more than two inputs the measurement with each input edge removed
        (keyed by the input), ``"nodes"``.

    Raises:
        NotImplementedError: for a space other than ``nb201`` and ``darts``.
        ValueError: bad ``proj_interval``/``num_batches``/``criterion``, no batches, or tuning
            without a loader.
    """
    space = model.space.name
    if space not in SPACES:
        raise NotImplementedError(f"perturbation selection for the {space!r} space is not "
                                  f"implemented; supported: {', '.join(SPACES)}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}: accepted: {', '.join(CRITERIA)}")
    if proj_interval < 0:
        raise ValueError(f"proj_interval={proj_interval}: must be at least 0")
    if proj_interval and train_loader is None:
        raise ValueError(f"proj_interval={proj_interval} needs a train_loader to tune on")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches={num_batches}: measure on at least one batch")
    if tune_batches is not None and tune_batches < 1:
        raise ValueError(f"tune_batches={tune_batches}: tune on at least one batch per epoch")
    batches = list(val_batches if num_batches is None else itertools.islice(iter(val_batches), num_batches))
    if not batches:
        raise ValueError("val_batches yielded nothing: perturbation selection needs at least one batch")
    generator = rng if isinstance(rng, random.Random) else random.Random(rng)

    labels = list(model.alphas)
    groups = ["normal", "reduce"] if space == "darts" else [""]
    undecided = {g: [k for k in labels if k.startswith(g)] for g in groups}
    excluded = set()
    nodes: dict[str, list[str]] = {}
    if space == "darts":
        from supernets.darts import NONE_INDEX, NODE_LABELS
        excluded = set() if none_candidate else {NONE_INDEX}
        # project_edge's candidates (nid2eids): the nodes with more than two inputs; node 2 has no round
        nodes = {g: [n for n in NODE_LABELS if n.startswith(g) and node_index(n) > 2] for g in groups}
    op_rounds = max(len(v) for v in undecided.values())
    node_rounds = max((len(v) for v in nodes.values()), default=0)
    gaps = tuning_epochs(space, op_rounds + node_rounds, proj_interval)

    weight_optimizer = arch_optimizer = None
    if proj_interval:
        h = model.hparams
        # reference: model.reset_optimizer(args.learning_rate / 10, momentum, weight_decay)
        weight_optimizer = torch.optim.SGD(model.supernet.parameters(), lr=h.learning_rate / 10,
                                           momentum=h.momentum, weight_decay=h.weight_decay)
        arch_optimizer = torch.optim.Adam(model.architecture_parameters(), lr=h.arch_learning_rate,
                                          betas=tuple(h.arch_betas), weight_decay=h.arch_weight_decay)
        if arch_optimizer_state is not None:
            try:
                arch_optimizer.load_state_dict(arch_optimizer_state)
            except (ValueError, KeyError) as error:
                raise ValueError(f"the search's architecture optimizer state does not fit this model "
                                 f"({error}); pass --fresh-arch-optimizer") from None

    decided: dict[str, torch.Tensor] = {}
    scores: dict[str, Any] = {"criterion": criterion, "ops": {}, "edge_order": [], "base": [],
                              "tuning_epochs": gaps}
    if space == "darts":
        scores["nodes"] = {}
    was_training = model.training

    def current() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: w.detach().clone() for k, w in projected_weights(model, decided).items()}

    def measure(weights: dict[str, torch.Tensor]) -> Measurement:
        return masked_scores(model, weights, batches)

    try:
        for round_index in range(op_rounds + node_rounds):
            weights = current()
            scores["base"].append(measure(weights))
            for g in groups:
                if round_index < op_rounds:
                    if not undecided[g]:
                        continue
                    label = generator.choice(undecided[g])  # --edge_decision random
                    undecided[g].remove(label)
                    removed: list[Measurement | None] = []
                    for op in range(len(weights[label])):
                        if op in excluded:
                            removed.append(None)
                            continue
                        masked = dict(weights)
                        masked[label] = weights[label].clone()
                        masked[label][op] = 0  # no renormalization, as the reference
                        removed.append(measure(masked))
                    # keep the op whose removal hurts most; strict comparison: first on ties
                    best = min((i for i, m in enumerate(removed) if m is not None),
                               key=lambda i: (-harm(removed[i], criterion), i))
                    decided[label] = F.one_hot(torch.tensor(best), len(weights[label])).to(weights[label])
                    weights[label] = decided[label]
                    scores["ops"][label] = removed
                    scores["edge_order"].append(label)
                    if progress:
                        progress(f"round {round_index + 1}/{op_rounds + node_rounds}: {label} -> op {best}")
                else:
                    if not nodes[g]:
                        continue
                    node = generator.choice(nodes[g])
                    nodes[g].remove(node)
                    inputs = list(range(node_index(node)))
                    removed_input = {}
                    for j in inputs:  # project_edge: only the measured edge is zeroed
                        masked = dict(weights)
                        masked[edge_label(node, j)] = torch.zeros_like(weights[edge_label(node, j)])
                        removed_input[j] = measure(masked)
                    kept = list(inputs)
                    while len(kept) > 2:  # drop the edge whose removal hurts least (last on ties)
                        kept.remove(max(kept, key=lambda j: (-harm(removed_input[j], criterion), j)))
                    for j in inputs:  # model.project_edge: the inputs not kept become all 0
                        if j not in kept:
                            decided[edge_label(node, j)] = torch.zeros_like(weights[edge_label(node, j)])
                            weights[edge_label(node, j)] = decided[edge_label(node, j)]
                    scores["nodes"][node] = {str(j): m for j, m in removed_input.items()}
                    if progress:
                        progress(f"round {round_index + 1}/{op_rounds + node_rounds}: {node} keeps inputs {kept}")
            if round_index < len(gaps):
                for epoch in range(gaps[round_index]):
                    tune(model, decided, train_loader, weight_optimizer, arch_optimizer, tune_batches)
                    if progress:
                        progress(f"  tuned epoch {epoch + 1}/{gaps[round_index]}")
    finally:
        model.train(was_training)

    final = current()

    def op_of(label: str) -> int:
        if space == "darts":  # DARTS's genotype(): the strongest op but `none`, first on ties
            return max((k for k in range(len(final[label])) if k != NONE_INDEX),
                       key=lambda k: (float(final[label][k]), -k))
        return int(final[label].argmax())

    def inputs_of(node: str) -> list[int]:
        # DARTS-PT's genotype(): the two inputs with the largest weight but `none` (a stable sort,
        # so the lower input on ties), strongest first; the kept two unless one is one-hot `none`
        strength = {j: max(float(w) for k, w in enumerate(final[edge_label(node, j)]) if k != NONE_INDEX)
                    for j in range(node_index(node))}
        return sorted(strength, key=lambda j: -strength[j])[:2]

    if space == "nb201":
        arch = Arch(space, {label: op_of(label) for label in labels})
    else:
        arch = Arch(space, {node: tuple((op_of(edge_label(node, j)), j) for j in inputs_of(node))
                            for node in NODE_LABELS})
    return model.space.check(arch), scores
