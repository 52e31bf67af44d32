"""DrNAS: Dirichlet neural architecture search (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021).

Reference: xiangning-chen/DrNAS@f2caa4d ``utils.py`` (``process_step_matrix``: the Dirichlet
sample), ``DARTS-space/model_search.py`` / ``201-space/search_model.py`` (``_get_kl_reg``,
``genotype``), ``architect.py`` (the Adam and its L2 term) and ``201-space/train_search.py``
(the NB201 defaults).

What differs from first-order DARTS: every forward (weight step, architecture step, validation)
draws the edge weights from Dirichlet(elu(alpha) + 1), one sample per label shared by the cells
of a type, and the architecture gradient flows through the sample (pathwise, ``rsample``). The
regulariser is ``l2`` (the code's default: Adam weight decay ``reg_scale`` on alpha) or ``kl``
(``reg_scale`` times the KL divergence to Dirichlet(1), summed over edges, added to the
architecture loss). The export is the space's rule on softmax(alpha), as the code derives it.

Not here yet: the DARTS-space progressive schedule (partial channels K = 6 then 4 with the top-4
ops kept and the ops widened by Net2Wider between the two 25-epoch stages); a run with
``partial_channels`` is one stage of it without the widening.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from oneshot.algorithms.base import all_reduce_mean, rank_shared_seed, with_space_option
from oneshot.algorithms.darts import DartsSearch

REGULARISERS = ("l2", "kl")


class DrnasSearch(DartsSearch):
    """DARTS with Dirichlet-sampled architecture weights.

    Args:
        reg_type: ``l2`` (``--reg_type`` default: Adam weight decay ``reg_scale``, in place of
            ``arch_weight_decay``) or ``kl`` (no decay).
        reg_scale: the regulariser's weight (``--reg_scale`` 1e-3).
        partial_channels: K of the partial-channel edges (1: none, NB201's plain search; the
            DARTS-space search starts at 6).
        arch_warmup_epochs: epochs of weight steps only (DARTS space: 10; NB201 plain: 0).
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch` (first order only).
    """

    def __init__(self, *args: Any, reg_type: Literal["l2", "kl"] = "l2", reg_scale: float = 1e-3,
                 partial_channels: int = 1, arch_warmup_epochs: int = 0, **kwargs: Any):
        if reg_type not in REGULARISERS:
            raise ValueError(f"reg_type={reg_type!r}; accepted: {', '.join(REGULARISERS)}")
        if partial_channels > 1:
            args, kwargs = with_space_option(args, kwargs, "partial_channels", partial_channels)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if self.hparams.unrolled:
            raise ValueError("DrNAS's architecture step is first order here (--unrolled False); set unrolled: false")
        if arch_warmup_epochs < 0:
            raise ValueError(f"arch_warmup_epochs={arch_warmup_epochs}: use 0 or more epochs")

    def arch_decay(self) -> float:
        """architect.py: the Adam's weight decay is ``reg_scale`` for l2 and 0 for kl; it replaces
        ``arch_weight_decay``, which DrNAS does not read."""
        return float(self.hparams.reg_scale) if self.hparams.reg_type == "l2" else 0.0

    def configure_optimizers(self):
        optimizers, schedules = super().configure_optimizers()
        for group in optimizers[1].param_groups:
            group["weight_decay"] = self.arch_decay()
        return optimizers, schedules

    def concentrations(self) -> dict[str, torch.Tensor]:
        """elu(alpha) + 1 per label, over the candidates that are not excluded."""
        out = {}
        for label, alpha in self.alphas.items():
            excluded = set(self.excluded.get(label, ()))
            kept = [k for k in range(alpha.shape[0]) if k not in excluded]
            out[label] = F.elu(alpha[kept] if excluded else alpha) + 1
        return out

    def sampled_weights(self, purpose: str) -> dict[str, torch.Tensor]:
        """One pathwise Dirichlet sample per label, identical on every rank; excluded candidates
        get weight 0 (the sample is drawn over the others, as the code's pruned mask)."""
        seed = rank_shared_seed("drnas", self.global_step, purpose)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            samples = {label: Dirichlet(beta).rsample() for label, beta in self.concentrations().items()}
        for label, excluded in self.excluded.items():
            full = samples[label].new_zeros(self.alphas[label].shape[0])
            kept = [k for k in range(full.shape[0]) if k not in set(excluded)]
            samples[label] = full.index_put((torch.tensor(kept),), samples[label])
        return samples

    def kl_regulariser(self) -> torch.Tensor:
        """reg_scale * sum over edges of KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1))."""
        total = sum(kl_divergence(Dirichlet(beta), Dirichlet(torch.ones_like(beta))).sum()
                    for beta in self.concentrations().values())
        return self.hparams.reg_scale * total

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return {k: w.detach() for k, w in self.sampled_weights("weights").items()}

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self.sampled_weights(f"validation/{self.current_epoch}/{batch_idx}")

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor | None:
        if self.current_epoch < self.hparams.arch_warmup_epochs:
            return None
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        loss = self.loss_and_accuracy(val_batch, self.sampled_weights("architecture"))[0]
        regularised = loss + self.kl_regulariser() if self.hparams.reg_type == "kl" else loss
        self.manual_backward(regularised)
        all_reduce_mean([a.grad for a in self.architecture_parameters() if a.grad is not None])
        arch_optimizer.step()
        return loss.detach()
