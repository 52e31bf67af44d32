"""BatchNorm state put back after scoring: one save/restore for every caller (selection, rank
scoring, DARTS-PT measurements, the Hessian diagnostic)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

BN_STATE = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def preserved_batchnorm(module: nn.Module) -> Iterator[None]:
    """Put every BatchNorm back as it was on exit: running statistics (also where there were
    none), ``momentum``, ``track_running_stats`` and the module's train/eval mode.

    Scoring in train mode updates running statistics, and recalibration rewrites them; neither
    may leak into the supernet that the next architecture (or a checkpoint) uses.
    """
    saved = []
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            buffers = {name: None if getattr(bn, name) is None else getattr(bn, name).clone()
                       for name in BN_STATE}
            saved.append((bn, buffers, bn.momentum, bn.track_running_stats))
    training = module.training
    try:
        yield
    finally:
        module.train(training)
        for bn, buffers, momentum, track in saved:
            for name, value in buffers.items():
                current = getattr(bn, name)
                if value is None or current is None or current.shape != value.shape:
                    setattr(bn, name, value)  # a buffer slot: None stays registered as None
                else:
                    current.copy_(value)
            bn.momentum, bn.track_running_stats = momentum, track
