"""`oneshot oracle`: query-based search on the NB201 table end to end, and one-line input errors."""
import csv
import json
from pathlib import Path

import pytest

import supernets
from oneshot.commands import main

SHARED_TABLE = (Path(__file__).parents[2] / ".." / "shared" / "data" / "nb201_cifar10.csv").resolve()
NB201 = supernets.get("nb201")
KEYS = {"strategy", "params", "space", "table", "column", "budget", "seed", "budget_unit",
        "best_query", "best", "history"}


@pytest.mark.parametrize("strategy", ["evolution", "random"])
def test_search_on_the_nb201_table(strategy, tmp_path, capsys):
    if not SHARED_TABLE.is_file():
        pytest.skip(f"{SHARED_TABLE} is absent")
    main(["oracle", "--strategy", strategy, "--space", "nb201", "--table", str(SHARED_TABLE),
          "--column", "cifar10_valid_acc", "--budget", "60", "--seed", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "result.json").read_text())
    assert set(record) == KEYS
    assert (record["strategy"], record["budget"], record["seed"]) == (strategy, 60, 1)
    assert record["table"] == str(SHARED_TABLE) and record["column"] == "cifar10_valid_acc"
    with open(SHARED_TABLE) as f:
        header = next(csv.reader(f))
    assert list(record["best"]) == ["arch"] + [c for c in header if c != "arch"]  # every column
    values = [q["value"] for q in record["history"]]
    assert len(values) == 60
    assert record["best"]["cifar10_valid_acc"] == max(values) == values[record["best_query"]]
    assert record["best"]["arch"] == record["history"][record["best_query"]]["arch"]
    assert record["best"]["arch"] in capsys.readouterr().out


@pytest.fixture
def small_table(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("arch,acc\n" + "".join(f"{NB201.format(NB201.from_index(i))},{i}\n" for i in range(5)))
    return path


@pytest.mark.parametrize("change, message", [
    ({"--column": "test_acc"}, "no column 'test_acc'; available columns: arch, acc"),
    ({"--table": "missing.csv"}, "missing.csv does not exist; pass --table"),
    ({"--strategy": "annealing"}, "unknown strategy 'annealing'; accepted: evolution, random"),
    ({"--budget": "0"}, "must be at least 1, not 0; pass --budget N"),
    ({"--space": "darts"}, "must be 'darts' strings: check --space"),
    ({"--strategy": "random", "--sample-size": "3"}, "'random' does not take sample_size"),
])
def test_bad_input_is_one_line_naming_the_fix(change, message, small_table, tmp_path, capsys):
    options = {"--strategy": "evolution", "--space": "nb201", "--table": str(small_table),
               "--column": "acc", "--budget": "5", "--out": str(tmp_path / "out"), **change}
    if change.get("--table") == "missing.csv":
        options["--table"] = str(tmp_path / "missing.csv")
    with pytest.raises(SystemExit) as exit_info:
        main(["oracle", *[word for pair in options.items() for word in pair]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
