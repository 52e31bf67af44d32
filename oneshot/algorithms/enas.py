"""ENAS (Pham et al., ICML 2018): shared weights trained on controller samples, the controller
trained with REINFORCE on their validation accuracy.

Reference: melodyguan/enas ``src/cifar10/main.py`` (the loop), ``micro_controller.py`` /
``general_controller.py`` (the controller, :mod:`oneshot.controller`), the scripts
``scripts/cifar10_{micro,macro}_search.sh``; for NAS-Bench-201, D-X-Y/AutoDL-Projects
``exps/NAS-Bench-201-algos/ENAS.py`` with ``configs/nas-benchmark/algos/ENAS.config``.

Each epoch: the child trains over the training half, one fresh controller sample per batch
(the base's SGD with the config's schedule and clipping); then ``train_steps x num_aggregate``
controller samples are each rewarded with their accuracy on the next validation batch, the child's
BatchNorm in train mode (micro_child's ``valid_shuffle``; general_child scores in eval mode:
``reward_bn``; statistics put back afterwards) and no gradient to the shared weights; every ``num_aggregate`` samples one Adam step
(:class:`~oneshot.controller.Reinforce`: the samples of a step are drawn and scored as one batch). The controller phase runs when the epoch's validation
starts, so the epoch's checkpoint holds it (or at the epoch's end when no validation runs).
Samples come from generators seeded by :func:`~oneshot.algorithms.base.rank_shared_seed`, so
DDP ranks draw the same architectures; the reward is averaged over ranks before the baseline
moves, so the controller stays identical on every rank.

Where this differs from a reference: xautodl's NB201 ENAS keeps the baseline of the previous
epoch within an epoch (each step's baseline is recomputed from it, not accumulated); here the
baseline is the TF reference's running one. The TF search children's L2 term on every variable
is given as weight decay 2 x l2 (its gradient) in the configs.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch

from oneshot.algorithms.base import all_reduce_mean, rank_shared_seed
from oneshot.algorithms.single_path import SinglePathSearch
from oneshot.batchnorm import preserved_batchnorm
from oneshot.controller import ArchCodec, Controller, Reinforce
from supernets import Arch


class EnasSearch(SinglePathSearch):
    """ENAS on any space the controller serves (``enas-micro``, ``enas-macro``, ``nb201``, ``spos``).

    Args:
        lstm_size, lstm_layers, lstm_bias, tanh_constant, temperature, op_tanh_reduce,
            skip_target: the controller (:class:`~oneshot.controller.Controller`).
        controller_lr, controller_betas, controller_eps: its Adam.
        entropy_weight, baseline_decay, skip_weight, num_aggregate, controller_grad_clip:
            REINFORCE (:class:`~oneshot.controller.Reinforce`).
        train_steps: controller updates per epoch (each of ``num_aggregate`` samples).
        auxiliary_weight: the loss weight of the search child's auxiliary head, when its space
            options build one (micro ``auxiliary: true``; micro_child.py: 0.4).
        reward_bn: the child's BatchNorm when a reward is measured: ``train`` (batch statistics,
            micro_child ``build_valid_rl``) or ``eval`` (running statistics, general_child's and
            xautodl's).
        **kwargs: :class:`~oneshot.algorithms.base.SupernetTraining` settings; the selection
            defaults to ``controller`` (the best of ``selection_samples`` controller samples).
    """

    default_selection = "controller"
    sampler_name = "enas"
    optimizer_count = 2

    def __init__(self, lstm_size: int = 64, lstm_layers: int = 1, lstm_bias: bool = False,
                 tanh_constant: float | None = 1.5, temperature: float | None = None, op_tanh_reduce: float = 1.0,
                 skip_target: float = 0.4, controller_lr: float = 1e-3,
                 controller_betas: tuple[float, float] = (0.9, 0.999), controller_eps: float = 1e-8,
                 entropy_weight: float = 1e-4, baseline_decay: float = 0.99, skip_weight: float = 0.0,
                 num_aggregate: int = 20, train_steps: int = 50, controller_grad_clip: float = 0.0,
                 reward_bn: str = "train", auxiliary_weight: float = 0.4, **kwargs: Any):
        super().__init__(**kwargs)
        self.auxiliary_weight = auxiliary_weight
        if reward_bn not in ("train", "eval"):
            raise ValueError(f"reward_bn={reward_bn!r}: train (micro_child build_valid_rl) or eval "
                             "(general_child, xautodl)")
        self.codec = ArchCodec(self.space, self.supernet.choices)
        self.controller = Controller(self.codec.kind, self.codec.sizes, lstm_size, lstm_layers, lstm_bias,
                                     tanh_constant, temperature, op_tanh_reduce, skip_target)
        self.reinforce: Reinforce | None = None  # made with the controller's optimizer
        self.reinforce_state = {"baseline": 0.0}
        self.controller_epoch = -1  # the last epoch whose controller phase ran

    # --- sampling -----------------------------------------------------------------------------
    def sample_architecture(self, *purpose: Any) -> Arch:
        generator = torch.Generator().manual_seed(rank_shared_seed(self.sampler_name, *purpose))
        with torch.no_grad():
            return self.codec.arch(self.controller(generator).tokens)

    # --- optimizers ---------------------------------------------------------------------------
    def configure_optimizers(self):
        weights, schedule = self.weight_optimizer_and_schedule()
        h = self.hparams
        controller = torch.optim.Adam(self.controller.parameters(), lr=h.controller_lr,
                                      betas=tuple(h.controller_betas), eps=h.controller_eps)
        return [weights, controller], [schedule]

    def trainer_of_controller(self) -> Reinforce:
        if self.reinforce is None:
            h = self.hparams
            optimizer = self.optimizers()[1].optimizer
            self.reinforce = Reinforce(self.controller, optimizer, h.entropy_weight, h.baseline_decay,
                                       h.skip_weight, h.num_aggregate, h.controller_grad_clip or None)
            self.reinforce.load_state_dict(self.reinforce_state)
        return self.reinforce

    # --- the controller phase -----------------------------------------------------------------
    def controller_phase(self) -> None:
        """``train_steps x num_aggregate`` samples, each rewarded on the next validation batch."""
        if self.controller_epoch >= self.current_epoch or self.trainer.datamodule is None:
            return
        trainer = self.trainer_of_controller()
        h = self.hparams
        batches = itertools.chain.from_iterable(itertools.repeat(self.trainer.datamodule.val_dataloader()))
        rewards = []
        # the validation loop runs under inference mode; the controller needs gradients
        with torch.inference_mode(False), torch.enable_grad(), preserved_batchnorm(self.supernet):
            self.supernet.train(h.reward_bn == "train")
            for step in range(h.train_steps):
                generator = torch.Generator().manual_seed(
                    rank_shared_seed(self.sampler_name, "controller", self.current_epoch, step))
                samples = trainer.sample(generator)
                accuracies = []
                for tokens in samples.tokens.tolist():
                    x, y = next(batches)
                    with torch.no_grad():
                        _, accuracy = self.loss_and_accuracy((x.to(self.device), y.to(self.device)),
                                                             self.space.decisions(self.codec.arch(tokens)))
                    accuracies.append(accuracy.detach().float().reshape(1))
                rewarded = torch.cat(accuracies)
                all_reduce_mean([rewarded])  # one reward on every rank: identical controllers
                rewards.append(trainer.update(samples, rewarded.tolist())["reward"])
        self.controller_epoch = self.current_epoch
        self.reinforce_state = trainer.state_dict()
        self.log_dict({"controller/reward": sum(rewards) / len(rewards),
                       "controller/baseline": trainer.baseline}, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.controller_phase()

    def on_train_epoch_end(self) -> None:
        self.controller_phase()  # when no validation ran this epoch
        super().on_train_epoch_end()

    # --- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["enas"] = {"reinforce": dict(self.reinforce_state), "controller_epoch": self.controller_epoch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("enas", {})
        self.reinforce_state = dict(saved.get("reinforce", self.reinforce_state))
        self.controller_epoch = int(saved.get("controller_epoch", -1))
