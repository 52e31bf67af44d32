"""``oneshot pipeline``: search, discretization and retraining as one command and one run directory.

For Once-for-All (an ``OfaSearch`` config) the search stage is ``oneshot shrink``'s whole schedule
(``--schedule YAML`` passes through) and the retraining inherits the supernet's weights
(``inherit_from``: the subnet extracted, BN recalibrated, then fine-tuned for the retrain config's
epochs, or only evaluated with ``--trainer.max_epochs 0``).

One-shot NAS is judged by what its architecture scores when trained from scratch (Liu et al.,
"DARTS", ICLR 2019, section 3: search, then evaluation of the derived cell), so this command chains
``oneshot search``, ``oneshot discretize`` and ``oneshot retrain`` in process::

    oneshot pipeline --config experiments/darts_v2_cifar10.yaml \\
        --retrain experiments/retrain_darts_cifar10.yaml [--rule rule|best_of_n|perturbation|evolution] \\
        [--discretize-args "--constraint flops<=330e6"] \\
        [--run-dir DIR] [--retrain-args "--trainer.max_epochs 10 --model.network_options '{C: 16}'"] \\
        [further arguments of the search, e.g. --trainer.max_epochs 1]

The run directory (default ``runs/pipeline/<search config name>/version_N``, the next free N;
``search`` without ``--config``) holds

* ``search/``: the search run (``checkpoints/last.ckpt``, ``config.yaml``, logs, ``arch.json``);
* ``arch.json``: the discretized architecture (:func:`oneshot.commands.discretize.main` with ``--rule``);
* ``retrain/``: the retraining run (best and last checkpoints, logs, ``result.json``);
* ``pipeline.json``: per stage its status (``running`` or ``done``), start and end times, paths and
  the settings it ran with.

Running the same command with ``--run-dir DIR`` again resumes where it stopped: an interrupted search
or retraining continues from its ``checkpoints/last.ckpt``, a missing ``arch.json`` is discretized
again, and a finished pipeline only prints its result. A stage's settings may not change once it
has started (a new ``--run-dir`` does that); the settings of stages not yet started may.
``--stop-after search|discretize`` ends the command after that stage.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional


from oneshot import selection
from oneshot.algorithms import SupernetTraining
from oneshot.commands import discretize, retrain, search, shrink
from oneshot.commands.common import (UserError, check_retrain_fits, config_value, logger_arguments, override,
                                     resume_arguments)
from oneshot.files import atomic_write_json

STAGES = ("search", "discretize", "retrain")
RECORD = "pipeline.json"


class PipelineError(UserError):
    """A mistake in the pipeline's input or run directory; the message says which and what to do."""


# -- command line ------------------------------------------------------------------------------
def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The pipeline's own options, and the rest (passed to the search)."""
    parser = argparse.ArgumentParser(
        prog="oneshot pipeline", allow_abbrev=False,
        description="search, discretize and retrain in one run directory; arguments not listed "
                    "here go to `oneshot search`")
    parser.add_argument("--config", action="append", default=[],
                        help="search config (experiments/*.yaml); repeatable as in `oneshot search`")
    parser.add_argument("--retrain", required=True, metavar="CONFIG",
                        help="retrain config, e.g. experiments/retrain_darts_cifar10.yaml")
    parser.add_argument("--retrain-args", default="", metavar="STRING",
                        help="further retrain arguments, split as a shell would "
                             "(\"--trainer.max_epochs 10 --model.network_options '{C: 16}'\")")
    parser.add_argument("--rule", choices=selection.names(), default="rule",
                        help="selection strategy of `oneshot discretize` (default: rule, the search's export, "
                             "which is the search's own selection where it made one, e.g. SPOS's evolution)")
    parser.add_argument("--discretize-args", default="", metavar="STRING",
                        help="further `oneshot discretize` arguments (\"--constraint flops<=330e6 --generations 5\")")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="the run directory; pass an existing one to resume "
                             "(default: runs/pipeline/<search config name>/version_N)")
    parser.add_argument("--stop-after", choices=STAGES[:-1], default=None,
                        help="end after this stage; the same command without it continues")
    args, search_args = parser.parse_known_args(argv)
    for path in [*args.config, args.retrain]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config {path} does not exist")
    return args, search_args


def default_run_dir(configs: list[str], root: str = "runs/pipeline") -> Path:
    """``root/<name of the last search config>/version_N`` with the next free N."""
    name = Path(configs[-1]).stem if configs else "search"
    parent = Path(root) / name
    taken = [int(p.name[len("version_"):]) for p in parent.glob("version_*")
             if p.name[len("version_"):].isdigit()]
    return parent / f"version_{max(taken, default=-1) + 1}"


# -- consistency -------------------------------------------------------------------------------
def search_space_name(configs: list[str], search_args: list[str]) -> str:
    """The space the search will run on: ``--model.init_args.space``, the configs, or the
    algorithms' default (``SupernetTraining(space="nb201")``)."""
    value = override(search_args, "--model.init_args.space") or config_value(configs, ("model", "init_args", "space"))
    return str(value or inspect.signature(SupernetTraining.__init__).parameters["space"].default)


def is_progressive_shrinking(configs: list[str], search_args: list[str]) -> bool:
    """An OfaSearch config: its search is `oneshot shrink`'s schedule, its retraining inherits."""
    model = override(search_args, "--model") or config_value(configs, ("model", "class_path")) or ""
    return str(model).rsplit(".", 1)[-1] == "OfaSearch"


# -- record --------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RECORD
    if not path.is_file():
        return {"run_dir": str(run_dir), "created": _now(), "stages": {}}
    return json.loads(path.read_text())


def save_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``pipeline.json`` atomically, so an interruption never leaves half a record."""
    record["updated"] = _now()
    atomic_write_json(run_dir / RECORD, record)


class Stages:
    """Bookkeeping of ``pipeline.json``: which stage is done, and with which settings."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.record = load_record(run_dir)

    def done(self, stage: str, artifact: Path) -> bool:
        """Recorded as done and its artifact is there."""
        return self.record["stages"].get(stage, {}).get("status") == "done" and artifact.is_file()

    def check_settings(self, stage: str, settings: dict[str, Any]) -> None:
        entry = self.record["stages"].get(stage)
        if entry is not None and entry.get("settings") != settings:
            changed = sorted(k for k in {*settings, *entry["settings"]}
                             if settings.get(k) != entry["settings"].get(k))
            raise PipelineError(
                f"{self.run_dir}: the {stage} stage was started with other settings ({', '.join(changed)}: "
                f"{ {k: entry['settings'].get(k) for k in changed} } then, "
                f"{ {k: settings.get(k) for k in changed} } now); rerun with the same arguments "
                "to resume, or pass a new --run-dir")

    def start(self, stage: str, settings: dict[str, Any], paths: dict[str, str]) -> None:
        entry = self.record["stages"].get(stage, {})
        self.record["stages"][stage] = {"status": "running", "started": entry.get("started", _now()),
                                        "settings": settings, **paths}
        if entry:
            self.record["stages"][stage]["resumed"] = _now()
        save_record(self.run_dir, self.record)

    def finish(self, stage: str, **extra: Any) -> None:
        self.record["stages"][stage].update(status="done", finished=_now(), **extra)
        save_record(self.run_dir, self.record)


def _summary(result: dict[str, Any]) -> str:
    return (f"architecture: {result['arch']}\ntest accuracy: {result['test_acc']:.2f}% "
            f"(best {result['best_test_acc']:.2f}%), params {result['params']:,}")


# -- the command ---------------------------------------------------------------------------------
def main(argv: list[str]) -> Optional[dict[str, Any]]:
    """Run or resume the pipeline; returns the retrain ``result.json`` record once it exists.

    ``SystemExit`` from the stages (bad LightningCLI arguments) propagates.
    """
    args, search_args = parse_arguments(argv)
    retrain_args = shlex.split(args.retrain_args)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    search_dir, arch_path, retrain_dir = run_dir / "search", run_dir / "arch.json", run_dir / "retrain"
    result_path = retrain_dir / "result.json"
    settings = {
        "search": {"config": args.config, "args": search_args},
        "discretize": {"rule": args.rule, **({"args": shlex.split(args.discretize_args)} if args.discretize_args else {})},
        "retrain": {"config": args.retrain, "args": retrain_args},
    }
    stages = Stages(run_dir)
    for stage in STAGES:
        stages.check_settings(stage, settings[stage])
    if stages.done("retrain", result_path):
        result = json.loads(result_path.read_text())
        print(f"{_summary(result)}\nthe pipeline is finished; see {result_path}")
        return result
    # fail before a long search when the retrain config cannot take the search's space
    if not stages.done("discretize", arch_path):
        space = search_space_name(args.config, search_args)
        check_retrain_fits(space, args.retrain, retrain_args, origin="the search's space")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"pipeline run directory: {run_dir}")

    staged = is_progressive_shrinking(args.config, search_args)
    if not stages.done("search", search_dir / "arch.json"):
        stages.start("search", settings["search"], {"path": "search"})
        config_args = [item for path in args.config for item in ("--config", path)]
        if staged:  # OFA: every phase of the schedule, into search/
            shrink.main([*config_args, *search_args, "--run-dir", str(search_dir)])
        else:
            search.main([*config_args, *search_args, *logger_arguments(run_dir, "search"),
                         *resume_arguments(search_dir)])
        if not (search_dir / "arch.json").is_file():
            raise PipelineError(f"the search did not finish ({search_dir} has no arch.json); rerun "
                                f"with --run-dir {run_dir} to resume it")
        stages.finish("search", arch="search/arch.json")
        # a new search invalidates what was derived from the old one
        arch_path.unlink(missing_ok=True)
        stages.record["stages"].pop("discretize", None)
        save_record(run_dir, stages.record)
    if args.stop_after == "search":
        return None

    if not stages.done("discretize", arch_path):
        stages.start("discretize", settings["discretize"], {"path": "arch.json", "source": "search"})
        discretize.main([str(search_dir), "--rule", args.rule, *settings["discretize"].get("args", []), "--out", str(arch_path)])
        stages.finish("discretize")
    if args.stop_after == "discretize":
        return None

    space = json.loads(arch_path.read_text())["space"]
    check_retrain_fits(space, args.retrain, retrain_args, origin=f"{arch_path}")
    stages.start("retrain", settings["retrain"], {"path": "retrain", "arch": "arch.json"})
    inherit = ["--model.inherit_from", str(search_dir)] if staged else []  # OFA deploys the subnet
    retrain.main(["--config", args.retrain, *retrain_args, "--arch", str(arch_path), *inherit,
                  *logger_arguments(run_dir, "retrain"), *resume_arguments(retrain_dir)])
    if not result_path.is_file():
        raise PipelineError(f"the retraining did not finish ({result_path} is missing); rerun with "
                            f"--run-dir {run_dir} to resume it")
    stages.finish("retrain", result="retrain/result.json")
    result = json.loads(result_path.read_text())
    print(f"pipeline finished: {run_dir}")
    return result
