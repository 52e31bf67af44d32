"""`oneshot search` end to end on the embedded digits dataset: artifacts, resumption, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import supernets
from oneshot.algorithms import DartsSearch
from oneshot.commands import main

TINY = ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1",
        "--trainer.enable_model_summary", "false"]


def _run_dir(root="runs/search"):
    versions = sorted(os.listdir(root))
    return os.path.join(root, versions[-1])


def test_search_writes_checkpoint_arch_and_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["search", "--trainer.max_epochs", "2", *TINY])
    run = _run_dir()
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    assert os.path.isfile(os.path.join(run, "config.yaml"))
    events = EventAccumulator(run)
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "arch_loss", "lr",
            "arch_entropy/mean_normalized", "arch_prob/1<-0/nor_conv_3x3"} <= scalars
    assert "arch_heatmap/cell" in events.Tags()["images"]
    record = json.load(open(os.path.join(run, "arch.json")))
    space = supernets.get("nb201")
    arch = space.load(os.path.join(run, "arch.json"))
    assert record["arch"] == space.format(arch) and record["space"] == "nb201"
    model = DartsSearch.load_from_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert model.export() == arch  # the checkpoint holds the architecture that was exported
    main(["info", "--space", "nb201", "--arch", os.path.join(run, "arch.json")])
    assert f"index:   {space.index(arch)}" in capsys.readouterr().out


def test_unknown_config_key_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--model.init_args.no_such_option", "1", *TINY])
    assert exit_info.value.code != 0
    assert "no_such_option" in capsys.readouterr().err
    assert not os.path.exists("runs")


def test_checkpoint_from_another_space_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["search", "--trainer.max_epochs", "1", *TINY])
    ckpt = os.path.join(_run_dir(), "checkpoints", "last.ckpt")
    with pytest.raises(SystemExit):
        main(["search", "--trainer.max_epochs", "2", *TINY, "--model.init_args.space", "darts",
              "--model.init_args.space_options", "{C: 4, layers: 3}", "--ckpt_path", ckpt])
    err = capsys.readouterr().err
    assert "space is 'nb201'" in err and "'darts'" in err


def test_missing_checkpoint_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["search", *TINY, "--ckpt_path", "nowhere/last.ckpt"])
    assert "nowhere/last.ckpt" in capsys.readouterr().err


# `oneshot search` whose arch.json writes are recorded per rank (Lightning's DDP launcher starts
# rank 1 by running this same script again)
RECORDING_SEARCH = """
import os, sys
import torch.distributed as dist
import oneshot.algorithms.base as base
from oneshot.commands import main

own = base.atomic_write_json

def recording(path, record, **options):
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else "none"
    with open(f"writes.rank{rank}.txt", "a") as f:
        f.write(os.path.basename(str(path)) + "\\n")
    return own(path, record, **options)

base.atomic_write_json = recording
main(["search", *sys.argv[1:]])
"""


def test_data_parallel_search_keeps_ranks_identical(tmp_path):
    """Two CPU processes (gloo): the run fails if ranks end with different alphas (on_train_end);
    only rank 0 writes arch.json (both ranks share one log_dir, so files alone cannot tell)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    (tmp_path / "recording_search.py").write_text(RECORDING_SEARCH)
    command = [sys.executable, str(tmp_path / "recording_search.py"), "--trainer.max_epochs", "2", *TINY,
               "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--data.init_args.batch_size", "16"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    writers = sorted(p.name for p in tmp_path.glob("writes.rank*.txt"))
    assert writers == ["writes.rank0.txt"]  # only rank 0 wrote, and it ran under DDP
    written = (tmp_path / "writes.rank0.txt").read_text().split()
    assert written and set(written) == {"arch.json"}  # each epoch and at the end
    runs = os.listdir(tmp_path / "runs" / "search")
    assert runs == ["version_0"]  # one run directory: the ranks agree on log_dir
    run = tmp_path / "runs" / "search" / "version_0"
    assert (run / "arch.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["oneshot"]["space"] == "nb201"


@pytest.mark.parametrize("global_zero", [True, False])
def test_only_the_global_zero_rank_writes_arch_json(tmp_path, monkeypatch, global_zero):
    """A rank other than 0, simulated in one process through the trainer's is_global_zero: the
    search trains and checkpoints (Lightning's own rank handling) but writes no arch.json."""
    import lightning as L

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: global_zero))
    main(["search", "--trainer.max_epochs", "1", *TINY])
    run = _run_dir()
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    assert os.path.isfile(os.path.join(run, "arch.json")) == global_zero


def test_second_order_search_in_the_darts_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["search", "--trainer.max_epochs", "1", *TINY, "--model.init_args.space", "darts",
          "--model.init_args.space_options", "{C: 4, layers: 3}", "--model.init_args.unrolled", "true"])
    run = _run_dir()
    space = supernets.get("darts")
    arch = space.load(os.path.join(run, "arch.json"))
    assert space.format(arch).startswith("Genotype(normal=[")
    model = DartsSearch.load_from_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert model.hparams.unrolled and model.export() == arch


