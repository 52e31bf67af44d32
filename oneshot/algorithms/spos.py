"""Single Path One-Shot (Guo et al., ECCV 2020): uniform single-path supernet training, then
evolution under a FLOPs limit.

Reference: megvii-model/SinglePathOneShot ``src/Supernet/train.py`` (training) and
``src/Search/search.py`` (the ``evolution`` selection, :mod:`oneshot.selection.evolution`).
What it does, and this module with it:

* one path per step: uniform over the choices (the paper), or the released code's FLOPs bins
  (``sampler: flops_bins``): a bin drawn uniformly from [290, 300) ... [350, 360) MFLOPs, then
  uniform candidates redrawn until one lies in it (both ends inclusive), at most 500 times,
  else one unconstrained candidate. The bins favour mid-cost paths, so per-block choice
  frequencies are not uniform (SinglePathOneShot#11). FLOPs are the multiply-adds of the
  stand-alone network at ``cost_image_size`` (224) for the run's classes;
* label-smoothed cross-entropy (0.1; ``CrossEntropyLabelSmooth`` is the formula of
  ``F.cross_entropy(label_smoothing=)``);
* SGD, momentum 0.9, weight decay 4e-5 only on tensors named ``weight`` with more than one
  dimension (``get_parameters``), no gradient clipping;
* lr linearly to 0 per iteration, stepped before each iteration as the reference's
  ``LambdaLR(1 - step / total_iters)``: iteration i (from 1) runs at lr * (1 - i / T);
* after backward, a gradient that sums to exactly 0 is dropped (``p.grad = None``), so the
  optimizer leaves the parameter and its momentum alone; candidates off the path have no
  gradient at all and are skipped the same way.

Samples come from :func:`~oneshot.algorithms.base.rank_shared_seed` generators: every DDP rank
trains the same path, and a resumed run draws what the uninterrupted one would.
"""
from __future__ import annotations

import random
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from oneshot.algorithms.base import rank_shared_seed
from oneshot.algorithms.single_path import SinglePathSearch
from oneshot.optim import decay_weights_only, linear_to_zero
from oneshot.selection.evolve import costing
from supernets import Arch

SAMPLERS = ("uniform", "flops_bins")


class SposSearch(SinglePathSearch):
    """SPOS supernet training; ``evolution`` is the default selection.

    Args:
        sampler: ``uniform`` (the paper) or ``flops_bins`` (the released code).
        flops_bins: (low, high, step) of the bins in multiply-adds (train.py: 290M, 360M, 10M).
        bin_tries: uniform draws per bin before falling back to an unconstrained one (500).
        cost_image_size: the square input size the bins' FLOPs are measured at (224).
        label_smoothing: of the cross-entropy (0.1).
        **kwargs: :class:`~oneshot.algorithms.base.SupernetTraining` settings; the defaults
            here are train.py's (lr 0.5, momentum 0.9, weight decay 4e-5, no clipping). The lr
            always decays per iteration: ``lr_schedule_interval`` does not apply.
    """

    default_selection = "evolution"
    sampler_name = "spos"

    def __init__(self, sampler: str = "uniform", flops_bins: tuple[float, float, float] = (290e6, 360e6, 10e6),
                 bin_tries: int = 500, cost_image_size: int = 224, label_smoothing: float = 0.1,
                 learning_rate: float = 0.5, momentum: float = 0.9, weight_decay: float = 4e-5,
                 grad_clip: float = 0.0, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
                         grad_clip=grad_clip, **kwargs)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: use uniform (the paper) or flops_bins (the released code)")
        low, high, step = flops_bins
        if not (0 < step and low < high):
            raise ValueError(f"flops_bins {flops_bins}: (low, high, step) with low < high and step > 0")
        self.bins = [(low + i * step, low + (i + 1) * step) for i in range(round((high - low) / step))]
        self._cost = None

    # --- the sampler --------------------------------------------------------------------------
    def path_cost(self, arch: Arch) -> float:
        """Multiply-adds of the stand-alone network of ``arch`` at ``cost_image_size``."""
        if self._cost is None:
            size = int(self.hparams.cost_image_size)
            self._cost = costing(self, (size, size))[0]
        return self._cost(arch)["macs"]

    def sample_in_bin(self, rng: random.Random) -> tuple[Arch, int | None]:
        """train.py ``get_uniform_sample_cand``: a bin, then draws until one lands in it; returns
        the arch and its bin (None after ``bin_tries`` misses: the unconstrained fallback)."""
        index = rng.randrange(len(self.bins))
        low, high = self.bins[index]
        for _ in range(self.hparams.bin_tries):
            arch = self.space.sample(rng)
            if low <= self.path_cost(arch) <= high:
                return arch, index
        return self.space.sample(rng), None

    def sample_architecture(self, *purpose: Any) -> Arch:
        rng = random.Random(rank_shared_seed(self.sampler_name, *purpose))
        if self.hparams.sampler == "flops_bins":
            return self.sample_in_bin(rng)[0]
        return self.space.sample(rng)

    # --- loss, optimizer, schedule ------------------------------------------------------------
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def after_weight_backward(self) -> None:
        for p in self.supernet.parameters():
            if p.grad is not None and p.grad.sum() == 0:
                p.grad = None

    def weight_optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, Any]:
        h = self.hparams
        weights = torch.optim.SGD(decay_weights_only(self.supernet), lr=h.learning_rate, momentum=h.momentum,
                                  weight_decay=h.weight_decay, nesterov=h.nesterov)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return weights, torch.optim.lr_scheduler.LambdaLR(weights, linear_to_zero(total))

    def advance_lr_schedule(self, batch_idx: int) -> None:
        """The reference steps its scheduler before each iteration: step i (from 1) at 1 - i/T."""
        schedule = self.lr_schedulers()
        target = self.current_epoch * int(self.trainer.num_training_batches) + batch_idx + 1
        with warnings.catch_warnings():  # stepping before the first optimizer step is the point here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
            while schedule.last_epoch < target:
                schedule.step()
