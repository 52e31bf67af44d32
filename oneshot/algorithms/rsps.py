"""Random search with weight sharing (RSPS; "RANDOM-NAS" in NAS-Bench-201).

Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture Search" (UAI 2019),
as NAS-Bench-201 runs it: D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` with
``scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh`` and ``configs/nas-benchmark/algos/RANDOM.config``.

What differs from the base: there are no architecture parameters to learn. Each weight step
trains one uniformly sampled architecture as a single path (``random_genotype`` then a forward
in ``search_func``); there is no architecture step. After training, best-of-N selection
(:func:`oneshot.selection.best_of_n`, ``search_find_best``) scores ``selection_samples`` uniform
architectures with the inherited weights and exports the best.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import torch

from oneshot.algorithms.base import SearchAlgorithm, rank_shared_seed
from supernets import Arch


class RandomSinglePathSearch(SearchAlgorithm):
    """Uniform single-path supernet training, then best-of-N selection.

    The alphas the base creates are set to zero and frozen: softmax(0) is the uniform
    distribution the architectures are sampled from, so what is logged as the architecture
    distribution is true, and the architecture optimizer never sees a gradient (its step does
    nothing). Samples come from a ``random.Random`` seeded by (global seed, step), identical on
    every rank under data parallelism.

    Validation runs one uniformly sampled architecture per validation batch in eval mode, as
    RANDOM-NAS.py's ``valid_func`` does (``random_genotype`` before each batch): it measures
    the supernet's average single-path quality. The selection runs at the end of the last
    epoch's validation (so the last checkpoint holds it), or at the end of training when no
    validation ran then (the base does both); until then :meth:`export` has nothing to return.

    The selection is always the base's ``best_of_n``: ``selection_samples`` (RANDOM-NAS.sh
    ``--select_num 100``) uniform architectures, each scored on ``selection_batches`` validation
    batches (``search_find_best``: one).

    Args:
        **kwargs: the shared optimization settings of :class:`SearchAlgorithm`.
    """

    arch_step_first = False  # no architecture step; the order is immaterial
    differentiable = False  # nothing to take a Hessian of (base: hessian_every is skipped)
    single_path = True  # only the sampled candidate runs

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        with torch.no_grad():
            for alpha in self.alphas.values():
                alpha.zero_()  # softmax(0): the uniform sampling distribution
                alpha.requires_grad_(False)

    # --- training: one uniform single path per weight step -----------------------------------
    def sample_architecture(self, *purpose: Any) -> Arch:
        """A uniform architecture from a generator that every rank seeds identically."""
        return self.space.sample(random.Random(rank_shared_seed("rsps", *purpose)))

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return self.space.decisions(self.sample_architecture("weights", self.global_step))

    def architecture_step(self, train_batch: Any, val_batch: Any) -> None:
        return None  # RANDOM-NAS.py search_func: weight step only

    # --- validation: a sampled architecture per batch ----------------------------------------
    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self.space.decisions(self.sample_architecture("validation", self.current_epoch, batch_idx))
