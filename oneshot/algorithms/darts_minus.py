"""DARTS-: Robustly stepping out of performance collapse without indicators (Chu et al., ICLR 2021).

Reference: Meituan-AutoML/DARTS-@adb81a8 ``src/search/model_search.py`` (``MixedOp``: the
auxiliary op), ``src/utils.py`` (``DecayScheduler``), ``src/search/args.py`` and
``scripts/run_darts_minus.sh`` (``--auxiliary_skip --skip_beta 1 --decay linear``).

What differs from DARTS: every edge of every cell gets an auxiliary skip outside the softmax,
``sum_k softmax(alpha)_k op_k(x) + beta * skip(x)`` (an identity; on strided edges its own
affine-free FactorizedReduce, trained with the weights), in every forward of the search. beta is
one global number set at the start of each epoch by ``DecayScheduler``; with the published
linear decay beta = (50 - e) / 50, which ends at 0.02, not 0. The exported cell has no
auxiliary skip.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from oneshot.algorithms.base import with_space_option
from oneshot.algorithms.darts import DartsSearch

DECAYS = ("linear", "cosine", "slow_cosine", "none")


class DartsMinusSearch(DartsSearch):
    """DARTS with DARTS-'s decaying auxiliary skip connection on every edge.

    Args:
        skip_beta: beta at the start (``--skip_beta`` 1.0).
        decay: ``linear`` (the published run), ``cosine``, ``slow_cosine`` or ``none``
            (``--decay``; none keeps beta constant).
        decay_start_epoch / decay_stop_epoch / decay_max_epoch: ``DecayScheduler``'s T_start,
            T_stop, T_max (0, 50, 50); None takes the run's epochs for T_stop and T_max.
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch`.
    """

    def __init__(self, *args: Any, skip_beta: float = 1.0,
                 decay: Literal["linear", "cosine", "slow_cosine", "none"] = "linear",
                 decay_start_epoch: int = 0, decay_stop_epoch: int | None = None,
                 decay_max_epoch: int | None = None, **kwargs: Any):
        if decay not in DECAYS:
            raise ValueError(f"decay={decay!r}; accepted: {', '.join(DECAYS)}")
        args, kwargs = with_space_option(args, kwargs, "auxiliary_skip", True)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if not hasattr(self.supernet, "auxiliary_skip_weight"):
            raise ValueError(f"DARTS- needs a supernet with an auxiliary skip per edge; "
                             f"{self.space.name!r} has none (use space: darts)")

    def beta(self, epoch: int, epochs: int, previous: float | None = None) -> float:
        """``DecayScheduler.step(epoch)``: beta of epoch e (the previous value past T_stop)."""
        h = self.hparams
        t_max = h.decay_max_epoch if h.decay_max_epoch is not None else epochs
        t_stop = h.decay_stop_epoch if h.decay_stop_epoch is not None else epochs
        t_start, base = h.decay_start_epoch, float(h.skip_beta)
        previous = base if previous is None else previous
        if epoch < t_start:
            return previous
        if h.decay == "none":
            return base
        span = max(t_max - t_start, 1)
        if h.decay == "linear":
            return base * (t_max - epoch) / span if epoch <= t_stop else previous
        if h.decay == "cosine":
            return base * (1 + math.cos(math.pi * epoch / span)) / 2
        return base * math.cos(math.pi / 2 * epoch / span)  # slow_cosine

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        epochs = self.planned_epochs()
        beta = float(self.hparams.skip_beta)
        for epoch in range(self.current_epoch + 1):  # replayed, so a resumed run gets the same value
            beta = self.beta(epoch, epochs, beta)
        self.supernet.auxiliary_skip_weight = beta
        self.log("skip_beta", beta, on_epoch=True, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["skip_beta"] = float(self.supernet.auxiliary_skip_weight)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The supernet is scored (rank, discretize) with the beta it was trained with last."""
        super().on_load_checkpoint(checkpoint)
        if "skip_beta" in checkpoint:
            self.supernet.auxiliary_skip_weight = float(checkpoint["skip_beta"])
