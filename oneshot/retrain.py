"""Stand-alone retraining of one architecture from scratch (the evaluation half of one-shot NAS).

DARTS evaluation protocol: Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019),
quark0/darts@f276dd3 ``cnn/train.py`` (SGD + cosine per epoch, gradient clipping, auxiliary
tower weighted 0.4, drop path ramped linearly ``drop_path_prob * epoch / epochs``) and
``cnn/train_imagenet.py`` (label smoothing). NAS-Bench-201 stand-alone protocol: Dong & Yang
(ICLR 2020), D-X-Y/AutoDL-Projects ``configs/nas-benchmark/hyper-opts/200E.config``. Values are
collected in shared/reference/protocols-and-groundtruth.md sections (b) and (e); the configs in
experiments/retrain_*.yaml cite each one.

The network comes from the space (``SearchSpace.build_network``); this module only trains it,
and writes ``result.json`` (see :func:`write_result`), which later tools read.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

import supernets
from oneshot.checkpoints import capture_random_state, check_checkpoint_identity, restore_random_state
from oneshot.files import atomic_write_json
from oneshot.optim import decay_weights_only, linear_to_zero
from supernets import count_parameters


class RetrainModule(L.LightningModule):
    """Trains the stand-alone network of one architecture with SGD and a per-epoch cosine (or step)
    schedule.

    Args:
        arch: canonical string, JSON, ``arch.json`` path, or a published genotype name (DARTS_V2).
        space: search space name; inferred from ``arch`` when None.
        network_options: keyword arguments of the space's ``build_network`` (DARTS: C, layers,
            auxiliary; NB201: C, N).
        num_classes: classes of the dataset (linked from the data module by the CLI).
        in_channels: image channels (linked from the data module by the CLI).
        learning_rate: initial SGD lr (DARTS 0.025; NB201 0.1).
        learning_rate_min: cosine floor (0 in both protocols).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (DARTS 3e-4; NB201 5e-4).
        nesterov: Nesterov momentum (NB201 yes; DARTS no).
        grad_clip: max gradient norm (DARTS 5; 0 = off). Clipping is the module's own
            (:meth:`configure_gradient_clipping`), so the protocol lives in one place, the model
            config; do not also set the Trainer's ``gradient_clip_val``.
        auxiliary_weight: weight of the auxiliary tower's loss (DARTS 0.4); used only when the
            network returns ``(logits, aux_logits)`` in training.
        drop_path_prob: final drop-path probability; epoch e uses ``drop_path_prob * e / max_epochs``
            (DARTS 0.2). Only for networks with a ``drop_path_prob`` attribute (the DARTS space).
        label_smoothing: cross-entropy label smoothing, on both heads (DARTS ImageNet 0.1).
        lr_schedule: ``"cosine"`` (DARTS train.py, NB201), ``"step"``: lr multiplied by
            ``lr_gamma`` after every epoch (DARTS train_imagenet.py StepLR(1, gamma=0.97)), or
            ``"linear"``: to 0 over the run's iterations, iteration i (from 1) at lr * (1 - i/T)
            (SPOS Evaluation/template/train.py ``LambdaLR``, stepped before each iteration;
            ``trainer.max_steps`` or ``max_epochs`` sets T).
        lr_gamma: per-epoch decay factor of the ``"step"`` schedule (DARTS ImageNet 0.97).
        lr_restarts: (T_0, T_mult) of ``"sgdr"``: a per-epoch cosine to ``learning_rate_min`` that
            restarts after T_0 epochs, each period T_mult times longer (ENAS: 10, 2; its 630
            epochs are six periods).
        decay_vectors: weight decay on every parameter (DARTS, NB201); False: only on tensors
            named ``weight`` with more than one dimension, not on biases and BatchNorm
            parameters (SPOS ``get_parameters``).
        inherit_from: a search run (or its checkpoint) whose supernet weights the network starts
            from instead of its initialisation: the subnet extracted with its BN statistics
            recalibrated (OFA: no retraining, or a short fine-tuning; ``trainer.max_epochs 0``
            only evaluates). Ignored when a retraining resumes from its own checkpoint.
        bn_images, bn_batch_size: the fixed training images of that recalibration (OFA: 2,000 in
            batches of 200).
    """

    def __init__(self, arch: str, space: str | None = None, network_options: dict[str, Any] | None = None,
                 num_classes: int = 10, in_channels: int = 3, learning_rate: float = 0.025,
                 learning_rate_min: float = 0.0, momentum: float = 0.9, weight_decay: float = 3e-4,
                 nesterov: bool = False, grad_clip: float = 5.0, auxiliary_weight: float = 0.4,
                 drop_path_prob: float = 0.0, label_smoothing: float = 0.0,
                 lr_schedule: str = "cosine", lr_gamma: float = 0.97, decay_vectors: bool = True,
                 lr_restarts: tuple[int, int] = (10, 2), inherit_from: str | None = None,
                 bn_images: int = 2000, bn_batch_size: int = 200) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.space, self.arch = supernets.resolve_arch(arch, space)
        self.network_options = dict(network_options or {})
        accepted = [p for p in inspect.signature(self.space.build_network).parameters
                    if p not in ("self", "arch", "num_classes", "in_channels")]
        unknown = [k for k in self.network_options if k not in accepted]
        if unknown:
            raise ValueError(f"network_options {unknown} are not options of the {self.space.name!r} "
                             f"network; accepted: {', '.join(accepted)}")
        if "drop_path_prob" in self.network_options:
            raise ValueError("set drop_path_prob on the module (it is ramped per epoch), "
                             "not in network_options")
        if lr_schedule not in ("cosine", "step", "linear", "sgdr"):
            raise ValueError(f"lr_schedule={lr_schedule!r}; accepted: cosine, step, linear, sgdr")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob={drop_path_prob}; it must lie in [0, 1)")
        self.network: nn.Module = self.space.build_network(self.arch, num_classes=num_classes,
                                                           in_channels=in_channels, **self.network_options)
        if drop_path_prob > 0 and not hasattr(self.network, "drop_path_prob"):
            raise ValueError(f"drop_path_prob={drop_path_prob}, but {self.space.name!r} networks have "
                             "no drop path; set it to 0")
        self.test_acc_history: list[float] = []  # percent, one per validation epoch
        self.inherited: dict[str, Any] | None = None

    # -- network -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Any:
        """The network on ``x``, resized first where the architecture fixes its input resolution
        (an OFA subnet runs at its own; bilinear, as the supernet resized it)."""
        size = getattr(self.network, "resolution", None)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.network(x)

    def setup(self, stage: str) -> None:
        """Inherit the supernet's weights once, before training or evaluation starts afresh."""
        h = self.hparams
        if not h.get("inherit_from") or self.inherited is not None or self.trainer.ckpt_path is not None:
            return
        from oneshot.deploy import inherit_network  # imported here: retraining alone never needs a supernet
        from oneshot.rank.scoring import fixed_batches

        datamodule = self.trainer.datamodule
        datamodule.setup(stage)
        batches = fixed_batches(datamodule.train_set, h.bn_images, h.bn_batch_size, seed=0)
        network, source = inherit_network(h.inherit_from, self.arch, batches, self.network_options)
        self.network.load_state_dict(network.state_dict())
        self.inherited = {"source": source, "bn_images": batches.images, "bn_batch_size": h.bn_batch_size}

    @property
    def params(self) -> int:
        """Parameters of the network without the auxiliary tower, as DARTS reports them."""
        return count_parameters(self.network, exclude="auxiliary")

    def cost(self, input_size: tuple[int, ...]) -> dict[str, float]:
        """Params (auxiliary excluded) and FLOPs/MACs of one image, on a fresh CPU copy."""
        return self.space.cost(self.arch, self.hparams.num_classes, input_size,
                               in_channels=self.hparams.in_channels, **self.network_options)

    # -- schedule ------------------------------------------------------------------------------
    def drop_path_at(self, epoch: int, max_epochs: int) -> float:
        """DARTS train.py: ``model.drop_path_prob = args.drop_path_prob * epoch / args.epochs``."""
        return self.hparams.drop_path_prob * epoch / max_epochs

    def _max_epochs(self) -> int:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs <= 0:
            raise ValueError(f"trainer.max_epochs={max_epochs}; retraining needs a finite number of "
                             "epochs for the cosine schedule and the drop-path ramp")
        return max_epochs

    def on_train_epoch_start(self) -> None:
        if hasattr(self.network, "drop_path_prob"):
            self.network.drop_path_prob = self.drop_path_at(self.current_epoch, self._max_epochs())
        self.log("drop_path_prob", float(getattr(self.network, "drop_path_prob", 0.0)),
                 on_step=False, on_epoch=True, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True,
                 sync_dist=True)

    # -- steps ---------------------------------------------------------------------------------
    def loss_from_outputs(self, outputs: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits): CE(logits) + auxiliary_weight * CE(aux) when the network returns both
        (DARTS train.py ``loss += args.auxiliary_weight * loss_aux``)."""
        smoothing = self.hparams.label_smoothing
        logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if aux is not None:
            loss = loss + self.hparams.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=smoothing)
        return loss, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):
            raise ValueError("retraining got a bilevel (search) batch; set data bilevel: false")
        x, y = batch
        loss, logits = self.loss_from_outputs(self(x), y)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log_dict({"train_loss": loss, "train_acc": accuracy}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        if not hasattr(self, "_input_shape"):
            self._input_shape = tuple(x.shape[1:])
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log_dict({"test_loss": loss, "test_acc": accuracy}, prog_bar=True, on_epoch=True,
                      batch_size=x.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and "test_acc" in self.trainer.callback_metrics:
            self.test_acc_history.append(100.0 * float(self.trainer.callback_metrics["test_acc"]))

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = self.network.parameters() if h.get("decay_vectors", True) else decay_weights_only(self.network)
        optimizer = torch.optim.SGD(groups, lr=h.learning_rate, momentum=h.momentum,
                                    weight_decay=h.weight_decay, nesterov=h.nesterov)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if h.get("lr_schedule") == "linear":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            # Lightning steps after each iteration; the reference before: iteration i at 1 - i/T
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_to_zero(total, offset=1))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if h.get("lr_schedule") == "sgdr":
            first, growth = (int(v) for v in h.lr_restarts)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=first, T_mult=growth,
                                                                             eta_min=h.learning_rate_min)
        elif h.get("lr_schedule", "cosine") == "step":  # hparams of older checkpoints lack it
            # epoch e trains with lr * gamma**e (DARTS train_imagenet.py StepLR(optimizer, 1, 0.97))
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=h.lr_gamma)
        else:
            # one cosine step per epoch, to eta_min at max_epochs (DARTS train.py, NB201 200E.config)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self._max_epochs(),
                                                                   eta_min=h.learning_rate_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val is not None:
            raise ValueError("gradient clipping is the model's grad_clip (DARTS 5); "
                             "leave trainer.gradient_clip_val unset")
        if self.hparams.grad_clip > 0:  # DARTS: nn.utils.clip_grad_norm_(parameters, grad_clip)
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")

    # -- resumption ----------------------------------------------------------------------------
    def checkpoint_identity(self) -> dict[str, Any]:
        return {"space": self.space.name, "algorithm": type(self).__name__,
                "arch": self.space.format(self.arch)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["oneshot"] = self.checkpoint_identity()
        checkpoint["test_acc_history"] = list(self.test_acc_history)
        checkpoint["rng_states"] = capture_random_state()  # drop path, cutout and the loader continue alike
        checkpoint["inherited"] = self.inherited

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "oneshot" in checkpoint:  # retrain checkpoints before 0.2 have no identity
            check_checkpoint_identity(checkpoint, self.checkpoint_identity())
        self.test_acc_history = list(checkpoint.get("test_acc_history", []))
        self.inherited = checkpoint.get("inherited")
        restore_random_state(checkpoint.get("rng_states"))

    # -- result --------------------------------------------------------------------------------
    def result(self, seed: int | None) -> dict[str, Any]:
        """The record of ``result.json``: accuracies in percent, the final epoch's is the reported
        one (DARTS reports the last epoch), params without the auxiliary tower."""
        if not self.test_acc_history:
            raise ValueError("no test accuracy was measured; check trainer.limit_val_batches")
        input_size = (1, *getattr(self, "_input_shape", (self.hparams.in_channels, 32, 32)))
        cost = self.cost(input_size)
        return {"test_acc": round(self.test_acc_history[-1], 4),
                "best_test_acc": round(max(self.test_acc_history), 4),
                "params": int(cost["params"]), "flops": cost["flops"], "macs": cost["macs"],
                "input_size": list(input_size), "epochs": int(self.current_epoch), "seed": seed,
                "space": self.space.name, "arch": self.space.format(self.arch),
                "arch_choices": self.arch.to_json()["choices"],
                "network_options": self.network_options,
                **({"inherited": self.inherited} if self.inherited else {})}


def write_result(record: dict[str, Any], directory: str) -> str:
    """Write ``result.json`` atomically into ``directory``; returns its path."""
    return str(atomic_write_json(os.path.join(directory, "result.json"), record))
