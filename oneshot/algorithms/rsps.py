"""Random search with weight sharing (RSPS; "RANDOM-NAS" in NAS-Bench-201).

Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture Search" (UAI 2019),
as NAS-Bench-201 runs it: D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` with
``scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh`` and ``configs/nas-benchmark/algos/RANDOM.config``.

Each weight step trains one uniformly sampled architecture as a single path (``random_genotype``
then a forward in ``search_func``); there is no architecture step. After training, best-of-N
selection (:func:`oneshot.selection.best_of_n.best_of_n`, ``search_find_best``) scores
``selection_samples`` (``--select_num 100``) uniform architectures with the inherited weights,
each on ``selection_batches`` validation batches, and exports the best.
"""
from __future__ import annotations

from oneshot.algorithms.single_path import SinglePathSearch


class RandomSinglePathSearch(SinglePathSearch):
    """Uniform single-path supernet training, then best-of-N selection.

    The selection runs at the end of the last epoch's validation (so the last checkpoint holds
    it), or at the end of training when no validation ran then; until then :meth:`export` has
    nothing to return.
    """
