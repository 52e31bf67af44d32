"""TensorBoard views of the architecture distribution: what a researcher watches during search.

Per epoch: the probability of every candidate on every edge and the edge's entropy (scalars),
a heatmap per cell type (a figure: edges x candidates), and the discretized architecture (text).
Collapse diagnostics (``oneshot.diagnostics``): ``collapse/skip_connect/<cell type>`` and
``collapse/hessian_eigenvalue``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping

import torch

from supernets import Arch, SearchSpace
from supernets.labels import cell_of


def edge_entropy(weights: torch.Tensor) -> float:
    """Shannon entropy (nats) of one edge's distribution; log(K) is uniform, 0 is decided."""
    p = weights.detach().float().clamp_min(1e-12)
    return float(-(p * p.log()).sum())


def cell_heatmaps(weights: Mapping[str, torch.Tensor], candidates: Mapping[str, tuple[str, ...]]):
    """One matplotlib figure per cell type (``cell`` for single-type spaces like NB201)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = defaultdict(list)
    for label in weights:
        groups[cell_of(label)].append(label)
    figures = {}
    for cell_type, labels in groups.items():
        matrix = torch.stack([weights[k].detach().float().cpu() for k in labels]).numpy()
        names = candidates[labels[0]]
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 1.0 + 0.3 * len(labels)))
        image = ax.imshow(matrix, vmin=0.0, vmax=max(float(matrix.max()), 1e-6), cmap="viridis",
                          aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), [k.rsplit("/", 1)[-1] for k in labels], fontsize=7)
        ax.set_title(f"{cell_type}: p(candidate | edge)", fontsize=8)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        figures[cell_type] = fig
    return figures


def log_architecture(logger: Any, epoch: int, weights: Mapping[str, torch.Tensor],
                     edges: Mapping[str, tuple[str, ...]], space: SearchSpace, arch: Arch) -> None:
    """Write the distribution, entropies, heatmaps and current architecture to TensorBoard."""
    experiment = getattr(logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_scalar"):
        return
    entropies = []
    for label, w in weights.items():
        entropy = edge_entropy(w)
        entropies.append(entropy / math.log(len(w)))
        experiment.add_scalar(f"arch_entropy/{label}", entropy, epoch)
        for k, p in enumerate(w.detach().float().cpu()):
            experiment.add_scalar(f"arch_prob/{label}/{edges[label][k]}", float(p), epoch)
    experiment.add_scalar("arch_entropy/mean_normalized", sum(entropies) / len(entropies), epoch)
    for cell_type, fig in cell_heatmaps(weights, edges).items():
        experiment.add_figure(f"arch_heatmap/{cell_type}", fig, epoch, close=True)
    experiment.add_text("arch", f"`{space.format(arch)}`", epoch)


def log_collapse(logger: Any, epoch: int, skip_counts: Mapping[str, int],
                 eigenvalue: float | None) -> None:
    """Write the skip_connect count per cell type and, when computed, the Hessian eigenvalue.

    Direct TensorBoard writes, no ``LightningModule.log``: the caller runs on rank 0 only, where
    a synchronized ``self.log`` would wait for the other ranks forever.
    """
    experiment = getattr(logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_scalar"):
        return
    for cell_type, count in skip_counts.items():
        experiment.add_scalar(f"collapse/skip_connect/{cell_type}", count, epoch)
    if eigenvalue is not None:
        experiment.add_scalar("collapse/hessian_eigenvalue", eigenvalue, epoch)
