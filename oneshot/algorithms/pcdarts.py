"""PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search (Xu et al.,
ICLR 2020).

Reference: yuhuixu1993/PC-DARTS ``model_search.py`` (``MixedOp``, ``Network.forward``,
``_initialize_alphas``, ``genotype``) and ``train_search.py`` (``train``). What differs from
first-order DARTS:

* partial channels: every edge is a :class:`~ops.mixed.PartialChannelMixedOp` with K = 4, built
  by the space from ``space_options["partial_channels"]``;
* edge normalization: one scalar beta per edge; a node's incoming edges are weighted by the
  softmax of their betas, beta_hat. :meth:`PCDartsSearch.arch_weights` returns
  softmax(alpha) * beta_hat, so the weight step, validation, logging and the export (the space's
  rule on W = softmax(alpha) * beta_hat, as ``Network.genotype``) all see it;
* alphas and betas share one Adam (``_arch_parameters``);
* warm-up: architecture steps only from epoch 15 (``train``: ``if epoch>=15: architect.step``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.algorithms.base import with_space_option
from oneshot.algorithms.darts import DartsSearch
from supernets.labels import node_of


class PCDartsSearch(DartsSearch):
    """PC-DARTS (first order by default; ``unrolled=True`` stays available).

    Args:
        partial_channels: K, 1/K of each edge's channels go through its candidates
            (model_search.py ``self.k = 4``); passed to the space's ``build_supernet``.
        arch_warmup_epochs: epochs of weight training only; the architecture is updated when
            ``epoch >= arch_warmup_epochs`` (train_search.py ``if epoch>=15``).
        *args, **kwargs: as :class:`~oneshot.algorithms.darts.DartsSearch`. Betas start as
            ``alpha_init_std * randn`` (model_search.py: 1e-3 * randn for alphas and betas).

    Raises:
        ValueError: if ``space_options`` already names a different ``partial_channels``, or
            ``arch_warmup_epochs`` is negative.
    """

    def __init__(self, *args: Any, partial_channels: int = 4, arch_warmup_epochs: int = 15,
                 **kwargs: Any):
        if arch_warmup_epochs < 0:
            raise ValueError(f"arch_warmup_epochs={arch_warmup_epochs}: use 0 or more epochs")
        args, kwargs = with_space_option(args, kwargs, "partial_channels", partial_channels)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        std = self.hparams.alpha_init_std
        # model_search.py _initialize_alphas: betas_normal / betas_reduce = 1e-3 * randn(14)
        self.betas = nn.ParameterDict({label: nn.Parameter(std * torch.randn(()))
                                       for label in self.supernet.edges})
        nodes: dict[str, list[str]] = defaultdict(list)
        for label in self.supernet.edges:
            nodes[node_of(label)].append(label)
        self.node_edges: dict[str, tuple[str, ...]] = {node: tuple(labels) for node, labels in nodes.items()}

    def edge_normalization(self) -> dict[str, torch.Tensor]:
        """beta_hat per edge label: softmax over the betas of the edges into the same node."""
        beta_hat = {}
        for labels in self.node_edges.values():
            weights = F.softmax(torch.stack([self.betas[label] for label in labels]), dim=0)
            beta_hat.update(zip(labels, weights.unbind(0)))
        return beta_hat

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """softmax(alpha) * beta_hat per edge: the candidate weights times the edge's weight."""
        beta_hat = self.edge_normalization()
        return {label: F.softmax(self.logits(label), dim=-1) * beta_hat[label] for label in self.alphas}

    def architecture_parameters(self) -> list[nn.Parameter]:
        """Alphas, then betas: one Adam for all (model_search.py ``_arch_parameters``)."""
        return list(self.alphas.values()) + list(self.betas.values())

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor | None:
        if self.current_epoch < self.hparams.arch_warmup_epochs:
            return None  # warm-up: weights only
        return super().architecture_step(train_batch, val_batch)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_scalar"):
            return
        for label, weight in self.edge_normalization().items():
            experiment.add_scalar(f"edge_norm/{label}", float(weight), self.current_epoch)

