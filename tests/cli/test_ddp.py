"""Two CPU processes under DDP: every rank holds the same architecture state at every step, only
rank 0 writes artifacts, and single-path algorithms choose DDP's setting themselves."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECORDER = textwrap.dedent('''
    import os
    import torch
    import torch.distributed as dist
    import lightning as L

    class Record(L.Callback):
        """Per step: the architecture state (alphas, controller) and the sampled path, per rank."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            tensors = [p.detach().flatten() for p in getattr(pl_module, "alphas", {}).values()]
            tensors += [p.detach().flatten() for p in getattr(pl_module, "controller", torch.nn.Module()).parameters()]
            state = torch.cat(tensors) if tensors else torch.zeros(0)
            decisions = pl_module.decisions_for_weight_step() if getattr(pl_module, "single_path", False) else {}
            path = repr(sorted((k, repr(v)) for k, v in decisions.items()))
            with open(f"record.rank{trainer.global_rank}.txt", "a") as f:
                f.write(f"{trainer.global_step} {' '.join(f'{v:.9e}' for v in state.tolist())} {path}\\n")
''')

ALGORITHMS = {
    "darts": ["--model", "oneshot.algorithms.DartsSearch"],
    "gdas": ["--model", "oneshot.algorithms.GdasSearch"],
    "rsps": ["--model", "oneshot.algorithms.RandomSinglePathSearch", "--model.init_args.selection_samples", "2"],
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_two_processes_hold_one_architecture_state_and_rank_zero_writes(name, tmp_path):
    (tmp_path / "recorder.py").write_text(RECORDER)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "oneshot", "search", *ALGORITHMS[name],
               "--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.max_epochs", "2",
               "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.callbacks+=recorder.Record"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / f"record.rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(ranks[0]) == 6 and ranks[0] == ranks[1]  # 2 epochs x 3 steps, identical on both ranks
    assert len({line.split(" ", 1)[1] for line in ranks[0]}) > 1  # the state moves
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert any(p.endswith("arch.json") for p in runs) and any(p.endswith("last.ckpt") for p in runs)
    assert len([p for p in runs if p.endswith("arch.json")]) == 1 and "runs/search/version_1" not in " ".join(runs)
    assert result.stdout.count("architecture:") == 1  # rank 0 reports
