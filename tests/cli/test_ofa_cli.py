"""OFA from the command line on the embedded digits: `oneshot shrink` runs phases into one run
directory, resumes at the unfinished phase and refuses changed settings; the pipeline ends with
the chosen subnet extracted from the supernet, BN recalibrated and evaluated (no fine-tuning)."""
import json
import os

import pytest
import torch

from oneshot.algorithms import load_algorithm
from oneshot.commands import main
from oneshot.deploy import inherit_network
from oneshot.rank.scoring import fixed_batches
from oneshot.data import DigitsDataModule

EXPERIMENTS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "experiments"))
CONFIG = os.path.join(EXPERIMENTS, "ofa_mbv3_digits_cpu.yaml")
FAST = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.bn_images", "64", "--model.init_args.validation_resolutions", "[32]"]


def write_schedule(path):
    path.write_text("full: {trainer.max_epochs: 1}\nkernel: {trainer.max_epochs: 1}\n"
                    "depth1: {trainer.max_epochs: 1}\n")
    return str(path)


def test_shrink_resumes_at_the_unfinished_phase_and_refuses_changed_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schedule = write_schedule(tmp_path / "schedule.yaml")
    run = tmp_path / "run"
    main(["shrink", "--config", CONFIG, "--schedule", schedule, "--run-dir", str(run), "--phases", "full", *FAST])
    full = run / "full" / "checkpoints" / "last.ckpt"
    stamp = full.stat().st_mtime_ns
    main(["shrink", "--config", CONFIG, "--schedule", schedule, "--run-dir", str(run),
          "--phases", "full,kernel,depth1", *FAST])
    assert full.stat().st_mtime_ns == stamp  # the finished phase was not run again
    record = json.loads((run / "shrink.json").read_text())
    assert [record["phases"][p]["status"] for p in ("full", "kernel", "depth1")] == ["done"] * 3
    depth1 = load_algorithm(str(run / "checkpoints" / "last.ckpt"))  # the run reads as its last phase
    assert depth1.hparams.phase == "depth1" and depth1.hparams.init_from.endswith("kernel/checkpoints/last.ckpt")
    assert depth1.hparams.teacher.endswith("full/checkpoints/last.ckpt")
    with pytest.raises(SystemExit) as stop:
        main(["shrink", "--config", CONFIG, "--schedule", schedule, "--run-dir", str(run),
              "--phases", "full,kernel,depth1", *FAST, "--trainer.limit_train_batches", "3"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):  # a phase after full needs the previous phase's weights
        main(["shrink", "--config", CONFIG, "--phases", "depth1", "--run-dir", str(tmp_path / "other")])


def test_the_ofa_pipeline_extracts_recalibrates_and_evaluates_the_chosen_subnet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("".join(f"{p}: {{trainer.max_epochs: 1}}\n"
                                for p in ("full", "kernel", "depth1", "depth2", "expand1", "expand2")))
    predictor = ("{constraints: ['flops<=600000'], predictor_samples: 8, predictor_epochs: 5, population: 6,"
                 " generations: 2, bn_batches: 1, bn_batch_size: 64, val_images: 64, val_batch_size: 64}")
    run = tmp_path / "run"
    main(["pipeline", "--config", CONFIG, "--schedule", str(schedule), "--run-dir", str(run),
          "--retrain", os.path.join(EXPERIMENTS, "retrain_ofa_mbv3_digits_cpu.yaml"),
          "--retrain-args", "--trainer.max_epochs 0 --trainer.enable_progress_bar false --model.bn_images 64",
          *FAST, "--model.init_args.selection_options", predictor])
    arch = json.loads((run / "arch.json").read_text())
    searched = json.loads((run / "search" / "arch.json").read_text())  # the final phase's selection
    assert searched["selection"]["strategy"] == "predictor" and arch["arch"] == searched["arch"]
    assert searched["selection"]["settings"]["cost"]["macs"] <= 600000
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert result["arch"] == arch["arch"] and result["inherited"]["source"].endswith("last.ckpt")
    assert result["epochs"] == 0 and 0.0 <= result["test_acc"] <= 100.0

    # the inherited network is the supernet's subnet: equal outputs in eval mode
    model = load_algorithm(str(run / "search" / "checkpoints" / "last.ckpt"))
    data = DigitsDataModule()
    data.setup()
    batches = fixed_batches(data.train_set, 64, 64, seed=0)
    network, _ = inherit_network(str(run / "search"), model.space.load(str(run / "arch.json")), batches,
                                 {"base_widths": [8, 8, 8, 16, 16, 24, 24, 64, 96]})
    from oneshot.rank.scoring import recalibrate_batchnorm
    chosen = model.space.load(str(run / "arch.json"))
    recalibrate_batchnorm(model, chosen, batches)
    model.eval(), network.eval()
    x = torch.randn(3, 1, chosen["resolution"], chosen["resolution"])
    with torch.no_grad():
        torch.testing.assert_close(network(x), model.supernet(x, model.space.decisions(chosen)), rtol=1e-4, atol=1e-5)
