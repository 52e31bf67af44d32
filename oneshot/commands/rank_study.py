"""``oneshot rank --study CONFIG.yaml``: a whole rank-disorder study from one file, resumable.

The file has three sections, each the arguments of one existing command::

    search:        {config: experiments/rsps_nb201_digits_cpu.yaml, args: [--trainer.max_epochs, "30"]}
    ground_truth:  {config: experiments/retrain_...yaml, archs: sample:50, seed: 0, args: [...]}
    rank:          {archs: all, bn: recalibrate, ...}          # options of `oneshot rank`

(config paths as written, else relative to the study file) and runs, in ``--out`` (default ``runs/<config name>``): the supernet search (``search/``,
skipped once it wrote ``arch.json``, resumed from ``last.ckpt`` otherwise), the stand-alone
ground truth (``ground_truth/``, resumable per architecture), and the rank report (``rank/``),
which ranks the supernet on exactly the architectures that were trained.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import yaml

import supernets
from oneshot.commands import search
from oneshot.commands.common import logger_arguments, resume_arguments
from oneshot.commands.rank_truth import train_ground_truth
from oneshot.rank.choose import choose_archs

SECTIONS = ("search", "ground_truth", "rank")


def load_study(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"--study {path}: no such file")
    study = yaml.safe_load(path.read_text()) or {}
    unknown = set(study) - set(SECTIONS)
    missing = [s for s in SECTIONS if s not in study]
    if unknown or missing:
        raise ValueError(f"--study {path}: sections must be {', '.join(SECTIONS)}"
                         f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}"
                         f"{'; missing: ' + ', '.join(missing) if missing else ''}")
    for section in ("search", "ground_truth"):
        if "config" not in (study[section] or {}):
            raise ValueError(f"--study {path}: {section}.config (a YAML of `oneshot "
                             f"{'search' if section == 'search' else 'retrain'}`) is required")
    return study


def _resolve(config: str, study_path: Path) -> str:
    """A config path as written, or relative to the study file when that is where it is."""
    beside = study_path.parent / config
    return str(beside) if not Path(config).is_file() and beside.is_file() else config


def _options(mapping: dict[str, Any]) -> list[str]:
    """{"bn": "train", "deiso": true} -> ["--bn", "train", "--deiso"]."""
    argv = []
    for key, value in mapping.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    return argv


def run_study(path: Path, out: Path | None, rank: Callable[[list[str]], Any]) -> dict[str, Any]:
    """Search, ground truth, rank; each stage skipped or resumed when already (partly) done.

    ``rank`` is ``oneshot rank``'s ``main``, which calls this function for ``--study``.
    """

    study = load_study(path)
    out = out or Path("runs") / path.stem
    timings: dict[str, float] = {}

    started = time.perf_counter()
    search_dir = out / "search"
    if not (search_dir / "arch.json").is_file():
        search.main(["--config", _resolve(study["search"]["config"], path), *map(str, study["search"].get("args", [])),
                 *logger_arguments(out, "search"), *resume_arguments(search_dir)])
    timings["search_s"] = time.perf_counter() - started

    started = time.perf_counter()
    truth_section = study["ground_truth"]
    space_name = truth_section.get("space", "nb201")
    space = supernets.get(space_name)
    archs = choose_archs(space, truth_section.get("archs", "sample:50"), None, int(truth_section.get("seed", 0)))
    table = train_ground_truth(space, archs, _resolve(truth_section["config"], path), out / "ground_truth",
                               retrain_args=[str(a) for a in truth_section.get("args", [])])
    timings["ground_truth_s"] = time.perf_counter() - started

    started = time.perf_counter()
    options = {"archs": "all", **(study["rank"] or {})}
    report = rank([str(search_dir), "--ground-truth", str(table), "--ground-truth-column", "test_acc",
                        "--out", str(out / "rank"),
                        *_options(options)])
    timings["rank_s"] = time.perf_counter() - started
    print("study times: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    return {"report": report, "timings": timings}
