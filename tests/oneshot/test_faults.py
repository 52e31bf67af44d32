"""Faults injected: a kill during a checkpoint write, truncated and foreign checkpoint files,
NaN batches, and the sampler that makes a mid-epoch resume exact."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from oneshot.algorithms import DartsSearch
from oneshot.checkpoints import AtomicCheckpointIO, newest_complete_checkpoint, read_checkpoint
from oneshot.commands import main
from oneshot.data import DigitsDataModule, ResumableSampler, SampleKey
from oneshot.faults import NonFiniteGuard, NonFiniteSteps

TINY = dict(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1, memory_format="contiguous")


# --- checkpoint writes -----------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=False)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


WRITER = textwrap.dedent('''
    import sys, torch
    from oneshot.checkpoints import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    for version in range(10**6):
        io.save_checkpoint({"state_dict": {"w": torch.full((4_000_000,), float(version))}}, sys.argv[1])
        print(version, flush=True)
''')


def test_kill_9_during_writes_leaves_a_whole_checkpoint(tmp_path):
    script, path = tmp_path / "writer.py", tmp_path / "last.ckpt"
    script.write_text(WRITER)
    process = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    written = [process.stdout.readline() for _ in range(3)]  # three whole versions, the fourth under way
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and all(written)
    value = float(read_checkpoint(path, require_identity=False)["state_dict"]["w"][0])
    assert value >= 2 and float(read_checkpoint(path, require_identity=False)["state_dict"]["w"][-1]) == value
    assert newest_complete_checkpoint(tmp_path) == path


def test_newest_complete_checkpoint_skips_a_truncated_one(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "epoch=0.ckpt")
    time.sleep(0.01)
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "epoch=0.ckpt"
    assert newest_complete_checkpoint(tmp_path / "missing") is None


# --- bad checkpoint files given to the commands --------------------------------------------------
@pytest.fixture
def bad_files(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[:100])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(3), tensor)
    return {"truncated": (truncated, "truncated checkpoint"), "empty": (empty, "truncated checkpoint"),
            "text": (text, "not a PyTorch checkpoint"), "tensor": (tensor, "not a Lightning checkpoint"),
            "foreign": (whole, "not written by oneshot")}


def _truth(folder):
    import supernets

    space = supernets.get("nb201")
    rows = ["index,arch,acc"] + [f"{i},{space.format(space.from_index(i))},{50 + i % 7}" for i in range(10)]
    (folder / "truth.csv").write_text("\n".join(rows) + "\n")
    return folder / "truth.csv"


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "tensor", "foreign"])
@pytest.mark.parametrize("command", ["search", "discretize", "rank", "retrain"])
def test_bad_checkpoint_is_one_line_naming_the_file(command, kind, bad_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path, message = bad_files[kind]
    if command == "retrain" and kind == "foreign":
        pytest.skip("retrain resumes accept checkpoints without an identity (older retrain runs)")
    argv = {"search": ["search", "--trainer.max_epochs", "1", "--ckpt_path", str(path)],
            "discretize": ["discretize", str(path)],
            "rank": ["rank", str(path), "--archs", "3", "--ground-truth", str(_truth(tmp_path))],
            "retrain": ["retrain", "--arch", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
                        "nor_conv_3x3~1|nor_conv_1x1~2|", "--trainer.max_epochs", "1", "--ckpt_path", str(path)]}[command]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert str(path) in err[0] and message in err[0] and "Traceback" not in err[0]


# --- non-finite steps ------------------------------------------------------------------------------
class _Poison(L.Callback):
    """NaN images in the weight half of the chosen batches (the batch tensors are the step's)."""

    def __init__(self, bad_batches):
        self.bad = set(bad_batches)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx in self.bad:
            batch["train"][0].fill_(float("nan"))


def _fit(model, bad, guard, batches):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=".",
                        callbacks=[guard, _Poison(bad)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    return trainer


def test_a_nan_batch_skips_its_weight_step_and_is_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model, guard = DartsSearch(**TINY), NonFiniteGuard(max_in_row=3)
    seen = {}

    class Snapshot(L.Callback):  # the weights before and after the poisoned batch 1
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                seen["before"] = {k: v.clone() for k, v in pl_module.supernet.state_dict().items()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                seen["after"] = {k: v.clone() for k, v in pl_module.supernet.state_dict().items()}

    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[guard, _Poison({1}), Snapshot()])
    with pytest.warns(UserWarning, match="non-finite gradient; the step is skipped"):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert guard.skipped == 1
    # weights and BatchNorm statistics as before the batch (its architecture step, on clean data, ran)
    assert all(torch.equal(seen["before"][k], seen["after"][k]) for k in seen["before"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    sgd = trainer.optimizers[0]
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in sgd.state.values())


def test_nan_steps_in_a_row_stop_the_run_naming_step_checkpoint_and_causes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model, guard = DartsSearch(**TINY), NonFiniteGuard(max_in_row=2)
    with pytest.raises(NonFiniteSteps) as stop, pytest.warns(UserWarning):
        _fit(model, {1, 2, 3}, guard, batches=5)
    message = str(stop.value)
    assert "2 steps of optimizer 0 in a row" in message and "learning rate" in message
    path = message.split("the last finite state is in ")[1].split(". Usual causes")[0]
    state = torch.load(path, weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# --- the sampler -----------------------------------------------------------------------------------
def test_resumable_sampler_order_ignores_the_process_stream_and_skips_whole_batches():
    data = TensorDataset(torch.arange(20))
    first = ResumableSampler(data, batch_size=4, seed=3)
    first.set_epoch(2)
    torch.manual_seed(123)
    order = list(first)
    torch.manual_seed(456)
    second = ResumableSampler(data, batch_size=4, seed=3)
    second.set_epoch(2)
    second.skip_batches(2)
    assert list(second) == order[8:] and list(second) == order  # the skip holds for one iteration
    first.set_epoch(3)
    assert list(first) != order and sorted(first) == list(range(20))


def test_keyed_samples_are_augmented_alike_whatever_ran_before():
    digits = DigitsDataModule(batch_size=8)
    digits.setup()
    sampler = ResumableSampler(digits.weight_set, 8, seed=1, keyed=True)
    keys = list(sampler)[:4]
    assert all(isinstance(k, SampleKey) for k in keys)
    torch.manual_seed(0)
    a = [digits.weight_set[k][0] for k in keys]
    torch.manual_seed(99)
    torch.rand(1000)
    b = [digits.weight_set[k][0] for k in reversed(keys)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    loader = DataLoader(digits.weight_set, batch_size=4, sampler=ResumableSampler(digits.weight_set, 4, keyed=True))
    assert next(iter(loader))[0].shape == (4, 1, 8, 8)


# --- a corrupt dataset -----------------------------------------------------------------------------
def test_a_corrupt_cifar_folder_is_one_line_naming_the_folder_and_the_fix(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04cut short")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["search", "--data", "oneshot.data.CIFAR10DataModule", "--data.root", str(tmp_path),
              "--trainer.max_epochs", "1", "--model.init_args.space_options", "{C: 4, N: 1}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert "CIFAR-10 under" in err[0] and str(folder) in err[0] and "corrupt or incomplete" in err[0]
    assert "--data.download true" in err[0]


# --- memory ------------------------------------------------------------------------------------------
def test_memory_estimate_scales_with_the_batch_and_leaves_the_module_as_it_was():
    from oneshot.faults import estimate_step_memory

    torch.manual_seed(0)
    model = DartsSearch(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    sgd = torch.optim.SGD(model.supernet.parameters(), lr=0.1, momentum=0.9)
    small, large = (estimate_step_memory(model, (x[:2], y[:2]), n, [sgd]) for n in (4, 8))
    assert large["activations"] == 2 * small["activations"] > 0 and large["state"] == small["state"]
    weights = sum(p.numel() * 4 for p in model.supernet.parameters())
    assert small["state"] == 3 * weights + 2 * sum(p.numel() * 4 for p in model.alphas.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_step_too_large_for_the_memory_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["search", "--trainer.max_epochs", "1", "--model.init_args.space_options", "{C: 4, N: 1}",
              "--memory_check.available_bytes", "1000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert "the weight step needs about" in err[0] and "batch_size" in err[0] and "partial_channels" in err[0]
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained
