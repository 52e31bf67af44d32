"""What a selection strategy may use of a trained supernet, as structural types.

Strategies see a supernet with its space, device and loss, not a training module: any object
with these attributes can be scored (a search algorithm satisfies them, and so would a supernet
wrapped by hand). Perturbation selection also reads the architecture distribution.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import nn

from supernets import SearchSpace


class ScoredSupernet(Protocol):
    """A supernet that can score architectures: ``space``, ``supernet``, ``device`` and
    ``loss_and_accuracy(batch, decisions)``; ``train``/``eval`` set BatchNorm's mode."""

    space: SearchSpace
    supernet: nn.Module
    training: bool

    @property
    def device(self) -> torch.device: ...

    def loss_and_accuracy(self, batch: Any, decisions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


class DifferentiableSupernet(ScoredSupernet, Protocol):
    """A scored supernet with an architecture distribution (DARTS-PT projects and tunes it)."""

    alphas: nn.ParameterDict
    hparams: Any

    def arch_weights(self) -> dict[str, torch.Tensor]: ...

    def architecture_parameters(self) -> list[nn.Parameter]: ...
