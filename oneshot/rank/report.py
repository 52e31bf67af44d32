"""Writers for a rank-disorder report: JSON, Markdown, a scatter plot and TensorBoard scalars.

The report answers "how well does a supernet's proxy score rank architectures compared with
their stand-alone ground-truth accuracy". It is a plain JSON-serializable dict built elsewhere;
this module only renders it, so every writer can be tested on a synthetic report::

    {
     "protocol": {                 # how the numbers were obtained; every key is printed
       "scorer": "supernet" | "scores",  # inherited weights, or a precomputed table (--scores)
       "score": "accuracy",              # proxy the metrics use (higher is better; "loss" is negated)
       "bn_mode": "recalibrate" | "train" | "running" | None,
       "bn_images": 2000 | None, "val_images": 1000 | None,
       "archs": "sample:100",            # how the evaluated set was chosen
       "n": 100, "deiso": False, "seed": 0,
       "ground_truth": {"kind": "table", "source": ".../nb201_cifar10.csv",
                        "column": "cifar10_test_acc", "n": 15625},
       ...                               # any further keys, printed generically
     },
     "archs": [str, ...],          # N canonical arch strings
     "truth": [float, ...],        # N ground-truth values (percent)
     "sources": [                  # one per supernet seed / checkpoint / score table
       {"name": "runs/x/version_0", "epoch": 14 | None,
        "scores": {"accuracy": [N floats], "loss": [N floats]},  # a --scores table: one key
        "metrics": {"kendall_tau": ..., "precision@1%": ..., ...}},  # metrics.rank_metrics
     ],
     "aggregate": {"kendall_tau": {"mean": ..., "std": ..., "n": ...}, ...},  # metrics.aggregate
     "random_baseline": {...},     # metrics.random_baseline, optional
    }

Scores are stored as measured (a loss stays a loss); where this module needs an order (the
predicted top-K in the plot) it negates "loss", as the metrics did.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from oneshot.files import atomic_write_text
from oneshot.rank.metrics import top_k_indices, top_k_size, format_ratio

PathLike = str | os.PathLike

DASH = "–"  # shown for nan / missing values
READING_GUIDE = (
    "tau/Spearman/Pearson: 1 = same order; P@K: share of the predicted top-K in the true top-K; "
    "BR@K/WR@K: best/worst true rank among the predicted top-K divided by N (lower is better)"
)
LOWER_IS_BETTER = frozenset({"loss"})  # score keys negated before ranking
MAX_PLOTTED_SOURCES = 6


# --------------------------------------------------------------------------- helpers
def _jsonable(obj: Any) -> Any:
    """A copy with nan/inf as None and numpy types as Python ones: strict JSON has no NaN."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _is_finite(value: Any) -> bool:
    """True for a real number that is not nan/inf (None and strings are not)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _num(value: Any, digits: int = 3) -> str:
    """A metric value with fixed decimals, or a dash for nan / None."""
    return f"{float(value):.{digits}f}" if _is_finite(value) else DASH


def _metric_cell(key: str, value: Any) -> str:
    """Counts ("n") as integers, everything else with 3 decimals."""
    if key == "n" and _is_finite(value):
        return str(int(value))
    return _num(value)


def _plain(value: Any) -> str:
    """A protocol value as it would read in JSON (None -> null, False -> false)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return DASH
    return json.dumps(_jsonable(value))


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys ("ground_truth.column"), in insertion order."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _cell(text: str) -> str:
    """Escape the one character that would break a Markdown table cell."""
    return text.replace("|", "\\|")


def _source_header(source: Mapping[str, Any]) -> str:
    epoch = source.get("epoch")
    return f"{source['name']} (epoch {epoch})" if epoch is not None else str(source["name"])


def _short_name(name: str) -> str:
    """Last two path parts: "runs/x/version_0" -> "x/version_0"; enough to tell seeds apart. A
    checkpoint is named by its run: "x/version_0/checkpoints/last.ckpt" -> "version_0/last.ckpt"."""
    parts = PurePosixPath(str(name).replace("\\", "/")).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return "/".join(parts[-2:]) or str(name)


def _primary_score(report: Mapping[str, Any], source: Mapping[str, Any]) -> str:
    """The score key the metrics were computed on, else the source's first one (a --scores table)."""
    scores = source["scores"]
    wanted = report.get("protocol", {}).get("score")
    return wanted if wanted in scores else next(iter(scores))


# --------------------------------------------------------------------------- JSON
def write_json(report: Mapping[str, Any], path: PathLike) -> Path:
    """The full report as strict JSON (nan -> null), written atomically."""
    text = json.dumps(_jsonable(report), indent=1, allow_nan=False)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------- Markdown
def protocol_markdown(protocol: Mapping[str, Any]) -> str:
    """Every protocol key as a bullet: numbers are only comparable under the same protocol."""
    return "\n".join(f"- {key}: {_plain(value)}" for key, value in _flatten(protocol))


def _metrics_table(report: Mapping[str, Any]) -> list[str]:
    sources = report.get("sources", [])
    if not sources:
        return ["_No sources._"]
    with_mean = len(sources) >= 2
    aggregate = report.get("aggregate", {})
    header = ["metric", *(_cell(_source_header(s)) for s in sources)]
    if with_mean:
        header.append("mean ± std")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sources[0]["metrics"]:
        row = [_cell(key), *(_metric_cell(key, s["metrics"].get(key)) for s in sources)]
        if with_mean:
            row.append(_aggregate_cell(key, aggregate.get(key, {})))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _aggregate_cell(key: str, agg: Mapping[str, Any]) -> str:
    """"mean ± std" over sources; a count that agrees everywhere is just the count."""
    mean, std = agg.get("mean"), agg.get("std")
    if not _is_finite(mean):
        return DASH
    if key == "n" and std == 0:
        return _metric_cell(key, mean)
    return f"{_num(mean)} ± {_num(std)}"


def _baseline_lines(baseline: Mapping[str, Any]) -> list[str]:
    """Is the supernet's pick better than what the same number of random draws would give?"""
    lines = ["## Random baseline", ""]
    pop = baseline.get("population", {})
    if pop:
        lines.append(
            f"- population (n={pop.get('n')}): mean {_num(pop.get('mean'), 2)}, "
            f"median {_num(pop.get('median'), 2)}, max {_num(pop.get('max'), 2)}"
        )
    if baseline.get("picked_by"):
        lines.append(f"- picks ranked by: {baseline['picked_by']}")
    for name, pick in baseline.get("picks", {}).items():
        size = name.removeprefix("top")
        if "truth" in pick:
            lines.append(
                f"- supernet top-{size}: truth {_num(pick['truth'], 2)} "
                f"(percentile {_num(pick.get('percentile'), 1)})"
            )
        else:
            lines.append(
                f"- best of supernet top-{size}: truth {_num(pick.get('best_truth'), 2)} "
                f"(percentile {_num(pick.get('percentile_of_best'), 1)}), "
                f"mean of the {size} {_num(pick.get('mean_truth'), 2)}"
            )
    for name, value in baseline.get("expected_best_of_random", {}).items():
        size = name.removeprefix("top")
        lines.append(f"- expected best of {size} random pick(s): {_num(value, 2)}")
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """A human-readable report: protocol, metric table (with mean ± std over sources), baseline."""
    lines = ["# Rank disorder: supernet proxy vs. ground truth", "", "## Protocol", ""]
    lines.append(protocol_markdown(report.get("protocol", {})))
    lines += ["", "## Metrics", "", *_metrics_table(report), "", f"_{READING_GUIDE}_"]
    if report.get("random_baseline"):
        lines += ["", *_baseline_lines(report["random_baseline"])]
    return "\n".join(lines) + "\n"


def write_markdown(report: Mapping[str, Any], path: PathLike) -> Path:
    """:func:`markdown`, written atomically."""
    return atomic_write_text(path, markdown(report))


# --------------------------------------------------------------------------- plot
def plot_scatter(report: Mapping[str, Any], path: PathLike, top_ratio: float = 0.1) -> Path:
    """Proxy score vs. truth per source, predicted and true top-K marked, as a PNG.

    A correlation alone hides *where* the order breaks; the plot shows whether the top is right.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(report.get("sources", []))[:MAX_PLOTTED_SOURCES]
    if not sources:
        raise ValueError("report has no sources to plot")
    truth = np.asarray(report["truth"], dtype=float)
    k = top_k_size(len(truth), top_ratio)
    pct = format_ratio(top_ratio)
    protocol = report.get("protocol", {})
    column = (protocol.get("ground_truth") or {}).get("column", "truth")
    scorer = "scores" if protocol.get("scorer") == "scores" else "supernet"
    true_top = top_k_indices(truth, k)

    ncols = min(3, len(sources))
    nrows = math.ceil(len(sources) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 4.0 * nrows), squeeze=False)
    try:
        for ax, source in zip(axes.flat, sources):
            key = _primary_score(report, source)
            x = np.asarray(source["scores"][key], dtype=float)
            order = -x if key in LOWER_IS_BETTER else x
            pred_top = top_k_indices(order, k)
            ax.scatter(x, truth, s=12, c="tab:gray", alpha=0.6, label="architectures")
            ax.scatter(x[pred_top], truth[pred_top], s=36, c="tab:red", marker="^",
                       label=f"predicted top {pct}", zorder=3)
            ax.scatter(x[true_top], truth[true_top], s=90, facecolors="none",
                       edgecolors="black", linewidths=1.2, label=f"true top {pct}", zorder=4)
            metrics = source.get("metrics", {})
            ax.set_title(f"{_short_name(source['name'])}\n"
                         f"τ={_num(metrics.get('kendall_tau'))} ρ={_num(metrics.get('spearman'))}",
                         fontsize=9)
            ax.set_xlabel(f"{scorer} {key}")
            ax.set_ylabel(f"ground truth ({column})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        for ax in list(axes.flat)[len(sources):]:
            ax.set_visible(False)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_by_epoch(report: Mapping[str, Any], path: PathLike) -> Path | None:
    """Kendall tau, Spearman and P@10% against the checkpoint's epoch, one line per run; None
    when fewer than two sources carry an epoch (nothing to trace)."""
    sources = [s for s in report.get("sources", []) if s.get("epoch") is not None]
    if len(sources) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for source in sources:
        groups.setdefault(str(source.get("group", "")), []).append(source)
    names = ("kendall_tau", "spearman", "precision@10%")
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.4), squeeze=False)
    try:
        for ax, name in zip(axes.flat, names):
            for group, members in groups.items():
                members = sorted(members, key=lambda s: s["epoch"])
                ax.plot([s["epoch"] for s in members], [s["metrics"].get(name, math.nan) for s in members],
                        marker="o", label=group or None)
            ax.set_xlabel("supernet epoch")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
        if len(groups) > 1:
            axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------- TensorBoard
def write_tensorboard(report: Mapping[str, Any], log_dir: PathLike) -> None:
    """Finite metrics as ``rank/<metric>`` scalars (step = epoch, else source index), plus the protocol.

    Stepping by epoch lets checkpoints of one run trace rank quality over training. Sources of
    different ``group`` (their search run: one per seed) go to subfolders, so seeds at the same
    epoch stay separate curves.
    """
    from torch.utils.tensorboard import SummaryWriter

    sources = list(report.get("sources", []))
    groups = list(dict.fromkeys(str(s.get("group", "")) for s in sources)) or [""]
    writers = {g: SummaryWriter(log_dir=os.fspath(Path(log_dir) / g) if len(groups) > 1 else os.fspath(log_dir))
               for g in groups}
    try:
        for index, source in enumerate(sources):
            writer = writers[str(source.get("group", ""))]
            step = source["epoch"] if source.get("epoch") is not None else index
            for metric, value in source.get("metrics", {}).items():
                if _is_finite(value):
                    writer.add_scalar(f"rank/{metric}", float(value), int(step))
        for writer in writers.values():
            writer.add_text("rank/protocol", protocol_markdown(report.get("protocol", {})))
            writer.flush()
    finally:
        for writer in writers.values():
            writer.close()


# --------------------------------------------------------------------------- all
def write_report(report: Mapping[str, Any], out_dir: PathLike, top_ratio: float = 0.1) -> dict[str, Path]:
    """Every artifact under ``out_dir``: rank.json, rank.md, rank.png, tensorboard/, and
    rank_by_epoch.png when the sources are checkpoints of several epochs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tb_dir = out / "tensorboard"
    paths = {
        "json": write_json(report, out / "rank.json"),
        "markdown": write_markdown(report, out / "rank.md"),
        "plot": plot_scatter(report, out / "rank.png", top_ratio=top_ratio),
    }
    by_epoch = plot_by_epoch(report, out / "rank_by_epoch.png")
    if by_epoch is not None:
        paths["by_epoch"] = by_epoch
    write_tensorboard(report, tb_dir)
    paths["tensorboard"] = tb_dir
    return paths
