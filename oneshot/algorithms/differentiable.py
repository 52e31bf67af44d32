"""The differentiable family: architecture parameters (alphas) learned by gradient, bilevel.

:class:`DifferentiableSearch` adds to the base one alpha vector per choice label
(``alpha_init_std * randn``, DARTS), an Adam for them, the bilevel step order (architecture then
weights, as DARTS; or weights then architecture), the collapse diagnostics (Hessian eigenvalue,
R-DARTS early stop), architecture logging, and the space's discretization rule as the export.
A subclass says how the architecture is updated (:meth:`architecture_step`) and, when needed,
which decisions train the weights (:meth:`decisions_for_weight_step`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from oneshot.algorithms.base import SupernetTraining, all_reduce_mean
from oneshot.arch_logging import log_architecture, log_collapse
from oneshot.batchnorm import preserved_batchnorm
from oneshot.diagnostics import EigenvalueEarlyStop, dominant_hessian_eigenvalue, skip_connect_count
from supernets import Arch


class DifferentiableSearch(SupernetTraining):
    """Supernet weights and alphas trained at two levels on ``{"train", "val"}`` batches.

    Args:
        arch_learning_rate: Adam lr of the architecture parameters (DARTS 3e-4).
        arch_betas: Adam betas (DARTS (0.5, 0.999)).
        arch_weight_decay: Adam weight decay (DARTS ``--arch_weight_decay`` 1e-3).
        alpha_init_std: architecture parameters start as ``alpha_init_std * randn`` (DARTS 1e-3).
        hessian_every: every E epochs (and at the last), the dominant eigenvalue of the Hessian
            of the validation loss w.r.t. the architecture parameters (R-DARTS, Zela et al. 2020),
            logged as ``collapse/hessian_eigenvalue``; 0 turns it off. It is taken on one fixed
            batch, the first architecture ("val") batch this process trains on, in train-mode
            BatchNorm as the architecture step sees it (running statistics left untouched), and
            averaged over ranks.
        hessian_iterations: power-iteration steps (Hessian-vector products) per eigenvalue.
        early_stop_on_eigenvalue: stop with R-DARTS's rule (DARTS-ES,
            :class:`oneshot.diagnostics.EigenvalueEarlyStop`) and export the architecture of the
            epoch it rolls back to; needs ``hessian_every``.
        early_stop_options: keyword arguments of ``EigenvalueEarlyStop`` (R-DARTS defaults:
            window 5, factor 1.3, delta 4, start_epoch 10).
        excluded_candidates: candidates the architecture never weighs: their logits are -inf,
            so the softmax runs over the rest and they get weight 0 (SDARTS's DARTS space has no
            ``none``). Alphas keep one entry per candidate, so checkpoints keep their shapes.
        edge_drop_path: drop-path probability on every edge's output during search (a supernet
            with ``edge_drop_path_prob``: the darts and nb201 spaces); 0 turns it off.
        edge_drop_path_schedule: ``linear``: ``edge_drop_path * e / (E - 1)`` in epoch e of E
            (R-DARTS's ScheduledDropPath, train_search.py); ``constant`` (SNAS).
        **kwargs: the shared settings of :class:`~oneshot.algorithms.base.SupernetTraining`.
    """

    arch_step_first: bool = True  # DARTS order: architecture step, then weight step

    def __init__(self, *args: Any, arch_learning_rate: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 1e-3,
                 alpha_init_std: float = 1e-3, hessian_every: int = 0, hessian_iterations: int = 20,
                 early_stop_on_eigenvalue: bool = False, early_stop_options: dict[str, Any] | None = None,
                 excluded_candidates: list[str] | None = None, edge_drop_path: float = 0.0,
                 edge_drop_path_schedule: str = "linear", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.alphas = nn.ParameterDict({
            label: nn.Parameter(alpha_init_std * torch.randn(len(options)))
            for label, options in self.supernet.choices.items()
        })
        self.excluded = self._excluded_indices(list(excluded_candidates or []))
        if not 0.0 <= edge_drop_path < 1.0 or edge_drop_path_schedule not in ("linear", "constant"):
            raise ValueError(f"edge_drop_path={edge_drop_path} must lie in [0, 1) and edge_drop_path_schedule="
                             f"{edge_drop_path_schedule!r} be 'linear' (R-DARTS) or 'constant' (SNAS)")
        if edge_drop_path and not hasattr(self.supernet, "edge_drop_path_prob"):
            raise ValueError(f"edge_drop_path: {self.space.name!r} supernets have no drop path on edges; "
                             "the darts and nb201 spaces have")
        if hessian_every < 0 or hessian_iterations < 1:
            raise ValueError(f"hessian_every ({hessian_every}) must be >= 0 (0 = off) and "
                             f"hessian_iterations ({hessian_iterations}) >= 1")
        if early_stop_on_eigenvalue and not hessian_every:
            raise ValueError("early_stop_on_eigenvalue needs the eigenvalue: set hessian_every >= 1 "
                             "(R-DARTS computes it every epoch)")
        self.eigenvalue_early_stop = EigenvalueEarlyStop(**(early_stop_options or {}))
        self._hessian_batch: Any = None

    def _excluded_indices(self, names: list[str]) -> dict[str, list[int]]:
        """Per label, the option indices of ``excluded_candidates``; ValueError on unknown names."""
        options = {o for opts in self.supernet.choices.values() for o in opts}
        unknown = [n for n in names if n not in options]
        if unknown:
            raise ValueError(f"excluded_candidates {unknown} are not candidates of {self.space.name!r}; "
                             f"accepted: {', '.join(sorted(map(str, options)))}")
        excluded = {label: [k for k, o in enumerate(opts) if o in names]
                    for label, opts in self.supernet.choices.items()}
        if any(len(ks) == len(self.supernet.choices[label]) for label, ks in excluded.items()):
            raise ValueError(f"excluded_candidates {names} leave an edge without candidates")
        return {label: ks for label, ks in excluded.items() if ks}

    def logits(self, label: str) -> torch.Tensor:
        """The alphas of one label with the excluded candidates at -inf."""
        alpha, excluded = self.alphas[label], self.excluded.get(label)
        if not excluded:
            return alpha
        mask = torch.zeros_like(alpha, dtype=torch.bool)
        mask[excluded] = True
        return alpha.masked_fill(mask, float("-inf"))

    # --- what subclasses change ---------------------------------------------------------------
    def arch_weights(self) -> dict[str, torch.Tensor]:
        """The architecture distribution per choice label (softmax over its options)."""
        return {label: F.softmax(self.logits(label), dim=-1) for label in self.alphas}

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        """Dense mixing by default (DARTS)."""
        return self.arch_weights()

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self.arch_weights()

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor | None:
        """Update the architecture parameters; return the loss it minimised (detached)."""
        raise NotImplementedError

    def architecture_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    # --- the two levels -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any] | None = None) -> torch.Tensor:
        return super().forward(x, self.arch_weights() if decisions is None else decisions)

    def arch_optimizer(self) -> Any:
        return self.optimizers()[1]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        train_batch, val_batch = batch["train"], batch["val"]
        if self.arch_step_first:
            arch_loss = self.architecture_step(train_batch, val_batch)
            loss, accuracy = self.weight_step(train_batch)
        else:
            loss, accuracy = self.weight_step(train_batch)
            arch_loss = self.architecture_step(train_batch, val_batch)
        self.log_training(loss, accuracy, train_batch[0].shape[0])
        if arch_loss is not None:
            self.log("arch_loss", arch_loss, on_step=False, on_epoch=True,
                     batch_size=val_batch[0].shape[0], sync_dist=True)

    def edge_drop_path_prob(self, epoch: int, epochs: int) -> float:
        """The search drop-path probability of epoch e (R-DARTS: p * e / (E - 1))."""
        p = float(self.hparams.get("edge_drop_path") or 0.0)
        if self.hparams.get("edge_drop_path_schedule", "linear") == "constant" or epochs <= 1:
            return p
        return p * epoch / (epochs - 1)

    def on_fit_start(self) -> None:
        warmup, epochs = self.hparams.get("arch_warmup_epochs"), getattr(self._trainer, "max_epochs", None)
        if warmup and epochs is not None and 0 < epochs <= warmup:
            raise ValueError(f"arch_warmup_epochs={warmup} covers the whole run (max_epochs={epochs}): the "
                             "architecture would never be trained; lower arch_warmup_epochs below max_epochs "
                             "or train for more epochs")
        super().on_fit_start()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.hparams.get("edge_drop_path"):
            prob = self.edge_drop_path_prob(self.current_epoch, self.planned_epochs())
            self.supernet.edge_drop_path_prob = prob
            self.log("edge_drop_path_prob", prob, on_epoch=True, sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # kept here rather than in training_step, which subclasses may replace
        if (self.hparams.hessian_every and self._hessian_batch is None and isinstance(batch, Mapping)
                and "val" in batch):
            self._hessian_batch = tuple(t.detach() for t in batch["val"])  # fixed for the whole run
        super().on_train_batch_start(batch, batch_idx)

    def configure_optimizers(self):
        h = self.hparams
        weights, schedule = self.weight_optimizer_and_schedule()
        arch = torch.optim.Adam(self.architecture_parameters(), lr=h.arch_learning_rate,
                                betas=tuple(h.arch_betas), weight_decay=h.arch_weight_decay)
        return [weights, arch], [schedule]

    # --- export, monitoring, diagnostics ------------------------------------------------------
    def export_rule(self) -> Arch:
        """The architecture of the epoch R-DARTS rolled back to once the eigenvalue early stop
        fired; otherwise the space's rule (argmax for NB201, top-2 for DARTS) on the weights."""
        if self.eigenvalue_early_stop.stopped:
            return self.eigenvalue_early_stop.stop_arch
        return self.space.discretize(self.full_weights())

    def full_weights(self) -> dict[str, torch.Tensor]:
        """Each edge's weights over all of the space's candidates: an edge searching a subset
        (``edge_candidates``: P-DARTS, DrNAS stage 1) gives 0 to the others."""
        primitives = tuple(getattr(self.space, "primitives", ()))
        out = {}
        for label, weights in self.arch_weights().items():
            weights, ops = weights.detach().cpu(), tuple(self.supernet.choices[label])
            if ops != primitives and primitives:
                weights = weights.new_zeros(len(primitives)).index_put_(
                    (torch.tensor([primitives.index(op) for op in ops]),), weights)
            out[label] = weights
        return out

    def after_validation_epoch(self) -> None:
        arch = self.export()
        eigenvalue = self.hessian_eigenvalue()  # every rank: it ends in an all-reduce
        if (eigenvalue is not None and self.hparams.early_stop_on_eigenvalue and not self.is_last_epoch()
                and self.eigenvalue_early_stop.update(self.current_epoch, eigenvalue, arch)):
            self.trainer.should_stop = True  # same eigenvalues on every rank: the same decision
            arch = self.export()  # the architecture of the epoch R-DARTS rolls back to
        run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            log_architecture(self.logger, self.current_epoch, self.arch_weights(), self.supernet.choices,
                             self.space, arch)
            skips = skip_connect_count(arch, self.space) if "skip_connect" in getattr(
                self.space, "primitives", ()) else {}
            log_collapse(self.logger, self.current_epoch, skips, eigenvalue)
            self.write_arch(arch, run_directory)

    def hessian_eigenvalue(self) -> float | None:
        """The dominant eigenvalue of the validation-loss Hessian w.r.t. the architecture
        parameters on the fixed batch, averaged over ranks; None when not due this epoch.

        The loss is ``loss_and_accuracy(batch, arch_weights())``, so a subclass's own
        ``arch_weights`` (e.g. PC-DARTS's edge normalization) is part of what is measured.
        """
        every, params = self.hparams.hessian_every, self.architecture_parameters()
        if not every or not params or self._hessian_batch is None:
            return None
        if self.current_epoch % every and not self.is_last_epoch():  # R-DARTS: epoch % freq == 0 or the last
            return None
        batch = self._hessian_batch
        drop = getattr(self.supernet, "edge_drop_path_prob", 0.0)
        # validation hooks run under inference mode; the diagnostic needs double backward
        with torch.inference_mode(False), torch.enable_grad(), preserved_batchnorm(self.supernet):
            self.supernet.train()  # running statistics as training left them (restored on exit)
            if drop:  # a random mask per product would make the power iteration noise
                self.supernet.edge_drop_path_prob = 0.0
            value = dominant_hessian_eigenvalue(
                lambda: self.loss_and_accuracy(batch, self.arch_weights())[0], params,
                iterations=self.hparams.hessian_iterations,
                generator=torch.Generator().manual_seed(int(self.current_epoch)))
            if drop:
                self.supernet.edge_drop_path_prob = drop
        averaged = torch.tensor([value], dtype=torch.float32, device=self.device)
        all_reduce_mean([averaged])
        return float(averaged)

    def arch_record(self, arch: Arch) -> dict[str, Any]:
        record = super().arch_record(arch)
        stop = self.eigenvalue_early_stop
        if stop.stopped and self.selection is None:
            record.update(epoch=stop.stop_epoch, rule="R-DARTS early stop (DARTS-ES)", note=(
                f"the local average of the dominant Hessian eigenvalue rose by more than "
                f"{stop.factor}x; this is the architecture of epoch {stop.stop_epoch}, recorded "
                f"before the stop at epoch {stop.epochs[-1]} (weights are the current ones)"))
        return record

    # --- checkpoints and the end of training --------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.hparams.hessian_every:
            state = self.eigenvalue_early_stop.state_dict()
            state["archs"] = {k: a.to_json() for k, a in state["archs"].items()}
            checkpoint["eigenvalue_early_stop"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "eigenvalue_early_stop" in checkpoint:
            state = dict(checkpoint["eigenvalue_early_stop"])
            state["archs"] = {k: Arch.from_json(a) for k, a in state["archs"].items()}
            self.eigenvalue_early_stop.load_state_dict(state)

    def on_train_end(self) -> None:
        """Select if due; then check that all ranks hold identical architecture parameters."""
        super().on_train_end()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = torch.cat([a.detach().flatten() for a in self.architecture_parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(flat, reference):
            raise RuntimeError(f"rank {dist.get_rank()} ended with architecture parameters that differ "
                               f"from rank 0 by {(flat - reference).abs().max():.3g}")
