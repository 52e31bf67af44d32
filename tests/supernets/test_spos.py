"""Tests for supernets.spos: units, supernet vs stand-alone network, encoding, cost table.

Small networks (SMALL options, 32x32 inputs) everywhere except the published-cost checks, which
use the reference's 224x224, 1000-class network.
"""
from __future__ import annotations

import json
import random
import time

import pytest
import torch
from torch import nn

import supernets
from supernets.base import Arch, network_cost
from supernets.spos import (BLOCKS, CHANNEL_SCALES, README_ARCH, ShuffleNetBlock, SposNetwork,
                            SposSupernet, XceptionBlock, block_layout, build_block, channel_split,
                            mid_widths)

SMALL = {"stem_channels": 8, "stage_channels": (16, 32, 48, 64), "last_channels": 64}
SMALL_INPUT = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def space():
    return supernets.get("spos")


@pytest.fixture(scope="module")
def channels_space():
    return supernets.get("spos-channels")


def inherit(network: nn.Module, supernet: SposSupernet, decisions: dict[str, int]) -> None:
    """Copy the chosen units' weights and BN statistics into ``network``: every tensor's leading
    slice of the network's shape (the channel supernet's first c mid channels). The network's
    affine BNs get weight 1 and bias 0, which is what the supernet's affine=False BNs compute."""
    source = supernet.state_dict()
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            parts = name.split(".")
            if parts[0] == "features":
                parts.insert(2, str(decisions[f"block{parts[1]}"]))
            key = ".".join(parts)
            if key in source:
                tensor.copy_(source[key][tuple(slice(0, n) for n in tensor.shape)])
            else:  # the affine parameters only the stand-alone BNs have
                assert name.endswith((".weight", ".bias")), name
                tensor.fill_(1.0 if name.endswith(".weight") else 0.0)


def randomize_bn_statistics(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


# --- blocks -----------------------------------------------------------------------------------

def test_channel_split_gives_even_then_odd_channels():
    x = torch.zeros(2, 8, 3, 3)
    for b in range(2):
        for c in range(8):
            x[b, c] = 100 * b + c
    even, odd = channel_split(x)
    assert even[:, :, 1, 2].tolist() == [[0, 2, 4, 6], [100, 102, 104, 106]]
    assert odd[:, :, 0, 0].tolist() == [[1, 3, 5, 7], [101, 103, 105, 107]]


@pytest.mark.parametrize("choice", range(len(BLOCKS)))
@pytest.mark.parametrize("stride", [1, 2])
def test_block_shapes_and_pass_through(choice, stride):
    c_out = 40
    c_in = 16 if stride == 2 else c_out // 2
    block = build_block(choice, c_in, c_out, c_out // 2, stride).eval()
    x = torch.randn(2, 16 if stride == 2 else c_out, 8, 8)
    out = block(x)
    assert out.shape == (2, c_out, 8 // stride, 8 // stride)
    dws = [m for m in block.branch_main if isinstance(m, nn.Conv2d) and m.groups > 1]
    kernel = 3 if BLOCKS[choice] == "xception_3x3" else int(BLOCKS[choice][-1])
    assert all(m.kernel_size == (kernel, kernel) for m in dws)
    assert [m.stride[0] for m in dws] == [stride] + [1] * (len(dws) - 1)  # first dw strides
    if stride == 1:  # the even channels pass unchanged, first
        assert torch.equal(out[:, :c_in], x[:, 0::2])
        assert not hasattr(block, "branch_proj")
    else:
        assert torch.allclose(out[:, :c_in], block.branch_proj(x))
        proj_dw = block.branch_proj[0]
        assert (proj_dw.kernel_size, proj_dw.stride, proj_dw.groups) == ((kernel, kernel), (2, 2), c_in)


def _kinds(branch: nn.Sequential) -> list[str]:
    names = []
    for m in branch:
        if isinstance(m, nn.Conv2d):
            names.append("dw" if m.groups > 1 else "pw")
        else:
            names.append({nn.BatchNorm2d: "bn", nn.ReLU: "relu"}[type(m)])
    return names


def test_layer_order_widths_and_affine():
    shuffle = ShuffleNetBlock(16, 64, 32, kernel_size=5, stride=2, affine=False)
    assert _kinds(shuffle.branch_main) == ["pw", "bn", "relu", "dw", "bn", "pw", "bn", "relu"]
    assert [m.out_channels for m in shuffle.branch_main if isinstance(m, nn.Conv2d)] == [32, 32, 48]
    assert _kinds(shuffle.branch_proj) == ["dw", "bn", "pw", "bn", "relu"]
    xception = XceptionBlock(32, 64, 32, stride=1, affine=True)
    assert _kinds(xception.branch_main) == ["dw", "bn", "pw", "bn", "relu"] * 3
    assert [m.out_channels for m in xception.branch_main if isinstance(m, nn.Conv2d)] == [32] * 6
    assert not any(m.affine for m in shuffle.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.affine for m in xception.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.bias is None for m in xception.modules() if isinstance(m, nn.Conv2d))


def test_block_layout_is_the_reference_backbone():
    layout = block_layout()
    assert len(layout) == 20
    assert layout[:5] == [(16, 64, 2), (32, 64, 1), (32, 64, 1), (32, 64, 1), (64, 160, 2)]
    assert [i for i, (_, _, stride) in enumerate(layout) if stride == 2] == [0, 4, 8, 16]
    assert layout[-1] == (320, 640, 1)
    assert mid_widths(640) == (64, 128, 192, 256, 320, 384, 448, 512)
    with pytest.raises(ValueError, match="even width"):
        block_layout(16, (64, 48, 320, 640))


def test_network_backbone():
    net = SposNetwork([0] * 20)
    stem = net.first_conv
    assert (stem[0].in_channels, stem[0].out_channels, stem[0].stride) == (3, 16, (2, 2))
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]  # no max pool
    assert (net.conv_last[0].out_channels, net.conv_last[0].kernel_size) == (1024, (1, 1))
    assert net.dropout.p == 0.1
    assert net.classifier[0].bias is None and net.classifier[0].out_features == 1000
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_initialization_statistics():
    torch.manual_seed(0)
    net = SposNetwork([3] * 20)
    assert abs(net.first_conv[0].weight.std().item() - 0.01) < 0.002
    pw = net.conv_last[0].weight  # 640 -> 1024 pointwise
    assert abs(pw.std().item() * pw.shape[1] - 1) < 0.02
    dw = net.features[10].branch_main[0].weight  # depthwise: one input channel per group
    assert dw.shape[1] == 1 and abs(dw.std().item() - 1) < 0.1
    assert abs(net.classifier[0].weight.std().item() - 0.01) < 0.001
    bn = net.features[0].branch_main[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 1e-4) and torch.all(bn.running_mean == 0)
    supernet = SposSupernet(**SMALL)
    assert all(not m.affine for m in supernet.modules() if isinstance(m, nn.BatchNorm2d))


# --- supernet -----------------------------------------------------------------------------------

def test_supernet_choices(space, channels_space):
    supernet = space.build_supernet(10, **SMALL)
    assert list(supernet.choices) == [f"block{i}" for i in range(20)]
    assert supernet.choices["block7"] == BLOCKS == ("shufflenet_3x3", "shufflenet_5x5",
                                                    "shufflenet_7x7", "xception_3x3")
    assert supernet.edges == {}
    assert all(len(units) == 4 for units in supernet.features)
    wide = channels_space.build_supernet(10, **SMALL)
    assert list(wide.choices)[20:] == [f"channels{i}" for i in range(20)]
    assert wide.choices["channels3"] == CHANNEL_SCALES
    assert wide.features[19][0].mid_channels == int(64 // 2 * 1.6)


@pytest.mark.parametrize("seed", range(3))
def test_supernet_equals_network_with_its_weights(space, seed):
    torch.manual_seed(seed)
    supernet = space.build_supernet(10, **SMALL)
    randomize_bn_statistics(supernet, seed)
    arch = space.sample(random.Random(seed))
    network = space.build_network(arch, 10, **SMALL)
    inherit(network, supernet, space.decisions(arch))
    supernet.eval(), network.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(supernet(x, space.decisions(arch)), network(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_channel_supernet_equals_network_with_sliced_weights(channels_space, seed):
    torch.manual_seed(seed)
    supernet = channels_space.build_supernet(10, **SMALL)
    randomize_bn_statistics(supernet, seed)
    arch = channels_space.sample(random.Random(seed))
    if seed == 0:  # the narrowest and the widest width everywhere
        arch = channels_space.parse(",".join("3" * 10 + "1" * 10) + ";" + ",".join("07" * 10))
    network = channels_space.build_network(arch, 10, **SMALL)
    decisions = channels_space.decisions(arch)
    mids = [block.mid_channels for block in network.features]
    assert mids == [int(out // 2 * CHANNEL_SCALES[decisions[f"channels{i}"]])
                    for i, (_, out, _) in enumerate(block_layout(8, (16, 32, 48, 64)))]
    inherit(network, supernet, decisions)
    supernet.eval(), network.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(supernet(x, decisions), network(x), atol=1e-5, rtol=1e-4)


def test_narrow_training_updates_only_the_used_statistics(channels_space):
    supernet = channels_space.build_supernet(10, **SMALL).train()
    arch = channels_space.parse(",".join("0" * 20) + ";" + ",".join("0" * 20))  # 0.2x widths
    supernet(torch.randn(4, 3, 32, 32), channels_space.decisions(arch))
    bn = supernet.features[19][0].branch_main[1]  # after the first pw: mid channels
    used = int(64 // 2 * 0.2)
    assert bn.running_mean.shape[0] == int(64 // 2 * 1.6)
    assert torch.all(bn.running_mean[:used] != 0) and torch.all(bn.running_mean[used:] == 0)
    assert int(bn.num_batches_tracked) == 1


def test_only_the_chosen_units_run(space):
    supernet = space.build_supernet(10, **SMALL)
    arch = space.sample(random.Random(1))
    supernet(torch.randn(2, 3, 32, 32), space.decisions(arch)).sum().backward()
    for i, units in enumerate(supernet.features):
        for b, unit in enumerate(units):
            has_grad = [p.grad is not None for p in unit.parameters()]
            assert all(has_grad) if b == arch[f"block{i}"] else not any(has_grad)


def test_decisions_are_checked(space):
    supernet = space.build_supernet(10, **SMALL)
    decisions = space.decisions(space.sample(random.Random(0)))
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(KeyError, match="missing \\['block3'\\]"):
        supernet(x, {k: v for k, v in decisions.items() if k != "block3"})
    with pytest.raises(KeyError, match="unknown \\['block3x'\\]"):
        supernet(x, {("block3x" if k == "block3" else k): v for k, v in decisions.items()})
    for bad in (4, -1, True, 1.0):
        with pytest.raises(ValueError, match="block5"):
            supernet(x, {**decisions, "block5": bad})


def test_stage_blocks_must_match_the_space(space):
    with pytest.raises(ValueError, match="must sum to 20"):
        space.build_supernet(10, stage_blocks=(1, 1, 1, 1))
    assert len(SposSupernet(10, **SMALL, stage_blocks=(1, 2, 1, 1)).choices) == 5  # the class itself


# --- encoding -----------------------------------------------------------------------------------

def test_registered(space, channels_space):
    assert {"spos", "spos-channels"} <= set(supernets.names())
    assert space.labels == tuple(f"block{i}" for i in range(20))
    assert channels_space.labels[20:] == tuple(f"channels{i}" for i in range(20))


def test_parse_format_round_trip(space, channels_space):
    arch = space.parse(README_ARCH)
    assert arch.space == "spos" and len(arch) == 20 and arch["block0"] == 2 and arch["block19"] == 3
    assert space.format(arch) == README_ARCH
    assert space.parse("(2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)") == arch
    assert space.parse(" [2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3]\n") == arch
    assert space.parse(json.dumps(arch.to_json())) == arch
    assert space.load(README_ARCH) == arch
    text = README_ARCH + ";" + "6,5,3,5,2,6,3,4,2,5,7,5,4,6,7,4,4,5,4,3"  # network.py's scale_ids
    wide = channels_space.parse(text)
    assert len(wide) == 40 and wide["channels10"] == 7
    assert channels_space.format(wide) == text
    assert channels_space.parse("(" + README_ARCH + "); [" + text.split(";")[1] + "]") == wide
    for rng_seed in range(5):
        for s in (space, channels_space):
            sampled = s.sample(random.Random(rng_seed))
            assert s.parse(s.format(sampled)) == sampled


@pytest.mark.parametrize("text, expected", [
    ("2,1", "spos arch '2,1' has 2 block choices, expected 20 (one per choice block, each 0-3: "
            "shufflenet_3x3, shufflenet_5x5, shufflenet_7x7, xception_3x3)"),
    (README_ARCH[:-1] + "4", "block 19 has choice 4, not in 0-3"),
    (README_ARCH.replace("3", "x", 1), "block choice 11 'x' is not a choice index"),
    (README_ARCH.replace("1", "-1", 1), "'-1' is not a choice index"),
    (README_ARCH + ";" + README_ARCH, "use --space spos-channels"),
    ("", "block choice 0 '' is not a choice index; expected 20 comma-separated numbers"),
])
def test_parse_errors(space, text, expected):
    with pytest.raises(ValueError) as info:
        space.parse(text)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "xception_3x3" in message


@pytest.mark.parametrize("text, expected", [
    (README_ARCH, "separate the block and the channel choices by one ';'"),
    (README_ARCH + ";" + ",".join("8" * 20), "channels 0 has choice 8, not in 0-7"),
    (README_ARCH + ";1,2", "has 2 channels choices, expected 20"),
])
def test_channel_parse_errors(channels_space, text, expected):
    with pytest.raises(ValueError) as info:
        channels_space.parse(text)
    assert expected in str(info.value) and "1.6" in str(info.value)


def test_check_rejects_foreign_archs(space):
    with pytest.raises(ValueError, match="space"):
        space.format(Arch("nb201", {f"block{i}": 0 for i in range(20)}))
    with pytest.raises(ValueError, match="labels"):
        space.format(Arch("spos", {"block0": 0}))
    with pytest.raises(ValueError, match="block3=4"):
        space.format(Arch("spos", {f"block{i}": 4 if i == 3 else 0 for i in range(20)}))


# --- sampling, mutation, discretization -------------------------------------------------------

@pytest.mark.parametrize("name", ["spos", "spos-channels"])
def test_sample_covers_every_option_and_mutate_changes_one(name):
    space = supernets.get(name)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(300)]
    for label, size in zip(space.labels, space.sizes):
        assert {arch[label] for arch in archs} == set(range(size)), label
    for arch in archs[:50]:
        child = space.mutate(arch, rng)
        assert sum(child[k] != arch[k] for k in arch) == 1
        space.check(child)


def test_decisions_and_discretize(space, channels_space):
    arch = space.parse(README_ARCH)
    assert space.decisions(arch) == {f"block{i}": int(v) for i, v in enumerate(README_ARCH.split(","))}
    weights = {label: torch.nn.functional.one_hot(torch.tensor(v), 4).float()
               for label, v in space.decisions(arch).items()}
    assert space.discretize(weights) == arch
    with pytest.raises(KeyError, match="missing"):
        space.discretize({k: v for k, v in weights.items() if k != "block0"})
    with pytest.raises(ValueError, match="expected \\(8,\\)"):
        channels_space.discretize({**{k: torch.zeros(4) for k in space.labels},
                                   **{f"channels{i}": torch.zeros(3) for i in range(20)}})
    with pytest.raises(NotImplementedError, match="4\\^20"):
        next(space.enumerate())


# --- costs ----------------------------------------------------------------------------------------

def test_readme_arch_published_cost(space):
    """README: 323M FLOPs (the reference counts multiply-adds) and 3.5M params at 224x224."""
    arch = space.parse(README_ARCH)
    cost = space.cost(arch)  # 224x224, 1000 classes
    assert 320e6 <= cost["macs"] <= 326e6 and cost["macs"] == 322_918_720
    # 3,558,464 with the BN affine parameters; the convs and the classifier alone hold 3,529,312,
    # which is the published 3.5M (the reference repository counts no parameters)
    network = space.build_network(arch)
    weights = sum(m.weight.numel() for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert cost["params"] == 3_558_464 and weights == 3_529_312 and round(weights / 1e6, 1) == 3.5
    assert cost == network_cost(network, (1, 3, 224, 224))


@pytest.mark.parametrize("name", ["spos", "spos-channels"])
def test_cost_table_equals_network_cost(name):
    space = supernets.get(name)
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(4)]
    for arch, from_table in zip(archs, space.costs(archs, 10, SMALL_INPUT, **SMALL)):
        built = network_cost(space.build_network(arch, 10, **SMALL), SMALL_INPUT)
        assert from_table == built
        assert space.cost(arch, 10, SMALL_INPUT, **SMALL) == built


def test_cost_per_call_is_fast(channels_space):
    archs = [channels_space.sample(random.Random(i)) for i in range(500)]
    channels_space.cost(archs[0], 10, SMALL_INPUT, **SMALL)  # the table
    start = time.perf_counter()
    for arch in archs:
        channels_space.cost(arch, 10, SMALL_INPUT, **SMALL)
    assert (time.perf_counter() - start) / len(archs) < 1e-3  # about 30 microseconds measured


def test_cost_options_are_checked(space):
    with pytest.raises(ValueError, match="unknown option\\(s\\) C for space 'spos'; accepted: stem_channels"):
        space.cost(space.parse(README_ARCH), C=36)
