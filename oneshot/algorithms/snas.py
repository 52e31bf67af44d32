"""SNAS: Stochastic Neural Architecture Search (Xie, Zheng, Liu, Lin, ICLR 2019).

Reference: SNAS-Series/SNAS-Series@9a43adb ``SNAS/train_search.py`` (the joint step, the
penalty sum), ``SNAS/model_search.py`` (``_get_categ_mask``: the concrete sample),
``SNAS/utils.py`` (``Temp_Scheduler``), ``SNAS/operations.py`` (the per-op costs) and the README's
command (``--temp 1 --temp_min 0.03 --temp_annealing --resource_efficient --resource_lambda
1.5e-3 --log_penalty --drop_path_prob 3e-1 --method reparametrization --loss``).

What differs from DARTS:

* each forward draws one soft concrete sample per edge label, Z = softmax((alpha + G) / tau)
  with G ~ Gumbel(0, 1), shared by the cells of a type; every candidate runs, weighted by Z;
* weights and alphas learn from the same batch of the whole training set with one backward
  (no held-out half, no alternation): both optimizers step on the gradient of CE + penalty;
* tau falls linearly per epoch, tau_e = max(tau_min, (1 - (e + 1) / 150) (tau_0 - tau_min) +
  tau_min): the 150 is the code's ``total_epochs``, whatever ``--epochs`` says;
* the resource penalty ("reparametrization", log form) is, per edge, the mean of the logs of
  sum_k cost_k Z_k over (parameters, FLOPs, memory access), with a sum below 1 counted as 1;
  summed over the normal cells divided by 6 plus the reduction cells divided by 2 (the code's
  fixed numbers for 8 cells), times lambda.

The architecture optimizer of the single-GPU run is plain SGD (lr 3e-4; the distributed run uses
Adam); the weight gradient is clipped to 5, the alpha gradient to 10. The export keeps, per edge,
the argmax over all candidates including ``none`` (``genotype_edge_all``); for the DARTS space
that is not a two-input cell, so the space's DARTS rule is the export here (``none`` excluded,
top-2 inputs) and the code's rule is left out: say so where it matters.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F

from oneshot.algorithms.base import all_reduce_mean, rank_shared_seed
from oneshot.algorithms.differentiable import DifferentiableSearch
from oneshot.algorithms.gdas import gumbel_noise


def concrete_sample(alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SNAS ``_get_categ_mask``: softmax((alpha + G) / tau), G = -log(-log U), soft (no hard step)."""
    if not tau > 0:
        raise ValueError(f"tau={tau}: the concrete temperature must be positive")
    for _ in range(100):  # E = 0 gives an infinite draw (about 1 in 2^24): drawn again, as GDAS does
        g = gumbel_noise(alpha.shape, generator, alpha.device).to(alpha.device, alpha.dtype)
        if torch.isfinite(g).all():
            return F.softmax((alpha + g) / tau, dim=-1)
    raise RuntimeError("100 Gumbel draws in a row were not finite")


def candidate_costs(name: str, C: int, y: int, stride: int) -> tuple[float, float, float]:
    """(parameters, FLOPs, memory access) of one candidate as SNAS ``operations.py`` counts them,
    for C channels in and out and an output of y x y (BN not counted)."""
    y2 = y * y
    if name.startswith("sep_conv_"):
        k = int(name.split("_")[-1].split("x")[0])
        size = 2 * C * k * k + 2 * C * C
        return size, size * y2, y2 * ((7 if stride == 1 else 10) * C + C) + size
    if name.startswith("dil_conv_"):
        k = int(name.split("_")[-1].split("x")[0])
        size = C * k * k + C * C
        return size, size * y2, y2 * ((3 if stride == 1 else 6) * C + C) + size
    if "pool" in name:
        return 0, 9 * y2 * C, (2 if stride == 1 else 5) * y2 * C
    if name == "skip_connect" and stride == 1:
        return 0, 0, 2 * C * y2
    if name == "skip_connect":  # FactorizedReduce
        size = 2 * C * (C // 2)
        return size, size * y2, 2 * y2 * (4 * C + C // 2) + size
    if name == "none":
        return 0, 0, 0
    raise ValueError(f"SNAS has no cost for candidate {name!r}; the resource penalty knows the DARTS "
                     "ops (sep/dil convs, pools, skip_connect, none)")


class SnasSearch(DifferentiableSearch):
    """SNAS: soft concrete samples, one joint step on the training set, a resource penalty.

    Batches are plain ``(x, y)`` (data ``bilevel: false``: the whole training set, validation
    on the test set, as SNAS monitors); a bilevel batch trains on its ``train`` half only.

    Args:
        tau_start: tau_0 (``--temp`` 1).
        tau_min: the floor (``--temp_min`` 0.03).
        anneal_epochs: the epochs of the linear schedule (``Temp_Scheduler.total_epochs``, fixed at
            150 in the code); None: the run's epochs. 0 keeps tau at ``tau_start`` (no
            ``--temp_annealing``).
        resource_lambda: the penalty's weight (README 1.5e-3); 0 turns it off.
        resource_divisors: the normal and reduction sums are divided by these (the code's 6 and 2).
        arch_optimizer: ``sgd`` (single GPU: lr ``arch_learning_rate``, no momentum, no decay) or
            ``adam`` (the distributed run: the base's Adam).
        arch_grad_clip: max norm of the alpha gradient (10); 0 turns it off.
        **kwargs: the settings of :class:`~oneshot.algorithms.differentiable.DifferentiableSearch`
            (SNAS: ``alpha_init_std`` 0.01, ``edge_drop_path`` 0.3 with schedule ``constant``).
    """

    def __init__(self, *args: Any, tau_start: float = 1.0, tau_min: float = 0.03,
                 anneal_epochs: int | None = 150, resource_lambda: float = 1.5e-3,
                 resource_divisors: tuple[float, float] = (6.0, 2.0),
                 arch_optimizer: Literal["sgd", "adam"] = "sgd", arch_grad_clip: float = 10.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if not tau_start >= tau_min > 0:
            raise ValueError(f"tau_start={tau_start}, tau_min={tau_min}: need tau_start >= tau_min > 0")
        if arch_optimizer not in ("sgd", "adam"):
            raise ValueError(f"arch_optimizer={arch_optimizer!r}; accepted: sgd, adam")
        if resource_lambda and self.space.name != "darts":
            raise ValueError(f"resource_lambda={resource_lambda}: SNAS's costs are those of the DARTS "
                             f"ops; on {self.space.name!r} set resource_lambda: 0")
        self._costs: list[tuple[int, str, torch.Tensor]] | None = None  # (cell type, label, [K, 3])

    # --- temperature ------------------------------------------------------------------------
    def temperature(self, epoch: int, epochs: int) -> float:
        """``Temp_Scheduler``: stepped once before epoch e, so epoch e uses (e + 1)."""
        h = self.hparams
        total = epochs if h.anneal_epochs is None else int(h.anneal_epochs)
        if total <= 0:
            return float(h.tau_start)
        tau = (1 - (epoch + 1) / total) * (h.tau_start - h.tau_min) + h.tau_min
        return float(max(tau, h.tau_min))

    @property
    def tau(self) -> float:
        epochs = self.planned_epochs()
        return self.temperature(self.current_epoch, epochs)

    def sampled_weights(self) -> dict[str, torch.Tensor]:
        """One concrete sample per label, identical on every rank."""
        generator = torch.Generator().manual_seed(rank_shared_seed("snas", self.global_step))
        tau = self.tau
        return {label: concrete_sample(self.logits(label), tau, generator) for label in self.alphas}

    # --- resource penalty -------------------------------------------------------------------
    def _measure_costs(self, x: torch.Tensor) -> list[tuple[int, str, torch.Tensor]]:
        """Per cell and edge: its type (0 normal, 1 reduce), label and [K, 3] costs, from the
        shapes of a one-image dry run (SNAS fills its cost buffers on the first forward)."""
        records: list[tuple[int, str, torch.Tensor]] = []
        hooks = []
        for cell in self.supernet.cells:
            for op, (label, _, _) in zip(cell.mixed_ops, cell.edge_meta):
                def hook(module, inputs, output, label=label, reduce=int(cell.reduction)):
                    C, y = inputs[0].shape[1], output.shape[-1]
                    costs = [candidate_costs(name, C, y, module.stride) for name in module.candidates]
                    records.append((reduce, label, torch.tensor(costs, dtype=torch.float64)))
                hooks.append(op.register_forward_hook(hook))
        was_training = self.supernet.training
        try:
            self.supernet.eval()
            with torch.no_grad():
                self.supernet(x[:1], {k: int(w.argmax()) for k, w in self.arch_weights().items()})
        finally:
            self.supernet.train(was_training)
            for h in hooks:
                h.remove()
        return records

    def resource_penalty(self, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """lambda * (sum_normal / 6 + sum_reduce / 2) of the per-edge mean log expected cost."""
        if self._costs is None:
            self._costs = self._measure_costs(x)
        sums = [weights[next(iter(weights))].new_zeros(()) for _ in range(2)]
        for reduce, label, costs in self._costs:
            expected = weights[label].double() @ costs.to(weights[label].device)  # [3]
            expected = torch.where(expected.abs() < 1, torch.ones_like(expected), expected)
            sums[reduce] = sums[reduce] + expected.log().mean().to(sums[reduce].dtype)
        normal, reduce = self.hparams.resource_divisors
        return self.hparams.resource_lambda * (sums[0] / normal + sums[1] / reduce)

    # --- the joint step ---------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        batch = batch["train"] if isinstance(batch, Mapping) else batch
        weight_optimizer, arch_optimizer = self.weight_optimizer(), self.arch_optimizer()
        weight_optimizer.zero_grad()
        arch_optimizer.zero_grad()
        weights = self.sampled_weights()
        loss, accuracy = self.loss_and_accuracy(batch, weights)
        penalty = self.resource_penalty(weights, batch[0]) if self.hparams.resource_lambda else None
        self.manual_backward(loss if penalty is None else loss + penalty)
        all_reduce_mean([a.grad for a in self.architecture_parameters() if a.grad is not None])
        if self.hparams.grad_clip:
            self.clip_gradients(weight_optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")
        if self.hparams.arch_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.architecture_parameters(), self.hparams.arch_grad_clip)
        weight_optimizer.step()
        arch_optimizer.step()
        self.log_training(loss.detach(), accuracy.detach(), batch[0].shape[0])
        if penalty is not None:
            self.log("resource_penalty", penalty.detach(), on_step=False, on_epoch=True,
                     batch_size=batch[0].shape[0], sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.hessian_every and self._hessian_batch is None:
            plain = batch["train"] if isinstance(batch, Mapping) else batch
            self._hessian_batch = tuple(t.detach() for t in plain)  # SNAS has no held-out batch
        super().on_train_batch_start(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("tau", self.tau, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        if self.hparams.arch_optimizer == "adam":
            return super().configure_optimizers()
        weights, schedule = self.weight_optimizer_and_schedule()
        arch = torch.optim.SGD(self.architecture_parameters(), lr=self.hparams.arch_learning_rate)
        return [weights, arch], [schedule]
