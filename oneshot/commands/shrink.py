"""``oneshot shrink``: Once-for-All's progressive shrinking, every phase in one run directory.

    oneshot shrink --config experiments/ofa_mbv3_digits_cpu.yaml \\
        [--schedule experiments/schedules/ofa_mbv3_digits_cpu.yaml] [--run-dir DIR] \\
        [--phases kernel,depth1,...] [--init-from CKPT --teacher CKPT] [further search arguments]

Each phase is an ``oneshot search`` of :class:`~oneshot.algorithms.ofa.OfaSearch` with
``phase`` set, its schedule entry's arguments (epochs, lr, warm-up: ``--schedule``, else the
reference's table :data:`~oneshot.algorithms.ofa.REFERENCE_SCHEDULE`), ``init_from`` the previous
phase's ``last.ckpt`` and ``teacher`` the full phase's. The run directory holds one folder per phase
and ``shrink.json`` (each phase's status and arguments); the same command with ``--run-dir``
again skips finished phases and resumes the unfinished one from its ``last.ckpt``. After the last
phase the directory is a search run of its own (``config.yaml``, ``checkpoints/last.ckpt``,
``arch.json`` of the final phase), which ``oneshot discretize``, ``rank`` and ``retrain
--model.inherit_from`` read.

Each phase runs in its own process (``python -m oneshot search``): a phase's memory is returned
before the next starts, and LightningCLI is parsed afresh (several LightningCLI parses of
OfaSearch in one process have failed intermittently with a spurious unknown-key error).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from oneshot.commands.common import UserError, logger_arguments, resume_arguments
from oneshot.files import atomic_write_json

RECORD = "shrink.json"


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from oneshot.algorithms.ofa import PHASES

    parser = argparse.ArgumentParser(prog="oneshot shrink", allow_abbrev=False,
                                     description="OFA progressive shrinking: every phase into one run "
                                                 "directory; arguments not listed go to each phase's search")
    parser.add_argument("--config", action="append", default=[], required=True,
                        help="OfaSearch config shared by the phases (experiments/ofa_mbv3_*.yaml)")
    parser.add_argument("--schedule", default=None, metavar="YAML",
                        help="per phase, search arguments ({kernel: {trainer.max_epochs: 125, ...}}); "
                             "default: the reference's table")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="the run directory; an existing one resumes (default runs/shrink/<config name>)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"the phases to run, in order (default {','.join(PHASES)})")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="the previous phase's checkpoint when --phases does not start at full")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="the full phase's checkpoint when --phases leaves full out")
    args, rest = parser.parse_known_args(argv)
    for path in [*args.config, *([args.schedule] if args.schedule else [])]:
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    order = list(PHASES)
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown or not args.phases:
        raise UserError(f"--phases {','.join(unknown) or '(none)'}: use phases of {','.join(order)}")
    positions = [order.index(p) for p in args.phases]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise UserError(f"--phases {','.join(args.phases)}: give consecutive phases in the order {','.join(order)}")
    if args.phases[0] != "full" and not args.init_from:
        raise UserError(f"--phases starts at {args.phases[0]}: pass --init-from with the checkpoint of the phase before it")
    if "full" not in args.phases and not args.teacher:
        raise UserError("--phases leaves out full: pass --teacher with the full phase's checkpoint")
    return args, rest


def schedule_of(path: str | None) -> dict[str, dict[str, Any]]:
    """Per phase, the search arguments of its schedule (flat dotted keys)."""
    from oneshot.algorithms.ofa import PHASES, REFERENCE_SCHEDULE

    if path is None:
        return REFERENCE_SCHEDULE
    table = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(table, dict) or any(k not in PHASES or not isinstance(v, dict) for k, v in table.items()):
        raise UserError(f"{path}: a schedule maps phases ({', '.join(PHASES)}) to search arguments, "
                        "e.g. {kernel: {trainer.max_epochs: 3, model.init_args.learning_rate: 0.03}}")
    return table


def phase_arguments(settings: dict[str, Any]) -> list[str]:
    """``{trainer.max_epochs: 3}`` -> ``--trainer.max_epochs 3`` (values as JSON, which the CLI reads)."""
    return [item for key, value in settings.items()
            for item in (f"--{key}", value if isinstance(value, str) else json.dumps(value))]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def publish_final(run_dir: Path, phase_dir: Path) -> None:
    """Make the run directory read as a search run of the final phase."""
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    target = run_dir / "checkpoints" / "last.ckpt"
    target.unlink(missing_ok=True)
    try:
        os.link(phase_dir / "checkpoints" / "last.ckpt", target)
    except OSError:
        shutil.copy2(phase_dir / "checkpoints" / "last.ckpt", target)
    for name in ("config.yaml", "arch.json"):
        if (phase_dir / name).is_file():
            shutil.copy2(phase_dir / name, run_dir / name)


def main(argv: list[str]) -> Path:
    args, search_args = parse_arguments(argv)
    schedule = schedule_of(args.schedule)
    run_dir = Path(args.run_dir or Path("runs") / "shrink" / Path(args.config[-1]).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"created": _now(), "phases": {}}
    config_args = [item for path in args.config for item in ("--config", path)]
    print(f"shrink run directory: {run_dir}")
    previous, teacher = args.init_from, args.teacher
    for phase in args.phases:
        phase_dir = run_dir / phase
        last = phase_dir / "checkpoints" / "last.ckpt"
        settings = {"phase": phase, "schedule": schedule.get(phase, {}), "args": search_args}
        entry = record["phases"].get(phase)
        if entry is not None and entry.get("settings") != settings:
            raise UserError(f"{run_dir}: phase {phase} was started with other settings; rerun with the same "
                            "arguments to resume, or pass a new --run-dir")
        if not (entry and entry.get("status") == "done" and last.is_file()):
            record["phases"][phase] = {"status": "running", "started": (entry or {}).get("started", _now()),
                                       "settings": settings}
            atomic_write_json(record_path, record)
            links = ["--model.init_args.phase", phase]
            if previous:
                links += ["--model.init_args.init_from", str(previous)]
            if teacher and phase != "full":
                links += ["--model.init_args.teacher", str(teacher)]
            print(f"--- phase {phase} ---")
            command = [sys.executable, "-m", "oneshot", "search", *config_args, *phase_arguments(schedule.get(phase, {})),
                       *links, *search_args, *logger_arguments(run_dir, phase), *resume_arguments(phase_dir)]
            status = subprocess.run(command).returncode  # a fresh process per phase (see the module docstring)
            if status != 0 or not last.is_file():
                raise UserError(f"phase {phase} did not finish (exit status {status}); finished phases are kept: "
                                f"rerun the same command with --run-dir {run_dir} to resume it")
            record["phases"][phase].update(status="done", finished=_now())
            atomic_write_json(record_path, record)
        previous = last
        if phase == "full":
            teacher = last
    publish_final(run_dir, run_dir / args.phases[-1])
    print(f"progressive shrinking finished: {run_dir}")
    return run_dir
