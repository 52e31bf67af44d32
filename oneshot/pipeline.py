"""``oneshot pipeline``: search, discretization and retraining as one command and one run directory.

One-shot NAS is judged by what its architecture scores when trained from scratch (Liu et al.,
"DARTS", ICLR 2019, section 3: search, then evaluation of the derived cell), so this command chains
``oneshot search``, ``oneshot discretize`` and ``oneshot retrain`` in process::

    oneshot pipeline --config experiments/darts_v2_cifar10.yaml \\
        --retrain experiments/retrain_darts_cifar10.yaml [--rule space|best_of_n] \\
        [--run-dir DIR] [--retrain-args "--trainer.max_epochs 10 --model.network_options '{C: 16}'"] \\
        [further arguments of the search, e.g. --trainer.max_epochs 1]

The run directory (default ``runs/pipeline/<search config name>/version_N``, the next free N;
``search`` without ``--config``) holds

* ``search/``: the search run (``checkpoints/last.ckpt``, ``config.yaml``, logs, ``arch.json``);
* ``arch.json``: the discretized architecture (:func:`oneshot.discretize.main` with ``--rule``);
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

import yaml

from oneshot.files import atomic_write_json
STAGES = ("search", "discretize", "retrain")
RECORD = "pipeline.json"


class PipelineError(ValueError):
    """A mistake in the pipeline's input or run directory; the message says which and what to do."""


# -- command line ------------------------------------------------------------------------------
def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The pipeline's own options, and the rest (passed to the search)."""
    from oneshot.discretize import RULES

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
    parser.add_argument("--rule", choices=RULES, default="space",
                        help="discretization rule of `oneshot discretize` (default: space)")
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


def _override(args: list[str], flag: str) -> Optional[str]:
    """The last value given to ``flag`` (``--flag V`` or ``--flag=V``) on a command line, or None."""
    value = None
    for i, item in enumerate(args):
        if item == flag and i + 1 < len(args):
            value = args[i + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value


def _config_value(configs: list[str], keys: tuple[str, ...]) -> Any:
    """``configs``' value at the nested ``keys`` (the last config that sets it wins), or None."""
    value = None
    for path in configs:
        node: Any = yaml.safe_load(Path(path).read_text()) or {}
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


# -- consistency -------------------------------------------------------------------------------
def search_space_name(configs: list[str], search_args: list[str]) -> str:
    """The space the search will run on: ``--model.init_args.space``, the configs, or the
    algorithms' default (``SearchAlgorithm(space="nb201")``)."""
    from oneshot.algorithms import SearchAlgorithm

    value = _override(search_args, "--model.init_args.space") or _config_value(configs, ("model", "init_args", "space"))
    return str(value or inspect.signature(SearchAlgorithm.__init__).parameters["space"].default)


def check_retrain_fits(space: str, retrain_config: str, retrain_args: list[str], origin: str) -> None:
    """Refuse, before any training, a retrain config for another space than the architecture's.

    Raises:
        PipelineError: the retrain ``model.space`` differs from ``space``, or its
            ``model.network_options`` are not options of ``space``'s network.
    """
    import supernets

    wanted = _override(retrain_args, "--model.space") or _config_value([retrain_config], ("model", "space"))
    if wanted is not None and str(wanted) != space:
        raise PipelineError(
            f"the architecture is of space {space!r} ({origin}), but the retrain config "
            f"{retrain_config} sets model.space {wanted!r}; pass a retrain config for {space!r} "
            f"(e.g. experiments/retrain_{space}_*.yaml)")
    options = _config_value([retrain_config], ("model", "network_options")) or {}
    given = _override(retrain_args, "--model.network_options")
    if given is not None:
        options = yaml.safe_load(given) or {}
    if not isinstance(options, dict):
        raise PipelineError(f"model.network_options {options!r} is not a mapping")
    accepted = [p for p in inspect.signature(supernets.get(space).build_network).parameters
                if p not in ("self", "arch", "num_classes", "in_channels", "drop_path_prob")]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise PipelineError(
            f"the retrain config {retrain_config} sets model.network_options {unknown}, which "
            f"{space!r} networks ({origin}) do not take; accepted: {', '.join(accepted)}")


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


def logger_arguments(run_dir: Path, stage: str) -> list[str]:
    """TensorBoardLogger arguments whose ``log_dir`` is ``run_dir/stage`` (save_dir/name/version)."""
    return ["--trainer.logger.init_args.save_dir", str(run_dir.parent),
            "--trainer.logger.init_args.name", run_dir.name,
            "--trainer.logger.init_args.version", stage]


def resume_arguments(stage_dir: Path) -> list[str]:
    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    return ["--ckpt_path", str(ckpt)] if ckpt.is_file() else []


def _summary(result: dict[str, Any]) -> str:
    return (f"architecture: {result['arch']}\ntest accuracy: {result['test_acc']:.2f}% "
            f"(best {result['best_test_acc']:.2f}%), params {result['params']:,}")


# -- the command ---------------------------------------------------------------------------------
def main(argv: list[str]) -> Optional[dict[str, Any]]:
    """Run or resume the pipeline; returns the retrain ``result.json`` record once it exists.

    ``SystemExit`` from the stages (bad LightningCLI arguments) propagates.
    """
    from oneshot.cli import _retrain, _search
    from oneshot.discretize import main as discretize_main

    args, search_args = parse_arguments(argv)
    retrain_args = shlex.split(args.retrain_args)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    search_dir, arch_path, retrain_dir = run_dir / "search", run_dir / "arch.json", run_dir / "retrain"
    result_path = retrain_dir / "result.json"
    settings = {
        "search": {"config": args.config, "args": search_args},
        "discretize": {"rule": args.rule},
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

    if not stages.done("search", search_dir / "arch.json"):
        stages.start("search", settings["search"], {"path": "search"})
        config_args = [item for path in args.config for item in ("--config", path)]
        _search([*config_args, *search_args, *logger_arguments(run_dir, "search"), *resume_arguments(search_dir)])
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
        discretize_main([str(search_dir), "--rule", args.rule, "--out", str(arch_path)])
        stages.finish("discretize")
    if args.stop_after == "discretize":
        return None

    space = json.loads(arch_path.read_text())["space"]
    check_retrain_fits(space, args.retrain, retrain_args, origin=f"{arch_path}")
    stages.start("retrain", settings["retrain"], {"path": "retrain", "arch": "arch.json"})
    _retrain(["--config", args.retrain, *retrain_args, "--arch", str(arch_path),
              *logger_arguments(run_dir, "retrain"), *resume_arguments(retrain_dir)])
    if not result_path.is_file():
        raise PipelineError(f"the retraining did not finish ({result_path} is missing); rerun with "
                            f"--run-dir {run_dir} to resume it")
    stages.finish("retrain", result="retrain/result.json")
    result = json.loads(result_path.read_text())
    print(f"pipeline finished: {run_dir}")
    return result
