"""The family-free base: init_from for staged runs, input-resolution choices, value choices,
and checkpoints of the version before the family split still loading with their meaning."""
import json

import lightning as L
import pytest
import torch
from torch import nn

from oneshot.algorithms import DartsSearch, RandomSinglePathSearch, load_algorithm
from oneshot.algorithms.base import SupernetTraining
from oneshot.algorithms.differentiable import DifferentiableSearch
from oneshot.algorithms.single_path import SinglePathSearch
from oneshot.commands import main
from oneshot.data import DigitsDataModule
from supernets import Supernet

TINY = {"space": "nb201", "space_options": {"C": 4, "N": 1}, "num_classes": 10, "in_channels": 1}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _trainer(tmp_path, epochs=1):
    return L.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                     default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False)


def test_the_families_share_the_base_and_only_differentiable_ones_have_alphas():
    darts, rsps = DartsSearch(**TINY), RandomSinglePathSearch(**TINY, selection_samples=2)
    assert isinstance(darts, DifferentiableSearch) and isinstance(rsps, SinglePathSearch)
    assert isinstance(darts, SupernetTraining) and isinstance(rsps, SupernetTraining)
    assert set(darts.alphas) == set(darts.supernet.choices) and not hasattr(rsps, "alphas")
    assert darts.checkpoint_identity()["choices"] == list(darts.supernet.choices)


def test_init_from_copies_matching_supernet_weights_only_on_a_fresh_start(tmp_path):
    torch.manual_seed(0)
    first = RandomSinglePathSearch(**TINY, selection_samples=2)
    _trainer(tmp_path).fit(first, datamodule=DigitsDataModule(batch_size=32))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    torch.manual_seed(1)
    second = DartsSearch(**TINY, init_from=str(ckpt))
    assert not torch.equal(second.supernet.stem[0].weight, first.supernet.stem[0].weight)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(second, datamodule=DigitsDataModule(batch_size=32))  # on_fit_start only
    loaded = torch.load(ckpt, weights_only=False)["state_dict"]
    assert torch.equal(second.supernet.stem[0].weight, loaded["supernet.stem.0.weight"])
    fresh = DartsSearch(**TINY)
    report = fresh.load_supernet_weights(str(ckpt))
    assert report["kept"] == [] and len(report["copied"]) == len(fresh.supernet.state_dict())
    assert torch.equal(fresh.supernet.stem[0].weight, loaded["supernet.stem.0.weight"])
    with pytest.raises(ValueError, match="no supernet tensor matches"):
        DartsSearch(**{**TINY, "space_options": {"C": 8, "N": 1}, "num_classes": 5}).load_supernet_weights(str(ckpt))


class _ResolutionSupernet(Supernet):
    """A value choice that sets the input resolution, and one that sets a width."""

    resolution_choice = "resolution"

    def __init__(self):
        super().__init__()
        self.choices = {"resolution": (8, 12, 16), "width": (2, 4)}
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x, decisions):
        self.seen = tuple(x.shape[-2:])
        width = self.choices["width"][decisions["width"]]
        return self.conv(x)[:, :width].mean((2, 3))


def test_a_resolution_choice_resizes_the_input_and_value_choices_are_not_edges():
    supernet = _ResolutionSupernet()
    assert supernet.edges == {}  # no cell edges: the cell-space view is empty
    x = torch.randn(2, 1, 8, 8)
    assert supernet.prepare_input(x, {"resolution": 0, "width": 1}) is x
    resized = supernet.prepare_input(x, {"resolution": 2, "width": 1})
    assert resized.shape == (2, 1, 16, 16)
    torch.testing.assert_close(resized.mean(), x.mean(), atol=0.1, rtol=0)
    with pytest.raises(KeyError, match="missing \\['width'\\]"):
        supernet.check_decisions({"resolution": 0})


def _old_rsps_checkpoint(tmp_path):
    """A checkpoint as the version before the split wrote it: zero frozen alphas, two optimizer
    states, architecture hyperparameters, the identity's 'edges' and selection 'rule'."""
    main(["search", "--model", "RandomSinglePathSearch", "--model.init_args.space_options", "{C: 4, N: 1}",
          "--model.init_args.selection_samples", "2", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=False)
    labels = checkpoint["oneshot"].pop("choices")
    checkpoint["oneshot"]["edges"] = labels
    checkpoint["state_dict"].update({f"alphas.{k}": torch.zeros(5) for k in labels})
    checkpoint["optimizer_states"].append({"state": {}, "param_groups": [{"lr": 3e-4, "params": []}]})
    checkpoint["hyper_parameters"].update(arch_learning_rate=3e-4, alpha_init_std=1e-3, hessian_every=0,
                                          selection="rule")
    torch.save(checkpoint, ckpt)
    return ckpt


def test_a_checkpoint_before_the_family_split_loads_and_resumes(tmp_path, capsys):
    ckpt = _old_rsps_checkpoint(tmp_path)
    selected = torch.load(ckpt, weights_only=False)["selection"]["arch"]
    model = load_algorithm(ckpt)
    assert isinstance(model, RandomSinglePathSearch) and model.selection_name == "best_of_n"
    assert model.export().to_json() == selected
    main(["search", "--model", "RandomSinglePathSearch", "--model.init_args.space_options", "{C: 4, N: 1}",
          "--model.init_args.selection_samples", "2", "--trainer.max_epochs", "2",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir",
          str(tmp_path / "resumed"), "--ckpt_path", str(ckpt)])
    arch = json.loads(next((tmp_path / "resumed").rglob("arch.json")).read_text())
    assert arch["algorithm"] == "RandomSinglePathSearch" and arch["selection"]["epoch"] == 1  # selected again
