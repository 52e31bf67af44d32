"""A real `oneshot search` stopped by SIGTERM mid-epoch writes a checkpoint at that step, exits
with 128 + 15, and resumed from it ends in exactly the state of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from oneshot.commands import main

# sends a real SIGTERM to its own process at the start of a chosen batch
SIGNALLER = textwrap.dedent('''
    import os, signal
    import lightning as L

    class SignalAt(L.Callback):
        def __init__(self, epoch: int = 1, batch: int = 2, name: str = "SIGTERM"):
            self.epoch, self.batch, self.name = epoch, batch, name

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == self.epoch and batch_idx == self.batch:
                os.kill(os.getpid(), signal.Signals[self.name])
''')

COMMON = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--data.init_args.batch_size", "32"]
ALGORITHMS = {
    "darts": ["--model", "oneshot.algorithms.DartsSearch", "--model.init_args.space_options", "{C: 4, N: 1}"],
    "gdas": ["--model", "oneshot.algorithms.GdasSearch", "--model.init_args.space_options", "{C: 4, N: 1}"],
    "spos": ["--config", "experiments/spos_digits_cpu.yaml"],
    "enas": ["--config", "experiments/enas_nb201_digits_cpu.yaml"],
    "ofa": ["--config", "experiments/ofa_mbv3_digits_cpu.yaml", "--model.init_args.phase", "full"],
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _available(name):
    return all(not a.endswith(".yaml") or os.path.isfile(os.path.join(ROOT, a)) for a in ALGORITHMS[name])


def _args(name, version):
    args = [os.path.join(ROOT, a) if a.endswith(".yaml") else a for a in ALGORITHMS[name]]
    return [*args, *COMMON, "--trainer.logger.init_args.save_dir", "runs",
            "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", version]


def _state(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["state_dict"], checkpoint["optimizer_states"], checkpoint["lr_schedulers"], \
        checkpoint["global_step"], checkpoint["epoch"]


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{k}")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(name, tmp_path, monkeypatch):
    if not _available(name):
        pytest.skip(f"no CPU config for {name}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "signaller.py").write_text(SIGNALLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    stopped = subprocess.run([sys.executable, "-m", "oneshot", "search", *_args(name, "stopped"),
                              "--trainer.callbacks+=signaller.SignalAt"], env=env, capture_output=True, text=True,
                             timeout=600)
    checkpoint = os.path.join("runs", name, "stopped", "checkpoints", "last.ckpt")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"resume with --ckpt_path {checkpoint}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    loops = torch.load(checkpoint, map_location="cpu", weights_only=False)["loops"]
    progress = loops["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert progress["processed"] == 3  # epoch 1 stopped after batches 0, 1 and 2 (the signal came in 2)
    torch.set_num_threads(1)
    main(["search", *_args(name, "stopped"), "--ckpt_path", checkpoint])
    main(["search", *_args(name, "whole")])
    resumed, whole = _state(checkpoint), _state(os.path.join("runs", name, "whole", "checkpoints", "last.ckpt"))
    _assert_same(resumed, whole)
