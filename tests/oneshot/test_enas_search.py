"""ENAS search: the controller phase trains the controller on validation rewards, a resumed run
continues exactly (weights, controller, its Adam and baseline), the micro and macro spaces train,
and a CLI search ends with a loadable checkpoint and arch.json."""
import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from oneshot.algorithms import EnasSearch, load_algorithm
from oneshot.commands import main
from oneshot.data import DigitsDataModule

TINY = {"space": "nb201", "space_options": {"C": 4, "N": 1}, "num_classes": 10, "in_channels": 1,
        "lstm_size": 16, "lstm_layers": 2, "lstm_bias": True, "tanh_constant": 2.5, "temperature": 5.0,
        "num_aggregate": 2, "train_steps": 2, "selection_samples": 3}


class InterruptAt(Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def _fit(root, callbacks=(), ckpt_path=None, **kwargs):
    L.seed_everything(0)
    model = EnasSearch(**{**TINY, **kwargs})
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=2, logger=False,
                        default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=root, save_last=True), *callbacks])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return model


def test_the_controller_learns_each_epoch_and_a_resumed_run_continues_exactly(tmp_path):
    reference = _fit(str(tmp_path / "full"))
    assert reference.controller_epoch == 1 and reference.reinforce.baseline != 0.0
    fresh = EnasSearch(**TINY)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.controller.parameters(), reference.controller.parameters()))
    with pytest.raises(SystemExit):
        _fit(str(tmp_path / "cut"), [InterruptAt()])
    saved = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)
    assert saved["enas"]["controller_epoch"] == 0 and len(saved["optimizer_states"]) == 2
    resumed = _fit(str(tmp_path / "cut"), ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.reinforce.baseline == reference.reinforce.baseline
    assert resumed.selection["arch"] == reference.selection["arch"]
    loaded = load_algorithm(str(tmp_path / "cut" / "last.ckpt"))
    assert loaded.export() == resumed.export()


@pytest.mark.parametrize("space, options, settings", [
    ("enas-micro", {"C": 4, "layers": 3}, {"tanh_constant": 1.1, "op_tanh_reduce": 2.5}),
    ("enas-macro", {"C": 4, "layers": 6}, {"tanh_constant": 1.5, "skip_weight": 0.8})])
def test_enas_trains_on_its_own_spaces(tmp_path, space, options, settings):
    model = _fit(str(tmp_path), space=space, space_options=options, lstm_size=16, lstm_layers=1, lstm_bias=False,
                 temperature=None, **settings)
    assert model.controller.kind == space.split("-")[1] and model.selection["strategy"] == "controller"
    assert model.space.load(model.space.format(model.export())) == model.export()


def test_a_space_the_controller_cannot_serve_is_named():
    with pytest.raises(ValueError, match="structured choices"):
        EnasSearch(space="darts", space_options={"C": 4, "layers": 2}, num_classes=10, in_channels=1)


def test_cli_enas_search_on_the_embedded_data(tmp_path):
    config = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "enas_nb201_digits_cpu.yaml")
    main(["search", "--config", config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", "--model.init_args.train_steps", "1",
          "--model.init_args.num_aggregate", "2", "--model.init_args.selection_samples", "4",
          "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    run = tmp_path / "enas_nb201_digits_cpu" / "version_0"
    record = json.loads((run / "arch.json").read_text())
    assert record["algorithm"] == "EnasSearch" and len(record["selection"]["scores"]) == 4
    model = load_algorithm(str(run / "checkpoints" / "last.ckpt"))
    assert model.space.format(model.export()) == record["arch"]


def test_the_micro_search_child_adds_its_auxiliary_loss():
    """micro_child.py trains the search child on loss + 0.4 * aux loss (--child_use_aux_heads)."""
    torch.manual_seed(0)
    model = EnasSearch(space="enas-micro", space_options={"C": 4, "layers": 3, "auxiliary": True},
                       num_classes=10, in_channels=3, memory_format="contiguous", auxiliary_weight=0.4)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    decisions = model.space.decisions(model.space.sample())
    model.train()
    torch.manual_seed(1)
    loss, _ = model.loss_and_accuracy((x, y), decisions)
    torch.manual_seed(1)
    logits, aux = model.supernet(x, decisions)
    expected = model.loss(logits, y) + 0.4 * model.loss(aux, y)
    torch.testing.assert_close(loss, expected)


# `oneshot search` with ENAS whose ranks record their controller at the end (Lightning's DDP
# launcher starts rank 1 by running this same script again)
RECORDING_ENAS = """
import sys
import torch
import torch.distributed as dist
from oneshot.algorithms.enas import EnasSearch
from oneshot.commands import main

original = EnasSearch.on_train_end

def recording(self):
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else "none"
    state = torch.cat([p.detach().flatten() for p in self.controller.parameters()])
    with open(f"controller.rank{rank}.txt", "w") as f:
        f.write(" ".join(f"{v:.10e}" for v in state.tolist()) + f"\\nbaseline {self.reinforce.baseline!r}\\n")
    return original(self)

EnasSearch.on_train_end = recording
main(["search", *sys.argv[1:]])
"""


def test_two_process_ddp_keeps_the_controllers_identical(tmp_path):
    import subprocess
    import sys

    config = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                                          "enas_nb201_digits_cpu.yaml"))
    (tmp_path / "recording_enas.py").write_text(RECORDING_ENAS)
    command = [sys.executable, str(tmp_path / "recording_enas.py"), "--config", config,
               "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
               "--model.init_args.train_steps", "2", "--model.init_args.num_aggregate", "2",
               "--model.init_args.selection_samples", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp_find_unused_parameters_true",
               "--trainer.devices", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / f"controller.rank{r}.txt").read_text() for r in (0, 1)]
    assert ranks[0] == ranks[1] and "baseline 0.0\n" not in ranks[0]
