"""`oneshot discretize --rule evolution` on a trained supernet: every candidate within the
constraint, the history and artifacts written, a resumed evolution equal to an uninterrupted
one, and bad input named."""
import json

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

import supernets
from oneshot.algorithms import RandomSinglePathSearch
from oneshot.commands.discretize import main
from oneshot.data import DigitsDataModule
from oneshot.selection import evolution as evolution_module

SMALL = ["--population", "6", "--generations", "3", "--parents", "2", "--mutants", "2", "--crossovers", "2",
         "--bn-batches", "3", "--bn-batch-size", "16", "--val-images", "48", "--val-batch-size", "24"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rsps_run")
    L.seed_everything(0)
    model = RandomSinglePathSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                                   selection_samples=2)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        default_root_dir=run, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return run


def _limit():
    """A params limit that about half of the NB201 cells meet at C=4, N=1 on 8x8 digits."""
    space = supernets.get("nb201")
    costs = sorted(c["params"] for c in space.costs([space.from_index(i) for i in range(0, 15625, 97)],
                                                     num_classes=10, input_size=(1, 1, 8, 8), C=4, N=1,
                                                     in_channels=1))
    return costs[len(costs) // 2]


def test_evolution_respects_the_constraint_and_writes_its_artifacts(run, capsys):
    limit = _limit()
    main([str(run), "--rule", "evolution", "--constraint", f"params<={limit}", "--bn-mode", "reset", *SMALL])
    record = json.loads((run / "arch_evolution.json").read_text())
    history = record["scores"]
    assert len(history) == 18 and len({c["arch"] for c in history}) == 18
    assert all(c["params"] <= limit for c in history)
    best = max(history, key=lambda c: (c["accuracy"], -c["loss"]))
    assert record["arch"] == best["arch"]
    settings = record["settings"]
    assert settings["bn_mode"] == "reset" and settings["bn_batches"] == 3 and settings["val_images"] == 48
    assert settings["cost"]["input_size"] == [1, 1, 8, 8] and settings["cost"]["network_options"] == {"C": 4, "N": 1}
    folder = run / "arch_evolution"
    assert (folder / "evolution.png").stat().st_size > 0 and (folder / "evolution_state.json").is_file()
    assert list(folder.glob("events.out.tfevents.*"))
    # the same command again: the saved state is finished, nothing is evaluated again
    main([str(run), "--rule", "evolution", "--constraint", f"params<={limit}", "--bn-mode", "reset", *SMALL])
    assert json.loads((run / "arch_evolution.json").read_text())["scores"] == history


def test_a_resumed_evolution_equals_an_uninterrupted_one(run, tmp_path, monkeypatch):
    arguments = [str(run), "--rule", "evolution", "--bn-mode", "recalibrate", *SMALL]
    main([*arguments, "--out", str(tmp_path / "whole.json")])
    original_step = evolution_module.Evolution.step

    def interrupted(self, on_evaluated=None):
        if self.generation == 2:
            raise KeyboardInterrupt
        return original_step(self, on_evaluated)

    monkeypatch.setattr(evolution_module.Evolution, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*arguments, "--out", str(tmp_path / "resumed.json")])
    monkeypatch.setattr(evolution_module.Evolution, "step", original_step)
    main([*arguments, "--out", str(tmp_path / "resumed.json")])
    whole = json.loads((tmp_path / "whole.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["scores"] == whole["scores"] and resumed["arch"] == whole["arch"]
    with pytest.raises(ValueError, match="other context"):
        main([*arguments[:-1], "7", "--out", str(tmp_path / "resumed.json")])  # val batch size changed


@pytest.mark.parametrize("constraint, message", [("latency<=3", "unknown"), ("params<=1", "smallest cost seen")])
def test_bad_constraints_are_named(run, tmp_path, constraint, message):
    with pytest.raises(ValueError, match=message):
        main([str(run), "--rule", "evolution", "--constraint", constraint, "--out", str(tmp_path / "a.json"), *SMALL])
    assert not (tmp_path / "a.json").exists()


def test_evolution_on_a_darts_supernet_costs_the_evaluation_network(tmp_path):
    """The DARTS space: nodes are the genes, and a candidate is costed as the 20-cell C=36
    network it stands for, not as the 8-cell search supernet."""
    from oneshot.algorithms import DartsSearch
    from oneshot.selection import select

    L.seed_everything(0)
    model = DartsSearch(space="darts", space_options={"C": 4, "layers": 2}, num_classes=10, in_channels=1,
                        memory_format="contiguous")
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    chosen = select("evolution", model, data, population=3, generations=2, parents=2, mutants=1, crossovers=1,
                    bn_mode="train", val_images=32, val_batch_size=32, progress=False)
    space = supernets.get("darts")
    assert len(chosen.scores) == 6 and chosen.settings["cost"]["network_options"] == {}
    first = chosen.scores[0]
    expected = space.cost(space.parse(first["arch"]), num_classes=10, input_size=(1, 1, 8, 8), in_channels=1)
    assert first["params"] == expected["params"] and first["macs"] == expected["macs"]
