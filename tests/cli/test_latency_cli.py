"""`oneshot latency`: a tiny table written and loadable with a summary; bad arguments are one
line on stderr with exit status 2, before anything is measured."""
import json

import pytest
import torch

from oneshot.commands import main
from oneshot.latency import LatencyTable

TINY = ["--space-options", json.dumps({"base_widths": [8, 8, 8, 16, 16, 24, 24, 64, 96]}), "--num-classes", "10",
        "--in-channels", "1", "--resolutions", "32", "--kernel-sizes", "3,5", "--expand-ratios", "3",
        "--repeats", "2", "--warmup", "0"]


def test_the_command_writes_a_loadable_table(tmp_path, capsys):
    out = tmp_path / "latency_cpu.json"
    main(["latency", "--space", "ofa-mbv3", *TINY, "--out", str(out)])
    table = LatencyTable.load(out)
    assert table.resolutions == [32] and table.kernel_sizes == [3, 5] and table.num_classes == 10
    assert len(table) == 2 + 5 * 2 * 2
    printed = capsys.readouterr().out
    assert f"wrote {out}: 22 entries" in printed
    assert "largest subnet at 32: predicted" in printed and "smallest subnet at 32: predicted" in printed


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oneshot latency: error: ")
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["--space", "nb201"], "--space nb201: latency tables exist for ofa-mbv3 only"),
    (["--space-options", "{width_mult: 1}"], "--space-options is not JSON"),
    (["--space-options", "[1]"], "--space-options is a JSON object"),
    (["--resolutions", "128,abc"], "--resolutions '128,abc': a comma-separated list of positive integers"),
    (["--repeats", "0"], "--repeats 0 --warmup 5"),
    (["--repets", "3"], "unknown option --repets; did you mean --repeats?"),
    (["--device", "gpu"], "--device gpu: not a torch device"),
])
def test_bad_arguments_are_one_line(argv, expected, tmp_path, capsys):
    out = tmp_path / "table.json"
    assert expected in _error(["latency", *argv, "--out", str(out)], capsys)
    assert not out.exists()


def test_a_missing_out_is_named(capsys):
    assert "--out" in _error(["latency", "--space", "ofa-mbv3"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_gpu_is_named(tmp_path, capsys):
    argv = ["latency", "--device", "cuda", "--out", str(tmp_path / "t.json")]
    assert "no CUDA device is visible here" in _error(argv, capsys)
