"""`oneshot pipeline` end to end on the embedded digits: layout, resumption between and within
stages, a finished pipeline left alone, and a retrain config of another space refused early."""
import json
import os
import shutil

import pytest

import oneshot.commands.retrain
import oneshot.commands.search
from oneshot.commands import main

SEARCH_TINY = ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
RETRAIN = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                                       "retrain_nb201_digits_cpu.yaml"))
RETRAIN_TINY = ("--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2 "
                "--trainer.enable_progress_bar false --trainer.enable_model_summary false "
                "--model.network_options '{C: 4, N: 1}'")


def _pipeline(run_dir, *extra):
    main(["pipeline", "--retrain", RETRAIN, "--retrain-args", RETRAIN_TINY, "--run-dir", str(run_dir),
          *SEARCH_TINY, *extra])


@pytest.fixture
def stage_calls(monkeypatch):
    """The argv each stage function received, in order, as (stage, argv)."""
    calls = []
    for stage, module in (("_search", oneshot.commands.search), ("_retrain", oneshot.commands.retrain)):
        original = module.main
        monkeypatch.setattr(module, "main",
                            lambda argv, stage=stage, original=original: (calls.append((stage, argv)),
                                                                          original(argv))[1])
    return calls


def test_pipeline_stages_resume_and_finish(tmp_path, monkeypatch, capsys, stage_calls):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    search_ckpt = run / "search" / "checkpoints" / "last.ckpt"

    _pipeline(run, "--stop-after", "search")
    assert (run / "search" / "arch.json").is_file() and search_ckpt.is_file()
    assert (run / "search" / "config.yaml").is_file()
    assert not (run / "arch.json").exists() and not (run / "retrain").exists()
    assert not os.path.exists("runs")  # nothing outside the run directory
    record = json.loads((run / "pipeline.json").read_text())
    assert record["stages"]["search"]["status"] == "done" and set(record["stages"]) == {"search"}
    search_mtime = search_ckpt.stat().st_mtime_ns

    _pipeline(run, "--stop-after", "discretize")
    arch = json.loads((run / "arch.json").read_text())
    assert arch["arch"] == json.loads((run / "search" / "arch.json").read_text())["arch"]
    assert arch["rule"] == "rule"
    assert not (run / "retrain").exists()

    _pipeline(run)
    assert [stage for stage, _ in stage_calls] == ["_search", "_retrain"]  # the search ran once
    assert search_ckpt.stat().st_mtime_ns == search_mtime
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert {"test_acc", "best_test_acc", "params", "flops", "epochs", "seed", "arch"} <= set(result)
    assert result["arch"] == arch["arch"] and result["space"] == "nb201"
    assert result["network_options"] == {"C": 4, "N": 1}
    for name in ("last.ckpt", "best.ckpt"):
        assert (run / "retrain" / "checkpoints" / name).is_file()
    record = json.loads((run / "pipeline.json").read_text())
    assert [record["stages"][s]["status"] for s in ("search", "discretize", "retrain")] == ["done"] * 3
    assert record["stages"]["retrain"]["result"] == "retrain/result.json"
    assert all(record["stages"][s]["finished"] >= record["stages"][s]["started"] for s in record["stages"])

    # finished: a rerun only prints the result
    retrain_ckpt = run / "retrain" / "checkpoints" / "last.ckpt"
    retrain_mtime = retrain_ckpt.stat().st_mtime_ns
    capsys.readouterr()
    _pipeline(run)
    assert len(stage_calls) == 2 and retrain_ckpt.stat().st_mtime_ns == retrain_mtime
    assert "finished" in capsys.readouterr().out

    # an interrupted retraining resumes from its last checkpoint; a lost arch.json is rederived
    (run / "retrain" / "result.json").unlink()
    (run / "arch.json").unlink()
    record["stages"]["retrain"]["status"] = "running"
    (run / "pipeline.json").write_text(json.dumps(record))
    _pipeline(run)
    stage, argv = stage_calls[-1]
    assert stage == "_retrain" and argv[argv.index("--ckpt_path") + 1] == str(retrain_ckpt)
    assert json.loads((run / "arch.json").read_text())["arch"] == arch["arch"]
    assert json.loads((run / "retrain" / "result.json").read_text())["test_acc"] == result["test_acc"]

    # an interrupted search resumes from its last checkpoint (no later stage has started)
    (run / "search" / "arch.json").unlink()
    (run / "arch.json").unlink()
    shutil.rmtree(run / "retrain")
    record = json.loads((run / "pipeline.json").read_text())
    record["stages"] = {"search": {**record["stages"]["search"], "status": "running"}}
    (run / "pipeline.json").write_text(json.dumps(record))
    _pipeline(run, "--stop-after", "search")
    stage, argv = stage_calls[-1]
    assert stage == "_search" and argv[argv.index("--ckpt_path") + 1] == str(search_ckpt)
    assert (run / "search" / "arch.json").is_file()

    # settings of a started stage may not change
    with pytest.raises(SystemExit):
        main(["pipeline", "--retrain", RETRAIN, "--retrain-args", RETRAIN_TINY, "--run-dir", str(run),
              *SEARCH_TINY[:-2]])
    assert "search stage was started with other settings" in capsys.readouterr().err


def test_retrain_config_of_another_space_fails_before_search(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--retrain", RETRAIN, "--run-dir", "run", "--model.init_args.space", "darts",
              "--model.init_args.space_options", "{C: 4, layers: 3}", "--trainer.max_epochs", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "space 'darts'" in err and "model.space 'nb201'" in err
    assert not os.path.exists("run") and not os.path.exists("runs")


def test_default_run_dir_is_the_next_version(tmp_path):
    from oneshot.commands.pipeline import default_run_dir

    (tmp_path / "darts_v2_cifar10" / "version_0").mkdir(parents=True)
    assert default_run_dir(["experiments/darts_v2_cifar10.yaml"], root=str(tmp_path)) == \
        tmp_path / "darts_v2_cifar10" / "version_1"
    assert default_run_dir([], root=str(tmp_path)).name == "version_0"
