"""GDAS: Searching for A Robust Neural Architecture in Four GPU Hours (Dong & Yang, CVPR 2019).

Reference: D-X-Y/AutoDL-Projects, the authors' re-implementation:
``exps/NAS-Bench-201-algos/GDAS.py`` (training loop, temperature schedule) and the GDAS search
models (``NASNetworkGDAS.forward`` ``get_gumbel_prob``, ``search_model_gdas.py``).

What differs from the base: each forward samples one candidate per edge label with the
Gumbel-max trick and runs only that candidate; straight-through weights carry the Gumbel-softmax
gradient to alpha. The temperature falls linearly per epoch from ``tau_max`` to ``tau_min``.
Steps alternate first order: weight step on the train batch, then alpha step on the validation
batch with a fresh sample (``search_func`` in GDAS.py).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F

from oneshot.algorithms.base import all_reduce_mean, rank_shared_seed
from oneshot.algorithms.differentiable import DifferentiableSearch
from ops.mixed import SampledPath
from supernets import Arch

GENOTYPE_RULES = ("space", "pairs")


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise as GDAS draws it: -log(E), E ~ Exponential(1)."""
    if generator is not None:
        device = generator.device
    return -torch.empty(shape, device=device).exponential_(generator=generator).log()


def gumbel_straight_through(alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None,
                            max_tries: int = 100, unsampled_gradient: bool = True) -> SampledPath:
    """One Gumbel-max sample of ``alpha`` [K] with straight-through Gumbel-softmax weights.

    logits = (log_softmax(alpha) + g) / tau, probs = softmax(logits), index = argmax; the
    weights are one-hot in the forward pass and have the gradient of ``probs``. GDAS writes
    ``hard - probs.detach() + probs``; ``hard + (probs - probs.detach())`` is the same function
    with the same gradient but is exactly 0/1 in floating point, so the chosen candidate is scaled
    by exactly 1. A draw with inf/NaN (E = 0 gives g = inf) is discarded and redrawn, as
    ``get_gumbel_prob`` loops. ``unsampled_gradient`` is passed on to the
    :class:`~ops.mixed.SampledPath` (how the weights enter the edge output).

    Raises:
        ValueError: if ``tau`` <= 0 or ``alpha`` is not a finite vector (redrawing cannot help).
        RuntimeError: if ``max_tries`` draws in a row were not finite.
    """
    if not tau > 0:
        raise ValueError(f"tau={tau}: the Gumbel-softmax temperature must be positive")
    if alpha.dim() != 1 or not torch.isfinite(alpha).all():
        raise ValueError(f"alpha must be a finite vector [K], got shape {tuple(alpha.shape)} "
                         f"with values {alpha.detach().cpu().tolist()}")
    log_probs = F.log_softmax(alpha, dim=-1)
    for _ in range(max_tries):
        g = gumbel_noise(alpha.shape, generator, alpha.device).to(alpha.device, alpha.dtype)
        logits = (log_probs + g) / tau
        probs = F.softmax(logits, dim=-1)
        if not (torch.isfinite(g).all() and torch.isfinite(logits).all() and torch.isfinite(probs).all()):
            continue
        index = int(probs.argmax())
        hard = F.one_hot(torch.tensor(index, device=alpha.device), alpha.shape[0]).to(probs.dtype)
        return SampledPath(index, hard + (probs - probs.detach()), unsampled_gradient)
    raise RuntimeError(f"{max_tries} Gumbel draws in a row were not finite for alpha={alpha.tolist()}")


class GdasSearch(DifferentiableSearch):
    """GDAS: one Gumbel-max sampled candidate per edge label per forward.

    One sample per label per forward is shared by every cell carrying that label, as the
    reference samples the whole alpha tensor once per forward. Validation runs the exported
    architecture (argmax of alpha per edge, by the space's rule) as a single path with the
    inherited weights: it scores what the search would return, and is deterministic, so the
    curve is comparable across epochs. The reference has no separate validation pass; its
    "evaluate" number is the sampled forward of the alpha step, logged here as ``arch_loss``.

    Edge output: xautodl has two GDAS forwards. Its NB201 cell
    (``search_cells.py`` ``NAS201SearchCell.forward_gdas``) adds every unsampled candidate's
    straight-through weight (0 forward, soft gradient) to the sampled output; its NASNet cell
    (``search_cells.py`` ``MixedOp.forward_gdas``, used by ``NASNetworkGDAS``) multiplies the
    sampled output by its own weight only. ``unsampled_gradient`` (True: NB201's, the default)
    chooses; the forward value is the same, only the architecture gradient differs.

    Export: ``genotype_rule="space"`` (default) is the base's ``space.discretize(softmax(alpha))``:
    for NB201 the argmax per edge including ``none``, as GDAS's NB201 genotype; for the DARTS
    space DARTS's rule (top-2 distinct input edges per node, each with its best non-``none`` op).
    ``genotype_rule="pairs"`` is GDAS's NASNet rule (``search_model_gdas_nasnet.py``
    ``NASNetworkGDAS.genotype``, :meth:`supernets.darts.DartsSpace.discretize_pairs`): the top 2
    (op, input) pairs of each node over all non-``none`` pairs, which may take two ops from the
    same input. Such a genotype builds as a stand-alone network, and validation runs it in the
    supernet with inherited weights (``space.decisions`` gives such an edge a dense decision
    selecting both ops). ``experiments/gdas_darts_cifar10.yaml`` turns both NASNet options on,
    with the supernet's (``bn_after_pool: false``, ``last_activation: true``).

    Args:
        tau_max: temperature of the first epoch (GDAS.sh ``--tau_max 10``).
        tau_min: temperature of the last epoch (GDAS.sh ``--tau_min 0.1``).
        unsampled_gradient: True (default): xautodl NB201 ``forward_gdas``, the unsampled
            weights enter the edge output as scalars and get gradient; False: xautodl NASNet
            ``MixedOp.forward_gdas``, only the sampled op's weight does.
        genotype_rule: ``"space"`` (default): the space's own rule; ``"pairs"``: GDAS's NASNet
            pair rule, for a space with ``discretize_pairs`` (DARTS).
        **kwargs: the shared optimization settings of :class:`~oneshot.algorithms.differentiable.DifferentiableSearch`.

    Raises:
        ValueError: on an unknown ``genotype_rule``, or ``"pairs"`` for a space without it.
    """

    arch_step_first = False  # search_func: weight step, then architecture step
    single_path = True  # only the sampled candidate runs

    def __init__(self, *args: Any, tau_max: float = 10.0, tau_min: float = 0.1,
                 unsampled_gradient: bool = True, genotype_rule: Literal["space", "pairs"] = "space",
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if not tau_max >= tau_min > 0:
            raise ValueError(f"tau_max={tau_max}, tau_min={tau_min}: need tau_max >= tau_min > 0")
        if self.excluded:
            raise ValueError("excluded_candidates: GDAS samples over every candidate of an edge; leave it "
                             "empty (it is for the softmax families: DARTS, PC-DARTS, SDARTS, FairDARTS, DrNAS, SNAS)")
        if genotype_rule not in GENOTYPE_RULES:
            raise ValueError(f"genotype_rule={genotype_rule!r}; accepted: {', '.join(GENOTYPE_RULES)}")
        if genotype_rule == "pairs" and not hasattr(self.space, "discretize_pairs"):
            raise ValueError(f"genotype_rule='pairs' is GDAS's NASNet-space rule; space "
                             f"{self.space.name!r} has no discretize_pairs (use 'space')")
        self._validation_decisions: dict[str, Any] | None = None

    # --- temperature --------------------------------------------------------------------------
    def temperature(self, epoch: int, epochs: int) -> float:
        """tau_e = tau_max - (tau_max - tau_min) * e / (E - 1), GDAS.py ``set_tau`` (E = 1: tau_max)."""
        h = self.hparams
        if epochs <= 1:
            return float(h.tau_max)
        return float(h.tau_max - (h.tau_max - h.tau_min) * epoch / (epochs - 1))

    @property
    def tau(self) -> float:
        """The temperature of the current epoch (tau_max outside a fit)."""
        epochs = self.planned_epochs()
        return self.temperature(min(self.current_epoch, max(epochs - 1, 0)), epochs)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("tau", self.tau, on_epoch=True, sync_dist=True)

    # --- sampling -----------------------------------------------------------------------------
    def sampled_decisions(self, purpose: str) -> dict[str, SampledPath]:
        """One straight-through Gumbel sample per edge label, identical on every rank."""
        generator = torch.Generator().manual_seed(rank_shared_seed("gdas", self.global_step, purpose))
        tau, unsampled_gradient = self.tau, bool(self.hparams.unsampled_gradient)
        return {label: gumbel_straight_through(alpha, tau, generator, unsampled_gradient=unsampled_gradient)
                for label, alpha in self.alphas.items()}

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return self.sampled_decisions("weights")

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor:
        """First order: d L_val(w, sample(alpha)) / d alpha through the straight-through weights."""
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        loss, _ = self.loss_and_accuracy(val_batch, self.sampled_decisions("architecture"))
        self.manual_backward(loss)
        all_reduce_mean([a.grad for a in self.architecture_parameters() if a.grad is not None])
        arch_optimizer.step()
        return loss.detach()

    # --- export ---------------------------------------------------------------------------------
    def export_rule(self) -> Arch:
        """The base's (R-DARTS rollback, else the space's rule), or with ``genotype_rule="pairs"``
        the top-2 (op, input) pairs per node (xautodl ``NASNetworkGDAS.genotype``)."""
        if self.hparams.genotype_rule != "pairs" or self.eigenvalue_early_stop.stopped:
            return super().export_rule()
        return self.space.discretize_pairs({k: w.detach().cpu() for k, w in self.arch_weights().items()})

    def arch_record(self, arch: Arch) -> dict[str, Any]:
        record = super().arch_record(arch)
        if (self.hparams.genotype_rule == "pairs" and self.selection is None
                and not self.eigenvalue_early_stop.stopped):
            record["rule"] = ("GDAS pairs: top-2 (op, input) pairs per node over the non-none ops "
                              "(xautodl NASNetworkGDAS.genotype)")
        return record

    # --- validation: the exported architecture as a single path --------------------------------
    def on_validation_epoch_start(self) -> None:
        self._validation_decisions = self.space.decisions(self.export())

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self._validation_decisions or self.space.decisions(self.export())
