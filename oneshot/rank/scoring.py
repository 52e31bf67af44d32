"""Score architectures with inherited supernet weights, under an explicit BatchNorm protocol.

Single-path scores are only as good as the BatchNorm statistics they normalise with, and the
supernet's running statistics were averaged over every sampled path. Three modes, recorded in
every report:

* ``recalibrate`` (default; OFA ``set_running_statistics``, SPOS's recalibration, slimmable
  nets' "post-statistics"): before scoring an architecture, run it in train mode over a fixed
  set of training images and set every BatchNorm's running mean and variance to the **exact**
  image-weighted average of the batch means and (biased) batch variances, as OFA does
  (not an exponential moving average); then score in eval mode. BatchNorms built without
  running statistics (NB201's ``track_running_stats=False`` cells) get them for the scoring;
* ``train``: score in train mode, each validation batch normalised with its own statistics
  (the NB201 BN0 practice; aw_nas's default);
* ``running``: score in eval mode with the supernet's stored running statistics.

The supernet is left exactly as it was (:func:`oneshot.batchnorm.preserved_batchnorm`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from oneshot.batchnorm import preserved_batchnorm
from oneshot.selection.best_of_n import score_architecture
from oneshot.selection.protocol import ScoredSupernet
from supernets import Arch


BN_MODES = ("recalibrate", "train", "running")


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: ScoredSupernet, arch: Arch, batches: Sequence[Any]) -> None:
    """Set the running statistics of ``arch``'s BatchNorms to exact averages over ``batches``.

    Forward pre-hooks read each BatchNorm's input: per batch the channel mean and the biased
    variance (OFA's ``(x - mean)^2`` averaged), weighted by the batch's image count. BatchNorms
    the architecture never reaches keep their statistics.
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
        bn.running_mean = (mean_sum / images).to(dtype)
        bn.running_var = (var_sum / images).to(dtype)
        bn.num_batches_tracked = torch.tensor(len(batches), dtype=torch.long, device=mean_sum.device)
        bn.track_running_stats = True  # eval mode now normalises with these


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
    scores = []
    for i, arch in enumerate(archs):
        with preserved_batchnorm(model.supernet):
            if bn_mode == "recalibrate":
                recalibrate_batchnorm(model, arch, bn_batches)
            model.supernet.train(bn_mode == "train")
            scores.append(score_architecture(model, arch, val_batches))
        if progress is not None:
            progress(i + 1)
    return scores
