"""Evolution over a trained supernet: what a candidate scores and costs, resumption, and the
artifacts a researcher looks at (progress bar, TensorBoard, a score-vs-FLOPs plot).

A candidate is scored with the supernet's inherited weights on a fixed validation subset after
its BatchNorm statistics are rebuilt (:mod:`oneshot.rank.scoring`): ``reset`` is SPOS's "BN
sanitize" (statistics reset, then 200 training batches of 128 in train mode: ``tester.py``
``get_cand_err``), ``recalibrate`` the exact average the rank tool uses; ``train`` and
``running`` are there for comparison. The reference scores on 40 batches of 200 validation
images (8,000). Its recalibration batches continue one stream across candidates; here every
candidate gets the same seeded images (cycled when the set is smaller than the batches asked
for), so a candidate's score does not depend on when it was evaluated, and a resumed search
equals an uninterrupted one.

A candidate's cost is that of its stand-alone network for the run's classes, input channels and
image size, with the supernet's shape options the space shares with its network
(:meth:`~supernets.base.SearchSpace.network_options`).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from oneshot.files import atomic_write_json
from oneshot.rank.scoring import BN_MODES, fixed_batches, score_archs
from oneshot.selection.evolution import Constraint, Evolution, EvolutionSettings
from oneshot.selection.protocol import ScoredSupernet
from supernets import Arch

STATE_FILE = "evolution_state.json"


class CycledBatches(Sequence):
    """``steps`` batches taken from ``batches`` again and again (the reference's DataIterator
    restarts its loader when it runs out)."""

    def __init__(self, batches: Sequence[Any], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self):
        return itertools.islice(itertools.chain.from_iterable(itertools.repeat(self.batches)), self.steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Any:
        return self.batches[index % len(self.batches)]


def scorer(model: ScoredSupernet, datamodule: Any, bn_mode: str, bn_batches: int, bn_batch_size: int,
           val_images: int, val_batch_size: int, seed: int) -> tuple[Callable[[Arch], tuple[float, float]], dict]:
    """``evaluate(arch) -> (accuracy, loss)`` on fixed data, and the protocol it follows."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r}: accepted: {', '.join(BN_MODES)}")
    val = fixed_batches(datamodule.arch_eval_set, val_images, val_batch_size, seed)
    train: Sequence[Any] = ()
    if bn_mode in ("recalibrate", "reset"):
        images = bn_batches * bn_batch_size
        train = fixed_batches(datamodule.weight_set, images, bn_batch_size, seed + 1)
        if bn_mode == "reset" and len(train) < bn_batches:
            train = CycledBatches(train, bn_batches)

    def evaluate(arch: Arch) -> tuple[float, float]:
        with torch.random.fork_rng(devices=[]):  # dropout in train-mode passes: the same per arch
            torch.manual_seed(seed)
            return score_archs(model, [arch], val, bn_mode, train)[0]

    protocol = {"bn_mode": bn_mode, "val_images": val.images, "val_batch_size": val_batch_size,
                "bn_batches": len(train) if train else 0, "bn_batch_size": bn_batch_size if train else 0,
                "bn_images": min(bn_batches * bn_batch_size, len(datamodule.weight_set)) if train else 0}
    return evaluate, protocol


def costing(model: Any, image_size: tuple[int, int]) -> tuple[Callable[[Arch], dict[str, float]], dict]:
    """``cost(arch)`` of the stand-alone network, and what it was measured for."""
    h = model.hparams
    options = model.space.network_options(dict(h.space_options or {}))
    input_size = (1, int(h.in_channels), *image_size)

    def cost(arch: Arch) -> dict[str, float]:
        return model.space.cost(arch, num_classes=int(h.num_classes), input_size=input_size,
                                in_channels=int(h.in_channels), **options)

    return cost, {"input_size": list(input_size), "num_classes": int(h.num_classes), "network_options": options}


def run_evolution(model: ScoredSupernet, datamodule: Any, constraints: Sequence[Constraint] = (),
                  settings: EvolutionSettings = EvolutionSettings(), seed: int = 0, bn_mode: str = "reset",
                  bn_batches: int = 200, bn_batch_size: int = 128, val_images: int = 8000,
                  val_batch_size: int = 200, directory: str | os.PathLike | None = None,
                  progress: bool = True) -> tuple[Evolution, dict[str, Any]]:
    """Run (or resume, from ``directory``/evolution_state.json) an evolution on ``model``.

    Returns the finished :class:`Evolution` and its protocol (scoring, costs, settings).
    """
    evaluate, protocol = scorer(model, datamodule, bn_mode, bn_batches, bn_batch_size, val_images,
                                val_batch_size, seed)
    first_x, _ = next(iter(fixed_batches(datamodule.arch_eval_set, 1, 1, seed)))
    cost, cost_protocol = costing(model, tuple(first_x.shape[-2:]))
    evolution = Evolution(model.space, evaluate, cost, constraints, settings, seed,
                          context={"scoring": protocol, "cost": cost_protocol})
    folder = Path(directory) if directory is not None else None
    if folder is not None and (folder / STATE_FILE).is_file():
        evolution.load_state(json.loads((folder / STATE_FILE).read_text()))
    writer = _tensorboard(folder)
    was_training = model.training
    try:
        while not evolution.done:
            bar = _bar(progress, settings.population, f"evolution {evolution.generation + 1}/{settings.generations}")
            summary = evolution.step(on_evaluated=bar.update if bar else None)
            if bar:
                bar.set_postfix(best=f"{summary['best_accuracy']:.4f}")
                bar.close()
            if writer is not None:
                writer.add_scalar("evolution/best_accuracy", summary["best_accuracy"], summary["generation"])
                writer.add_scalar("evolution/mean_accuracy", summary["mean_accuracy"], summary["generation"])
                writer.flush()
            if folder is not None:
                atomic_write_json(folder / STATE_FILE, evolution.state())
    finally:
        model.train(was_training)
        if writer is not None:
            writer.close()
    protocol = {**protocol, "cost": cost_protocol, "settings": evolution.state()["settings"],
                "constraints": [str(c) for c in constraints], "seed": seed}
    if folder is not None:
        plot_scores_against_cost(evolution, folder / "evolution.png")
    return evolution, protocol


def _bar(progress: bool, total: int, description: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=description, leave=False, disable=None)


def _tensorboard(folder: Path | None) -> Any:
    if folder is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=os.fspath(folder))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost, higher score), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_scores_against_cost(evolution: Evolution, path: Path) -> Path:
    """Accuracy vs multiply-adds of every evaluated candidate, coloured by generation, with the
    frontier and the best marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = evolution.history
    points = [(c["macs"] / 1e6, 100 * c["accuracy"]) for c in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dots = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[c["generation"] for c in history],
                      cmap="viridis", s=12, alpha=0.8)
    fig.colorbar(dots, ax=ax, label="generation")
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", lw=1.2,
            marker="o", ms=3, label="frontier")
    best = evolution.ranked()[0]
    ax.scatter([best["macs"] / 1e6], [100 * best["accuracy"]], marker="*", s=160, color="tab:orange",
               edgecolor="black", zorder=3, label="best")
    for c in evolution.constraints:
        if c.cost_key == "macs":
            ax.axvline(c.limit / 1e6, color="gray", ls="--", lw=1, label=str(c))
    ax.set_xlabel("multiply-adds (M)")
    ax.set_ylabel("supernet accuracy (%)")
    ax.set_title(f"{evolution.space.name}: {len(history)} candidates, {evolution.generation} generations")
    return save_figure(fig, ax, path)


def save_figure(fig: Any, ax: Any, path: Path) -> Path:
    """Legend, layout, write the PNG (its folder made) and free the figure: every search plot."""
    import matplotlib.pyplot as plt

    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
