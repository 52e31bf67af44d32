"""Score architectures with inherited supernet weights, under an explicit BatchNorm protocol.

Single-path scores are only as good as the BatchNorm statistics they normalise with, and the
supernet's running statistics were averaged over every sampled path. Four modes, recorded in
every report and in every evolution:

* ``recalibrate`` (default; OFA ``set_running_statistics``, SPOS's recalibration, slimmable
  nets' "post-statistics"): before scoring an architecture, run it in train mode over a fixed
  set of training images and set every BatchNorm's running mean and variance to the **exact**
  image-weighted average of the batch means and (biased) batch variances, as OFA does
  (not an exponential moving average); then score in eval mode. BatchNorms built without
  running statistics (NB201's ``track_running_stats=False`` cells) get them for the scoring;
* ``reset`` (SPOS's "BN sanitize", megvii-model/SinglePathOneShot ``src/Search/tester.py``
  ``get_cand_err``): every running mean set to 0 and variance to 1, then the training batches
  run in train mode so that each BatchNorm's own momentum (0.1) averages them exponentially;
  then score in eval mode;
* ``train``: score in train mode, each validation batch normalised with its own statistics
  (the NB201 BN0 practice; aw_nas's default);
* ``running``: score in eval mode with the supernet's stored running statistics.

The supernet is left exactly as it was (:func:`oneshot.batchnorm.preserved_batchnorm`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from oneshot.batchnorm import preserved_batchnorm
from oneshot.selection.best_of_n import score_architecture
from oneshot.selection.protocol import ScoredSupernet
from supernets import Arch


BN_MODES = ("recalibrate", "reset", "train", "running")
IN_MEMORY_BYTES = 2 << 30  # fixed batches above this are read again for every use instead of kept


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: ScoredSupernet, arch: Arch, batches: Sequence[Any]) -> None:
    """Set the running statistics of ``arch``'s BatchNorms to exact averages over ``batches``.

    Forward pre-hooks read each BatchNorm's input: per batch the channel mean and the biased
    variance (OFA's ``(x - mean)^2`` averaged), weighted by the batch's image count. BatchNorms
    the architecture never reaches keep their statistics; an elastic BatchNorm that sees fewer
    channels than it holds gets them in its first channels (OFA ``running_mean[:C]``).
    """
    sums: dict[nn.Module, list[Any]] = {}

    def accumulate(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = ((x - mean.view(1, -1, *[1] * (x.dim() - 2))) ** 2).mean(dims)
        n = x.shape[0]
        total = sums.setdefault(bn, [torch.zeros_like(mean), torch.zeros_like(var), 0])
        total[0] += mean * n
        total[1] += var * n
        total[2] += n

    norms = batchnorms(model.supernet)
    hooks = [bn.register_forward_pre_hook(accumulate) for bn in norms]
    model.train()
    try:
        for x, y in batches:
            model.loss_and_accuracy((x.to(model.device), y.to(model.device)), model.space.decisions(arch))
    finally:
        for hook in hooks:
            hook.remove()
    for bn, (mean_sum, var_sum, images) in sums.items():
        dtype = mean_sum.dtype if bn.running_mean is None else bn.running_mean.dtype
        channels = mean_sum.shape[0]
        if bn.running_mean is not None and bn.running_mean.shape[0] > channels:  # an elastic BN: its slice
            bn.running_mean[:channels] = mean_sum / images
            bn.running_var[:channels] = var_sum / images
        else:
            bn.running_mean = (mean_sum / images).to(dtype)
            bn.running_var = (var_sum / images).to(dtype)
        bn.num_batches_tracked = torch.tensor(len(batches), dtype=torch.long, device=mean_sum.device)
        bn.track_running_stats = True  # eval mode now normalises with these


@torch.no_grad()
def reset_batchnorm(model: ScoredSupernet, arch: Arch, batches: Sequence[Any]) -> None:
    """SPOS's BN sanitize: statistics of every BatchNorm reset to mean 0, variance 1, then
    ``arch`` runs over ``batches`` in train mode (each BatchNorm's momentum averages them)."""
    for bn in batchnorms(model.supernet):
        if bn.running_mean is None:  # built without statistics: give it some to average into
            bn.running_mean = torch.zeros(bn.num_features, device=model.device)
            bn.running_var = torch.ones(bn.num_features, device=model.device)
            bn.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=model.device)
            bn.track_running_stats = True
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
    model.train()
    decisions = model.space.decisions(arch)
    for x, y in batches:
        model.loss_and_accuracy((x.to(model.device), y.to(model.device)), decisions)


def score_archs(model: ScoredSupernet, archs: Sequence[Arch], val_batches: Sequence[Any],
                bn_mode: str = "recalibrate", bn_batches: Sequence[Any] = (),
                progress: Callable[[int], None] | None = None) -> list[tuple[float, float]]:
    """(accuracy, loss) of each arch on the fixed ``val_batches``, single path, under ``bn_mode``.

    Raises:
        ValueError: an unknown ``bn_mode``, no validation batches, or ``recalibrate`` without
            ``bn_batches``.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r}: accepted: {', '.join(BN_MODES)}")
    if not val_batches:
        raise ValueError("no validation batches to score on")
    if bn_mode == "recalibrate" and not bn_batches:
        raise ValueError("bn_mode='recalibrate' needs training batches (bn_batches) to recalibrate on")
    if bn_mode == "reset" and not bn_batches:
        raise ValueError("bn_mode='reset' needs training batches (bn_batches) to average statistics over")
    scores = []
    for i, arch in enumerate(archs):
        with preserved_batchnorm(model.supernet):
            if bn_mode == "recalibrate":
                recalibrate_batchnorm(model, arch, bn_batches)
            elif bn_mode == "reset":
                reset_batchnorm(model, arch, bn_batches)
            model.supernet.train(bn_mode == "train")
            scores.append(score_architecture(model, arch, val_batches))
        if progress is not None:
            progress(i + 1)
    return scores


class FixedBatches(Sequence):
    """The same batches on every pass: a seeded subset of a dataset, its random transforms drawn
    under the same seed each time. Small ones are read once and kept; larger ones (ImageNet's
    200 x 128 recalibration images are 15 GB of floats) are read again on every pass, as the
    reference reads its loader per candidate, yet identically."""

    def __init__(self, dataset: Dataset, images: int, batch_size: int, seed: int) -> None:
        if images < 1 or batch_size < 1:
            raise ValueError(f"images={images}, batch_size={batch_size}: both must be at least 1")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images].tolist()
        self.subset, self.batch_size, self.seed = Subset(dataset, order), batch_size, seed
        self.images = len(order)
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        first_x, _ = self.subset[0]
        if torch.is_tensor(first_x) and first_x.numel() * first_x.element_size() * self.images <= IN_MEMORY_BYTES:
            self._kept = list(self._read())

    def _read(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches drawn under their own seeded random state, swapped in only while a batch is
        read, so that whatever runs between batches (dropout) neither shifts nor sees it."""
        outer = torch.get_rng_state()
        torch.manual_seed(self.seed)
        own = torch.get_rng_state()
        torch.set_rng_state(outer)
        batches = iter(DataLoader(self.subset, batch_size=self.batch_size, shuffle=False))
        while True:
            outer = torch.get_rng_state()
            torch.set_rng_state(own)
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                own = torch.get_rng_state()
                torch.set_rng_state(outer)
            yield batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._kept) if self._kept is not None else self._read()

    def __len__(self) -> int:
        return math.ceil(self.images / self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return list(self)[index]


def fixed_batches(dataset: Dataset, images: int, batch_size: int, seed: int) -> FixedBatches:
    """A seeded random subset of ``images`` items in batches: every architecture sees the same
    tensors (also where the dataset's transform is random)."""
    return FixedBatches(dataset, images, batch_size, seed)
