"""Resuming a search restores weights, alphas, optimizers, scheduler and epoch, and continues
exactly as the uninterrupted run would have."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from oneshot.algorithms import DartsSearch
from oneshot.data import DigitsDataModule

EPOCHS = 3


class InterruptAt(Callback):
    """Simulate Ctrl-C at the start of an epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _run(model, data, root, callbacks, ckpt_path):
    """Three batches per epoch, last.ckpt in ``root``, optionally resumed from ``ckpt_path``."""
    trainer = L.Trainer(max_epochs=EPOCHS, default_root_dir=root, limit_train_batches=3, limit_val_batches=1,
                        enable_progress_bar=False, enable_model_summary=False, logger=False,
                        callbacks=[ModelCheckpoint(dirpath=root, save_last=True), *callbacks])
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, trainer


def _fit(root, callbacks=(), ckpt_path=None):
    L.seed_everything(2)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1)
    data = DigitsDataModule(batch_size=64)
    return _run(model, data, root, callbacks, ckpt_path)


def test_resume_continues_exactly(tmp_path):
    reference, _ = _fit(str(tmp_path / "full"))
    with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits on Ctrl-C
        _fit(str(tmp_path / "cut"), callbacks=[InterruptAt(2)])
    last = tmp_path / "cut" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1
    # the checkpoint holds both optimizers and the scheduler
    assert len(saved["optimizer_states"]) == 2 and len(saved["lr_schedulers"]) == 1

    resumed, trainer = _fit(str(tmp_path / "cut"), ckpt_path=str(last))
    assert trainer.current_epoch == EPOCHS
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for opt_a, opt_b in zip(reference.optimizers(use_pl_optimizer=False), resumed.optimizers(use_pl_optimizer=False)):
        for state_a, state_b in zip(opt_a.state.values(), opt_b.state.values()):
            for key in state_a:
                assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), key
    assert reference.lr_schedulers().state_dict() == resumed.lr_schedulers().state_dict()


def test_step_interval_cosine_follows_every_training_step(tmp_path):
    """xautodl's NB201 searches evaluate the cosine at epoch + step/len(loader)."""
    import math

    L.seed_everything(0)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                        lr_schedule_interval="step", learning_rate=0.1, learning_rate_min=0.0)
    seen = []

    class RecordLr(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.optimizers()[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path), callbacks=[RecordLr()])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    expected = [0.05 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule_interval"):
        DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, lr_schedule_interval="batch")


# -- retraining ----------------------------------------------------------------------------------
def _retrain(root, callbacks=(), ckpt_path=None):
    """A tiny DARTS-space retrain whose every step draws randomness: drop path (torch), cutout and
    random crops (torch, in the loader), shuffling (the sampler's seed, from torch)."""
    from oneshot.retrain import RetrainModule

    L.seed_everything(0)
    model = RetrainModule("DARTS_V2", network_options={"C": 4, "layers": 3}, num_classes=10, in_channels=1,
                          drop_path_prob=0.3, grad_clip=5.0)
    data = DigitsDataModule(batch_size=64, bilevel=False, cutout=4)
    return _run(model, data, root, callbacks, ckpt_path)


def test_retrain_resume_continues_bit_for_bit(tmp_path):
    reference, _ = _retrain(str(tmp_path / "full"))
    with pytest.raises(SystemExit):  # Ctrl-C at the start of epoch 2
        _retrain(str(tmp_path / "cut"), callbacks=[InterruptAt(2)])
    last = tmp_path / "cut" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)  # RNG states load as plain data
    assert saved["epoch"] == 1
    assert saved["oneshot"] == {"space": "darts", "algorithm": "RetrainModule", "arch": reference.space.format(reference.arch)}
    assert set(saved["rng_states"]) == {"python", "numpy", "torch"}

    resumed, trainer = _retrain(str(tmp_path / "cut"), ckpt_path=str(last))
    assert trainer.current_epoch == EPOCHS
    assert resumed.network.drop_path_prob == pytest.approx(0.3 * 2 / EPOCHS)  # the ramp went on
    assert resumed.test_acc_history[:2] == reference.test_acc_history[:2]  # restored, not re-measured
    reference_state, resumed_state = reference.state_dict(), resumed.state_dict()
    assert list(reference_state) == list(resumed_state)
    for name, a in reference_state.items():
        assert torch.equal(a, resumed_state[name]), name
    assert resumed.test_acc_history == reference.test_acc_history
    assert reference.lr_schedulers().state_dict() == resumed.lr_schedulers().state_dict()
    momentum = [s["momentum_buffer"] for s in reference.optimizers().optimizer.state.values()]
    resumed_momentum = [s["momentum_buffer"] for s in resumed.optimizers().optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, resumed_momentum))
