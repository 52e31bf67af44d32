"""Optimizer pieces several protocols share (SPOS's search and its retraining)."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn


def decay_weights_only(module: nn.Module) -> list[dict[str, Any]]:
    """Two SGD parameter groups: tensors named ``weight`` with more than one dimension decay,
    the rest (biases, BatchNorm parameters) get ``weight_decay`` 0 (SPOS ``get_parameters``)."""
    decayed, plain = [], []
    for name, p in module.named_parameters():
        (decayed if "weight" in name and p.dim() > 1 else plain).append(p)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def linear_to_zero(total: int, offset: int = 0) -> Callable[[int], float]:
    """The factor of ``LambdaLR`` at step s: 1 - (s + offset) / total, never below 0. SPOS steps its
    scheduler before each iteration, so iteration i (from 1) runs at 1 - i / total: a scheduler
    stepped after each iteration (Lightning's) uses ``offset=1``."""
    return lambda step: max(0.0, 1.0 - (step + offset) / total)
