"""`oneshot info`: benchmark index, parameters and FLOPs; the whole-space table; clear errors."""
import csv
import random

import pytest

import supernets
from oneshot.commands import main

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def test_nb201_arch_reports_index_params_flops(capsys):
    main(["info", "--space", "nb201", "--arch", BEST])
    out = capsys.readouterr().out
    assert "index:   6111" in out
    assert "1,073,466" in out  # the benchmark's parameter count of index 6111 (1.073466 M)
    assert "153.27 M multiply-adds" in out


def test_darts_genotype_at_evaluation_size(capsys):
    main(["info", "--space", "darts", "--genotype", "DARTS_V2"])
    out = capsys.readouterr().out
    assert "3,349,342" in out  # 3.3M as published, auxiliary tower excluded


def test_whole_space_table_matches_full_builds(tmp_path):
    out = tmp_path / "archs.csv"
    main(["info", "--space", "nb201", "--all", "--out", str(out)])
    rows = list(csv.DictReader(open(out)))
    space = supernets.get("nb201")
    assert len(rows) == 15625
    assert [int(r["index"]) for r in rows[:5]] == [0, 1, 2, 3, 4]
    for row in random.Random(0).sample(rows, 8):  # the edge-additive costs equal a full build
        arch = space.from_index(int(row["index"]))
        assert row["arch"] == space.format(arch)
        cost = space.cost(arch)
        assert int(row["params"]) == cost["params"] and int(row["flops_macs"]) == int(cost["macs"])


@pytest.mark.parametrize("argv, message", [
    (["--space", "nb201", "--arch", "|foo~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "unknown op 'foo'"),
    (["--space", "nb201", "--arch", "|none~0|+|none~0|"], "separated by '+', not 3"),
    (["--space", "nb201", "--genotype", "DARTS_V2"], "--space darts"),
    (["--space", "darts", "--arch", BEST], "use --space nb201"),
    (["--space", "nb999", "--index", "1"], "accepted: darts, nb201"),
    (["--space", "nb201", "--index", "15625"], "15624"),
])
def test_bad_input_is_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
