"""The ENAS micro space: --child_fixed_arc encoding, the search child, the fixed-arc child, costs."""
from __future__ import annotations

import random

import pytest
import torch

import supernets
from ops.candidates import FactorizedReduce, Identity, ReLUConvBN, SepConv
from supernets.base import Arch, count_parameters
from supernets.enas_micro import (CELL_TYPES, ENAS_MICRO_ARC, GENOTYPE_META, LABELS, NODES, NUM_NODES,
                                  OPS, EnasMicroSupernet, LooseEndProjection, aux_position, loose_ends,
                                  node_options, reduction_layers)

SMALL = {"C": 8, "layers": 3}  # 5 cells: normal, reduce, normal, reduce, normal


@pytest.fixture(scope="module")
def space():
    return supernets.get("enas-micro")


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    return space.build_supernet(**SMALL)


def arch_of(space, normal: list[int], reduce: list[int]) -> Arch:
    return space.parse(" ".join(map(str, normal + reduce)))


# Nodes 2 and 3 feed every later node: only 4, 5, 6 are loose. Node 2 reads input 1 twice.
FEEDING = [1, 0, 1, 0,  1, 1, 0, 1,  2, 0, 3, 0,  2, 1, 3, 2,  3, 4, 2, 3]
# A reduction cell that never reads input 0 (a loose input) and reads input 1 twice with identity.
NO_INPUT_0 = [1, 4, 1, 4,  2, 0, 1, 1,  3, 2, 2, 3,  1, 0, 4, 1,  5, 1, 3, 0]


# --- encoding -------------------------------------------------------------------------------


def test_constants_follow_the_reference():
    assert OPS == ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
    assert NUM_NODES == 5 and CELL_TYPES == ("normal", "reduce") and NODES == (2, 3, 4, 5, 6)
    assert LABELS == tuple(f"{c}/{i}" for c in CELL_TYPES for i in range(2, 7))
    # micro_child.py pool_layers = [d, 2d + 1], d = num_layers // 3; aux head after the second
    assert reduction_layers(6) == (2, 5) and aux_position(6) == 6  # search: 8 cells
    assert reduction_layers(15) == (5, 11) and aux_position(15) == 12  # final: 17 cells


def test_published_arc(space):
    assert set(space.genotypes) == {"ENAS_MICRO"} and set(GENOTYPE_META) == {"ENAS_MICRO"}
    arch = space.genotypes["ENAS_MICRO"]
    assert arch.space == "enas-micro" and tuple(arch) == LABELS
    assert arch["normal/2"] == ((0, 2), (0, 0))  # avg pool of input 0 + sep 3x3 of input 0
    assert arch["normal/3"] == ((0, 4), (0, 1))
    assert arch["reduce/4"] == ((1, 1), (3, 1))  # sep 5x5 of input 1 + sep 5x5 of node 3
    assert arch["reduce/6"] == ((0, 3), (1, 1))
    assert space.format(arch) == ENAS_MICRO_ARC
    assert supernets.resolve_arch("ENAS_MICRO") == (space, arch)


def test_format_parse_round_trip(space):
    arch = space.genotypes["ENAS_MICRO"]
    assert space.parse(ENAS_MICRO_ARC) == arch
    messy = "\n  " + ENAS_MICRO_ARC.replace(" ", "\t", 5).replace(" ", "  \n", 3) + " \n"
    assert space.parse(messy) == arch
    assert space.load(ENAS_MICRO_ARC) == arch
    assert Arch.from_json(arch.to_json()) == arch
    assert space.load(str(arch.to_json()).replace("'", '"').replace("(", "[").replace(")", "]")) == arch
    rng = random.Random(0)
    for _ in range(100):
        sample = space.sample(rng)
        text = space.format(sample)
        assert len(text.split(" ")) == 40 and space.parse(text) == sample
        assert space.tokens(sample) == [int(t) for t in text.split()]


@pytest.mark.parametrize("text, message", [
    (ENAS_MICRO_ARC + " 0", "has 41 integers; expected 40 integers separated by spaces"),
    (ENAS_MICRO_ARC.rsplit(" ", 4)[0], "has 36 integers"),
    ("", "has 0 integers"),
    (ENAS_MICRO_ARC.replace("0 2 0 0", "0 2 0 x", 1), "token 4 'x' is not an integer"),
    (ENAS_MICRO_ARC.replace(" ", ",", 3), "token 1 '0,2,0,0' is not an integer"),
    (ENAS_MICRO_ARC.replace("0 2 0 0", "0 2 0 1.0", 1), "token 4 '1.0' is not an integer"),
    ("2" + ENAS_MICRO_ARC[1:], r"token 1 \(normal/2 index_1\) = 2 is out of range: an input index of "
                               r"node 2 is in 0..1"),
    (ENAS_MICRO_ARC[:20] + "5" + ENAS_MICRO_ARC[21:], r"token 11 \(normal/4 index_2\) = 5 is out of "
                                                      r"range: an input index of node 4 is in 0..3"),
    ("-1" + ENAS_MICRO_ARC[1:], r"token 1 \(normal/2 index_1\) = -1 is out of range"),
    (ENAS_MICRO_ARC[:2] + "5" + ENAS_MICRO_ARC[3:], r"token 2 \(normal/2 op_1\) = 5 is out of range: an "
                                                    r"op is in 0..4;.*\(sep_conv_3x3, sep_conv_5x5"),
    (ENAS_MICRO_ARC[:-1] + "7", r"token 40 \(reduce/6 op_2\) = 7 is out of range"),
])
def test_parse_errors_name_the_problem(space, text, message):
    with pytest.raises(ValueError, match=message) as error:
        space.parse(text)
    assert "\n" not in str(error.value)


def test_foreign_or_malformed_archs_are_rejected(space):
    with pytest.raises(ValueError, match="belongs to space 'darts'"):
        space.format(supernets.get("darts").genotypes["DARTS_V2"])
    good = dict(space.genotypes["ENAS_MICRO"])
    with pytest.raises(ValueError, match="has the labels"):
        space.check(Arch("enas-micro", {k: v for k, v in good.items() if k != "reduce/6"}))
    with pytest.raises(ValueError, match=r"normal/3=\(\(3, 0\), \(0, 0\)\) is not"):
        space.check(Arch("enas-micro", {**good, "normal/3": ((3, 0), (0, 0))}))
    with pytest.raises(ValueError, match="ops in 0..4"):
        space.decisions(Arch("enas-micro", {**good, "reduce/2": ((0, 5), (0, 0))}))


def test_sample_covers_the_tokens_and_mutate_changes_one(space):
    rng = random.Random(1)
    seen: dict[int, set[int]] = {k: set() for k in range(40)}
    same_input = 0
    for _ in range(400):
        arch = space.sample(rng)
        for k, token in enumerate(space.tokens(arch)):
            seen[k].add(token)
        same_input += sum(arch[label][0][0] == arch[label][1][0] for label in LABELS)
        mutant = space.mutate(arch, rng)
        assert sum(a != b for a, b in zip(space.tokens(arch), space.tokens(mutant))) == 1
        space.check(mutant)
    for k, values in seen.items():  # indices 0..node-1, ops 0..4, all drawn
        node = 2 + (k % 20) // 4
        assert values == set(range(node if k % 2 == 0 else 5)), k
    assert same_input > 0  # the two inputs of a node are drawn independently
    child = space.crossover(space.sample(rng), space.sample(rng), rng)
    assert space.check(child) is child and space.check(space.resample(child, 0.5, rng))


def test_decisions_are_the_arch_values_and_discretize_refuses(space):
    arch = space.genotypes["ENAS_MICRO"]
    assert space.decisions(arch) == dict(arch)
    with pytest.raises(ValueError, match="no architecture weights.*best_of_n"):
        space.discretize({})


def test_network_options_keep_the_shape_only(space):
    options = {"C": 8, "layers": 3, "in_channels": 1, "dropout": 0.1, "auxiliary": True}
    assert space.network_options(options) == {"C": 8, "layers": 3, "in_channels": 1}


# --- the search child -------------------------------------------------------------------------


def test_supernet_choices_and_edges(supernet):
    assert list(supernet.choices) == list(LABELS) and supernet.edges == {}
    for label, options in supernet.choices.items():
        node = int(label[-1])
        assert options == node_options(node) and len(options) == (5 * node) ** 2
        assert ((node - 1, 4), (0, 0)) in options and ((node, 0), (0, 0)) not in options


def test_supernet_output_shape_for_random_decisions(space, supernet):
    rng = random.Random(2)
    x = torch.randn(2, 3, 16, 16)
    supernet.train()
    for _ in range(3):
        assert supernet(x, space.decisions(space.sample(rng))).shape == (2, 10)
    supernet.eval()
    with torch.no_grad():
        assert supernet(x, space.decisions(space.sample(rng))).shape == (2, 10)


def test_supernet_node_reading_one_input_twice(space, supernet):
    arch = arch_of(space, FEEDING, NO_INPUT_0)  # normal/2 and reduce/2 read input 1 twice
    supernet.train()
    assert supernet(torch.randn(2, 3, 16, 16), space.decisions(arch)).shape == (2, 10)
    cell = supernet.cells[0]
    node = cell.nodes["node2"]
    assert node["x"][1]["sep_conv_3x3"] is not node["y"][1]["sep_conv_3x3"]  # x and y: own weights
    s0, s1 = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    twice_identity = [((0, 4), (0, 4))] + [((0, 2), (1, 3))] * 4
    states = cell.node_states(s0, s1, twice_identity)
    assert torch.equal(states[2], s0 + s0)


def test_supernet_structure_follows_the_search_child(supernet):
    cells = supernet.cells
    assert [c.cell_type for c in cells] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert isinstance(supernet.stem[0], torch.nn.Conv2d) and supernet.stem[0].out_channels == 24  # 3C
    assert isinstance(cells[0].preprocess0, ReLUConvBN) and isinstance(cells[0].preprocess1, ReLUConvBN)
    assert isinstance(cells[2].preprocess0, torch.nn.Identity)  # s0 = the previous reduction, 16 ch
    reduce = cells[1]  # FR (no ReLU) of the previous output, then a stride-1 cell on (prev, FR(prev))
    assert isinstance(reduce.reduce, FactorizedReduce) and isinstance(reduce.reduce.relu, torch.nn.Identity)
    assert isinstance(reduce.preprocess0, FactorizedReduce)
    assert isinstance(reduce.preprocess0.relu, torch.nn.ReLU)
    assert isinstance(reduce.preprocess1, torch.nn.Identity)
    assert reduce.nodes["node4"]["y"][3]["sep_conv_5x5"][0][1].stride == (1, 1)
    # separate weights per (node, branch, input): node i holds i copies of each op per branch
    for cell in cells:
        for i in NODES:
            for branch in "xy":
                assert len(cell.nodes[f"node{i}"][branch]) == i
    assert supernet.classifier.bias is None and supernet.classifier.in_features == 32  # 4C
    assert abs(supernet.dropout.p - 0.1) < 1e-12  # child_keep_prob 0.9 in the search script


def test_supernet_resolution_and_channels_per_cell(space, supernet):
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o[1].shape[1:])))
             for cell in supernet.cells]
    try:
        supernet.eval()
        with torch.no_grad():
            supernet(torch.randn(1, 3, 16, 16), space.decisions(space.genotypes["ENAS_MICRO"]))
    finally:
        for hook in hooks:
            hook.remove()
    assert shapes == [(8, 16, 16), (16, 8, 8), (16, 8, 8), (32, 4, 4), (32, 4, 4)]


def test_supernet_only_the_chosen_weights_get_gradients(space):
    torch.manual_seed(0)
    net = space.build_supernet(C=4, layers=1)
    arch = space.genotypes["ENAS_MICRO"]
    net(torch.randn(2, 3, 8, 8), space.decisions(arch)).sum().backward()
    cell = net.cells[2]  # the normal cell
    chosen = cell.nodes["node5"]["x"][1]["sep_conv_3x3"]  # normal/5 = ((1, 0), (0, 1))
    other_input = cell.nodes["node5"]["x"][0]["sep_conv_3x3"]
    other_op = cell.nodes["node5"]["x"][1]["sep_conv_5x5"]
    assert all(p.grad is not None for p in chosen.parameters())
    assert all(p.grad is None for p in list(other_input.parameters()) + list(other_op.parameters()))


def test_supernet_checks_the_decisions(space, supernet):
    decisions = space.decisions(space.genotypes["ENAS_MICRO"])
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(KeyError, match="missing \\['normal/4'\\]"):
        supernet(x, {k: v for k, v in decisions.items() if k != "normal/4"})
    for bad in (((3, 0), (0, 0)), ((-1, 0), (0, 0)), ((0, 5), (0, 0)), 3, ((0, 0),)):
        with pytest.raises(ValueError, match="normal/3=.*indices in 0..2 and ops in 0..4"):
            supernet(x, {**decisions, "normal/3": bad})
    as_lists = {k: [list(b) for b in v] for k, v in decisions.items()}  # JSON-like decisions work
    supernet.eval()
    with torch.no_grad():
        assert torch.equal(supernet(x, as_lists), supernet(x, decisions))


def test_supernet_auxiliary_head(space):
    net = space.build_supernet(C=4, layers=3, auxiliary=True)
    decisions = space.decisions(space.genotypes["ENAS_MICRO"])
    logits, aux = net.train()(torch.randn(2, 3, 32, 32), decisions)
    assert logits.shape == aux.shape == (2, 10)
    assert net.eval()(torch.randn(2, 3, 32, 32), decisions).shape == (2, 10)


def test_loose_ends_are_the_unread_states(space):
    published = space.genotypes["ENAS_MICRO"]
    assert loose_ends([published[f"normal/{i}"] for i in NODES]) == (2, 3, 4, 5, 6)
    assert loose_ends([published[f"reduce/{i}"] for i in NODES]) == (2, 4, 5, 6)
    arch = arch_of(space, FEEDING, NO_INPUT_0)
    assert loose_ends([arch[f"normal/{i}"] for i in NODES]) == (4, 5, 6)
    assert loose_ends([arch[f"reduce/{i}"] for i in NODES]) == (0, 6)


def test_search_projection_reads_only_the_loose_ends(space):
    torch.manual_seed(0)
    C = 4
    projection = LooseEndProjection(7, C).eval()
    states = [torch.randn(2, C, 5, 5) for _ in range(7)]
    arch = arch_of(space, FEEDING, NO_INPUT_0)
    loose = loose_ends([arch[f"normal/{i}"] for i in NODES])
    out = projection(states, loose)
    weight = torch.cat([projection.weight[k] for k in (4, 5, 6)], dim=1)[:, :, None, None]
    expected = projection.bn(torch.nn.functional.conv2d(torch.relu(torch.cat(states[4:], 1)), weight))
    assert torch.allclose(out, expected)
    with torch.no_grad():  # the rows of states 0..3 (read by nodes) play no part
        projection.weight[:4].normal_()
    assert torch.equal(projection(states, loose), out)


# --- the fixed-arc child ----------------------------------------------------------------------


def test_network_concatenates_only_the_loose_ends(space):
    arch = arch_of(space, FEEDING, NO_INPUT_0)
    net = space.build_network(arch, **SMALL)
    normal, reduce = net.cells[0], net.cells[1]
    assert normal.concat == (4, 5, 6) and normal.out_channels == 3 * 8
    assert reduce.concat == (0, 6) and reduce.out_channels == 2 * 16
    assert set(reduce.concat_reduce) == {"0"}  # the loose full-size input: factorized reduction
    assert isinstance(reduce.concat_reduce["0"].relu, torch.nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for cell in net.cells]
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert shapes == [(24, 16, 16), (32, 8, 8), (48, 8, 8), (64, 4, 4), (96, 4, 4)]


def test_network_structure_follows_the_fixed_child(space):
    arch = space.genotypes["ENAS_MICRO"]
    net = space.build_network(arch, **SMALL)
    cells = net.cells
    assert [c.reduction for c in cells] == [False, True, False, True, False]
    for cell in cells:
        assert isinstance(cell.base, ReLUConvBN)  # layer_base, always
    assert isinstance(cells[2].preprocess0, FactorizedReduce)  # s0 twice the size after a reduction
    assert isinstance(cells[2].preprocess0.relu, torch.nn.ReLU)
    reduce = cells[1]  # reduce/5 = ((1, 0), (0, 4)): identity on input 0 at stride 2
    sep, identity = reduce.ops[6], reduce.ops[7]
    assert isinstance(sep, SepConv) and sep[0][1].stride == (2, 2) and sep[1][1].stride == (1, 1)
    assert isinstance(identity, FactorizedReduce) and isinstance(identity.relu, torch.nn.Identity)
    assert isinstance(cells[0].ops[2], Identity)  # normal/3 x: identity at stride 1
    assert isinstance(reduce.ops[2], torch.nn.MaxPool2d) and reduce.ops[2].stride == 2
    assert reduce.ops[5][0][1].stride == (1, 1)  # reduce/4 y reads node 3: stride 1
    assert net.classifier.bias is None and net.drop_path_prob == 0.0


def test_network_equals_the_supernet_node_for_node(space):
    """The search child and the fixed child differ in structure, so whole networks cannot match:
    the fixed child adds ``layer_base`` on state 1, its reduction cells stride their branches
    instead of pre-reducing their inputs, and it concatenates the loose ends without the search
    child's 1x1 projection (so every later cell sees other channels). What is shared is the node
    computation of a cell: given the same calibrated inputs and the supernet's weights and BN
    statistics of the chosen (node, branch, input, op), every state is equal in eval mode."""
    torch.manual_seed(0)
    arch = arch_of(space, FEEDING, NO_INPUT_0)
    supernet = space.build_supernet(**SMALL)
    net = space.build_network(arch, **SMALL)
    supernet.train()
    with torch.no_grad():
        for _ in range(3):  # BN statistics away from their initial values
            supernet(torch.randn(4, 3, 16, 16), space.decisions(arch))
    supernet.eval(), net.eval()
    for index in (0, 2, 4):  # the normal cells
        search_cell, fixed_cell = supernet.cells[index], net.cells[index]
        pairs = [arch[f"normal/{i}"] for i in NODES]
        for n, pair in enumerate(pairs):
            for b, (j, op) in enumerate(pair):
                source = search_cell.nodes[f"node{n + 2}"]["xy"[b]][j][OPS[op]]
                fixed_cell.ops[2 * n + b].load_state_dict(source.state_dict())
        C = 8 * 2 ** (index // 2)
        s0, s1 = torch.randn(2, C, 8, 8), torch.randn(2, C, 8, 8)
        with torch.no_grad():
            expected = search_cell.node_states(s0, s1, pairs)
            got = fixed_cell.node_states(s0, s1)
        assert len(got) == 7
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(expected[2], 2 * search_cell.nodes["node2"]["x"][1]["sep_conv_3x3"](s1))


def test_auxiliary_head_and_drop_path(space, monkeypatch):
    import supernets.enas_micro as enas_micro

    net = space.build_network(space.genotypes["ENAS_MICRO"], auxiliary=True, drop_path_prob=0.4, **SMALL)
    assert net.aux_position == 4 and net.auxiliary_head.features[6].kernel_size == (2, 2)
    assert net.auxiliary_head.classifier.bias is None
    seen: list[float] = []

    def recording_drop_path(x, p):
        seen.append(p)
        return x

    monkeypatch.setattr(enas_micro, "drop_path", recording_drop_path)
    logits, aux = net.train()(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    # 5 cells; per cell the non-identity branches, at 0.4 * (cell + 1) / 5 (_apply_drop_path)
    arch = space.genotypes["ENAS_MICRO"]
    per_cell = [sum(op != 4 for i in NODES for _, op in arch[f"{c}/{i}"])
                for c in ("normal", "reduce", "normal", "reduce", "normal")]
    expected = [0.4 * (cell + 1) / 5 for cell, count in enumerate(per_cell) for _ in range(count)]
    assert seen == pytest.approx(expected)
    seen.clear()
    net.drop_path_prob = 0.0  # the retraining loop sets the attribute
    net(torch.randn(2, 3, 32, 32))
    assert seen == []
    net.drop_path_prob = 0.4
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10) and seen == []


# --- costs ------------------------------------------------------------------------------------


def test_published_arc_parameters_at_the_final_size(space):
    """cifar10_micro_final.sh: C=36, 15 layers (17 cells); the paper reports 4.6M."""
    arch = space.genotypes["ENAS_MICRO"]
    plain = space.build_network(arch, C=36, layers=15)
    with_aux = space.build_network(arch, C=36, layers=15, auxiliary=True)
    assert count_parameters(plain) == GENOTYPE_META["ENAS_MICRO"]["params"] == 3_894_372
    assert count_parameters(with_aux) == GENOTYPE_META["ENAS_MICRO"]["params_with_auxiliary"] == 4_389_220
    assert count_parameters(with_aux, exclude="auxiliary") == 3_894_372
    assert count_parameters(space.build_network(arch)) == 608_540  # search size, C=20, 6 layers


def test_info_command_prints_the_published_arc(capsys):
    from oneshot.commands import main

    main(["info", "--space", "enas-micro", "--genotype", "ENAS_MICRO"])
    out = capsys.readouterr().out
    assert f"arch:    {ENAS_MICRO_ARC}" in out
    assert "params:  608,540" in out  # the default: the search size, C=20, 6 layers
    main(["info", "--space", "enas-micro", "--genotype", "ENAS_MICRO", "--C", "36", "--layers", "15"])
    out = capsys.readouterr().out
    assert "params:  3,894,372" in out and "C=36, layers=15" in out
    main(["info", "--space", "enas-micro", "--arch", ENAS_MICRO_ARC])
    assert "params:  608,540" in capsys.readouterr().out


def test_supernet_class_is_exported(space):
    assert isinstance(space.build_supernet(C=4, layers=1), EnasMicroSupernet)
