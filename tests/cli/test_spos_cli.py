"""SPOS from the command line on the embedded digits: a search whose selection is the evolution
gives a loadable checkpoint and architecture, `oneshot discretize --rule evolution` runs on it
under a constraint, and the pipeline carries the architecture into a retraining."""
import json
import os


import supernets
from oneshot.algorithms import load_algorithm
from oneshot.commands import main

EXPERIMENTS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "experiments"))
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SEARCH = ["--config", os.path.join(EXPERIMENTS, "spos_digits_cpu.yaml"), "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
          "--model.init_args.selection_options",
          "{constraints: ['flops<=52000'], population: 4, generations: 2, parents: 2, mutants: 2, crossovers: 2,"
          " bn_mode: recalibrate, bn_batches: 1, bn_batch_size: 64, val_images: 64, val_batch_size: 64}",
          *QUIET]


def test_spos_search_with_evolution_then_discretize(tmp_path, capsys):
    main(["search", *SEARCH, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    run = tmp_path / "spos_digits_cpu" / "version_0"
    record = json.loads((run / "arch.json").read_text())
    space = supernets.get("spos")
    arch = space.load(str(run / "arch.json"))
    assert record["algorithm"] == "SposSearch" and record["selection"]["strategy"] == "evolution"
    history = record["selection"]["scores"]
    assert len(history) == 8 and all(c["macs"] <= 52000 for c in history)
    assert space.format(arch) == max(history, key=lambda c: (c["accuracy"], -c["loss"]))["arch"]
    assert (run / "evolution" / "evolution.png").is_file()  # the search's evolution artifacts
    model = load_algorithm(str(run / "checkpoints" / "last.ckpt"))
    assert model.export() == arch and model.hparams.sampler == "uniform"

    main(["discretize", str(run), "--rule", "evolution", "--constraint", "flops<=50000", "--population", "4",
          "--generations", "2", "--parents", "2", "--mutants", "2", "--crossovers", "2", "--bn-mode", "reset",
          "--bn-batches", "2", "--bn-batch-size", "32", "--val-images", "64", "--val-batch-size", "64"])
    again = json.loads((run / "arch_evolution.json").read_text())
    assert len(again["scores"]) == 8 and all(c["macs"] <= 50000 for c in again["scores"])
    assert again["settings"]["bn_mode"] == "reset" and again["settings"]["data"].endswith("config.yaml")
    assert "wrote" in capsys.readouterr().out


def test_spos_pipeline_search_evolution_retrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    retrain_args = ("--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 1 "
                    "--trainer.enable_progress_bar false --trainer.enable_model_summary false")
    main(["pipeline", "--retrain", os.path.join(EXPERIMENTS, "retrain_spos_digits_cpu.yaml"),
                   "--retrain-args", retrain_args, "--run-dir", str(tmp_path / "run"), *SEARCH])
    run = tmp_path / "run"
    searched = json.loads((run / "search" / "arch.json").read_text())["arch"]
    assert json.loads((run / "arch.json").read_text())["arch"] == searched
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert result["space"] == "spos" and result["arch"] == searched and result["params"] > 0
