"""Data-parallel scaling on this machine: images per second of a search step with 1 and 2 CPU
processes (DDP, gloo), for DARTS and SPOS on the embedded digits.

Each row is a real ``oneshot search`` (``--trainer.strategy ddp --trainer.devices N``) with a
callback that times the training steps after ``--warmup`` of them; a step of N processes
trains N x batch images. On a 2-core machine two processes share the cores the one process
had, so read the ratio as the overhead of DDP (gradient all-reduce, the rank-shared sampling),
not as the speed-up a machine with a core or a GPU per process would show.

Usage::

    .venv/bin/python benchmarks/ddp.py                  # DARTS and SPOS, 1 and 2 processes
    .venv/bin/python benchmarks/ddp.py --algorithms darts --steps 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMER = textwrap.dedent('''
    import time
    import lightning as L

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with open(f"steps.rank{trainer.global_rank}.txt", "a") as f:
                f.write(f"{time.perf_counter() - self.started}\\n")
''')
ALGORITHMS = {
    "darts": ["--model", "oneshot.algorithms.DartsSearch", "--model.init_args.space_options", "{C: 16, N: 5}"],
    "spos": ["--config", str(ROOT / "experiments" / "spos_digits_cpu.yaml"), "--model.init_args.selection", "best_of_n",
             "--model.init_args.selection_samples", "2"],
}


def step_seconds(name: str, processes: int, batch_size: int, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "timer.py").write_text(TIMER)
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)),
                   PYTHONPATH=os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "oneshot", "search", *ALGORITHMS[name], "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", str(steps + warmup), "--trainer.limit_val_batches", "0",
                   "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
                   "--trainer.devices", str(processes), "--data.init_args.batch_size", str(batch_size),
                   "--trainer.callbacks+=timer.StepTimer"]
        if processes > 1:
            command += ["--trainer.strategy", "ddp"]
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"{name} with {processes} process(es) failed:\n{result.stderr[-3000:]}")
        times = [float(v) for v in Path(folder, "steps.rank0.txt").read_text().split()][warmup:]
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; batch {args.batch_size} per process; median of {args.steps} steps")
    print(f"{'algorithm':<10}{'processes':>10}{'ms/step':>10}{'images/s':>10}{'vs 1':>8}")
    for name in args.algorithms:
        single = None
        for processes in (1, 2):
            seconds = step_seconds(name, processes, args.batch_size, args.steps, args.warmup)
            rate = processes * args.batch_size / seconds
            single = single or rate
            print(f"{name:<10}{processes:>10}{1000 * seconds:>10.1f}{rate:>10.1f}{rate / single:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
