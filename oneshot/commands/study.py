"""``oneshot study collapse STUDY.yaml``: every differentiable search side by side, resumable.

The study file names the searches and what they share::

    seeds: 2                       # or a list: [0, 3]
    common: [--trainer.max_epochs, "10", --model.init_args.hessian_every, "1", ...]
    algorithms:
      darts_v1: [--model, oneshot.algorithms.DartsSearch, --model.init_args.arch_step_first, "false"]
      sdarts_rs: [--model, oneshot.algorithms.SDartsSearch]
    table: PATH.csv                # optional: a benchmark table to look the exported cells up in
    table_column: cifar10_test_acc

Each (algorithm, seed) is one ``oneshot search`` into ``OUT/runs/<algorithm>/seed_<s>/``; a rerun
skips the finished ones and resumes the others from ``last.ckpt``. The report
(:mod:`oneshot.collapse`) goes to ``OUT``: ``collapse.md``, ``collapse.json``, ``collapse.png``,
``tensorboard/``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from oneshot.collapse import read_run, write_report
from oneshot.commands import search
from oneshot.commands.common import logger_arguments, resume_arguments
from oneshot.commands.parsing import OneLineArgumentParser
from oneshot.rank.ground_truth import load_table

STUDIES = ("collapse",)
KEYS = ("seeds", "common", "algorithms", "table", "table_column")
DONE = "study_done.json"


def load_study(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study file")
    study = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(study) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; accepted: {', '.join(KEYS)}")
    algorithms = study.get("algorithms")
    if not isinstance(algorithms, dict) or not algorithms:
        raise ValueError(f"{path}: 'algorithms' must map names to `oneshot search` arguments")
    bad = [name for name, args in algorithms.items() if not isinstance(args, list)]
    if bad or not isinstance(study.get("common", []), list):
        raise ValueError(f"{path}: 'common' and every algorithm ({', '.join(bad) or 'ok'}) take a list of arguments")
    seeds = study.get("seeds", 1)
    study["seeds"] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    return study


def run_collapse(path: Path, out: Path, seeds: int | None = None, table: str | None = None,
                 table_column: str | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) every search of the study, then write the report."""
    study = load_study(path)
    seed_list = list(range(seeds)) if seeds is not None else study["seeds"]
    algorithms = study["algorithms"]
    if only:
        unknown = [name for name in only if name not in algorithms]
        if unknown:
            raise ValueError(f"--only {', '.join(unknown)}: not in the study; accepted: {', '.join(algorithms)}")
        algorithms = {name: algorithms[name] for name in only}
    table = table or study.get("table")
    truth = load_table(table, "nb201", table_column or study.get("table_column", "cifar10_test_acc")) if table else None
    runs, timings = [], {}
    for name, args in algorithms.items():
        for seed in seed_list:
            run_dir = out / "runs" / name / f"seed_{seed}"
            done = run_dir / DONE
            if not done.is_file():
                started = time.perf_counter()
                # the algorithm's --model first: options given before a --model class would be dropped
                search.main([*map(str, args), *map(str, study.get("common", [])), "--seed_everything", str(seed),
                             *logger_arguments(out / "runs" / name, f"seed_{seed}"), *resume_arguments(run_dir)])
                done.write_text(json.dumps({"wall_s": time.perf_counter() - started}))
            timings[f"{name}/seed_{seed}"] = json.loads(done.read_text())["wall_s"]
            runs.append(read_run(run_dir, name, seed, truth))
    settings = {"study": str(path), "seeds": seed_list, "algorithms": algorithms,
                "common": study.get("common", []), "wall_s": timings}
    files = write_report(runs, out, truth, settings)
    print((out / "collapse.md").read_text())
    print(f"study: {len(runs)} searches, {sum(timings.values()):.0f} s of search; report: {', '.join(files.values())}")
    return {"runs": runs, "files": files, "wall_s": timings}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OneLineArgumentParser(prog="oneshot study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=STUDIES, help="which study (collapse)")
    parser.add_argument("config", type=Path, help="the study file (experiments/collapse_nb201_digits.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<study file name>)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the study file's)")
    parser.add_argument("--only", nargs="+", default=None, help="run these algorithms of the study only")
    parser.add_argument("--table", default=None, help="a NAS-Bench-201 CSV table to look the exported cells up in")
    parser.add_argument("--table-column", default=None, help="its column (default cifar10_test_acc)")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / args.config.stem
    return run_collapse(args.config, out, args.seeds, args.table, args.table_column, args.only)
