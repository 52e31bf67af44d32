"""Rank-report writers: strict JSON, complete Markdown, a real PNG, readable TensorBoard events."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from oneshot.rank.metrics import aggregate, random_baseline, rank_metrics
from oneshot.rank.report import (
    markdown,
    plot_scatter,
    write_json,
    write_markdown,
    write_report,
    write_tensorboard,
)

N = 30
EPOCHS = (9, 14)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report(n_sources: int = 2) -> dict:
    """Two supernet checkpoints whose accuracy proxy is truth plus noise, as the CLI would build."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(85.0, 94.0, N)
    sources = []
    for i in range(n_sources):
        acc = truth + rng.normal(0.0, 2.0 + i, N)
        loss = 3.0 - acc / 40 + rng.normal(0.0, 0.01, N)
        sources.append({
            "name": f"runs/spos/version_{i}",
            "epoch": EPOCHS[i],
            "scores": {"accuracy": acc.tolist(), "loss": loss.tolist()},
            "metrics": rank_metrics(acc, truth),
        })
    order = np.argsort(-np.asarray(sources[0]["scores"]["accuracy"]), kind="stable")
    return {
        "protocol": {
            "scorer": "supernet", "score": "accuracy", "bn_mode": "recalibrate",
            "bn_images": 2000, "val_images": 1000, "archs": f"sample:{N}", "n": N,
            "deiso": False, "seed": 0,
            "ground_truth": {"kind": "table", "source": "data/nb201_cifar10.csv",
                             "column": "cifar10_test_acc", "n": 15625},
        },
        "archs": [f"arch_{i}" for i in range(N)],
        "truth": truth.tolist(),
        "sources": sources,
        "aggregate": aggregate([s["metrics"] for s in sources]),
        "random_baseline": random_baseline(truth, truth[order]),
    }


def _scores_report() -> dict:
    """A --scores report: one precomputed table, a single score key, no BN protocol."""
    rng = np.random.default_rng(1)
    truth = rng.uniform(85.0, 94.0, N)
    params = truth * 0.1 + rng.normal(0.0, 0.3, N)
    return {
        "protocol": {"scorer": "scores", "score": "accuracy", "bn_mode": None, "bn_images": None,
                     "val_images": None, "archs": "table", "n": N, "deiso": False, "seed": 0,
                     "ground_truth": {"kind": "table", "source": "t.csv", "column": "acc", "n": N}},
        "archs": [f"arch_{i}" for i in range(N)],
        "truth": truth.tolist(),
        "sources": [{"name": "scores/params.csv", "epoch": None, "scores": {"params": params.tolist()},
                     "metrics": rank_metrics(params, truth)}],
        "aggregate": {},
    }


# --------------------------------------------------------------------------- JSON
def test_json_is_strict_with_nan_as_null(tmp_path: Path) -> None:
    report = _report()
    report["sources"][0]["metrics"]["kendall_tau"] = float("nan")
    report["sources"][1]["metrics"]["pearson"] = np.float64("nan")  # numpy nan too
    path = write_json(report, tmp_path / "sub" / "rank.json")
    assert path == tmp_path / "sub" / "rank.json"
    assert not path.with_name("rank.json.tmp").exists()

    def reject(token: str) -> float:
        raise AssertionError(f"non-strict JSON constant {token}")

    data = json.loads(path.read_text(), parse_constant=reject)
    assert data["sources"][0]["metrics"]["kendall_tau"] is None
    assert data["sources"][1]["metrics"]["pearson"] is None
    assert data["sources"][1]["metrics"]["kendall_tau"] == pytest.approx(
        report["sources"][1]["metrics"]["kendall_tau"])
    assert data["protocol"] == report["protocol"]
    assert math.isnan(report["sources"][0]["metrics"]["kendall_tau"])  # input left untouched


# --------------------------------------------------------------------------- Markdown
def _protocol_keys(protocol: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in protocol.items():
        keys += _protocol_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


def test_markdown_has_protocol_sources_mean_and_dash(tmp_path: Path) -> None:
    report = _report()
    report["protocol"]["extra_note"] = "anything"  # unknown keys are printed too
    report["sources"][1]["metrics"]["spearman"] = float("nan")
    text = markdown(report)

    for key in _protocol_keys(report["protocol"]):
        assert f"- {key}: " in text, key
    assert "- ground_truth.column: cifar10_test_acc" in text
    assert "- bn_images: 2000" in text
    assert "runs/spos/version_0 (epoch 9)" in text
    assert "runs/spos/version_1 (epoch 14)" in text
    assert "mean ± std" in text

    tau_row = next(line for line in text.splitlines() if line.startswith("| kendall_tau |"))
    cells = [c.strip() for c in tau_row.strip("|").split("|")]
    assert cells[1] == f"{report['sources'][0]['metrics']['kendall_tau']:.3f}"
    agg = report["aggregate"]["kendall_tau"]
    assert cells[3] == f"{agg['mean']:.3f} ± {agg['std']:.3f}"
    spearman_row = next(line for line in text.splitlines() if line.startswith("| spearman |"))
    assert [c.strip() for c in spearman_row.strip("|").split("|")][2] == "–"

    rows = [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| metric")]
    assert rows == list(report["sources"][0]["metrics"])  # first source's order
    assert "P@K: share of the predicted top-K in the true top-K" in text
    assert "## Random baseline" in text
    assert "expected best of 5 random pick(s)" in text

    path = write_markdown(report, tmp_path / "rank.md")
    assert path.read_text(encoding="utf-8") == text


def test_markdown_single_source_has_no_mean_column() -> None:
    report = _report(n_sources=1)
    del report["random_baseline"]
    text = markdown(report)
    assert "runs/spos/version_0 (epoch 9)" in text
    assert "mean ± std" not in text
    assert "Random baseline" not in text


# --------------------------------------------------------------------------- plot
def test_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_scatter(_report(), tmp_path / "rank.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_plot_rejects_a_report_without_sources(tmp_path: Path) -> None:
    report = _report()
    report["sources"] = []
    with pytest.raises(ValueError, match="no sources"):
        plot_scatter(report, tmp_path / "rank.png")


# --------------------------------------------------------------------------- TensorBoard
def _scalars(log_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"]
    return acc.Scalars(tag)


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    report = _report()
    report["sources"][0]["metrics"]["pearson"] = float("nan")  # skipped, not logged as nan
    write_tensorboard(report, tmp_path / "tb")

    events = _scalars(tmp_path / "tb", "rank/kendall_tau")
    assert [e.step for e in events] == list(EPOCHS)
    for event, source in zip(events, report["sources"]):
        assert event.value == pytest.approx(source["metrics"]["kendall_tau"], rel=1e-6)
    assert len(_scalars(tmp_path / "tb", "rank/precision@10%")) == 2
    assert [e.step for e in _scalars(tmp_path / "tb", "rank/pearson")] == [EPOCHS[1]]


def test_tensorboard_steps_by_index_without_epoch(tmp_path: Path) -> None:
    report = _report()
    for source in report["sources"]:
        source["epoch"] = None
    write_tensorboard(report, tmp_path / "tb")
    assert [e.step for e in _scalars(tmp_path / "tb", "rank/spearman")] == [0, 1]


def test_tensorboard_keeps_seeds_at_the_same_epoch_apart(tmp_path: Path) -> None:
    report = _report()
    for source, group in zip(report["sources"], ("seed0", "seed1")):
        source["epoch"], source["group"] = 9, group
    write_tensorboard(report, tmp_path / "tb")
    for source, group in zip(report["sources"], ("seed0", "seed1")):
        events = _scalars(tmp_path / "tb" / group, "rank/kendall_tau")
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events] == [
            (9, source["metrics"]["kendall_tau"])]


# --------------------------------------------------------------------------- all
def test_write_report_returns_its_paths(tmp_path: Path) -> None:
    out = tmp_path / "new" / "rank"
    paths = write_report(_report(), out)
    assert set(paths) == {"json", "markdown", "plot", "tensorboard", "by_epoch"}  # two epochs: a trace
    assert paths["by_epoch"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "by_epoch" not in write_report(_report(1), tmp_path / "one")
    assert paths["json"] == out / "rank.json"
    assert paths["markdown"] == out / "rank.md"
    assert paths["plot"] == out / "rank.png"
    assert paths["tensorboard"] == out / "tensorboard"
    for key in ("json", "markdown", "plot"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert any(p.name.startswith("events.out.tfevents") for p in paths["tensorboard"].iterdir())


def test_scores_style_report_renders(tmp_path: Path) -> None:
    report = _scores_report()
    text = markdown(report)
    assert "- bn_mode: null" in text
    assert "scores/params.csv |" in text and "(epoch" not in text
    assert "mean ± std" not in text
    paths = write_report(copy.deepcopy(report), tmp_path)
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    assert [e.step for e in _scalars(paths["tensorboard"], "rank/kendall_tau")] == [0]
