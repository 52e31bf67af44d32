"""The collapse study's report: what each differentiable search exported and how it got there.

A run directory of ``oneshot search`` already holds everything: ``arch.json`` (the exported
architecture) and, in its TensorBoard events, the per-epoch collapse signals every
differentiable algorithm logs (``collapse/skip_connect/<cell>``, ``collapse/hessian_eigenvalue``,
``arch_entropy/mean_normalized``). :func:`read_run` gathers them; :func:`write_report` puts the
runs of a study side by side as ``collapse.md``, ``collapse.json``, ``collapse.png`` and
TensorBoard scalars per algorithm.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import supernets
from oneshot.files import atomic_write_json, atomic_write_text
from oneshot.rank.ground_truth import GroundTruth, canonical

SIGNALS = {"skip_connect": "collapse/skip_connect/", "eigenvalue": "collapse/hessian_eigenvalue",
           "entropy": "arch_entropy/mean_normalized"}


@dataclass
class CollapseRun:
    """One search of the study: its exported architecture and per-epoch signals."""

    algorithm: str
    seed: int
    run_dir: str
    arch: str
    skip_connect: int  # skip_connect ops of the exported architecture, all cell types
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # signal -> (epoch, value)
    table_acc: float | None = None  # the exported cell's accuracy in a benchmark table (a lookup)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags().get("scalars", []):
        out[tag] = [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
    return out


def read_run(run_dir: str | Path, algorithm: str, seed: int, truth: GroundTruth | None = None) -> CollapseRun:
    """The exported architecture of a finished search and its collapse signals by epoch.

    Raises:
        FileNotFoundError: the run has no ``arch.json`` (the search did not finish).
    """
    run_dir = Path(run_dir)
    record_path = run_dir / "arch.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no arch.json; the search of {algorithm} seed {seed} did not finish")
    record = json.loads(record_path.read_text())
    space = supernets.get(record["space"])
    arch = space.load(str(record_path))
    from oneshot.diagnostics import skip_connect_count

    skips = sum(skip_connect_count(arch, space).values()) if "skip_connect" in getattr(space, "primitives", ()) else 0
    scalars = _scalars(run_dir)
    epochs: dict[str, list[tuple[int, float]]] = {}
    skip_tags = [t for t in scalars if t.startswith(SIGNALS["skip_connect"])]
    if skip_tags:  # summed over cell types, per epoch
        per_epoch: dict[int, float] = defaultdict(float)
        for tag in skip_tags:
            for step, value in scalars[tag]:
                per_epoch[step] += value
        epochs["skip_connect"] = sorted(per_epoch.items())
    for name in ("eigenvalue", "entropy"):
        if SIGNALS[name] in scalars:
            epochs[name] = scalars[SIGNALS[name]]
    key = canonical(space, arch)
    table_acc = truth.values.get(key) if truth is not None else None
    return CollapseRun(algorithm, seed, str(run_dir), space.format(arch), skips, epochs, table_acc)


def _last(series: Sequence[tuple[int, float]] | None) -> float | None:
    return series[-1][1] if series else None


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def markdown(runs: Sequence[CollapseRun], truth: GroundTruth | None, note: str) -> str:
    """Per algorithm and seed, then per algorithm over seeds."""
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    lines = ["# Collapse study", "", note, ""]
    acc_header = f"table {truth.column} (lookup)" if truth is not None else "table accuracy"
    lines += [f"| algorithm | seed | skip_connect | final eigenvalue | final entropy | {acc_header} | architecture |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.algorithm} | {run.seed} | {run.skip_connect} | {fmt(_last(run.epochs.get('eigenvalue')))} "
                     f"| {fmt(_last(run.epochs.get('entropy')))} | {fmt(run.table_acc)} | `{run.arch}` |")
    lines += ["", "Over seeds (mean ± std):", "",
              f"| algorithm | seeds | skip_connect | final eigenvalue | {acc_header} |", "|---|---|---|---|---|"]
    by_algorithm: dict[str, list[CollapseRun]] = defaultdict(list)
    for run in runs:
        by_algorithm[run.algorithm].append(run)
    for algorithm, group in by_algorithm.items():
        eig = [v for v in (_last(r.epochs.get("eigenvalue")) for r in group) if v is not None]
        acc = [r.table_acc for r in group if r.table_acc is not None]
        lines.append(f"| {algorithm} | {len(group)} | {_mean_std([r.skip_connect for r in group])} "
                     f"| {_mean_std(eig)} | {_mean_std(acc)} |")
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[CollapseRun], path: Path) -> None:
    """Skip count and dominant eigenvalue by epoch, one colour per algorithm, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algorithms = list(dict.fromkeys(r.algorithm for r in runs))
    palette = plt.get_cmap("tab10" if len(algorithms) <= 10 else "tab20")
    colours = {a: palette(i % palette.N) for i, a in enumerate(algorithms)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, signal, title in ((axes[0], "skip_connect", "skip_connect ops in the current architecture"),
                              (axes[1], "eigenvalue", "dominant Hessian eigenvalue (validation loss, alpha)")):
        for run in runs:
            series = run.epochs.get(signal)
            if series:
                labelled = run.seed == min(r.seed for r in runs if r.algorithm == run.algorithm)
                ax.plot([e for e, _ in series], [v for _, v in series], color=colours[run.algorithm],
                        marker="o", markersize=3, label=run.algorithm if labelled else None)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: Sequence[CollapseRun], out: Path, truth: GroundTruth | None,
                 settings: Mapping[str, Any]) -> dict[str, str]:
    """collapse.md, collapse.json, collapse.png and TensorBoard scalars (``tensorboard/``)."""
    note = ("Searches on the embedded digits: the dynamics (skip counts, eigenvalues) are those of "
            "these runs; a table accuracy is the benchmark's value for the exported cell, looked up, "
            "not measured here, and says nothing about how the cell does on the digits.")
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": str(out / "collapse.md"), "json": str(out / "collapse.json"), "plot": str(out / "collapse.png")}
    atomic_write_text(files["markdown"], markdown(runs, truth, note))
    atomic_write_json(files["json"], {"settings": dict(settings), "note": note,
                                      "ground_truth": truth.describe() if truth is not None else None,
                                      "runs": [asdict(r) for r in runs]})
    plot(runs, Path(files["plot"]))
    from torch.utils.tensorboard import SummaryWriter

    for run in runs:
        with SummaryWriter(str(out / "tensorboard" / f"{run.algorithm}_seed{run.seed}")) as writer:
            for signal, series in run.epochs.items():
                for epoch, value in series:
                    writer.add_scalar(f"collapse/{signal}", value, epoch)
    return files
