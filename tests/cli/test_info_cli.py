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


SPOS_README = "2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3"


def test_spos_arch_at_imagenet_size(capsys):
    """Without --num-classes the space's own default: 1000 classes at 224x224 for SPOS."""
    main(["info", "--space", "spos", "--arch", SPOS_README])
    out = capsys.readouterr().out
    assert f"arch:    {SPOS_README}" in out
    assert "3,558,464" in out  # README: 3.5M
    assert "322.92 M multiply-adds" in out  # README: 323M FLOPs (multiply-adds)
    main(["info", "--space", "spos", "--arch", f"({SPOS_README.replace(',', ', ')})", "--num-classes", "10"])
    assert "2,544,704" in capsys.readouterr().out  # 1024 x 990 fewer classifier weights


def test_spos_channels_arch(capsys):
    main(["info", "--space", "spos-channels", "--arch", SPOS_README + ";" + ",".join("4" * 20)])
    out = capsys.readouterr().out  # scale 1.0 everywhere: the block-only network
    assert "3,558,464" in out and "322.92 M multiply-adds" in out


@pytest.mark.parametrize("argv, message", [
    (["--space", "spos", "--all"], "space 'spos' is too large to enumerate (4^20 architectures): "
                                   "--all lists enumerable spaces only"),
    (["--space", "spos", "--arch", "2,1"], "has 2 block choices, expected 20"),
    (["--space", "spos", "--arch", SPOS_README, "--C", "36"], "unknown option(s) C for space 'spos'"),
    (["--space", "nb201", "--arch", "|foo~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "unknown op 'foo'"),
    (["--space", "nb201", "--arch", "|none~0|+|none~0|"], "separated by '+', not 3"),
    (["--space", "nb201", "--genotype", "DARTS_V2"], "--space darts"),
    (["--space", "darts", "--arch", BEST], "use --space nb201"),
    (["--space", "nb999", "--index", "1"], "accepted: darts, enas-macro, enas-micro, nb201, ofa-mbv3, spos"),
    (["--space", "nb201", "--index", "15625"], "15624"),
])
def test_bad_input_is_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_kernels_says_which_path_and_why(capsys):
    from ops import kernels

    main(["info", "--kernels"])
    out = capsys.readouterr().out
    status = kernels.status()
    assert out.startswith(f"mixed-op kernels: {status.path}")
    assert f"why: {status.reason}" in out
    assert "ONESHOT_KERNELS=reference" in out


def test_kernels_under_the_reference_switch(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, ONESHOT_KERNELS="reference")
    done = subprocess.run([sys.executable, "-m", "oneshot", "info", "--kernels"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mixed-op kernels: reference")
    assert "ONESHOT_KERNELS=reference: the library is not loaded" in done.stdout


def test_info_without_space_or_kernels_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info"])
    assert exit_info.value.code == 2
    assert "--space is required (or --kernels)" in capsys.readouterr().err
