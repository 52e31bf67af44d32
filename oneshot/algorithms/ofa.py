"""Once-for-All progressive shrinking (Cai et al., ICLR 2020), one phase per run.

Reference: mit-han-lab/once-for-all ``train_ofa_net.py`` (the phase table and settings) and
``elastic_nn/training/progressive_shrinking.py`` (the loop, validation, channel re-ordering). A
phase enables a subset of the ofa-mbv3 choices and starts from the previous phase's weights
(``init_from``); ``oneshot shrink`` runs them in order into one run directory.

======== ======== ======= ======= =============== ======================
phase    kernel   expand  depth   subnets / step  starts from
======== ======== ======= ======= =============== ======================
full     7        6       4       1               scratch (no KD)
kernel   3,5,7    6       4       1               full
depth1   3,5,7    6       3,4     2               kernel
depth2   3,5,7    6       2,3,4   2               depth1
expand1  3,5,7    4,6     2,3,4   4               depth2 (channels sorted)
expand2  3,5,7    3,4,6   2,3,4   4               expand1 (sorted, bands kept)
======== ======== ======= ======= =============== ======================

Each step: one resolution for the batch (from every size the supernet serves, from the first
phase on, drawn from a rank-shared stream: identical on every DDP rank), the teacher's soft labels
(the full network, in train mode under no_grad), then ``subnets_per_step`` uniform subnets each
forward and backward on the same batch, gradients accumulated, one Nesterov SGD step. The loss is
label-smoothed cross-entropy + ``kd_ratio`` x soft cross-entropy to the teacher (``kd_type: ce``;
``mse`` on logits as the code's option). No weight decay on parameters named ``bn`` or ``bias``
(``no_decay_keys "bn#bias"``); the lr warms up linearly per iteration over ``warmup_epochs`` from
``warmup_lr`` and then follows a per-iteration cosine to 0 over the remaining epochs; it is the
per-device lr times the number of devices (``init_lr = base_lr * hvd.size()``).

Validation follows ``validate``: a small grid of uniform subnets (every kernel in the kernel
phase, else the smallest and largest; the smallest and largest expand and depth; resolutions
``validation_resolutions``), each after exact BN recalibration on fixed training images (2,000
in batches of 200); ``val_acc`` is their mean, each is logged as ``val_acc/R..-D..-E..-K..``.

Where this differs from the reference: the batch is resized to the step's resolution (the
reference crops at that size in its loader); the released script passes ``warmup_lr = -1``, which
its warm-up formula uses literally (the lr starts at -1 and crosses 0 about halfway through the
warm-up): the ImageNet configs keep it, the default here is 0.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from oneshot.algorithms.base import rank_shared_seed
from oneshot.algorithms.single_path import SinglePathSearch
from oneshot.batchnorm import preserved_batchnorm
from oneshot.checkpoints import read_checkpoint
from oneshot.rank.scoring import batchnorms, fixed_batches, recalibrate_batchnorm
import supernets
from supernets import Arch
from supernets.ofa_mbv3 import RESOLUTION, extract_network


@dataclass(frozen=True)
class Phase:
    """The choices a progressive-shrinking phase trains, and how."""

    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    depths: tuple[int, ...]
    subnets_per_step: int
    reorder_band: int | None  # channel re-ordering at the start: OFA's expand_ratio_stage

    def values(self, kind: str) -> tuple[int, ...] | None:
        """The values trained for a choice kind (``kernel``, ``expand``, ``depth``); None for the
        resolution, which every phase samples in full."""
        return {"kernel": self.kernel_sizes, "expand": self.expand_ratios, "depth": self.depths}.get(kind)


def choice_kind(label: str) -> str:
    """``stage1.block2.kernel`` -> ``kernel``; ``resolution`` -> ``resolution``."""
    return label.rsplit(".", 1)[-1]


PHASES: dict[str, Phase] = {
    "full": Phase((7,), (6,), (4,), 1, None),
    "kernel": Phase((3, 5, 7), (6,), (4,), 1, None),
    "depth1": Phase((3, 5, 7), (6,), (3, 4), 2, None),
    "depth2": Phase((3, 5, 7), (6,), (2, 3, 4), 2, None),
    "expand1": Phase((3, 5, 7), (4, 6), (2, 3, 4), 4, 0),
    "expand2": Phase((3, 5, 7), (3, 4, 6), (2, 3, 4), 4, 1),
}
FINAL_PHASE = "expand2"

# Per phase, the search arguments of the released script (train_ofa_net.py): epochs include the
# warm-up (n_epochs + warmup_epochs), the lr is per device (x the device count, ``scale_lr``).
# The full network is not trained by the released code (it downloads ofa_D4_E6_K7); its entry is
# the paper's stand-alone MobileNetV3 recipe as recalled in the reference notes (180 epochs, lr 2.6
# for 2,048 images on 32 devices = 0.08125 per device of 64), to be checked against the paper.
REFERENCE_SCHEDULE: dict[str, dict[str, Any]] = {
    "full": {"trainer.max_epochs": 180, "model.init_args.learning_rate": 0.08125, "model.init_args.warmup_epochs": 0},
    "kernel": {"trainer.max_epochs": 125, "model.init_args.learning_rate": 3e-2, "model.init_args.warmup_epochs": 5},
    "depth1": {"trainer.max_epochs": 25, "model.init_args.learning_rate": 2.5e-3, "model.init_args.warmup_epochs": 0},
    "depth2": {"trainer.max_epochs": 125, "model.init_args.learning_rate": 7.5e-3, "model.init_args.warmup_epochs": 5},
    "expand1": {"trainer.max_epochs": 25, "model.init_args.learning_rate": 2.5e-3, "model.init_args.warmup_epochs": 0},
    "expand2": {"trainer.max_epochs": 125, "model.init_args.learning_rate": 7.5e-3, "model.init_args.warmup_epochs": 5},
}


def previous_phase(phase: str) -> str | None:
    order = list(PHASES)
    return None if order.index(phase) == 0 else order[order.index(phase) - 1]


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """OFA ``cross_entropy_loss_with_soft_target``: mean over the batch of -sum p log softmax."""
    return torch.mean(torch.sum(-target_probabilities * F.log_softmax(logits, dim=1), dim=1))


class OfaSearch(SinglePathSearch):
    """One phase of OFA's progressive shrinking on the ``ofa-mbv3`` space.

    Args:
        phase: ``full``, ``kernel``, ``depth1``, ``depth2``, ``expand1`` or ``expand2`` (table above).
        subnets_per_step: subnets per batch (None: the phase's, 1/2/4).
        teacher: a checkpoint of the ``full`` phase whose largest network distils into this
            phase (None with ``kd_ratio`` > 0 is an error outside the full phase).
        kd_ratio: the distillation loss weight (1.0); 0 turns the teacher off.
        kd_type: ``ce`` (soft cross-entropy on the teacher's softmax) or ``mse`` (on logits).
        label_smoothing: of the hard-label loss (0.1).
        warmup_epochs: linear warm-up epochs before the cosine (5 in the long phases).
        warmup_lr: the warm-up's starting lr (the released script: -1, used literally).
        scale_lr: multiply ``learning_rate`` (per device) by the number of devices.
        validation_resolutions: image sizes of the validation grid (OFA: 160 and 224).
        bn_images, bn_batch_size: BN recalibration before each validation subnet (2,000, 200).
        **kwargs: :class:`~oneshot.algorithms.base.SupernetTraining` settings; defaults here are
            OFA's (SGD Nesterov, momentum 0.9, weight decay 3e-5, no clipping). The selection
            (``predictor`` by default) runs after the final phase, in other phases only when
            ``selection`` is given.
    """

    default_selection = "predictor"
    sampler_name = "ofa"

    def __init__(self, phase: str = "kernel", subnets_per_step: int | None = None, teacher: str | None = None,
                 kd_ratio: float = 1.0, kd_type: str = "ce", label_smoothing: float = 0.1,
                 warmup_epochs: int = 0, warmup_lr: float = 0.0, scale_lr: bool = True,
                 validation_resolutions: Sequence[int] = (160, 224), bn_images: int = 2000,
                 bn_batch_size: int = 200, space: str = "ofa-mbv3", learning_rate: float = 3e-2,
                 learning_rate_min: float = 0.0, momentum: float = 0.9, weight_decay: float = 3e-5,
                 nesterov: bool = True, grad_clip: float = 0.0, selection: str | None = None, **kwargs: Any):
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: one of {', '.join(PHASES)}")
        if kd_type not in ("ce", "mse"):
            raise ValueError(f"kd_type {kd_type!r}: ce (soft cross-entropy, OFA's) or mse (on logits)")
        if space != "ofa-mbv3":
            raise ValueError(f"OfaSearch trains the ofa-mbv3 space, not {space!r}")
        self.select_after_training = selection is not None or phase == FINAL_PHASE
        super().__init__(space=space, learning_rate=learning_rate, learning_rate_min=learning_rate_min,
                         momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, grad_clip=grad_clip,
                         selection=selection, **kwargs)
        self.phase = PHASES[phase]
        self.enabled_choices = self.phase_choices()
        self.space = self.space.restricted(self.enabled_choices)  # strategies sample what the phase trains
        unserved = [r for r in validation_resolutions if r not in self.enabled_choices[RESOLUTION]]
        if unserved:
            raise ValueError(f"validation_resolutions {unserved} are not among the supernet's resolutions "
                             f"{self.enabled_choices[RESOLUTION]}: choose some of those")
        self.teacher = None
        if kd_ratio > 0 and phase != "full":
            largest = supernets.get(space).largest(self.supernet.choices)
            self.teacher = self.space.build_network(largest, num_classes=self.hparams.num_classes,
                                                    **{**self.space.network_options(self.space_options),
                                                       "in_channels": self.hparams.in_channels, "dropout": 0.0})
            self.teacher.requires_grad_(False)  # a fixed target: no gradients, no optimizer
        self._recalibration: list[Any] | None = None
        self._grid: list[tuple[str, Arch, dict]] = []  # this epoch's validation subnets and BN statistics
        self._totals: dict[str, list[float]] = {}  # per grid subnet: loss sum, correct sum, images

    # --- what the phase trains ----------------------------------------------------------------
    def phase_choices(self) -> dict[str, tuple[int, ...]]:
        """The supernet's choices restricted to the phase; ValueError if it serves none of them."""
        choices = {}
        for label, served in self.supernet.choices.items():
            wanted = self.phase.values(choice_kind(label))
            choices[label] = served if wanted is None else tuple(v for v in served if v in wanted)
            if not choices[label]:
                raise ValueError(f"phase {self.hparams.phase} trains {choice_kind(label)} {wanted}, but the "
                                 f"supernet serves {served} for {label}: widen space_options")
        return choices

    def check_enabled(self, decisions: Mapping[str, Any]) -> None:
        """ValueError naming a value the phase has not trained (and the phase that does)."""
        for label, options in self.enabled_choices.items():
            value = decisions[label]
            if value in options:
                continue
            kind = choice_kind(label)
            later = [name for name in list(PHASES)[list(PHASES).index(self.hparams.phase) + 1:]
                     if value in (PHASES[name].values(kind) or ())]
            hint = (f"use a checkpoint of phase {later[0]}" if later else
                    "the supernet serves only these (space_options.resolutions)" if kind == RESOLUTION else
                    "choose a value the phase trains")
            raise ValueError(f"{label} = {value} is outside what phase {self.hparams.phase} trained "
                             f"({', '.join(map(str, options))}): {hint}")

    def sample_architecture(self, *purpose: Any) -> Arch:
        return self.space.sample(random.Random(rank_shared_seed(self.sampler_name, *purpose)))

    def step_resolution(self, step: int) -> int:
        """The batch's resolution at ``step``, the same on every rank and on resume."""
        sizes = self.enabled_choices[RESOLUTION]
        return random.Random(rank_shared_seed(self.sampler_name, "resolution", step)).choice(sizes)

    def export_rule(self) -> Arch:
        if not self.select_after_training:
            raise RuntimeError(f"phase {self.hparams.phase} trains the supernet for the next phase; the "
                               f"architecture is chosen after phase {FINAL_PHASE} ({self.selection_name} selection)")
        return super().export_rule()

    def selection_due(self) -> bool:
        return self.select_after_training and super().selection_due()

    # --- start of a phase ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        fresh = self.trainer.ckpt_path is None
        h = self.hparams
        previous = previous_phase(h.phase)
        if fresh and previous is not None and not h.init_from:
            raise ValueError(f"phase {h.phase} continues the weights of phase {previous}: pass "
                             f"--model.init_args.init_from <{previous} run>/checkpoints/last.ckpt, or run the "
                             "schedule with `oneshot shrink`")
        if fresh and h.init_from:
            source = (read_checkpoint(h.init_from).get("hyper_parameters") or {}).get("phase")
            if source != previous:
                raise ValueError(f"init_from {h.init_from} holds phase {source!r}; phase {h.phase} starts from "
                                 f"phase {previous!r}: pass that phase's checkpoint")
        super().on_fit_start()  # init_from copies the previous phase's supernet
        if fresh and self.teacher is not None:
            if not h.teacher:
                raise ValueError(f"phase {h.phase} distils from the full network: pass --model.init_args.teacher "
                                 "<full run>/checkpoints/last.ckpt, or kd_ratio: 0")
            self.load_teacher(h.teacher)
        if fresh and self.phase.reorder_band is not None:
            self.supernet.reorder_middle(self.phase.reorder_band)

    @torch.no_grad()
    def load_teacher(self, path: str) -> None:
        """The largest network of a full-phase checkpoint's supernet becomes the teacher."""
        checkpoint = read_checkpoint(path)
        if (checkpoint.get("hyper_parameters") or {}).get("phase") != "full":
            raise ValueError(f"teacher {path} is not a checkpoint of the full phase: pass the full run's "
                             "checkpoints/last.ckpt")
        source = self.space.build_supernet(num_classes=self.hparams.num_classes, in_channels=self.hparams.in_channels,
                                           **self.space_options)
        source.load_state_dict({k[len("supernet."):]: v for k, v in checkpoint["state_dict"].items()
                                if k.startswith("supernet.")})
        largest = extract_network(source, self.space.largest(source.choices))
        self.teacher.load_state_dict(largest.state_dict())
        self.teacher.to(self.device)

    # --- the step -----------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def loss_and_accuracy(self, batch: Any, decisions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_enabled(decisions)
        return super().loss_and_accuracy(batch, decisions)

    def distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.hparams.kd_type == "mse":
            return F.mse_loss(logits, teacher_logits)
        return soft_cross_entropy(logits, F.softmax(teacher_logits, dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch["train"] if isinstance(batch, Mapping) else batch
        size = self.step_resolution(self.global_step)
        x = self.supernet.prepare_input(x, {RESOLUTION: size}).contiguous(memory_format=self.input_memory_format())
        optimizer = self.weight_optimizer()
        optimizer.zero_grad()
        teacher_logits = None
        if self.teacher is not None:
            self.teacher.train()  # as the reference: batch statistics, under no_grad
            with torch.no_grad():
                teacher_logits = self.teacher(x).detach()
        losses, accuracies = [], []
        for i in range(self.hparams.subnets_per_step or self.phase.subnets_per_step):
            arch = self.sample_architecture("weights", self.global_step, i)
            decisions = {**self.space.decisions(arch), RESOLUTION: size}
            logits = self.supernet(x, decisions)
            loss = self.loss(logits, y)
            if teacher_logits is not None:
                loss = loss + self.hparams.kd_ratio * self.distillation(logits, teacher_logits)
            self.manual_backward(loss)
            losses.append(loss.detach())
            accuracies.append((logits.argmax(-1) == y).float().mean().detach())
        optimizer.step()
        self.log_training(torch.stack(losses).mean(), torch.stack(accuracies).mean(), y.shape[0])

    # --- optimizer and schedule ---------------------------------------------------------------
    def weight_optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, Any]:
        h = self.hparams
        decayed, plain = [], []
        for name, p in self.supernet.named_parameters():
            (plain if ("bn" in name or "bias" in name) else decayed).append(p)
        groups = [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]
        weights = torch.optim.SGD(groups, lr=self.initial_lr(), momentum=h.momentum, weight_decay=h.weight_decay,
                                  nesterov=h.nesterov)
        return weights, torch.optim.lr_scheduler.LambdaLR(weights, self.lr_factor)

    def initial_lr(self) -> float:
        devices = self.trainer.world_size if self.hparams.scale_lr else 1
        return self.hparams.learning_rate * devices

    def batches_per_epoch(self) -> int:
        count = self.trainer.num_training_batches
        if not isinstance(count, int) or count <= 0:  # before the fit loop knows it
            count = self.trainer.estimated_stepping_batches / max(int(self.trainer.max_epochs or 1), 1)
        return max(int(count), 1)

    def lr_factor(self, iteration: int) -> float:
        """lr / initial lr at ``iteration`` (from 0): OFA's ``warmup_adjust_learning_rate``, then
        ``calc_learning_rate`` (cosine per iteration over the epochs after the warm-up)."""
        h, per_epoch = self.hparams, self.batches_per_epoch()
        initial = self.initial_lr()
        warmup = h.warmup_epochs * per_epoch
        if iteration < warmup:
            lr = (iteration + 1) / warmup * (initial - h.warmup_lr) + h.warmup_lr
        else:
            total = max((int(self.trainer.max_epochs or 1) - h.warmup_epochs) * per_epoch, 1)
            lr = 0.5 * initial * (1 + math.cos(math.pi * min(iteration - warmup, total) / total))
        return lr / initial if initial else 0.0

    def advance_lr_schedule(self, batch_idx: int) -> None:
        schedule = self.lr_schedulers()
        target = self.current_epoch * self.batches_per_epoch() + batch_idx
        while schedule.last_epoch < target:
            schedule.step()

    # --- validation: the reference's grid, each subnet after BN recalibration -----------------
    def validation_grid(self) -> list[tuple[str, Arch]]:
        """(name, arch) of OFA's ``validate`` settings: uniform subnets at each grid point."""
        p, choices = self.phase, self.enabled_choices

        def ends(values: Sequence[int]) -> list[int]:
            return sorted({min(values), max(values)})

        kernels = sorted(p.kernel_sizes) if self.hparams.phase == "kernel" else ends(p.kernel_sizes)
        sizes = [r for r in self.hparams.validation_resolutions]
        grid = []
        for d in ends(p.depths):
            for e in ends(p.expand_ratios):
                for k in kernels:
                    for r in sizes:
                        values = {label: {"kernel": k, "expand": e, "depth": d}.get(label.rsplit(".", 1)[-1], r)
                                  for label in choices}
                        grid.append((f"R{r}-D{d}-E{e}-K{k}", Arch(self.space.name, values)))
        return grid

    def recalibration_batches(self) -> Sequence[Any]:
        if self._recalibration is None:
            datamodule = self.trainer.datamodule
            self._recalibration = fixed_batches(datamodule.weight_set, self.hparams.bn_images,
                                                self.hparams.bn_batch_size, seed=rank_shared_seed("ofa-bn"))
        return self._recalibration

    @torch.no_grad()
    def on_validation_epoch_start(self) -> None:
        """Recalibrate every grid subnet once and keep its BN statistics for the epoch."""
        self._grid = []
        norms = batchnorms(self.supernet)
        for name, arch in self.validation_grid():
            with preserved_batchnorm(self.supernet):
                recalibrate_batchnorm(self, arch, self.recalibration_batches())
                stats = {bn: (bn.running_mean.clone(), bn.running_var.clone()) for bn in norms}
            self._grid.append((name, arch, stats))
        self._totals = {name: [0.0, 0.0, 0] for name, _, _ in self._grid}

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.supernet.eval()
        for name, arch, stats in self._grid:
            with preserved_batchnorm(self.supernet):
                for bn, (mean, var) in stats.items():
                    bn.running_mean.copy_(mean), bn.running_var.copy_(var)
                loss, accuracy = super().loss_and_accuracy((x, y), self.space.decisions(arch))
            total = self._totals[name]
            total[0] += float(loss) * len(y)
            total[1] += float(accuracy) * len(y)
            total[2] += len(y)

    def on_validation_epoch_end(self) -> None:
        if self._grid:
            accuracies = {name: acc / n for name, (_, acc, n) in self._totals.items() if n}
            losses = [loss / n for loss, _, n in self._totals.values() if n]
            if accuracies:
                self.log_dict({f"val_acc/{k}": v for k, v in accuracies.items()}, sync_dist=True)
                self.log_dict({"val_acc": sum(accuracies.values()) / len(accuracies),
                               "val_loss": sum(losses) / len(losses)}, prog_bar=True, sync_dist=True)
        super().on_validation_epoch_end()

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint_identity(self) -> dict[str, Any]:
        return {**super().checkpoint_identity(), "phase": self.hparams.phase}

