"""A mistyped option or a bad value is one line on stderr with the closest accepted option, never
the usage nor jsonargparse's dump of Union subtypes; ``--help`` and ``--print_config`` still print
in full. Every case fails while parsing, before anything is trained or read."""
import os

import pytest

from oneshot.commands import main
from oneshot.commands.parsing import OneLineArgumentParser, closest


def _error(argv, capsys):
    """The one stderr line of a command that must fail with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith(f"oneshot {argv[0]}: error: ")
    assert "usage" not in line and "Union" not in line and "NestedArg" not in line
    return line


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not os.path.exists(tmp_path / "runs")  # nothing was trained


@pytest.mark.parametrize("argv, expected", [
    (["--model.learning_rat", "0.1"],
     "unknown option --model.learning_rat for DartsSearch; did you mean --model.learning_rate? "
     "(oneshot search --help lists every option)"),
    (["--model.init_args.learning_rat", "0.1"], "did you mean --model.init_args.learning_rate?"),
    (["--model", "GdasSearch", "--model.tau_ma", "3"], "did you mean --model.tau_max?"),
    (["--model.tau_max", "3"], "GdasSearch takes --model.tau_max (choose it with --model GdasSearch)"),
    (["--data", "CIFAR10DataModule", "--data.normalisation", "nb201"], "did you mean --data.normalization?"),
    (["--data.batch_siz", "8"], "unknown option --data.batch_siz for DigitsDataModule; did you mean --data.batch_size?"),
    (["--trainer.max_epoch", "3"],  # no abbreviations in LightningCLI commands
     "unknown option --trainer.max_epoch; did you mean --trainer.max_epochs? "
     "(oneshot search --help lists every option)"),
    (["--trainr.max_epochs", "3"], "did you mean --trainer.max_epochs?"),
    (["--ckpt_pth", "last.ckpt"], "unknown option --ckpt_pth; did you mean --ckpt_path?"),
    (["--model", "GdasSerch"], "unknown class --model GdasSerch; did you mean --model GdasSearch?"),
    (["--trainer.max_epochs", "abc"], "invalid value 'abc' for --trainer.max_epochs: expected int or None"),
    (["--model.learning_rate", "abc"], "invalid value 'abc' for --model.learning_rate: expected float"),
])
def test_search(argv, expected, capsys):
    assert expected in _error(["search", *argv], capsys)


def test_search_config_keys(tmp_path, capsys):
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text("trainer:\n  max_epoch: 3\n")
    assert ("unknown key trainer.max_epoch in the config; did you mean trainer.max_epochs?"
            in _error(["search", "--config", str(trainer)], capsys))
    model = tmp_path / "model.yaml"
    model.write_text("model:\n  class_path: oneshot.algorithms.GdasSearch\n  init_args:\n    tau_ma: 3\n")
    assert ("unknown key model.tau_ma for GdasSearch in the config; did you mean model.tau_max?"
            in _error(["search", "--config", str(model)], capsys))
    chosen = tmp_path / "gdas.yaml"  # the class comes from the config, the typo from the command line
    chosen.write_text("model: GdasSearch\n")
    assert "did you mean --model.tau_max?" in _error(["search", "--config", str(chosen), "--model.tau_ma", "3"],
                                                     capsys)


def test_help_and_print_config_print_in_full(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert len(out.splitlines()) > 80 and "--trainer.max_epochs" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--model", "GdasSearch", "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: oneshot.algorithms.GdasSearch" in out and "tau_max" in out


@pytest.mark.parametrize("argv, expected", [
    (["--genotype", "DARTS_V2", "--model.lerning_rate", "0.1"],
     "unknown option --model.lerning_rate; did you mean --model.learning_rate? "
     "(oneshot retrain --help lists every option)"),
    (["--genotype", "DARTS_V2", "--data.batch_siz", "8"], "did you mean --data.batch_size?"),
    (["--genotype", "DARTS_V2", "--data.batch_size", "x"], "invalid value 'x' for --data.batch_size: expected int"),
])
def test_retrain(argv, expected, capsys):
    assert expected in _error(["retrain", *argv], capsys)


def test_discretize(capsys):
    # the typo is found before the run directory is read
    assert _error(["discretize", "no/such/run", "--sampels", "3"], capsys) == (
        "oneshot discretize: error: unknown option --sampels; did you mean --samples? "
        "(oneshot discretize --help lists every option)")
    assert "invalid int value: 'abc'" in _error(["discretize", "no/such/run", "--samples", "abc"], capsys)
    # argparse's abbreviations still work: --sample is --samples, so the missing run is what fails
    assert "no/such/run" in _error(["discretize", "no/such/run", "--sample", "3"], capsys)


@pytest.mark.parametrize("argv, expected", [
    (["--spcae", "nb201", "--index", "1"], "unknown option --spcae; did you mean --space?"),  # not "--space is required"
    (["--space", "nb201", "--index", "1", "--ouut", "x.csv"], "unknown option --ouut; did you mean --out?"),
    (["--space", "nb201", "--genotyp", "DARTS_V2"], "--space darts"),  # an abbreviation, then the real error
])
def test_info(argv, expected, capsys):
    assert expected in _error(["info", *argv], capsys)


def test_rank(capsys):
    assert _error(["rank", "no/such/run", "--bn-imgs", "100"], capsys) == (
        "oneshot rank: error: unknown option --bn-imgs; did you mean --bn-images? "
        "(oneshot rank --help lists every option)")
    assert "unknown options --sead (did you mean --seed?), --ground-trth (did you mean --ground-truth?)" in _error(
        ["rank", "no/such/run", "--seed", "-1", "--sead", "3", "--ground-trth", "x.csv"], capsys)


def test_argparse_parser_directly():
    parser = OneLineArgumentParser(prog="oneshot demo")
    parser.add_argument("--space", required=True)
    parser.add_argument("--samples", type=int)
    assert parser.parse_args(["--space", "x", "--sam", "3"]).samples == 3  # abbreviation kept
    with pytest.raises(ValueError, match=r"^unknown option --spcae; did you mean --space\? "
                                         r"\(oneshot demo --help lists every option\)$"):
        parser.parse_args(["--spcae", "x"])
    with pytest.raises(ValueError, match=r"^unexpected argument extra "):
        parser.parse_args(["--space", "x", "extra"])


def test_closest():
    options = ["--trainer.max_epochs", "--trainer.max_steps", "--ckpt_path", "--model.learning_rate"]
    assert closest("--trainer.max_epoch", options) == "--trainer.max_epochs"
    assert closest("--trainr.max_epochs", options) == "--trainer.max_epochs"
    assert closest("--ckpt_pth", options) == "--ckpt_path"
    assert closest("--trainer.gpus", options) is None
