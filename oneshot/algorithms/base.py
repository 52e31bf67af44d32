"""The base of every supernet training algorithm; it knows nothing of architecture parameters.

:class:`SupernetTraining` owns what all families share: the supernet of a space, the loss, the
weight optimizer and its schedule, manual optimization (``automatic_optimization = False``, as
Lightning documents for more than one optimizer or several forwards per step), the checkpoint
identity, the random state that makes a resumed run exact, the exported architecture and its
``arch.json``, selection after the last epoch, and ``init_from`` a previous run's weights for
staged training. Two families build on it: the differentiable one
(:mod:`oneshot.algorithms.differentiable`: alphas, an architecture optimizer, bilevel steps) and
the sampled single-path one (:mod:`oneshot.algorithms.single_path`: a sampler per step).
"""
from __future__ import annotations

import os
import random
import warnings
from typing import Any, Mapping

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import supernets
from oneshot import selection
from oneshot.checkpoints import (capture_random_state, check_checkpoint_identity, read_checkpoint,
                                 restore_random_state)
from oneshot.files import atomic_write_json
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


def with_space_option(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, value: Any
                      ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The constructor arguments of :class:`SupernetTraining` with ``space_options[name]`` set
    to ``value`` (space_options is the second positional or a keyword); a different value
    already there is an error (the algorithm's own option says it once)."""
    args, kwargs = list(args), dict(kwargs)
    options = dict((args[1] if len(args) >= 2 else kwargs.get("space_options")) or {})
    given = options.setdefault(name, value)
    if given != value:
        raise ValueError(f"space_options {name}={given} differs from what the algorithm needs "
                         f"({value}); leave {name} out of space_options")
    if len(args) >= 2:
        args[1] = options
    else:
        kwargs["space_options"] = options
    return tuple(args), kwargs


class SupernetTraining(L.LightningModule):
    """A supernet of a registered space trained with SGD under a cosine schedule.

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
        grad_clip: max norm of the weight gradient (DARTS ``--grad_clip`` 5); 0 turns it off.
        grad_clip_per_tensor: clip each tensor's gradient to ``grad_clip`` on its own (ENAS's TF
            ``clip_mode="norm"``) instead of the global norm of all of them (DARTS, xautodl).
        memory_format: tensor layout of the supernet and its inputs: ``channels_last``,
            ``contiguous``, or ``auto`` (channels_last on CPU, where oneDNN runs the DARTS-space
            step about 1.5x faster: benchmarks/step.py; contiguous elsewhere). Numerics only
            differ by float rounding.
        lr_schedule_interval: ``epoch``: the cosine reads the epoch only, constant within it
            (DARTS train_search.py; xautodl's ``CosineAnnealingLR.get_lr`` past warm-up);
            ``step``: the cosine is evaluated at every training step.
        selection: the strategy that chooses the final architecture after the last epoch
            (:mod:`oneshot.selection`): ``rule`` (the algorithm's export) or ``best_of_n``
            (``selection_samples`` uniform architectures scored with inherited weights on
            ``selection_batches`` validation batches, as NB201's RSPS/SETN/ENAS baselines do).
        selection_samples: architectures scored by ``best_of_n`` (NB201 ``--select_num 100``).
        selection_batches: validation batches each is scored on (NB201: one).
        selection_shared_batches: score every candidate on the same batches (a fairer
            comparison); False is NB201's ``search_find_best``: each on the next batches.
        selection_options: further options of the strategy, e.g. for ``evolution``
            ``{constraints: ["flops<=330e6"], bn_mode: reset, val_images: 8000}``
            (:func:`oneshot.selection.evolution_strategy`).
        cosine_t_max: the cosine's half period in schedule steps (epochs, or steps with
            ``lr_schedule_interval: step``); None: the whole run. A shorter one continues as a
            cosine wave past it (xautodl's ENAS.config ``T_max`` 10 over 250 epochs).
        cosine_restarts: (T_0, T_mult): SGDR, warm restarts after T_0 schedule steps, each period
            T_mult times longer (ENAS ``--child_lr_T_0 10 --child_lr_T_mul 2``); None: no restarts.
        init_from: a checkpoint of an earlier run (stage) whose supernet weights start this one;
            tensors are copied where name and shape match, the rest keep their initialisation.
            Ignored when a run resumes from its own checkpoint.
    """

    single_path: bool = False  # True: unsampled candidates get no gradient (DDP must allow it)
    auxiliary_weight: float = 0.0  # the loss weight of an auxiliary head where the supernet has one
    default_selection: str = "rule"

    def __init__(self, space: str = "nb201", space_options: dict[str, Any] | None = None,
                 num_classes: int = 10, in_channels: int = 3,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float = 3e-4, nesterov: bool = False,
                 grad_clip: float = 5.0, memory_format: str = "auto", lr_schedule_interval: str = "epoch",
                 selection: str | None = None, selection_samples: int = 100, selection_batches: int = 1,
                 selection_shared_batches: bool = True, selection_options: dict[str, Any] | None = None,
                 init_from: str | None = None, cosine_t_max: int | None = None,
                 cosine_restarts: tuple[int, int] | None = None, grad_clip_per_tensor: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.space = supernets.get(space)
        self.space_options = dict(space_options or {})
        self.supernet = self.space.build_supernet(num_classes=num_classes, in_channels=in_channels,
                                                  **self.space_options)
        if memory_format not in ("auto", "channels_last", "contiguous"):
            raise ValueError(f"memory_format {memory_format!r}: use auto, channels_last or contiguous")
        if lr_schedule_interval not in ("epoch", "step"):
            raise ValueError(f"lr_schedule_interval {lr_schedule_interval!r}: use 'epoch' (DARTS, xautodl) "
                             "or 'step' (the cosine at every step)")
        self.selection_name = self.check_selection(selection or self.default_selection)
        if selection_samples < 1 or selection_batches < 1:
            raise ValueError(f"selection_samples={selection_samples}, selection_batches="
                             f"{selection_batches}: both must be at least 1")
        self._tiny_reduce = any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) and m.kernel_size == (1, 1)
                                and m.in_channels < 8 for m in self.supernet.modules())  # see input_memory_format
        self.selection: dict[str, Any] | None = None  # the after-training selection record, once it ran

    def check_selection(self, name: str) -> str:
        selection.check_name(name)
        if name in selection.AFTER_SEARCH_ONLY:
            raise ValueError(f"selection {name!r} tunes the supernet and runs after the search: "
                             f"`oneshot discretize RUN --rule {name}`")
        return name

    # --- layout and start ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.init_from and self.trainer.ckpt_path is None:
            self.load_supernet_weights(self.hparams.init_from)
        if self.input_memory_format() is torch.channels_last:
            self.supernet.to(memory_format=torch.channels_last)

    def load_supernet_weights(self, path: str) -> dict[str, list[str]]:
        """Copy the supernet tensors of a oneshot checkpoint whose name and shape match.

        Returns:
            ``{"copied": [...], "kept": [...]}``: names taken from the checkpoint and names
            that kept their initialisation (absent there or of another shape).
        """
        state = read_checkpoint(path)["state_dict"]
        own = self.supernet.state_dict()
        copied, kept = [], []
        with torch.no_grad():
            for name, tensor in own.items():
                source = state.get(f"supernet.{name}")
                if source is not None and source.shape == tensor.shape:
                    tensor.copy_(source)
                    copied.append(name)
                else:
                    kept.append(name)
        if not any(own[name].dim() for name in copied):  # BN step counters alone are no match
            raise ValueError(f"init_from {path}: no supernet tensor matches this supernet by name and "
                             "shape; pass a checkpoint of the same space")
        return {"copied": copied, "kept": kept}

    def input_memory_format(self) -> torch.memory_format:
        """The layout ``memory_format`` asks for; ``auto`` is channels_last on CPU, except where a
        stride-2 1x1 conv reads fewer than 8 channels: its channels_last CPU backward corrupts
        the heap in torch 2.14 (oneDNN; e.g. FactorizedReduce of a C=4 DARTS supernet with
        4 partial channels), so such tiny supernets stay contiguous."""
        choice = self.hparams.memory_format
        if choice == "auto":
            choice = "channels_last" if self.device.type == "cpu" and not self._tiny_reduce else "contiguous"
        return torch.channels_last if choice == "channels_last" else torch.contiguous_format

    # --- what families change -----------------------------------------------------------------
    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        """Decisions the supernet weights are trained with at this step."""
        raise NotImplementedError

    def weight_decisions(self, train_batch: Any) -> Mapping[str, Any]:
        """The decisions of the weight step on this batch: :meth:`decisions_for_weight_step`,
        unless a family needs the batch itself (SDARTS-ADV's attack)."""
        return self.decisions_for_weight_step()

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        """Decisions the supernet is monitored with each epoch."""
        raise NotImplementedError

    def export_rule(self) -> Arch:
        """The architecture the algorithm itself derives, without a selection (e.g. the space's
        rule on alphas); RuntimeError where there is none before the selection."""
        raise RuntimeError(f"{type(self).__name__} has no architecture before its {self.selection_name} "
                           "selection, which runs after the last epoch")

    # --- forward, loss, the weight step -------------------------------------------------------
    def forward(self, x: torch.Tensor, decisions: Mapping[str, Any]) -> torch.Tensor:
        return self.supernet(self.supernet.prepare_input(x, decisions), decisions)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training criterion (cross-entropy; a family may smooth or distil)."""
        return F.cross_entropy(logits, y)

    def loss_and_accuracy(self, batch: Any, decisions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = self.supernet.prepare_input(x, decisions)
        outputs = self.supernet(x.contiguous(memory_format=self.input_memory_format()), decisions)
        logits, auxiliary = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = self.loss(logits, y)
        if auxiliary is not None:  # a supernet with an auxiliary head, in training (ENAS micro)
            loss = loss + self.auxiliary_weight * self.loss(auxiliary, y)
        return loss, (logits.argmax(-1) == y).float().mean()

    def weight_optimizer(self) -> Any:
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers

    def weight_step(self, train_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the supernet weights with the gradient clipped to ``grad_clip``."""
        optimizer = self.weight_optimizer()
        optimizer.zero_grad()
        loss, accuracy = self.loss_and_accuracy(train_batch, self.weight_decisions(train_batch))
        self.manual_backward(loss)
        self.after_weight_backward()
        if self.hparams.grad_clip and self.hparams.get("grad_clip_per_tensor"):
            for p in self.supernet.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_(p, self.hparams.grad_clip)
        elif self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        return loss.detach(), accuracy.detach()

    def after_weight_backward(self) -> None:
        """Between the weight gradients and the update (SPOS drops the gradients of untouched
        candidates here)."""

    def log_training(self, loss: torch.Tensor, accuracy: torch.Tensor, size: int) -> None:
        self.log_dict({"train_loss": loss, "train_acc": accuracy}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=size, sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.advance_lr_schedule(batch_idx)

    def advance_lr_schedule(self, batch_idx: int) -> None:
        """Bring the cosine to this epoch (DARTS: stepped at the start of each epoch) or to this
        step; catching up to the counter also makes a resumed run continue on the right lr."""
        schedule = self.lr_schedulers()
        target = self.current_epoch + self.epochs_before()
        if self.hparams.lr_schedule_interval == "step":
            target = target * int(self.trainer.num_training_batches) + batch_idx
        with warnings.catch_warnings():  # catching up before the first optimizer step is meant
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
            while schedule.last_epoch < target:
                schedule.step()

    def epochs_before(self) -> int:
        """Epochs of the learning-rate schedule that earlier runs spent (a stage that continues
        its predecessor's cosine, as DrNAS's second stage); 0 for a run of its own."""
        return 0

    def on_train_epoch_end(self) -> None:
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_epoch=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, accuracy = self.loss_and_accuracy(batch, self.decisions_for_validation(batch_idx))
        self.log_dict({"val_loss": loss, "val_acc": accuracy}, prog_bar=True, on_epoch=True,
                      batch_size=batch[0].shape[0], sync_dist=True)

    def planned_epochs(self) -> int:
        """The run's ``max_epochs`` (1 outside a fit or when unset): what per-epoch schedules span."""
        trainer = self._trainer
        return max(int(trainer.max_epochs), 1) if trainer is not None and trainer.max_epochs else 1

    def is_last_epoch(self) -> bool:
        return self.trainer.max_epochs is not None and self.current_epoch >= self.trainer.max_epochs - 1

    # --- optimizers ---------------------------------------------------------------------------
    def weight_optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, Any]:
        h = self.hparams
        weights = torch.optim.SGD(self.supernet.parameters(), lr=h.learning_rate, momentum=h.momentum,
                                  weight_decay=h.weight_decay, nesterov=h.nesterov)
        periods = self.planned_epochs()
        if h.lr_schedule_interval == "step":  # T_max in training steps
            periods = max(int(self.trainer.estimated_stepping_batches), 1)
        if h.get("cosine_t_max"):
            periods = int(h.cosine_t_max)
        if h.get("cosine_restarts"):
            first, growth = (int(v) for v in h.cosine_restarts)
            return weights, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                weights, T_0=first, T_mult=growth, eta_min=h.learning_rate_min)
        return weights, torch.optim.lr_scheduler.CosineAnnealingLR(weights, T_max=periods,
                                                                   eta_min=h.learning_rate_min)

    def configure_optimizers(self):
        weights, schedule = self.weight_optimizer_and_schedule()
        return [weights], [schedule]

    # --- export, selection and artifacts ------------------------------------------------------
    @torch.no_grad()
    def export(self) -> Arch:
        """The architecture of the search: the after-training selection once it ran, else
        :meth:`export_rule`."""
        if self.selection is not None:
            return Arch.from_json(self.selection["arch"])
        return self.export_rule()

    def selection_due(self) -> bool:
        """A data-driven selection that has not yet seen this step's weights."""
        return self.selection_name != "rule" and (
            self.selection is None or self.selection["global_step"] != self.global_step)

    def select_architecture(self) -> Arch:
        """The selection strategy on the validation loader, run by rank 0 and broadcast."""
        trainer = self.trainer
        record = None
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            if trainer.datamodule is None:
                raise ValueError(f"selection {self.selection_name} scores on validation data: fit with "
                                 "a datamodule")
            h = self.hparams
            directory = os.path.join(log_dir, self.selection_name) if log_dir else None
            options = {"num_samples": h.selection_samples, "num_batches": h.selection_batches,
                       "seed": rank_shared_seed("selection", self.global_step),
                       "shared_batches": h.selection_shared_batches, "directory": directory,
                       **(h.selection_options or {})}
            chosen = selection.select(self.selection_name, self, trainer.datamodule, **options)
            record = {"arch": chosen.arch.to_json(), "global_step": int(self.global_step),
                      "epoch": int(self.current_epoch), "strategy": self.selection_name,
                      "num_samples": len(chosen.scores), "num_batches": int(h.selection_batches),
                      "shared_batches": bool(h.selection_shared_batches), "scores": chosen.scores,
                      "settings": chosen.settings}
        self.selection = trainer.strategy.broadcast(record, src=0)
        return self.export()

    def arch_record(self, arch: Arch) -> dict[str, Any]:
        """What ``arch.json`` holds; families add to it."""
        record = {"space": arch.space, "arch": self.space.format(arch), "choices": arch.to_json()["choices"],
                  "algorithm": type(self).__name__, "epoch": int(self.current_epoch), "rule": "space default"}
        weights = selection.arch_weights_record(self)
        if weights:
            record["weights"] = weights
        if self.selection is not None:
            strategy = self.selection.get("strategy", "best_of_n")
            record["rule"] = (f"best of {self.selection['num_samples']} uniform samples by accuracy "
                              f"on {self.selection['num_batches']} validation batch(es)") if strategy == "best_of_n" \
                else f"{strategy} over {self.selection['num_samples']} evaluated architectures"
            record["selection"] = {k: self.selection[k] for k in ("epoch", "strategy", "num_samples", "num_batches",
                                                                  "settings", "scores") if k in self.selection}
        return record

    def write_arch(self, arch: Arch, directory: str | None) -> str | None:
        """Write ``arch.json`` (space, canonical string, choices, epoch) into the run directory."""
        if directory is None:  # no logger: nowhere to write
            return None
        os.makedirs(directory, exist_ok=True)
        return str(atomic_write_json(os.path.join(directory, "arch.json"), self.arch_record(arch)))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self.selection_due() and self.is_last_epoch():
            self.select_architecture()  # so that the last checkpoint holds the selection
        self.after_validation_epoch()

    def after_validation_epoch(self) -> None:
        """Monitoring and ``arch.json`` once there is an architecture; families extend it."""
        if self.selection is None:
            try:
                arch = self.export_rule()
            except RuntimeError:
                return  # nothing to write before the selection
        else:
            arch = self.export()
        run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            self.write_arch(arch, run_directory)

    def on_train_end(self) -> None:
        """Select when no validation followed the last step."""
        if self.selection_due() and not self.trainer.interrupted:
            arch = self.select_architecture()
            run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
            if self.trainer.is_global_zero:
                self.write_arch(arch, run_directory)

    # --- checkpoints: identity of the run and exact resumption --------------------------------
    def checkpoint_identity(self) -> dict[str, Any]:
        return {"space": self.space.name, "algorithm": type(self).__name__,
                "choices": list(self.supernet.choices), "space_options": self.space_options}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["oneshot"] = self.checkpoint_identity()
        checkpoint["selection"] = self.selection
        checkpoint["rng_states"] = capture_random_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_identity(checkpoint, self.checkpoint_identity())
        self.selection = checkpoint.get("selection")
        restore_random_state(checkpoint.get("rng_states"))
