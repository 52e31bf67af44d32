"""Best-of-N selection: score sampled architectures with the supernet's inherited weights.

The selection step of NAS-Bench-201's weight-sharing baselines (Dong & Yang, ICLR 2020):
RANDOM-NAS (RSPS) samples ``select_num`` = 100 uniform cells after training and keeps the one
with the best validation accuracy (D-X-Y/AutoDL-Projects
``scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh`` ``--select_num 100``,
``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` ``search_find_best``); SETN and ENAS select the same
way from their own candidates. :func:`best_of_n` takes explicit ``candidates`` for those.

How an architecture is scored, and where this differs from the reference:

* single path with inherited weights: ``space.decisions(arch)`` (only the chosen op of each
  edge runs);
* BN in eval mode under ``torch.no_grad``, as ``search_find_best`` does (``network.eval()``).
  Cells built with ``track_running_stats=False`` (NB201's BN0 scripts) still normalise with the
  batch's statistics; running statistics, where kept, were averaged over all sampled paths;
* every candidate sees the **same** fixed batches. ``search_find_best`` draws the *next*
  validation batch for each candidate, so candidates there are compared on different images;
  a common batch removes that noise from the comparison at no cost;
* accuracy decides, as in the reference; a lower loss breaks ties (the reference keeps the
  first sampled), since with one 64-image batch equal accuracies are common.

Both deviations are the default and one option: ``shared_batches=False`` restores the reference
protocol (next batches per candidate, ties to the first).
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from oneshot.selection.protocol import ScoredSupernet
from supernets import Arch


Score = tuple[str, float, float]  # (canonical arch string, accuracy, loss)


@torch.no_grad()
def score_architecture(model: ScoredSupernet, arch: Arch | Mapping[str, Any],
                       batches: Sequence[Any]) -> tuple[float, float]:
    """Accuracy and mean cross-entropy over ``batches`` (image-weighted) of ``arch`` (single path)
    or of the supernet under explicit decisions (e.g. masked edge weights), in the current mode."""
    decisions = model.space.decisions(arch) if isinstance(arch, Arch) else arch
    correct = loss_sum = 0.0
    images = 0
    for x, y in batches:
        x, y = x.to(model.device), y.to(model.device)
        loss, accuracy = model.loss_and_accuracy((x, y), decisions)
        n = int(y.shape[0])
        correct += float(accuracy) * n
        loss_sum += float(loss) * n
        images += n
    return correct / images, loss_sum / images


def _endless(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches again and again (a fresh pass, so a shuffling loader reshuffles)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches yielded nothing: best_of_n needs at least one (x, y) batch")


def best_of_n(model: ScoredSupernet, batches: Iterable[Any], num_samples: int = 100,
              num_batches: int = 1, candidates: Sequence[Arch] | None = None,
              rng: random.Random | int | None = None,
              shared_batches: bool = True) -> tuple[Arch, list[Score]]:
    """Score ``num_samples`` uniform archs (or ``candidates``) on the same batches; keep the best.

    Args:
        model: a search algorithm whose supernet provides the inherited weights.
        batches: (x, y) batches, e.g. ``datamodule.val_dataloader()``; the first
            ``num_batches`` are taken once and shared by every candidate.
        num_samples: uniform samples when ``candidates`` is None (RANDOM-NAS ``--select_num 100``).
        num_batches: validation batches per candidate (the reference scores on one).
        candidates: archs to score instead of sampling (SETN: the top-100 by alpha).
        shared_batches: True (default): every candidate on the same first ``num_batches``
            batches, ties broken by the lower loss. False: the reference protocol
            (``search_find_best``): each candidate on the *next* ``num_batches`` batches (the
            loader is re-iterated when exhausted), ties to the first sampled.
        rng: ``random.Random`` or int seed for the uniform samples; the same seed gives the same
            candidates and hence, with the same weights and batches, the same choice.

    Returns:
        The best arch, and (arch string, accuracy, loss) of every candidate in scoring order.

    Raises:
        ValueError: if ``num_samples``/``num_batches`` < 1, ``candidates`` is empty or belongs to
            another space, or ``batches`` yields nothing.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches}: score on at least one batch")
    space = model.space
    if candidates is None:
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}: sample at least one architecture")
        generator = rng if isinstance(rng, random.Random) else random.Random(rng)
        candidates = [space.sample(generator) for _ in range(num_samples)]
    else:
        candidates = [space.check(arch) for arch in candidates]
        if not candidates:
            raise ValueError("candidates is empty: pass at least one architecture, or None to sample")
    stream = _endless(batches)
    fixed = list(itertools.islice(stream, num_batches))
    was_training = model.training
    model.eval()  # search_find_best: network.eval() under torch.no_grad()
    try:
        scores = []
        for i, arch in enumerate(candidates):
            own = fixed if shared_batches or i == 0 else list(itertools.islice(stream, num_batches))
            accuracy, loss = score_architecture(model, arch, own)
            scores.append((space.format(arch), accuracy, loss))
    finally:
        model.train(was_training)
    tie_break = (lambda i: scores[i][2]) if shared_batches else (lambda i: 0.0)
    best = min(range(len(candidates)), key=lambda i: (-scores[i][1], tie_break(i), i))
    return candidates[best], scores
