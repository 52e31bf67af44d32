"""Ground truth for ranking: CSV tables, result.json files, the NB201 API, dispatch and the join."""
import csv
import json
import random
import sys
import types
from pathlib import Path

import pytest

import supernets
from oneshot.rank.ground_truth import (GroundTruth, UnmatchedArchitectures, join, load_ground_truth,
                                       load_nb201_api, load_results, load_table)

NB201_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nb201_cifar10.csv"
NB201 = supernets.get("nb201")


def _s(i):
    """Canonical NB201 string of benchmark index i."""
    return NB201.format(NB201.from_index(i))


def _respell(text):
    """A valid but non-canonical spelling: padded, with input digits written '~00', '~01', ..."""
    return "  " + text.replace("~", "~0") + " "


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_result(directory, arch, test_acc, space="nb201", seed=0, **extra):
    directory.mkdir(parents=True, exist_ok=True)
    record = {"test_acc": test_acc, "best_test_acc": test_acc + 1, "params": 1000, "epochs": 1,
              "seed": seed, "space": space, "arch": arch, **extra}
    (directory / "result.json").write_text(json.dumps(record))
    return directory / "result.json"


# ---------------------------------------------------------------------------------------------
# CSV tables and the join


def test_join_matches_respelled_archs_by_canonical_string(tmp_path):
    json_spelling = json.dumps(NB201.from_index(2).to_json())
    table = _write_csv(tmp_path / "t.csv", ["arch", "acc"],
                       [[_respell(_s(0)), "90.5"], [_s(1), "80"], [json_spelling, "70.25"]])
    truth = load_table(table, "nb201")
    assert truth.kind == "table" and truth.column == "acc" and len(truth) == 3
    assert set(truth.values) == {_s(0), _s(1), _s(2)}  # keys are canonical
    assert truth.counts == {_s(0): 1, _s(1): 1, _s(2): 1}
    archs = [NB201.from_index(2), _s(0), _respell(_s(1)), json.dumps(NB201.from_index(0).to_json())]
    assert join(archs, truth, NB201) == [70.25, 90.5, 80.0, 90.5]


def test_unmatched_architectures_lists_count_and_strings(tmp_path):
    truth = load_table(_write_csv(tmp_path / "t.csv", ["arch", "acc"], [[_s(0), "1"]]), NB201)
    wanted = [NB201.from_index(i) for i in range(13)] + [NB201.from_index(5)]  # 12 missing, one twice
    with pytest.raises(UnmatchedArchitectures) as info:
        join(wanted, truth, NB201)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.missing == [_s(i) for i in range(1, 13)]
    message = str(error)
    assert "12 of 13" in message
    assert all(_s(i) in message for i in range(1, 11))
    assert _s(11) not in message and "2 more" in message
    assert str(tmp_path / "t.csv") in message and "acc" in message
    assert "oneshot info --space S --arch A" in message


def test_value_column_is_chosen_when_unique_and_must_be_named_otherwise(tmp_path):
    one = _write_csv(tmp_path / "one.csv", ["index", "arch", "params_m", "FLOPs", "macs_m", "acc"],
                     [[0, _s(0), "0.1", "10", "5", "93.5"], [1, _s(1), "0.2", "20", "6", "91"]])
    truth = load_table(one, NB201)
    assert truth.column == "acc" and truth.values == {_s(0): 93.5, _s(1): 91.0}

    two = _write_csv(tmp_path / "two.csv", ["index", "arch", "params_m", "valid_acc", "test_acc", "note"],
                     [[0, _s(0), "0.1", "90", "93.5", "x"]])
    with pytest.raises(ValueError, match="pass --ground-truth-column NAME") as info:
        load_table(two, NB201)
    assert "valid_acc" in str(info.value) and "test_acc" in str(info.value)
    assert "note" not in str(info.value).split(";")[0]  # text columns are no candidates
    assert load_table(two, NB201, column="valid_acc").values == {_s(0): 90.0}

    with pytest.raises(ValueError, match="no column 'top1'") as info:
        load_table(two, NB201, column="top1")
    assert "valid_acc, test_acc" in str(info.value)
    with pytest.raises(ValueError, match="no arch column 'genotype'"):
        load_table(two, NB201, arch_column="genotype")


def test_duplicate_rows_are_averaged_and_counted(tmp_path):
    table = _write_csv(tmp_path / "t.csv", ["arch", "acc"],
                       [[_s(3), "90"], [_s(4), "50"], [_respell(_s(3)), "92"], [_s(3), "94"]])
    truth = load_table(table, NB201)
    assert truth.values == {_s(3): pytest.approx(92.0), _s(4): 50.0}
    assert truth.counts == {_s(3): 3, _s(4): 1}


def test_bad_rows_name_file_row_and_text(tmp_path):
    table = _write_csv(tmp_path / "bad_arch.csv", ["arch", "acc"],
                       [[_s(0), "1"], ["|conv_9x9~0|+|x|", "2"]])
    with pytest.raises(ValueError) as info:
        load_table(table, NB201)
    message = str(info.value)
    assert "bad_arch.csv" in message and "row 2" in message and "line 3" in message
    assert "|conv_9x9~0|+|x|" in message and "node" in message  # the parse error itself

    for cell, name in (("", "empty"), ("n/a", "text"), ("nan", "nan")):
        table = _write_csv(tmp_path / f"{name}.csv", ["arch", "acc"],
                           [[_s(0), "1"], [_s(1), "2"], [_s(2), cell]])
        with pytest.raises(ValueError, match="row 3") as info:
            load_table(table, NB201, column="acc")
        assert "'acc'" in str(info.value) and f"{name}.csv" in str(info.value)


def test_describe_is_a_json_protocol_record(tmp_path):
    truth = load_table(_write_csv(tmp_path / "t.csv", ["arch", "acc"], [[_s(0), "1"], [_s(1), "2"]]),
                       NB201)
    record = truth.describe()
    assert record == {"kind": "table", "source": str(tmp_path / "t.csv"), "column": "acc", "n": 2}
    assert json.loads(json.dumps(record)) == record
    with pytest.raises(Exception):
        truth.kind = "x"  # frozen


# ---------------------------------------------------------------------------------------------
# result.json files


def test_results_average_seeds_of_one_arch(tmp_path):
    runs = tmp_path / "runs"
    _write_result(runs / "a" / "seed0", _s(7), 90.0, seed=0)
    _write_result(runs / "a" / "seed1", _respell(_s(7)), 92.0, seed=1)
    _write_result(runs / "b" / "deeper" / "seed0", _s(8), 50.0)
    (runs / "b" / "notes.json").write_text("{}")  # only result.json files are read from directories
    truth = load_results([runs])
    assert truth.kind == "results" and truth.column == "test_acc"
    assert truth.values == {_s(7): 91.0, _s(8): 50.0}
    assert truth.counts == {_s(7): 2, _s(8): 1}
    assert load_results(runs, NB201, column="best_test_acc").values == {_s(7): 92.0, _s(8): 51.0}
    # globs, explicit files and duplicates across them (each file counted once)
    truth = load_results([str(runs / "a" / "*" / "result.json"), runs / "a" / "seed0" / "result.json"])
    assert truth.counts == {_s(7): 2}


def test_results_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no result.json found") as info:
        load_results([empty, str(tmp_path / "nothing*")])
    assert str(empty) in str(info.value) and "nothing*" in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_results([tmp_path / "missing_dir"])

    darts = supernets.get("darts")
    mixed = tmp_path / "mixed"
    _write_result(mixed / "a", _s(0), 90.0)
    _write_result(mixed / "b", darts.format(darts.sample(random.Random(0))), 97.0, space="darts")
    with pytest.raises(ValueError, match="mix spaces"):
        load_results([mixed])
    with pytest.raises(ValueError, match="from space 'darts', not 'nb201'"):
        load_results([mixed / "b"], space="nb201")

    no_key = tmp_path / "nokey"
    path = _write_result(no_key, _s(0), 90.0)
    with pytest.raises(ValueError, match="no key 'top1'") as info:
        load_results([no_key], column="top1")
    assert str(path) in str(info.value) and "best_test_acc" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The NB201 API (a fake module standing in for nats_bench)


class _FakeAPI:
    def __init__(self, path, with_arch=True):
        self.path, self.calls = path, []
        self.archs = [_s(10), _s(11), _s(12)]
        if not with_arch:
            self.arch = None

    def __len__(self):
        return 3

    def arch(self, index):
        return _respell(self.archs[index])

    def get_more_info(self, index, dataset, hp="12", is_random=True):
        self.calls.append((index, dataset, hp, is_random))
        return {"test-accuracy": 90.0 + index, "valid-accuracy": 80.0 + index, "train-accuracy": 99.0}


@pytest.fixture
def fake_nats(monkeypatch):
    created = []

    def create(path, search_space, fast_mode=False, verbose=True):
        assert search_space == "tss" and fast_mode and not verbose
        created.append(_FakeAPI(path))
        return created[-1]

    module = types.ModuleType("nats_bench")
    module.create = create
    monkeypatch.setitem(sys.modules, "nats_bench", module)
    return created


def test_nb201_api_via_nats_bench(fake_nats, tmp_path):
    truth = load_nb201_api(tmp_path, dataset="cifar10-valid", metric="valid", hp="200")
    api = fake_nats[0]
    assert api.path == str(tmp_path)
    assert api.calls == [(i, "cifar10-valid", "200", False) for i in range(3)]
    assert truth.kind == "nb201-api" and "cifar10-valid" in truth.column and "valid" in truth.column
    assert truth.values == {_s(10): 80.0, _s(11): 81.0, _s(12): 82.0}
    assert load_nb201_api(tmp_path).values == {_s(10): 90.0, _s(11): 91.0, _s(12): 92.0}
    with pytest.raises(ValueError, match="metric"):
        load_nb201_api(tmp_path, metric="train")


def test_nb201_api_falls_back_to_from_index_without_arch(monkeypatch, tmp_path):
    module = types.ModuleType("nats_bench")
    module.create = lambda path, *a, **k: _FakeAPI(path, with_arch=False)
    monkeypatch.setitem(sys.modules, "nats_bench", module)
    assert list(load_nb201_api(tmp_path).values) == [_s(0), _s(1), _s(2)]


def test_nb201_api_uses_nas_201_api_when_nats_bench_is_absent(monkeypatch, tmp_path):
    module = types.ModuleType("nas_201_api")
    module.NASBench201API = lambda path, verbose=True: _FakeAPI(path)
    monkeypatch.setitem(sys.modules, "nats_bench", None)
    monkeypatch.setitem(sys.modules, "nas_201_api", module)
    assert load_nb201_api(tmp_path).values[_s(12)] == 92.0


def test_nb201_api_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nats_bench", None)
    monkeypatch.setitem(sys.modules, "nas_201_api", None)
    with pytest.raises(ImportError, match="pip install nats_bench") as info:
        load_nb201_api(tmp_path)
    assert "CSV" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Dispatch


def test_load_ground_truth_dispatches_on_the_spec(fake_nats, tmp_path):
    table = _write_csv(tmp_path / "t.csv", ["arch", "acc", "other"], [[_s(0), "1", "2"]])
    truth = load_ground_truth(table, NB201, column="other")
    assert truth.kind == "table" and truth.values == {_s(0): 2.0}

    runs = tmp_path / "runs"
    result = _write_result(runs / "seed0", _s(1), 60.0)
    for spec in (runs, result, str(runs / "*" / "result.json")):
        truth = load_ground_truth(spec, "nb201")
        assert truth.kind == "results" and truth.values == {_s(1): 60.0}
    assert load_ground_truth(runs, NB201, column="best_test_acc").values == {_s(1): 61.0}

    bench = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    bench.write_bytes(b"")
    nats = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    nats.mkdir()
    holder = tmp_path / "benchmarks"
    (holder / "NATS-tss-v1_0-3ffb9-simple").mkdir(parents=True)
    for spec, opened in ((f"nb201-api:{bench}", bench), (bench, bench), (nats, nats),
                         (holder, holder / "NATS-tss-v1_0-3ffb9-simple")):
        truth = load_ground_truth(spec, NB201, dataset="cifar10")
        assert truth.kind == "nb201-api" and len(truth) == 3
        assert fake_nats[-1].path == str(opened)
    assert load_ground_truth(bench, NB201, column="valid").values[_s(10)] == 80.0

    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_ground_truth(tmp_path / "nope.csv", NB201)
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_ground_truth(str(tmp_path / "nothing" / "*.json"), NB201)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_ground_truth(f"nb201-api:{tmp_path / 'missing.pth'}", NB201)
    with pytest.raises(ValueError, match="nb201 space"):
        load_ground_truth(bench, "darts")


# ---------------------------------------------------------------------------------------------
# The shared NB201 CIFAR-10 table


def test_shared_nb201_table_joins_by_benchmark_index():
    if not NB201_CSV.exists():
        pytest.skip(f"{NB201_CSV} is absent")
    with pytest.raises(ValueError, match="cifar10_valid_acc, cifar10_test_acc"):
        load_ground_truth(NB201_CSV, NB201)
    truth = load_ground_truth(NB201_CSV, NB201, column="cifar10_test_acc")
    assert isinstance(truth, GroundTruth) and len(truth) == 15625
    assert set(truth.counts.values()) == {1}
    with open(NB201_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    indices = [0, 1, 1651, 1835, 6111, 15624]
    archs = [NB201.from_index(i) for i in indices]
    assert join(archs, truth, NB201) == [float(rows[i]["cifar10_test_acc"]) for i in indices]
    assert truth.values[_s(1835)] == pytest.approx(54.30, abs=0.01)  # the all-skip cell
    assert truth.values[_s(6111)] == pytest.approx(94.37, abs=0.01)  # the best CIFAR-10 cell
