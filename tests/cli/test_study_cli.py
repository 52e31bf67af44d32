"""`oneshot study collapse`: two algorithms x one seed end to end, resumable, and bad study files."""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

import supernets
from oneshot.commands import main

TABLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nb201_cifar10.csv"
COMMON = ["--model.init_args.space", "nb201", "--model.init_args.space_options", "{C: 4, N: 1}",
          "--model.init_args.hessian_every", "1", "--model.init_args.hessian_iterations", "3",
          "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _study(tmp_path, **extra):
    study = {"seeds": 1, "common": COMMON,
             "algorithms": {"darts_v1": ["--model", "oneshot.algorithms.DartsSearch"],
                            "darts_minus": ["--model", "oneshot.algorithms.DartsMinusSearch"]}, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_collapse_study_reports_each_algorithm_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["study", "collapse", str(_study(tmp_path)), "--out", "out"]
    if TABLE.is_file():
        args += ["--table", str(TABLE)]
    main(args)
    report = json.loads(Path("out/collapse.json").read_text())
    assert [(r["algorithm"], r["seed"]) for r in report["runs"]] == [("darts_v1", 0), ("darts_minus", 0)]
    space = supernets.get("nb201")
    for run in report["runs"]:
        arch = space.load(os.path.join(run["run_dir"], "arch.json"))
        assert run["arch"] == space.format(arch)
        assert [e for e, _ in run["epochs"]["skip_connect"]] == [0, 1]
        assert len(run["epochs"]["eigenvalue"]) == 2
        if TABLE.is_file():  # a lookup of the exported cell in the NB201 table
            row = next(line for line in TABLE.read_text().splitlines()[1:]
                       if line.split(",")[0] == str(space.index(arch)))
            assert run["table_acc"] == pytest.approx(float(row.split(",")[-1]))
    markdown = Path("out/collapse.md").read_text()
    assert "| darts_minus | 0 |" in markdown and "lookup" in markdown and "not measured here" in markdown
    assert Path("out/collapse.png").stat().st_size > 0 and Path("out/tensorboard/darts_v1_seed0").is_dir()
    first = Path("out/runs/darts_v1/seed_0/study_done.json").read_text()
    capsys.readouterr()
    main(args)  # a rerun skips the finished searches
    assert Path("out/runs/darts_v1/seed_0/study_done.json").read_text() == first
    assert "Trainer.fit" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ({"algorithm": {}}, "unknown section.*algorithm"),
    ({"algorithms": {"x": "--model"}}, "list of arguments"),
])
def test_bad_study_file_is_one_line(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "collapse", str(_study(tmp_path, **extra)), "--out", "out"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)


def test_unknown_algorithm_in_only_names_the_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["study", "collapse", str(_study(tmp_path)), "--only", "dart"])
    assert "accepted: darts_v1, darts_minus" in capsys.readouterr().err
