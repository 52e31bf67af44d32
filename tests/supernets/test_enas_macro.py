"""The ENAS macro space: the --child_fixed_arc encoding, the published arc, the search child
(summed skips) and the final child (concatenated, projected skips), costs and the info command.

Small networks (C=8, 16x16 or 32x32 inputs) everywhere; the final script's C=96 network is only
built on the meta device, to count its parameters.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import supernets
from oneshot.commands import main
from supernets.base import Arch, count_parameters, network_cost
from supernets.enas_macro import (ENAS_MACRO_ARC, FINAL_CHANNELS, FINAL_LAYERS, GENOTYPE_META,
                                  NUM_LAYERS, OPS, SEARCH_CHANNELS, ConvBranch, EnasMacroNetwork,
                                  EnasMacroSupernet, FactorizedReduction, LayerOptions, PoolBranch,
                                  live_nodes, pool_layers, truncated_normal_)

SMALL = 8
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def space():
    return supernets.get("enas-macro")


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    return space.build_supernet(C=SMALL)


def arch_with(space, op: int, skip: int, layers: int = NUM_LAYERS) -> Arch:
    """Every layer the op ``op`` and every skip flag ``skip``."""
    return space.from_tokens([t for i in range(layers) for t in (op, *[skip] * i)])


# --- encoding -------------------------------------------------------------------------------


def test_registered_with_the_reference_op_order(space):
    assert "enas-macro" in supernets.names() and space.name == "enas-macro"
    # general_child.py branch_0..branch_5 / README: conv 3x3, sep 3x3, conv 5x5, sep 5x5, avg, max
    assert OPS == ("conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3")
    assert NUM_LAYERS == 12 and SEARCH_CHANNELS == 36 and FINAL_CHANNELS == 96 and FINAL_LAYERS == 24


def test_published_arc_is_the_final_script_arc(space):
    arch = space.genotypes["ENAS_MACRO"]
    assert set(space.genotypes) == set(GENOTYPE_META) == {"ENAS_MACRO"}
    assert len(ENAS_MACRO_ARC.split()) == 300  # 24 layers: 24 ops + 276 skip flags
    assert list(arch) == [f"layer{i}" for i in range(24)]
    assert arch["layer0"] == (0, ())
    assert arch["layer1"] == (3, (0,))
    assert arch["layer5"] == (3, (1, 1, 0, 1, 0))
    assert arch["layer23"] == (0, (1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0))
    assert {op for op, _ in space.decisions(arch).values()} == {0, 1, 2, 3}  # num_branches=4


def test_format_parse_round_trip(space):
    arch = space.genotypes["ENAS_MACRO"]
    assert space.format(arch) == ENAS_MACRO_ARC
    assert space.parse(ENAS_MACRO_ARC) == arch
    assert space.parse("\n  " + ENAS_MACRO_ARC.replace(" ", "\t ", 7) + "\n") == arch  # any whitespace
    assert space.load(ENAS_MACRO_ARC) == arch
    assert Arch.from_json(arch.to_json()) == arch
    assert space.parse_json('{"arch": ' + __import__("json").dumps(arch.to_json()) + "}") == arch
    rng = random.Random(0)
    for _ in range(20):
        sample = space.sample(rng)
        text = space.format(sample)
        assert len(text.split()) == 78 and text == " ".join(text.split())
        assert space.parse(text) == sample
        assert space.from_tokens(space.to_tokens(sample)) == sample


@pytest.mark.parametrize("text, message", [
    ("0 3 0 0 1", "has 5 integers, which is L + L(L-1)/2 for no number of layers L"),
    ("", "has 0 integers"),
    ("0 6 0 0 1 0", "layer 1 (token 1) has op 6, not in 0-5"),
    ("0 3 2 0 1 0", "layer 1 skip flag 0 (token 2) is 2, not 0 or 1"),
    ("0 3 0 0 1 x", "token 5 'x' is not a non-negative integer"),
    ("0 3 0 0 -1 0", "token 4 '-1' is not a non-negative integer"),
    ("0,3,0", "token 0 '0,3,0' is not a non-negative integer"),
])
def test_bad_strings_name_the_problem_and_the_format(space, text, message):
    with pytest.raises(ValueError) as error:
        space.parse(text)
    text = str(error.value)
    assert message in text and "\n" not in text
    assert "--child_fixed_arc form" in text and "0 conv_3x3" in text and "5 max_pool_3x3" in text


def test_check_rejects_hand_made_archs(space):
    with pytest.raises(ValueError, match="layer1: 2 skip flags, expected 1"):
        space.check(Arch("enas-macro", {"layer0": (0, ()), "layer1": (0, (1, 0))}))
    with pytest.raises(ValueError, match="labels layer0"):
        space.check(Arch("enas-macro", {"layer1": (0, (1,))}))
    with pytest.raises(ValueError, match="belongs to space"):
        space.format(Arch("spos", {"layer0": (0, ())}))


def test_sample_is_uniform_ops_and_fair_skips(space):
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(400)]
    ops = [op for a in archs for op, _ in space.decisions(a).values()]
    flags = [s for a in archs for _, skips in space.decisions(a).values() for s in skips]
    assert len(flags) == 400 * 66
    assert abs(sum(flags) / len(flags) - 0.5) < 0.02
    for op in range(len(OPS)):
        assert abs(ops.count(op) / len(ops) - 1 / 6) < 0.025
    assert len(space.sample(rng, layers=5)) == 5


def test_mutate_changes_exactly_one_token(space):
    rng = random.Random(2)
    arch = space.sample(rng)
    positions = set()
    for _ in range(300):
        child = space.mutate(arch, rng)
        before, after = space.to_tokens(arch), space.to_tokens(child)
        diff = [k for k, (a, b) in enumerate(zip(before, after)) if a != b]
        assert len(diff) == 1 and len(after) == 78
        positions.add(diff[0])
    assert len(positions) > 60  # every token can change, ops and skip flags alike
    published = space.genotypes["ENAS_MACRO"]
    assert len(space.mutate(published, rng)) == 24
    assert len(space.resample(published, 0.5, rng)) == 24


def test_discretize_says_enas_has_no_architecture_weights(space):
    with pytest.raises(ValueError, match="ENAS has no architecture weights.*sampled selection"):
        space.discretize({})
    with pytest.raises(NotImplementedError, match=r"6\^12 x 2\^66"):
        next(space.enumerate())


def test_layer_options_enumerate_every_decision():
    options = LayerOptions(3)
    assert len(options) == 6 * 8 and len(LayerOptions(0)) == 6 and len(LayerOptions(11)) == 12288
    assert options[0] == (0, (0, 0, 0)) and options[-1] == (5, (1, 1, 1))
    assert options[13] == (1, (1, 0, 1))
    assert all(options.index(options[k]) == k for k in range(len(options)))
    assert (2, (0, 1, 1)) in options and (2, (0, 1)) not in options and (6, (0, 0, 0)) not in options
    assert list(LayerOptions(1)) == [(op, (s,)) for op in range(6) for s in (0, 1)]


# --- the networks -------------------------------------------------------------------------


def test_pool_positions_follow_the_reference_rule():
    assert pool_layers(12) == (3, 7)
    assert pool_layers(24) == (7, 15)
    assert pool_layers(6) == (1, 3)
    assert pool_layers(3) == (0, 1)
    assert pool_layers(2) == ()


def test_supernet_choices_and_no_edges(space, supernet):
    assert list(supernet.choices) == [f"layer{i}" for i in range(12)]
    assert supernet.edges == {}
    assert all(supernet.choices[f"layer{i}"] == LayerOptions(i) for i in range(12))
    arch = space.sample(random.Random(3))
    for label, decision in space.decisions(arch).items():
        assert decision in supernet.choices[label]


@pytest.mark.parametrize("kind", ["random", "no skips", "all skips", "pools"])
def test_supernet_output_shape(space, supernet, kind):
    if kind == "random":
        arch = space.sample(random.Random(4))
    elif kind == "pools":
        arch = arch_with(space, 5, 1)
    else:
        arch = arch_with(space, 1, int(kind == "all skips"))
    supernet.train()
    out = supernet(X32, space.decisions(arch))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    supernet.eval()
    with torch.no_grad():
        assert supernet(X32[:1, :, :16, :16], space.decisions(arch)).shape == (1, 10)


def test_supernet_rejects_bad_decisions(space, supernet):
    decisions = space.decisions(space.sample(random.Random(5)))
    with pytest.raises(KeyError, match="missing \\['layer11'\\]"):
        supernet(X32, {k: v for k, v in decisions.items() if k != "layer11"})
    with pytest.raises(ValueError, match="layer3: op 6 is not in 0-5"):
        supernet(X32, {**decisions, "layer3": (6, (0, 0, 0))})
    with pytest.raises(ValueError, match="layer3: 2 skip flags, expected 3"):
        supernet(X32, {**decisions, "layer3": (0, (0, 0))})


def test_supernet_runs_only_the_sampled_branch(space, supernet):
    arch = arch_with(space, 2, 0)
    supernet.train()
    supernet.zero_grad(set_to_none=True)
    supernet(X32, space.decisions(arch)).sum().backward()
    for layer in supernet.layers:
        for op, branch in enumerate(layer.branches):
            has_grad = all(p.grad is not None for p in branch.parameters())
            assert has_grad == (op == 2), (layer.index, op)
    supernet.zero_grad(set_to_none=True)


def test_search_child_branches(supernet):
    layer = supernet.layers[5]
    assert [type(b) for b in layer.branches] == [ConvBranch] * 4 + [PoolBranch] * 2
    conv3, sep3 = layer.branches[0], layer.branches[1]
    assert [type(m) for m in conv3.inp_conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]  # BN before ReLU
    assert conv3.out_conv[0].kernel_size == (3, 3) and conv3.out_conv[0].groups == 1
    assert sep3.out_conv[0].groups == SMALL and sep3.out_conv[1].kernel_size == (1, 1)
    assert conv3.out_conv[1].eps == 1e-3 and conv3.inp_conv[1].eps == 1e-5  # batch_norm_with_mask
    assert layer.branches[3].out_conv[0].kernel_size == (5, 5)
    assert isinstance(layer.branches[4].pool, nn.AvgPool2d) and not layer.branches[4].pool.count_include_pad
    assert isinstance(layer.branches[5].pool, nn.MaxPool2d)
    assert supernet.layers[0].skip_bn is None and isinstance(layer.skip_bn, nn.BatchNorm2d)


def test_search_child_sums_skips_and_node_zero_is_the_stem(space, supernet):
    """Layer 2 with skips (1, 1): BN(op(layer 1) + stem + layer 0), the inputs added, not mixed."""
    arch = space.from_tokens([0] + [1, 0] + [4, 1, 1] + [t for i in range(3, 12) for t in (0, *[0] * i)])
    seen: dict[str, torch.Tensor] = {}
    hooks = [supernet.stem_conv.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o)),
             supernet.layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("layer0", o)),
             supernet.layers[2].branches[4].register_forward_hook(lambda m, i, o: seen.__setitem__("op", o)),
             supernet.layers[2].skip_bn.register_forward_pre_hook(lambda m, i: seen.__setitem__("sum", i[0]))]
    try:
        supernet.eval()
        with torch.no_grad():
            supernet(X32, space.decisions(arch))
    finally:
        for h in hooks:
            h.remove()
    assert seen["sum"].shape[1] == SMALL  # no concatenation, no projection
    torch.testing.assert_close(seen["sum"], seen["op"] + seen["stem"] + seen["layer0"])


def test_final_child_concatenates_and_projects_skips(space, supernet):
    """The visible difference: per layer a ReLU + 1x1 conv over (skips + 1) * C channels."""
    arch = space.from_tokens([0] + [1, 0] + [2, 1, 1] + [t for i in range(3, 12) for t in (0, *[0] * i)])
    net = space.build_network(arch, C=SMALL)
    assert net.layers[0].proj is None
    assert net.layers[1].proj[1].in_channels == SMALL  # no skip: still a C -> C projection
    assert net.layers[2].proj[1].in_channels == 3 * SMALL and net.layers[2].proj[1].out_channels == SMALL
    assert isinstance(net.layers[2].proj[0], nn.ReLU)
    # The search child has no conv after its op: only the BN of the sum.
    assert not any(isinstance(m, nn.Conv2d) for m in supernet.layers[2].skip_bn.modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [net.stem_conv.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o)),
             net.layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("layer0", o)),
             net.layers[2].op.register_forward_hook(lambda m, i, o: seen.__setitem__("op", o)),
             net.layers[2].proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("cat", i[0]))]
    try:
        net.eval()
        with torch.no_grad():
            net(X32)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen["cat"], torch.cat([seen["stem"], seen["layer0"], seen["op"]], 1))


def test_final_child_ops(space):
    arch = space.from_tokens([1] + [3, 0] + [4, 0, 0] + [5, 0, 0, 0] + [0, 0, 0, 0, 0] + [2, 0, 0, 0, 0, 0])
    net = space.build_network(arch, C=SMALL)
    sep3 = net.layers[0].op  # the reference's final child: a full conv for the separable id
    assert isinstance(sep3[0][0], nn.ReLU) and sep3[0][1].kernel_size == (1, 1)
    assert sep3[1][1].kernel_size == (3, 3) and sep3[1][1].groups == 1
    assert net.layers[1].op[1][1].kernel_size == (5, 5) and net.layers[1].op[1][1].groups == 1
    assert isinstance(net.layers[2].op[1], nn.AvgPool2d) and isinstance(net.layers[3].op[1], nn.MaxPool2d)
    assert not hasattr(net, "drop_path_prob") and not hasattr(net, "auxiliary_head")
    assert net.dropout.p == 0.5


def test_final_child_widths_double_at_the_pools(space):
    arch = arch_with(space, 0, 1, layers=6)  # pools after layers 1 and 3
    net = space.build_network(arch, C=SMALL)
    widths = [layer.op[0][1].out_channels for layer in net.layers]
    assert widths == [8, 8, 16, 16, 32, 32]
    assert net.fc.in_features == 32 and net.fc.bias is None
    assert [sorted(r.keys(), key=int) for r in net.reductions] == [["0", "1", "2"], ["0", "1", "2", "3", "4"]]
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_reductions_only_for_nodes_read_later(space):
    # 6 layers, no skips: after each pool only the newest node is read.
    arch = arch_with(space, 0, 0, layers=6)
    assert live_nodes([s for _, s in space.decisions(arch).values()], 1) == {2}
    net = space.build_network(arch, C=SMALL)
    assert [list(r.keys()) for r in net.reductions] == [["2"], ["4"]]
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_factorized_reduction_reads_even_and_shifted_pixels():
    fr = FactorizedReduction(1, 2).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    out = fr(x) * math.sqrt(1 + fr.bn.eps)  # undo the eval BN's eps (mean 0, var 1)
    torch.testing.assert_close(out[0, 0], x[0, 0, ::2, ::2])
    shifted = torch.zeros(3, 3)
    shifted[:2, :2] = x[0, 0, 1::2, 1::2]  # the pixels shifted by one; zero past the border
    torch.testing.assert_close(out[0, 1], shifted)
    assert not any(isinstance(m, nn.ReLU) for m in fr.modules())


def test_published_arc_runs_and_matches_the_layouts(space):
    arch = space.genotypes["ENAS_MACRO"]
    net = space.build_network(arch, C=SMALL)
    assert len(net.layers) == 24 and net.pools == (7, 15)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sn = space.build_supernet(C=SMALL, layers=24)
    assert sn(torch.randn(2, 3, 32, 32), space.decisions(arch)).shape == (2, 10)
    with pytest.raises(ValueError, match="layers=12, but the arch has 24 layers"):
        space.build_network(arch, C=SMALL, layers=12)


def test_published_parameter_count_at_the_final_script_size(space):
    """24 layers, out_filters 96: 42,559,392 parameters (paper: 21.3M; see GENOTYPE_META)."""
    with torch.device("meta"):
        net = space.build_network(space.genotypes["ENAS_MACRO"], C=FINAL_CHANNELS)
    assert count_parameters(net) == GENOTYPE_META["ENAS_MACRO"]["params"] == 42_559_392
    assert GENOTYPE_META["ENAS_MACRO"]["params_m"] == 21.3


def test_cost_is_the_built_network(space):
    arch = space.sample(random.Random(6))
    cost = space.cost(arch, C=SMALL, input_size=(1, 3, 16, 16))
    expected = network_cost(space.build_network(arch, C=SMALL), (1, 3, 16, 16))
    assert cost == expected and cost["params"] > 0 and cost["macs"] > 0
    assert space.network_options({"C": 8, "layers": 12, "dropout": 0.1}) == {"C": 8, "layers": 12}


def test_initialization_is_truncated_he_normal(space):
    torch.manual_seed(0)
    w = truncated_normal_(torch.empty(64, 64, 3, 3), 0.1)
    assert w.abs().max() <= 0.2 and 0.08 < w.std() < 0.095  # 0.1 * 0.88 after truncation
    net = EnasMacroNetwork(space.decisions(arch_with(space, 0, 0, layers=3)).values(), C=SMALL)
    conv = net.layers[0].op[1][1]  # fan_in 3 * 3 * 8
    assert conv.weight.abs().max() <= 2 * math.sqrt(2 / 72) + 1e-6
    depthwise = EnasMacroSupernet(C=SMALL, layers=1).layers[0].branches[1].out_conv[0]
    assert depthwise.weight.abs().max() <= 2 * math.sqrt(2 / 72) + 1e-6  # TF's fan_in k * k * C


# --- the info command -----------------------------------------------------------------------


def test_info_of_the_published_arc(capsys):
    main(["info", "--space", "enas-macro", "--genotype", "ENAS_MACRO"])
    out = capsys.readouterr().out
    assert f"arch:    {ENAS_MACRO_ARC}" in out
    assert "params:  5,997,852 " in out  # C=36 (the search width), 24 layers
    main(["info", "--space", "enas-macro", "--genotype", "ENAS_MACRO", "--C", "16"])
    assert "params:  1,189,872 " in capsys.readouterr().out


def test_info_names_a_bad_arch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--space", "enas-macro", "--arch", "0 3"])
    assert exit_info.value.code == 2
    assert "has 2 integers" in capsys.readouterr().err
