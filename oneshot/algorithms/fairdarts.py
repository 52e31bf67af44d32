"""Fair DARTS: Eliminating unfair advantages in differentiable architecture search (Chu et al., ECCV 2020).

Reference: xiaomi-automl/FairDARTS@270cfc9 ``fairdarts/model_search.py`` (sigmoid weights,
zero alphas), ``fairdarts/separate_loss.py`` (``ConvSeparateLoss``), ``fairdarts/architect.py``,
``fairdarts/train_search.py`` (defaults) and ``fairdarts/utils.py`` (``parse``,
``threshold_sparse``).

What differs from first-order DARTS: the candidates of an edge are weighted by independent
sigmoids, not a softmax (no competition, so skip connections gain no unfair advantage); the
architecture loss adds the zero-one loss ``-w * mean((sigmoid(alpha) - 0.5)^2)`` over every
alpha of both cell types, which pushes each sigmoid towards 0 or 1; and the export keeps, per
node, the top-2 input edges by their strongest op, each only if its sigmoid reaches 0.85. A node
may therefore keep 0, 1 or 2 inputs: such a genotype builds as FairDARTS's own cell (only nodes
with an input are concatenated; :meth:`supernets.darts.DartsSpace.build_network`).
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from oneshot.algorithms.base import all_reduce_mean
from oneshot.algorithms.darts import DartsSearch
from supernets import Arch

GENOTYPE_RULES = ("threshold", "darts")


class FairDartsSearch(DartsSearch):
    """DARTS with sigmoid architecture weights, the zero-one loss and FairDARTS's sparse export.

    Args:
        zero_one_weight: w of the zero-one loss (``--aux_loss_weight`` 10).
        threshold: the sigmoid an edge's op needs to be kept (``--op_threshold`` 0.85).
        genotype_rule: ``threshold`` (``parse_method threshold_sparse``, the default) or ``darts``
            (top-2 inputs per node, always two: a DARTS cell).
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch` (first order
            only; FairDARTS: ``alpha_init_std`` 0 (zeros), ``excluded_candidates: [none]``).
    """

    def __init__(self, *args: Any, zero_one_weight: float = 10.0, threshold: float = 0.85,
                 genotype_rule: Literal["threshold", "darts"] = "threshold", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if self.hparams.unrolled:
            raise ValueError("FairDARTS's architecture step is first order (architect.py); set unrolled: false")
        if genotype_rule not in GENOTYPE_RULES:
            raise ValueError(f"genotype_rule={genotype_rule!r}; accepted: {', '.join(GENOTYPE_RULES)}")
        if genotype_rule == "threshold" and not hasattr(self.space, "discretize_threshold"):
            raise ValueError(f"genotype_rule='threshold' is FairDARTS's DARTS-space rule; space "
                             f"{self.space.name!r} has none (use 'darts', the space's own rule)")

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """sigmoid(alpha) per candidate, independently (0 for the excluded candidates)."""
        return {label: torch.sigmoid(self.logits(label)) for label in self.alphas}

    def zero_one_loss(self) -> torch.Tensor:
        """``-mean((sigmoid(alpha) - 0.5)^2)`` over every non-excluded alpha of every label."""
        included = []
        for label, w in self.arch_weights().items():
            keep = torch.ones_like(w, dtype=torch.bool)
            keep[self.excluded.get(label, [])] = False
            included.append(w[keep])
        return -(torch.cat(included) - 0.5).square().mean()

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor:
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        loss = self.supernet_loss(val_batch)
        self.manual_backward(loss + self.hparams.zero_one_weight * self.zero_one_loss())
        all_reduce_mean([a.grad for a in self.architecture_parameters()])
        arch_optimizer.step()
        return loss.detach()

    def export_rule(self) -> Arch:
        if self.hparams.genotype_rule == "darts" or self.eigenvalue_early_stop.stopped:
            return super().export_rule()
        return self.space.discretize_threshold({k: w.detach().cpu() for k, w in self.arch_weights().items()},
                                               self.hparams.threshold)

    def arch_record(self, arch: Arch) -> dict[str, Any]:
        record = super().arch_record(arch)
        if self.hparams.genotype_rule == "threshold" and self.selection is None and not self.eigenvalue_early_stop.stopped:
            record["rule"] = (f"FairDARTS threshold_sparse: per node the top-2 inputs by their strongest "
                              f"sigmoid, each kept if it reaches {self.hparams.threshold}")
        return record

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("zero_one_loss", self.zero_one_loss().detach(), on_epoch=True, sync_dist=True)
