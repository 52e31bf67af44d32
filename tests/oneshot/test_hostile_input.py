"""Hostile input, property-based: architecture strings and genotypes of every space, arch JSON,
constraint expressions, ground-truth tables and command-line overrides either give a correct
result or a clean error (a ValueError, KeyError or FileNotFoundError with a one-line message),
never another exception. The default suite runs a few hundred cases in under a minute; the
``slow`` marker runs many more (``pytest -m slow tests/oneshot/test_hostile_input.py``)."""
import csv
import json
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import supernets
from oneshot.rank.ground_truth import load_table
from oneshot.selection.evolution import parse_constraints
from supernets import registry

CLEAN = (ValueError, KeyError, FileNotFoundError)  # what the commands print as one line, exit 2
SPACES = registry.names()
QUICK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMMANDS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
MANY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PUNCTUATION = "|~+,.;:()[]{}'\" -_=rdkeNone0123456789"


def _clean(error: BaseException) -> None:
    assert isinstance(error, CLEAN), f"{type(error).__name__}: {error}"
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    assert message and "\n" not in message.strip() and "Traceback" not in message, message


@st.composite
def mangled(draw, space_name):
    """A valid canonical string of the space with random edits: cuts, insertions, swaps."""
    space = supernets.get(space_name)
    text = space.format(space.sample(random.Random(draw(st.integers(0, 10**6)))))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["cut", "insert", "replace", "duplicate"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        piece = draw(st.text(alphabet=PUNCTUATION, max_size=4))
        text = {"cut": text[:i] + text[j:], "insert": text[:i] + piece + text[i:],
                "replace": text[:i] + piece + text[j:], "duplicate": text[:j] + text[i:j] + text[j:]}[edit]
    return text


def arch_texts(space_name):
    return st.one_of(mangled(space_name), st.text(max_size=80), st.text(alphabet=PUNCTUATION, max_size=80))


def check_parse(space_name, text):
    space = supernets.get(space_name)
    try:
        arch = space.parse(text)
    except Exception as error:  # noqa: BLE001 - the property: only clean errors
        _clean(error)
        return
    assert space.parse(space.format(arch)) == arch  # a result is a real arch of the space


@pytest.mark.parametrize("space_name", SPACES)
@QUICK
@given(data=st.data())
def test_arch_strings_parse_or_fail_cleanly(space_name, data):
    check_parse(space_name, data.draw(arch_texts(space_name)))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.sampled_from(["space", "choices", "arch", "format", "x"]) | st.text(max_size=6),
                                             children, max_size=4), max_leaves=12)


@st.composite
def arch_jsons(draw, space_name):
    """JSON objects near an arch record: real ones with fields removed, retyped or replaced."""
    space = supernets.get(space_name)
    record = space.sample(random.Random(draw(st.integers(0, 10**6)))).to_json()
    if draw(st.booleans()):
        record = {"arch": record, "format": space.format(space.load(json.dumps(record)))}
    for _ in range(draw(st.integers(0, 3))):
        target = record.get("arch", record) if isinstance(record, dict) else record
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            if draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(json_values)
    return json.dumps(draw(st.one_of(st.just(record), json_values)))


@pytest.mark.parametrize("space_name", SPACES)
@QUICK
@given(data=st.data())
def test_arch_json_parses_or_fails_cleanly(space_name, data):
    check_parse(space_name, data.draw(arch_jsons(space_name)))


@QUICK
@given(texts=st.lists(st.one_of(st.text(alphabet="flopsmacparamlatency<>=!.,e+-0123456789 ", max_size=24),
                                st.text(max_size=24)), max_size=3))
def test_constraint_expressions_parse_or_fail_cleanly(texts):
    try:
        constraints = parse_constraints(texts)
    except Exception as error:  # noqa: BLE001
        _clean(error)
        return
    for constraint in constraints:
        again = parse_constraints([str(constraint)])[0]
        assert (again.key, again.op) == (constraint.key, constraint.op)


cells = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 20000),
                  st.text(max_size=8), st.sampled_from(["nan", "", "inf", "-1e400", "93.5"]))


@st.composite
def tables(draw):
    """A CSV of NB201 rows: some columns dropped or renamed, values NaN/empty/text, rows repeated."""
    space = supernets.get("nb201")
    columns = draw(st.lists(st.sampled_from(["index", "arch", "acc", "cifar10_test_acc", "params", "note"]),
                            min_size=1, max_size=5, unique=True))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        arch = space.from_index(draw(st.integers(0, 15624)))
        row = {"index": space.index(arch),
               "arch": draw(st.one_of(st.just(space.format(arch)), mangled("nb201"))),
               "acc": draw(cells), "cifar10_test_acc": draw(cells), "params": draw(cells), "note": draw(cells)}
        rows.extend([row] * draw(st.integers(1, 2)))
    return columns, rows, draw(st.sampled_from([None, "acc", "cifar10_test_acc", "missing"]))


@QUICK
@given(table=tables())
def test_ground_truth_tables_load_or_fail_cleanly(table, tmp_path_factory):
    columns, rows, column = table
    path = tmp_path_factory.mktemp("truth") / "truth.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[c] for c in columns])
    try:
        truth = load_table(path, "nb201", column=column)
    except Exception as error:  # noqa: BLE001
        _clean(error)
        return
    space = supernets.get("nb201")
    for arch, value in truth.values.items():
        assert math.isfinite(value) and space.format(space.parse(arch)) == arch


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                         st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.{}[]:, 0123456789-", max_size=20))
OVERRIDES = ["--trainer.max_epochs", "--model.init_args.learning_rate", "--model.init_args.space",
             "--model.init_args.space_options", "--data.init_args.batch_size", "--data.init_args.train_portion",
             "--model.init_args.arch_learning_rate", "--nonfinite.max_in_row", "--memory_check.action", "--model"]


def _command_fails_cleanly_or_runs(argv, capsys):
    from oneshot.commands import main

    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err[-2000:]
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]


@COMMANDS
@given(pairs=st.lists(st.tuples(st.sampled_from(OVERRIDES), yaml_scalars), min_size=1, max_size=3))
def test_command_line_overrides_parse_or_fail_in_one_line(pairs, capsys):
    argv = ["search", "--print_config"]
    for flag, value in pairs:
        argv += [flag, "" if value is None else str(value)]
    _command_fails_cleanly_or_runs(argv, capsys)


config_documents = st.recursive(yaml_scalars, lambda children: st.lists(children, max_size=3) | st.dictionaries(
    st.sampled_from(["model", "trainer", "data", "init_args", "class_path", "space", "max_epochs", "seed_everything",
                     "learning_rate", "batch_size", "oops"]), children, max_size=4), max_leaves=10)


@COMMANDS
@given(document=config_documents)
def test_config_files_parse_or_fail_in_one_line(document, tmp_path, capsys):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    _command_fails_cleanly_or_runs(["search", "--config", str(path), "--print_config"], capsys)


@pytest.mark.slow
@pytest.mark.parametrize("space_name", SPACES)
@MANY
@given(data=st.data())
def test_many_arch_strings_and_jsons(space_name, data):
    check_parse(space_name, data.draw(st.one_of(arch_texts(space_name), arch_jsons(space_name))))
