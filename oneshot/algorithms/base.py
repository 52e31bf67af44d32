"""The shared base of every search algorithm: supernet, architecture parameters, two-level
manual optimization, logging and export.

An algorithm subclass says only what differs: how a decision per edge is made
(:meth:`SearchAlgorithm.decisions_for_weight_step`) and how the architecture parameters are
updated (:meth:`SearchAlgorithm.architecture_step`). Both levels are optimized manually, as
Lightning documents for more than one optimizer (``self.automatic_optimization = False``).
"""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import supernets
from oneshot.arch_logging import log_architecture, log_collapse
from oneshot.diagnostics import EigenvalueEarlyStop, dominant_hessian_eigenvalue, skip_connect_count
from oneshot.files import atomic_write_json
from oneshot.selection import best_of_n
from supernets import Arch


def rank_shared_seed(*parts: Any) -> int:
    """A 63-bit seed from the run's global seed and ``parts``, the same on every rank.

    Under data parallelism every rank must sample the same architecture at the same step:
    otherwise ranks train different paths and DDP averages gradients of mismatched subnets.
    The process-wide RNGs cannot promise that (any rank-local draw desynchronises them), so a
    sample is drawn from a generator seeded by (``seed_everything``'s seed, step, purpose),
    which also makes a resumed run sample exactly what the uninterrupted one would.
    """
    seed = os.environ.get("PL_GLOBAL_SEED", "0")  # set by seed_everything on every rank
    key = "/".join(str(p) for p in (seed, *parts))
    return random.Random(key).getrandbits(63)  # str seeds are hashed with SHA-512: stable


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average tensors over the ranks in place; a no-op outside distributed runs."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)


class SearchAlgorithm(L.LightningModule):
    """Supernet + architecture parameters keyed by edge label, trained at two levels.

    Args:
        space: registered search space name (``supernets.names()``).
        space_options: keyword arguments of the space's ``build_supernet`` (C, N, layers, ...).
        num_classes: classes of the dataset (linked from the data module by the CLI).
        in_channels: image channels (linked from the data module by the CLI).
        learning_rate: weight SGD lr (DARTS ``--learning_rate`` 0.025).
        learning_rate_min: cosine floor (DARTS ``--learning_rate_min`` 0.001).
        momentum: weight SGD momentum (0.9).
        weight_decay: weight SGD weight decay (DARTS 3e-4; NB201 5e-4).
        nesterov: Nesterov momentum (off in DARTS; on in NB201's search configs).
        grad_clip: max norm of the weight gradient (DARTS ``--grad_clip`` 5).
        arch_learning_rate: Adam lr of the architecture parameters (DARTS 3e-4).
        arch_betas: Adam betas (DARTS (0.5, 0.999)).
        arch_weight_decay: Adam weight decay (DARTS ``--arch_weight_decay`` 1e-3).
        alpha_init_std: architecture parameters start as ``alpha_init_std * randn`` (DARTS 1e-3).
        memory_format: tensor layout of the supernet and its inputs: ``channels_last``,
            ``contiguous``, or ``auto`` (channels_last on CPU, where oneDNN runs the DARTS-space
            step about 1.5x faster: benchmarks/step.py; contiguous elsewhere). Numerics only
            differ by float rounding.
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
        selection: how the final architecture is chosen: ``rule`` (the space's discretization
            of the architecture distribution) or ``best_of_n`` (score ``selection_samples``
            uniform architectures with inherited weights on ``selection_batches`` validation
            batches and keep the best, as NB201's RSPS/SETN/ENAS baselines do;
            :func:`oneshot.selection.best_of_n`). It runs after the last epoch's validation.
        selection_samples: architectures scored by ``best_of_n`` (NB201 ``--select_num 100``).
        selection_batches: validation batches each is scored on (NB201: one).
        lr_schedule_interval: ``epoch``: one cosine step per epoch (DARTS train_search.py);
            ``step``: the cosine is evaluated at every training step (xautodl's NB201 searches,
            ``w_scheduler.update(None, step / len(loader))``).
        selection_shared_batches: score every candidate on the same batches (default, a fairer
            comparison); False is NB201's ``search_find_best``: each on the next batches.
    """

    differentiable: bool = True  # False: no trainable architecture distribution (RSPS): no Hessian
    single_path: bool = False  # True: unsampled candidates get no gradient (DDP must allow it)

    def __init__(self, space: str = "nb201", space_options: dict[str, Any] | None = None,
                 num_classes: int = 10, in_channels: int = 3,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float = 3e-4, nesterov: bool = False,
                 grad_clip: float = 5.0, arch_learning_rate: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 1e-3,
                 alpha_init_std: float = 1e-3, memory_format: str = "auto",
                 hessian_every: int = 0, hessian_iterations: int = 20,
                 early_stop_on_eigenvalue: bool = False,
                 early_stop_options: dict[str, Any] | None = None, selection: str = "rule",
                 selection_samples: int = 100, selection_batches: int = 1,
                 selection_shared_batches: bool = True, lr_schedule_interval: str = "epoch"):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.space = supernets.get(space)
        self.supernet = self.space.build_supernet(num_classes=num_classes, in_channels=in_channels,
                                                  **(space_options or {}))
        if memory_format not in ("auto", "channels_last", "contiguous"):
            raise ValueError(f"memory_format {memory_format!r}: use auto, channels_last or contiguous")
        self.alphas = nn.ParameterDict({
            label: nn.Parameter(alpha_init_std * torch.randn(len(ops)))
            for label, ops in self.supernet.edges.items()
        })
        if hessian_every < 0 or hessian_iterations < 1:
            raise ValueError(f"hessian_every ({hessian_every}) must be >= 0 (0 = off) and "
                             f"hessian_iterations ({hessian_iterations}) >= 1")
        if early_stop_on_eigenvalue and not hessian_every:
            raise ValueError("early_stop_on_eigenvalue needs the eigenvalue: set hessian_every >= 1 "
                             "(R-DARTS computes it every epoch)")
        self.eigenvalue_early_stop = EigenvalueEarlyStop(**(early_stop_options or {}))
        if selection not in ("rule", "best_of_n"):
            raise ValueError(f"selection {selection!r}: use 'rule' (the space's discretization) or "
                             "'best_of_n' (score sampled architectures on validation batches)")
        if selection_samples < 1 or selection_batches < 1:
            raise ValueError(f"selection_samples={selection_samples}, selection_batches="
                             f"{selection_batches}: both must be at least 1")
        if lr_schedule_interval not in ("epoch", "step"):
            raise ValueError(f"lr_schedule_interval {lr_schedule_interval!r}: use 'epoch' (DARTS) or "
                             "'step' (xautodl's NB201 searches)")
        self.space_options = dict(space_options or {})
        self._tiny_reduce = any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) and m.kernel_size == (1, 1)
                                and m.in_channels < 8 for m in self.supernet.modules())  # see input_memory_format
        self.selection: dict[str, Any] | None = None  # the best-of-N record, once it ran
        self._hessian_batch: Any = None

    def on_fit_start(self) -> None:
        if self.input_memory_format() is torch.channels_last:
            self.supernet.to(memory_format=torch.channels_last)

    def input_memory_format(self) -> torch.memory_format:
        """The layout ``memory_format`` asks for; ``auto`` is channels_last on CPU, except where a
        stride-2 1x1 conv reads fewer than 8 channels: its channels_last CPU backward corrupts
        the heap in torch 2.14 (oneDNN; e.g. FactorizedReduce of a C=4 DARTS supernet with
        4 partial channels), so such tiny supernets stay contiguous."""
        choice = self.hparams.memory_format
        if choice == "auto":
            choice = "channels_last" if self.device.type == "cpu" and not self._tiny_reduce else "contiguous"
        return torch.channels_last if choice == "channels_last" else torch.contiguous_format

    # --- what subclasses change ------------------------------------------------------------
    def arch_weights(self) -> dict[str, torch.Tensor]:
        """The architecture distribution per edge label (softmax over candidates)."""
        return {label: F.softmax(alpha, dim=-1) for label, alpha in self.alphas.items()}

    def decisions_for_weight_step(self) -> dict[str, Any]:
        """Decisions used to train the supernet weights (dense DARTS mixing by default)."""
        return self.arch_weights()

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        """Decisions the supernet is monitored with each epoch (dense mixing by default)."""
        return self.arch_weights()

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor:
        """Update the architecture parameters; return the loss it minimised (detached)."""
        raise NotImplementedError

    arch_step_first: bool = True  # DARTS order: architecture step, then weight step

    # --- the two levels ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any] | None = None) -> torch.Tensor:
        return self.supernet(x, self.arch_weights() if decisions is None else decisions)

    def loss_and_accuracy(self, batch: Any, decisions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.supernet(x.contiguous(memory_format=self.input_memory_format()), decisions)
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def weight_step(self, train_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the supernet weights with the gradient clipped to ``grad_clip``."""
        weight_optimizer, _ = self.optimizers()
        weight_optimizer.zero_grad()
        loss, accuracy = self.loss_and_accuracy(train_batch, self.decisions_for_weight_step())
        self.manual_backward(loss)
        if self.hparams.grad_clip:
            self.clip_gradients(weight_optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")
        weight_optimizer.step()
        return loss.detach(), accuracy.detach()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        train_batch, val_batch = batch["train"], batch["val"]
        if self.arch_step_first:
            arch_loss = self.architecture_step(train_batch, val_batch)
            loss, accuracy = self.weight_step(train_batch)
        else:
            loss, accuracy = self.weight_step(train_batch)
            arch_loss = self.architecture_step(train_batch, val_batch)
        size = train_batch[0].shape[0]
        self.log_dict({"train_loss": loss, "train_acc": accuracy}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=size, sync_dist=True)
        if arch_loss is not None:
            self.log("arch_loss", arch_loss, on_step=False, on_epoch=True,
                     batch_size=val_batch[0].shape[0], sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # kept here rather than in training_step, which subclasses may replace
        if (self.hparams.hessian_every and self._hessian_batch is None and isinstance(batch, Mapping)
                and "val" in batch):
            self._hessian_batch = tuple(t.detach() for t in batch["val"])  # fixed for the whole run
        self.advance_lr_schedule(batch_idx)

    def advance_lr_schedule(self, batch_idx: int) -> None:
        """Bring the cosine to this epoch (DARTS: stepped at the start of each epoch) or to this
        step; catching up to the counter also makes a resumed run continue on the right lr."""
        weight_scheduler = self.lr_schedulers()
        target = self.current_epoch
        if self.hparams.lr_schedule_interval == "step":
            target = self.current_epoch * int(self.trainer.num_training_batches) + batch_idx
        while weight_scheduler.last_epoch < target:
            weight_scheduler.step()

    def on_train_epoch_end(self) -> None:
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_epoch=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, accuracy = self.loss_and_accuracy(batch, self.decisions_for_validation(batch_idx))
        self.log_dict({"val_loss": loss, "val_acc": accuracy}, prog_bar=True, on_epoch=True,
                      batch_size=batch[0].shape[0], sync_dist=True)

    @property
    def selection_method(self) -> str:
        """``selection``; always ``best_of_n`` without a distribution to discretize (RSPS)."""
        return self.hparams.selection if self.differentiable else "best_of_n"

    def is_last_epoch(self) -> bool:
        return self.trainer.max_epochs is not None and self.current_epoch >= self.trainer.max_epochs - 1

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self.selection_method == "best_of_n" and self.is_last_epoch():
            self.select_architecture()  # so that the last checkpoint holds the selection
        if not self.differentiable and self.selection is None:
            return  # no distribution to discretize and nothing selected yet
        arch = self.export()
        eigenvalue = self.hessian_eigenvalue()  # every rank: it ends in an all-reduce
        if (eigenvalue is not None and self.hparams.early_stop_on_eigenvalue and not self.is_last_epoch()
                and self.eigenvalue_early_stop.update(self.current_epoch, eigenvalue, arch)):
            self.trainer.should_stop = True  # same eigenvalues on every rank: the same decision
            arch = self.export()  # the architecture of the epoch R-DARTS rolls back to
        run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            log_architecture(self.logger, self.current_epoch, self.arch_weights(), self.supernet.edges,
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
        if not every or not self.differentiable or not params or self._hessian_batch is None:
            return None
        if self.current_epoch % every and not self.is_last_epoch():  # R-DARTS: epoch % freq == 0 or the last
            return None
        batch, was_training = self._hessian_batch, self.supernet.training
        # validation hooks run under inference mode; the diagnostic needs double backward
        with torch.inference_mode(False), torch.enable_grad():
            saved_buffers = [b.detach().clone() for b in self.supernet.buffers()]
            self.supernet.train()
            try:
                value = dominant_hessian_eigenvalue(
                    lambda: self.loss_and_accuracy(batch, self.arch_weights())[0], params,
                    iterations=self.hparams.hessian_iterations,
                    generator=torch.Generator().manual_seed(int(self.current_epoch)))
            finally:
                with torch.no_grad():  # BatchNorm running statistics as training left them
                    for buffer, saved in zip(self.supernet.buffers(), saved_buffers):
                        buffer.copy_(saved)
                self.supernet.train(was_training)
        averaged = torch.tensor([value], dtype=torch.float32, device=self.device)
        all_reduce_mean([averaged])
        return float(averaged)

    # --- optimizers ------------------------------------------------------------------------------
    def architecture_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def configure_optimizers(self):
        h = self.hparams
        weights = torch.optim.SGD(self.supernet.parameters(), lr=h.learning_rate, momentum=h.momentum,
                                  weight_decay=h.weight_decay, nesterov=h.nesterov)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        if h.lr_schedule_interval == "step":  # T_max in training steps
            epochs = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(weights, T_max=epochs,
                                                              eta_min=h.learning_rate_min)
        arch = torch.optim.Adam(self.architecture_parameters(), lr=h.arch_learning_rate,
                                betas=tuple(h.arch_betas), weight_decay=h.arch_weight_decay)
        return [weights, arch], [schedule]

    # --- export and artifacts -------------------------------------------------------------------
    @torch.no_grad()
    def export(self) -> Arch:
        """The architecture of the search: the best-of-N selection once it ran; the architecture
        of the epoch R-DARTS rolled back to once the eigenvalue early stop fired; otherwise the
        space's rule (argmax for NB201, top-2 for DARTS) on the architecture distribution.

        Raises:
            RuntimeError: for an algorithm without a distribution (RSPS) before its selection.
        """
        if self.selection is not None:
            return Arch.from_json(self.selection["arch"])
        if self.eigenvalue_early_stop.stopped:
            return self.eigenvalue_early_stop.stop_arch
        if not self.differentiable:
            raise RuntimeError(f"{type(self).__name__} has no architecture before its best-of-N "
                               "selection, which runs after the last epoch")
        return self.space.discretize({k: w.detach().cpu() for k, w in self.arch_weights().items()})

    def select_architecture(self) -> Arch:
        """Best-of-N on the validation loader, run by rank 0 and broadcast to every rank."""
        trainer = self.trainer
        record = None
        if trainer.is_global_zero:
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None \
                else trainer.val_dataloaders  # the full split, no distributed sampler
            if loader is None:
                raise ValueError("best-of-N selection scores on validation data: fit with a "
                                 "datamodule or val_dataloaders")
            h = self.hparams
            rng = random.Random(rank_shared_seed("selection", self.global_step))
            arch, scores = best_of_n(self, loader, h.selection_samples, h.selection_batches, rng=rng,
                                     shared_batches=h.selection_shared_batches)
            record = {"arch": arch.to_json(), "global_step": int(self.global_step),
                      "epoch": int(self.current_epoch), "num_samples": len(scores),
                      "num_batches": int(h.selection_batches),
                      "shared_batches": bool(h.selection_shared_batches),
                      "scores": [[text, float(acc), float(loss)] for text, acc, loss in scores]}
        self.selection = trainer.strategy.broadcast(record, src=0)
        return self.export()

    def write_arch(self, arch: Arch, directory: str | None) -> str | None:
        """Write ``arch.json`` (space, canonical string, choices, epoch) into the run directory."""
        if directory is None:  # no logger: nowhere to write
            return None
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "arch.json")
        record = {"space": arch.space, "arch": self.space.format(arch), "choices": arch.to_json()["choices"],
                  "algorithm": type(self).__name__, "epoch": int(self.current_epoch),
                  "rule": "space default", "weights": {k: [round(float(p), 6) for p in w.detach()]
                                                       for k, w in self.arch_weights().items()}}
        if self.selection is not None:
            record["rule"] = (f"best of {self.selection['num_samples']} uniform samples by accuracy "
                              f"on {self.selection['num_batches']} validation batch(es)")
            record["selection"] = {k: self.selection[k]
                                   for k in ("epoch", "num_samples", "num_batches", "scores")}
        stop = self.eigenvalue_early_stop
        if stop.stopped and self.selection is None:
            record.update(epoch=stop.stop_epoch, rule="R-DARTS early stop (DARTS-ES)", note=(
                f"the local average of the dominant Hessian eigenvalue rose by more than "
                f"{stop.factor}x; this is the architecture of epoch {stop.stop_epoch}, recorded "
                f"before the stop at epoch {stop.epochs[-1]} (weights are the current ones)"))
        atomic_write_json(path, record)
        return path

    # --- checkpoints: identity of the run and exact resumption ------------------------------
    def checkpoint_identity(self) -> dict[str, Any]:
        return {"space": self.space.name, "algorithm": type(self).__name__,
                "edges": list(self.supernet.edges), "space_options": self.space_options}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["oneshot"] = self.checkpoint_identity()
        checkpoint["selection"] = self.selection
        if self.hparams.hessian_every:
            state = self.eigenvalue_early_stop.state_dict()
            state["archs"] = {k: a.to_json() for k, a in state["archs"].items()}
            checkpoint["eigenvalue_early_stop"] = state
        name, keys, position, has_gauss, cached = np.random.get_state()
        # plain types and tensors only, so `torch.load(weights_only=True)` reads the checkpoint
        checkpoint["rng_states"] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                                    "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position),
                                              int(has_gauss), float(cached))}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_identity(checkpoint, self.checkpoint_identity())
        self.selection = checkpoint.get("selection")
        if "eigenvalue_early_stop" in checkpoint:
            state = dict(checkpoint["eigenvalue_early_stop"])
            state["archs"] = {k: Arch.from_json(a) for k, a in state["archs"].items()}
            self.eigenvalue_early_stop.load_state_dict(state)
        states = checkpoint.get("rng_states")
        if states:  # continue the random stream exactly where the run stopped
            random.setstate(states["python"])
            name, keys, position, has_gauss, cached = states["numpy"]
            keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)  # older runs: ndarray
            np.random.set_state((name, keys.astype(np.uint32), position, has_gauss, cached))
            torch.set_rng_state(states["torch"])

    def on_train_end(self) -> None:
        """Select when no validation followed the last step; check the ranks agree."""
        if (self.selection_method == "best_of_n" and not self.trainer.interrupted
                and (self.selection is None or self.selection["global_step"] != self.global_step)):
            arch = self.select_architecture()
            run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
            if self.trainer.is_global_zero:
                self.write_arch(arch, run_directory)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = torch.cat([a.detach().flatten() for a in self.architecture_parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(flat, reference):
            raise RuntimeError(f"rank {dist.get_rank()} ended with architecture parameters that differ "
                               f"from rank 0 by {(flat - reference).abs().max():.3g}")


def check_checkpoint_identity(checkpoint: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise ValueError if a checkpoint comes from another space or algorithm."""
    found = checkpoint.get("oneshot")
    if found is None:
        raise ValueError("this checkpoint was not written by `oneshot search` (no 'oneshot' entry); "
                         "pass a RUN/checkpoints/last.ckpt from a search run")
    for key in ("space", "algorithm", "edges", "space_options"):
        if found.get(key) != expected.get(key):
            shown = (found.get(key), expected.get(key)) if key != "edges" else ("other edges", "these edges")
            if key == "space_options" and key not in found:
                continue  # checkpoints written before space options were recorded
            raise ValueError(f"checkpoint {key} is {shown[0]!r} but this run's is {shown[1]!r}: resume with "
                             f"the config of the run that wrote the checkpoint")
