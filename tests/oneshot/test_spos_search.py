"""SPOS supernet training (megvii-model/SinglePathOneShot train.py): untouched candidates are not
updated at all, label smoothing and the linear per-iteration lr are the reference's, weight decay
skips vectors, the samplers draw what they promise, and a resumed run continues exactly."""
import random
from collections import Counter

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scipy.stats import chisquare

import supernets
from oneshot.algorithms import SposSearch
from oneshot.data import DigitsDataModule

SPACE = supernets.get("spos")
TOY = {"stem_channels": 8, "stage_channels": [16, 24, 32, 48], "last_channels": 32}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """A fit without a logger writes arch.json into the working directory: keep it out of the repo."""
    monkeypatch.chdir(tmp_path)


def _model(**kwargs):
    L.seed_everything(0)
    return SposSearch(space="spos", space_options=TOY, num_classes=10, in_channels=1,
                      memory_format="contiguous", **kwargs)


class Snapshots(Callback):
    """The supernet's tensors, the momentum buffers and the lr after every training batch."""

    def __init__(self):
        self.weights, self.momentum, self.lrs = [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        optimizer = module.optimizers(use_pl_optimizer=False)
        self.weights.append({n: p.detach().clone() for n, p in module.supernet.named_parameters()})
        names = {id(p): n for n, p in module.supernet.named_parameters()}
        self.momentum.append({names[id(p)]: s["momentum_buffer"].clone() for p, s in optimizer.state.items()
                              if s.get("momentum_buffer") is not None})
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _fit(model, batches, callbacks=(), root=None, epochs=1, ckpt_path=None):
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=batches, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        enable_checkpointing=root is not None,
                        callbacks=[*callbacks, *([ModelCheckpoint(dirpath=root, save_last=True)] if root else [])])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32, paired_batches=False), ckpt_path=ckpt_path)
    return trainer


def test_a_candidate_off_the_path_keeps_its_weights_and_momentum_bit_for_bit(monkeypatch):
    model = _model(selection="best_of_n", selection_samples=1)
    on_path = SPACE.parse(",".join(["3"] + ["0"] * 19))
    off_path = SPACE.parse(",".join(["1"] * 20))
    paths = iter([on_path, off_path, off_path])
    monkeypatch.setattr(model, "sample_architecture", lambda *purpose: next(paths) if purpose[0] == "weights"
                        else on_path)
    snapshots = Snapshots()
    _fit(model, 3, [snapshots])
    block = "features.0.3."  # block 0, the Xception candidate: trained at step 1 only
    names = [n for n in snapshots.weights[0] if n.startswith(block)]
    assert names, list(snapshots.weights[0])[:5]
    for name in names:
        assert torch.equal(snapshots.weights[1][name], snapshots.weights[2][name]), name
        assert torch.equal(snapshots.momentum[0][name], snapshots.momentum[2][name]), name
    untouched = [n for n in snapshots.weights[0] if n.startswith("features.0.2.")]  # never on a path
    assert untouched and not any(n in snapshots.momentum[2] for n in untouched)
    changed = [n for n in names if not torch.equal(snapshots.weights[0][n], snapshots.weights[1][n])]
    assert not changed  # steps 2 and 3 left it alone, and step 1 came before the first snapshot


def test_label_smoothing_is_the_references_formula():
    model = _model()
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    targets = torch.full((6, 10), 0.1 / 10).scatter_(1, y[:, None], 0.9 + 0.1 / 10)
    reference = (-targets * F.log_softmax(logits, 1)).mean(0).sum()  # CrossEntropyLabelSmooth
    torch.testing.assert_close(model.loss(logits, y), reference)


def test_lr_decays_linearly_per_iteration_and_decay_skips_vectors():
    model = _model(selection="best_of_n", selection_samples=1, learning_rate=0.4)
    snapshots = Snapshots()
    _fit(model, 4, [snapshots], epochs=2)
    total = 8
    assert snapshots.lrs == pytest.approx([0.4 * (1 - i / total) for i in range(1, total + 1)])
    decayed, plain = model.optimizers(use_pl_optimizer=False).param_groups
    assert decayed["weight_decay"] == 4e-5 and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.supernet.parameters()))


def test_uniform_sampler_is_uniform_per_block():
    model = _model()
    counts = [Counter() for _ in range(20)]
    for step in range(2000):
        arch = model.sample_architecture("weights", step)
        for i, label in enumerate(arch):
            counts[i][arch[label]] += 1
    for block in counts:
        assert chisquare([block[c] for c in range(4)]).pvalue > 1e-4


def test_flops_bins_sampler_lands_in_its_bin():
    model = SposSearch(space="spos", sampler="flops_bins")  # ImageNet size: the reference's bins
    assert model.bins[0] == (290e6, 300e6) and model.bins[-1] == (350e6, 360e6) and len(model.bins) == 7
    rng = random.Random(0)
    landed = Counter()
    for _ in range(300):
        arch, index = model.sample_in_bin(rng)
        if index is not None:
            low, high = model.bins[index]
            assert low <= model.path_cost(arch) <= high
            landed[index] += 1
    assert sum(landed.values()) >= 280 and len(landed) == 7


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sampler 'bins'"):
        SposSearch(space="spos", sampler="bins")
    with pytest.raises(ValueError, match=r"flops_bins \(360"):
        SposSearch(space="spos", flops_bins=(360e6, 290e6, 10e6))


class InterruptAt(Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_resume_continues_exactly(tmp_path):
    reference = _model(selection="best_of_n", selection_samples=2, sampler="uniform")
    _fit(reference, 3, root=str(tmp_path / "full"), epochs=2)
    with pytest.raises(SystemExit):  # Ctrl-C at the start of the second epoch
        _fit(_model(selection="best_of_n", selection_samples=2), 3, [InterruptAt()], root=str(tmp_path / "cut"),
             epochs=2)
    resumed = _model(selection="best_of_n", selection_samples=2)
    _fit(resumed, 3, root=str(tmp_path / "cut"), epochs=2, ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert reference.selection["arch"] == resumed.selection["arch"]


def test_a_gradient_that_sums_to_zero_is_dropped_as_the_reference_does():
    model = _model()
    weights = list(model.supernet.parameters())
    weights[0].grad = torch.zeros_like(weights[0])
    weights[1].grad = torch.ones_like(weights[1])
    weights[2].grad = None
    model.after_weight_backward()
    assert weights[0].grad is None and weights[1].grad is not None and weights[2].grad is None
