"""Latency lookup tables: a tiny table measures, saves and loads; a subnet's prediction is the sum
of its parts; the block input sizes are the network's; a table for something else is refused."""
import json
import random
import re

import pytest
import torch

import supernets
from oneshot.latency import LatencyTable, block_key, describe_device, measure_latency_table, stage_input_sizes
from supernets.ofa_mbv3 import (RESOLUTION, OfaMobileNetV3, depth_label, expand_label, kernel_label,
                                space_choices)

TINY_WIDTHS = [8, 8, 8, 16, 16, 24, 24, 64, 96]
SPACE = supernets.get("ofa-mbv3")


@pytest.fixture(scope="module")
def table():
    return measure_latency_table({"base_widths": TINY_WIDTHS, "resolutions": [32, 40, 8]}, 10, 1, [32, 40],
                                 [3, 5], [3, 4], "cpu", repeats=2, warmup=0)


def _choices(kernels=(3, 5), expands=(3, 4), resolutions=(32, 40)):
    return {**space_choices(kernels, expands), RESOLUTION: tuple(resolutions)}


def test_a_table_saves_loads_and_records_its_device(table, tmp_path):
    assert len(table) == 2 * (2 + 5 * 2 * 2 * 2)  # per resolution: stem, head, 5 stages x first/rest x k x e
    assert table.network_options == {"base_widths": TINY_WIDTHS}  # resolutions shape no block
    path = tmp_path / "table.json"
    table.save(path)
    record = json.loads(path.read_text())
    assert record["widths"] == TINY_WIDTHS and record["space"] == "ofa-mbv3" and record["unit"] == "ms"
    assert record["device"]["description"] == describe_device("cpu") and record["device"]["torch"] == torch.__version__
    assert {"threads", "date", "repeats"} <= set(record["device"])
    loaded = LatencyTable.load(path)
    assert loaded == table and loaded.path == str(path)


def test_a_prediction_is_the_sum_of_its_parts(table):
    arch = SPACE.sample(random.Random(0), _choices())
    r = arch[RESOLUTION]
    expected = table.fixed[r]["stem"] + table.fixed[r]["head"]
    for s in range(1, 6):
        for b in range(1, arch[depth_label(s)] + 1):
            expected += table.blocks[r][block_key(s, b, arch[kernel_label(s, b)], arch[expand_label(s, b)])]
    assert table.predict(arch) == pytest.approx(expected)
    assert len(table.parts(arch)) == 2 + sum(arch[depth_label(s)] for s in range(1, 6))
    assert all(v > 0 for v in table.parts(arch).values())
    with pytest.raises(ValueError, match="has no resolution 48"):
        table.predict({**dict(arch), RESOLUTION: 48})
    with pytest.raises(ValueError, match="has no block stage1.first.k7"):
        table.predict({**dict(arch), kernel_label(1, 1): 7})


def test_block_input_sizes_are_the_networks():
    arch = SPACE.largest(_choices(resolutions=(40,)))
    network = OfaMobileNetV3(arch, 10, 1, base_widths=TINY_WIDTHS).eval()
    seen = []
    hooks = [block.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[-1]))
             for block in network.blocks]
    with torch.no_grad():
        network(torch.randn(1, 1, 40, 40))
    for hook in hooks:
        hook.remove()
    expected = [size for first, rest in stage_input_sizes(40) for size in (first, rest, rest, rest)]
    assert seen == expected  # 40 -> 20 -> 10 -> 5 -> 3 -> 3 -> 2


def test_check_names_what_differs(table):
    table.check("ofa-mbv3", {"base_widths": TINY_WIDTHS, "dropout": 0.1}, describe_device("cpu"), 10, 1, _choices())
    cases = [
        (("nb201", {"base_widths": TINY_WIDTHS}), {}, "is for the ofa-mbv3 space, not nb201"),
        (("ofa-mbv3", {}), {}, "was measured for widths"),
        (("ofa-mbv3", {"base_widths": TINY_WIDTHS}), {"num_classes": 1000}, "measured for 10 classes, not 1000"),
        (("ofa-mbv3", {"base_widths": TINY_WIDTHS}), {"in_channels": 3}, "measured for 1 input channels, not 3"),
        (("ofa-mbv3", {"base_widths": TINY_WIDTHS}), {"device_description": "cuda: NVIDIA H200"},
         re.escape(f"measured on '{describe_device('cpu')}', not on 'cuda: NVIDIA H200'")),  # "Intel(R)"
        (("ofa-mbv3", {"base_widths": TINY_WIDTHS}), {"choices": _choices(kernels=(3, 5, 7))},
         r"lacks the kernel sizes \[7\]"),
        (("ofa-mbv3", {"base_widths": TINY_WIDTHS}), {"choices": _choices(resolutions=(32, 48))},
         r"lacks the resolutions \[48\]"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            table.check(*args, **kwargs)
        assert "\n" not in str(error.value) and "oneshot latency" in str(error.value)


def test_a_file_that_is_not_a_table_is_named(tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"arch": "r224-..."}))
    with pytest.raises(ValueError, match=r"foreign.json is not a latency table \(no \"format\""):
        LatencyTable.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("latency: fast")
    with pytest.raises(ValueError, match=r"notes.txt is not a latency table \(not JSON\)"):
        LatencyTable.load(text)
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({"format": "oneshot-latency-table", "space": "ofa-mbv3"}))
    with pytest.raises(ValueError, match="damaged.json is a damaged latency table"):
        LatencyTable.load(damaged)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_bad_measuring_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one repeat"):
        measure_latency_table({}, repeats=0)
