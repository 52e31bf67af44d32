"""RSPS: no architecture parameters, one sampled path per weight step, best-of-N at the end, CLI run."""
import json
import os
from collections import defaultdict

import lightning as L
import pytest
import torch

import supernets
from oneshot.algorithms.gdas import GdasSearch
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.commands import main
from oneshot.data import DigitsDataModule
from ops.mixed import MixedOp

TINY = ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1",
        "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without a logger, Lightning's log_dir (where arch.json goes) is the cwd


def _fit(model, epochs=1, **trainer_options):
    options = dict(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**{**options, **trainer_options})
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    return trainer


def _model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1, **kwargs)


@pytest.mark.parametrize("cls", [GdasSearch, RandomSinglePathSearch])
def test_weight_step_runs_one_candidate_per_edge(cls):
    model = _model(cls, selection_samples=2) if cls is RandomSinglePathSearch else _model(cls)
    mixed_ops = [(name, m) for name, m in model.supernet.named_modules() if isinstance(m, MixedOp)]
    assert len(mixed_ops) == 18  # 3 stages x N=1 search cell x 6 edges
    steps = []
    original = model.weight_step

    def counted(batch):
        calls = defaultdict(list)
        handles = [op.register_forward_hook(lambda *_, n=name, k=k: calls[n].append(k))
                   for name, m in mixed_ops for k, op in enumerate(m.ops)]
        try:
            return original(batch)
        finally:
            for h in handles:
                h.remove()
            steps.append(dict(calls))

    model.weight_step = counted
    _fit(model)
    assert len(steps) == 2
    for calls in steps:
        assert sorted(calls) == sorted(name for name, _ in mixed_ops)
        assert all(len(ks) == 1 for ks in calls.values())  # one candidate ran, once
        by_edge = defaultdict(set)  # cells with the same edge label ran the same candidate
        for name, (k,) in calls.items():
            by_edge[name.rsplit(".", 1)[-1]].add(k)
        assert all(len(ks) == 1 for ks in by_edge.values()), by_edge


def test_single_path_has_no_architecture_parameters_and_one_optimizer():
    model = _model(RandomSinglePathSearch, selection_samples=3)
    trainer = _fit(model)
    assert not hasattr(model, "alphas") and not hasattr(model, "arch_weights")
    assert not any(name.startswith("alphas") for name in model.state_dict())
    assert len(trainer.optimizers) == 1 and isinstance(trainer.optimizers[0], torch.optim.SGD)
    with pytest.raises(ValueError, match="no architecture distribution"):
        _model(RandomSinglePathSearch, selection="rule")


def test_samples_are_deterministic_and_vary_with_the_step(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    model = _model(RandomSinglePathSearch)
    torch.manual_seed(1)
    a = model.sample_architecture("weights", 7)
    torch.manual_seed(2)
    assert model.sample_architecture("weights", 7) == a
    assert len({model.sample_architecture("weights", s) for s in range(20)}) > 10
    assert len({model.sample_architecture("validation", 0, b) for b in range(20)}) > 10


def test_export_before_selection_is_an_error():
    with pytest.raises(RuntimeError, match="selection"):
        _model(RandomSinglePathSearch).export()


def test_selection_runs_at_the_last_validation_and_is_checkpointed():
    model = _model(RandomSinglePathSearch, selection_samples=6, selection_batches=2)
    _fit(model, epochs=2)
    selection = model.selection
    assert selection["epoch"] == 1 and selection["num_samples"] == 6 and len(selection["scores"]) == 6
    best = max(selection["scores"], key=lambda s: (s[1], -s[2]))
    assert model.space.format(model.export()) == best[0]
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    restored = _model(RandomSinglePathSearch)
    restored.on_load_checkpoint(checkpoint)
    assert restored.export() == model.export()


def test_selection_without_validation_runs_at_train_end():
    model = _model(RandomSinglePathSearch, selection_samples=4)
    _fit(model, epochs=1, limit_val_batches=0)
    assert model.selection is not None and len(model.selection["scores"]) == 4
    assert json.load(open("arch.json"))["arch"] == model.space.format(model.export())  # written at train end


def test_search_cli_end_to_end(tmp_path, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "rsps_nb201_digits_cpu.yaml")
    main(["search", "--config", config, "--trainer.max_epochs", "2", *TINY,
          "--model.init_args.selection_samples", "8"])
    run = tmp_path / "runs" / "rsps_nb201_digits_cpu" / "version_0"
    record = json.load(open(run / "arch.json"))
    scores = record["selection"]["scores"]
    assert len(scores) == 8 and record["algorithm"] == "RandomSinglePathSearch"
    assert record["arch"] == max(scores, key=lambda s: (s[1], -s[2]))[0]
    space = supernets.get("nb201")
    arch = space.load(str(run / "arch.json"))
    model = RandomSinglePathSearch.load_from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    assert model.export() == arch  # the last checkpoint holds the selection
    main(["info", "--space", "nb201", "--arch", str(run / "arch.json")])
    assert f"index:   {space.index(arch)}" in capsys.readouterr().out
