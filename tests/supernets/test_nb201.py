"""Tests for supernets.nb201: encoding, benchmark index order, supernet, stand-alone network.

The parity checks read the NB201 CIFAR-10 table at ``../shared/data/nb201_cifar10.csv`` (relative
to the project root) and skip when it is absent.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import supernets
from ops.mixed import SampledPath
from supernets.base import Arch, count_parameters
from supernets.nb201 import (EDGES, NOTABLE_ARCHS, NUM_ARCHS, PRIMITIVES, NB201InferCell,
                             NB201SearchCell, NB201Supernet)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NB201_CSV = PROJECT_ROOT.parent / "shared" / "data" / "nb201_cifar10.csv"

# Anchors asserted by xautodl exps/NAS-Bench-201/main.py::generate_meta_info and the benchmark table.
ANCHORS = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    9: "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    123: "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|",
    6111: "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
    1835: "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
}


@pytest.fixture(scope="module")
def space():
    return supernets.get("nb201")


@pytest.fixture(scope="module")
def table() -> list[dict[str, str]]:
    if not NB201_CSV.exists():
        pytest.skip(f"NB201 table not found at {NB201_CSV}")
    with open(NB201_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == NUM_ARCHS
    return rows


def uniform_arch(space, op: str) -> Arch:
    return Arch("nb201", {label: PRIMITIVES.index(op) for label in EDGES})


# --- encoding ---------------------------------------------------------------------------------

def test_registered_and_constants(space):
    assert space.name == "nb201" and "nb201" in supernets.names()
    assert PRIMITIVES == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert EDGES == ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")


@pytest.mark.parametrize("text", list(ANCHORS.values()))
def test_parse_format_round_trip(space, text):
    arch = space.parse(text)
    assert arch.space == "nb201" and tuple(arch) == EDGES
    assert space.format(arch) == text
    assert space.parse(" " + text + "\n") == arch
    assert space.load(text) == arch
    assert space.parse(json.dumps(arch.to_json())) == arch


def test_parse_values(space):
    arch = space.parse(ANCHORS[9])
    assert arch["1<-0"] == PRIMITIVES.index("avg_pool_3x3")
    assert arch["2<-0"] == arch["2<-1"] == arch["3<-1"] == PRIMITIVES.index("none")
    assert arch["3<-0"] == PRIMITIVES.index("skip_connect")
    assert arch["3<-2"] == PRIMITIVES.index("nor_conv_3x3")


@pytest.mark.parametrize("text, expected", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "node(s)"),
    ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "conv_5x5"),
    ("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "accepted ops"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "input(s)"),
    ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "none0"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "enclosed"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "none~1"),
    ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "twice"),
    ("|none~x|+|none~0|none~1|+|none~0|none~1|none~2|", "none~x"),
    ("", "node(s)"),
])
def test_parse_errors(space, text, expected):
    with pytest.raises(ValueError) as info:
        space.parse(text)
    message = str(info.value)
    assert expected in message
    assert "avg_pool_3x3" in message or "|op~0|" in message  # says what is accepted


def test_check_rejects_foreign_archs(space):
    with pytest.raises(ValueError, match="space"):
        space.format(Arch("darts", {label: 0 for label in EDGES}))
    with pytest.raises(ValueError, match="labels"):
        space.format(Arch("nb201", {"1<-0": 0}))
    with pytest.raises(ValueError, match="op index"):
        space.format(Arch("nb201", {label: 5 for label in EDGES}))


# --- benchmark index --------------------------------------------------------------------------

def test_private_rng_matches_global_seeded_shuffle():
    cells = list(range(NUM_ARCHS))
    state = random.getstate()
    try:
        random.seed(88)
        random.shuffle(cells)
    finally:
        random.setstate(state)
    private = list(range(NUM_ARCHS))
    random.Random(88).shuffle(private)
    assert cells == private


@pytest.mark.parametrize("index", sorted(ANCHORS))
def test_index_anchors(space, index):
    arch = space.parse(ANCHORS[index])
    assert space.index(arch) == index
    assert space.from_index(index) == arch
    assert space.format(space.from_index(index)) == ANCHORS[index]


def test_notable_archs(space):
    assert space.format(space.from_index(NOTABLE_ARCHS["all_skip_darts_collapse"])) == ANCHORS[1835]
    assert space.from_index(NOTABLE_ARCHS["all_none"]) == uniform_arch(space, "none")
    assert space.format(space.from_index(NOTABLE_ARCHS["best_cifar10"])) == ANCHORS[6111]


def test_index_is_a_bijection(space):
    archs = list(space.enumerate())
    assert len(archs) == len(set(archs)) == NUM_ARCHS
    rng = random.Random(0)
    for i in rng.sample(range(NUM_ARCHS), 300):
        assert space.index(space.from_index(i)) == i
        assert archs[i] == space.from_index(i)


@pytest.mark.parametrize("bad", [-1, NUM_ARCHS, 10**6])
def test_from_index_range(space, bad):
    with pytest.raises(IndexError, match="0..15624"):
        space.from_index(bad)


def test_strings_and_order_match_benchmark_table(space, table):
    for i, (row, arch) in enumerate(zip(table, space.enumerate())):
        assert int(row["index"]) == i
        assert space.format(arch) == row["arch"], f"index {i}"
        assert space.format(space.from_index(i)) == row["arch"]


# --- parameter counts against the benchmark ------------------------------------------------------

@pytest.fixture(scope="module")
def param_totals(space) -> list[int]:
    """Parameter count of every arch (index order), composed from built modules.

    A cell's parameters are those of its edges' ops, so each single-edge NB201InferCell is built
    once per stage width, and the network around the cells once; their sum gives any arch's
    count. test_param_counts_of_built_networks checks the composition on whole networks.
    """
    net = space.build_network(uniform_arch(space, "none"))
    outside_cells = count_parameters(net) - sum(
        count_parameters(cell) for cell in net.cells if isinstance(cell, NB201InferCell))
    counts = {}
    for C in (16, 32, 64):  # stage widths for C=16
        for label in EDGES:
            for op in range(len(PRIMITIVES)):
                single = Arch("nb201", {e: (op if e == label else 0) for e in EDGES})
                counts[(C, label, op)] = count_parameters(NB201InferCell(single, C))
    N = 5
    return [outside_cells + N * sum(counts[(C, label, arch[label])]
                                    for C in (16, 32, 64) for label in EDGES)
            for arch in space.enumerate()]


# Rows whose benchmark value is no single network's count: NB201's 200-epoch cost info averages the
# per-seed records, and for these archs one seed record holds another arch's cost (NATS-Bench issue
# #36, labelled bug; e.g. index 3899 reads 0.640399 where its 12-epoch record says 0.802426).
KNOWN_DEFECTIVE_PARAM_ROWS = 204


def _defective_rows(table, param_totals) -> set[int]:
    return {i for i, total in enumerate(param_totals)
            if round(total / 1e6, 6) != float(table[i]["params_m"])}


def test_param_counts_of_all_archs_match_benchmark(table, param_totals):
    """Every arch's count equals the table's, except rows the table itself averaged wrongly.

    Those rows are checked too: their value is the mean of 2 or 3 achievable counts, ours among them.
    """
    achievable = sorted(set(param_totals))
    assert len(achievable) == 28  # 73306 + 28000 * n_1x1 + 243040 * n_3x3, n_1x1 + n_3x3 <= 6
    sums = {1: set(achievable), 2: {a + b for a in achievable for b in achievable}}
    defective = sorted(_defective_rows(table, param_totals))
    unexplained = []
    for i in defective:
        value, total = float(table[i]["params_m"]) * 1e6, param_totals[i]
        explained = round(value) not in sums[1] and any(
            abs((total + other) / (k + 1) - value) <= 0.51 for k in (1, 2) for other in sums[k])
        if not explained:
            unexplained.append(i)
    assert not unexplained, f"{len(unexplained)} unexplained mismatches, first: " + ", ".join(
        f"index {i}: ours {param_totals[i]}, table {table[i]['params_m']}" for i in unexplained[:5])
    assert len(defective) == KNOWN_DEFECTIVE_PARAM_ROWS
    assert 3899 in defective and param_totals[3899] == 802426


def test_param_counts_of_built_networks_match_benchmark(space, table, param_totals):
    """Whole networks (anchors plus 100 random archs) against the composed counts and the table."""
    defective = _defective_rows(table, param_totals)
    indices = sorted(ANCHORS) + [1, 1651, 3899] + random.Random(1).sample(range(NUM_ARCHS), 100)
    for i in indices:
        count = count_parameters(space.build_network(space.from_index(i)))
        assert count == param_totals[i], f"index {i}"
        if i not in defective:
            assert round(count / 1e6, 6) == float(table[i]["params_m"]), f"index {i}"
    assert space.cost(space.from_index(1))["params"] == 802426


# --- supernet ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_supernet(space) -> NB201Supernet:
    torch.manual_seed(0)
    return space.build_supernet(num_classes=7, C=4, N=1)


def test_supernet_structure(space):
    sn = space.build_supernet()
    assert sn.edges == {label: PRIMITIVES for label in EDGES}
    search_cells = [c for c in sn.cells if isinstance(c, NB201SearchCell)]
    assert len(search_cells) == 15 and len(sn.cells) == 17
    for cell in search_cells:
        assert list(cell.edges) == list(EDGES)
        for mixed in cell.edges.values():
            assert mixed.candidates == PRIMITIVES
            for bn in (m for m in mixed.modules() if isinstance(m, nn.BatchNorm2d)):
                assert not bn.affine and bn.track_running_stats
    assert sn.classifier.out_features == 10 and sn.classifier.in_features == 64


def test_supernet_dense_forward_default_size(space):
    sn = space.build_supernet(num_classes=10)
    w = {label: torch.softmax(torch.zeros(len(ops)), 0) for label, ops in sn.edges.items()}
    with torch.no_grad():
        assert sn(torch.randn(1, 3, 16, 16), w).shape == (1, 10)


def test_supernet_forward_modes(space, small_supernet):
    x = torch.randn(2, 3, 16, 16)
    alphas = {label: (1e-3 * torch.randn(len(PRIMITIVES))).requires_grad_() for label in EDGES}
    dense = {label: torch.softmax(a, 0) for label, a in alphas.items()}
    out = small_supernet(x, dense)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(a.grad is not None for a in alphas.values())

    arch = space.parse(ANCHORS[6111])
    assert small_supernet(x, space.decisions(arch)).shape == (2, 7)

    paths = {}
    for label, a in alphas.items():
        soft = torch.softmax(a, 0)
        index = int(soft.argmax())
        hard = torch.zeros_like(soft)
        hard[index] = 1.0
        paths[label] = SampledPath(index, hard - soft.detach() + soft)
    for a in alphas.values():
        a.grad = None
    out = small_supernet(x, paths)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(a.grad is not None for a in alphas.values())


def test_single_path_equals_one_hot_dense(space, small_supernet):
    """An int decision runs exactly the op a one-hot weight vector selects."""
    small_supernet.eval()
    x = torch.randn(2, 3, 16, 16)
    arch = space.parse(ANCHORS[0])
    one_hot = {label: nn.functional.one_hot(torch.tensor(arch[label]), len(PRIMITIVES)).float()
               for label in EDGES}
    with torch.no_grad():
        torch.testing.assert_close(small_supernet(x, space.decisions(arch)), small_supernet(x, one_hot))
    small_supernet.train()


def test_supernet_decisions_must_cover_every_label(space, small_supernet):
    decisions = space.decisions(space.from_index(0))
    del decisions["3<-2"]
    with pytest.raises(KeyError, match="3<-2"):
        small_supernet(torch.randn(1, 3, 8, 8), decisions)
    with pytest.raises(KeyError, match="unknown"):
        small_supernet(torch.randn(1, 3, 8, 8), {**space.decisions(space.from_index(0)), "4<-0": 1})


def test_supernet_without_running_stats(space):
    sn = space.build_supernet(C=4, N=1, track_running_stats=False)
    for cell in (c for c in sn.cells if isinstance(c, NB201SearchCell)):
        assert list(cell.buffers()) == []
        bns = [m for m in cell.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(not bn.track_running_stats and bn.running_mean is None for bn in bns)
    # Stem, ResNet blocks and lastact keep their default BNs, as in xautodl.
    assert sn.stem[1].track_running_stats and sn.lastact[0].track_running_stats
    sn.eval()
    arch = space.from_index(6111)
    with torch.no_grad():
        assert sn(torch.randn(2, 3, 8, 8), space.decisions(arch)).shape == (2, 10)


def test_affine_supernet_has_cell_bn_parameters(space):
    sn = space.build_supernet(C=4, N=1, affine=True, track_running_stats=False)
    bn = sn.cells[0].edges["1<-0"].ops[PRIMITIVES.index("nor_conv_3x3")][2]
    assert bn.affine and bn.weight is not None and not bn.track_running_stats


# --- discretize, decisions, sampling -----------------------------------------------------------

def test_discretize_argmax_including_none(space):
    weights = {label: torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15]) for label in EDGES}
    weights["2<-1"] = torch.tensor([0.9, 0.05, 0.02, 0.02, 0.01])  # none wins: kept (NB201 rule)
    weights["3<-2"] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6])
    arch = space.discretize(weights)
    assert arch["2<-1"] == PRIMITIVES.index("none")
    assert arch["3<-2"] == PRIMITIVES.index("avg_pool_3x3")
    assert arch["1<-0"] == PRIMITIVES.index("nor_conv_1x1")
    assert space.discretize({label: nn.functional.one_hot(torch.tensor(v), 5).float()
                             for label, v in space.decisions(arch).items()}) == arch


def test_discretize_errors(space):
    weights = {label: torch.zeros(5) for label in EDGES[:-1]}
    with pytest.raises(KeyError) as info:
        space.discretize(weights)
    assert "3<-2" in str(info.value) and "1<-0" in str(info.value)
    with pytest.raises(ValueError, match="shape"):
        space.discretize({label: torch.zeros(4) for label in EDGES})


def test_decisions(space):
    arch = space.from_index(123)
    assert space.decisions(arch) == {label: arch[label] for label in EDGES}
    assert all(isinstance(v, int) for v in space.decisions(arch).values())


def test_sample_mutate_crossover(space):
    rng = random.Random(0)
    for _ in range(200):
        arch = space.sample(rng)
        space.check(arch)
        child = space.mutate(arch, rng)
        assert sum(arch[label] != child[label] for label in EDGES) == 1
        mixed = space.crossover(arch, child, rng)
        assert all(mixed[label] in (arch[label], child[label]) for label in EDGES)
    assert len({space.sample(rng) for _ in range(100)}) > 90


# --- stand-alone network ----------------------------------------------------------------------

def test_network_forward_and_none_nodes(space):
    arch = space.parse("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    net = space.build_network(arch, num_classes=5, C=8, N=1)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    all_none = space.build_network(uniform_arch(space, "none"), C=8, N=1)
    cell = all_none.cells[0]
    assert isinstance(cell, NB201InferCell) and len(cell.layers) == 0
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(cell(x), torch.zeros_like(x))
    assert all_none(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_network_bns_are_affine_with_running_stats(space):
    net = space.build_network(uniform_arch(space, "nor_conv_3x3"), C=4, N=1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.affine and m.track_running_stats
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


def test_flops(space):
    conv = space.cost(uniform_arch(space, "nor_conv_3x3"))
    pool = space.cost(uniform_arch(space, "avg_pool_3x3"))
    assert pool["flops"] > 0 and conv["flops"] > pool["flops"]
    assert conv["macs"] == conv["flops"] / 2
    assert conv["params"] > pool["params"]


def test_isomorphism_classes_match_the_benchmark_count_and_rules(space):
    keys = [space.isomorphism_key(a) for a in space.enumerate()]
    assert len(set(keys)) == 6466  # NAS-Bench-201 paper: 6,466 unique topologies
    conv = "|nor_conv_3x3~0|+|{}~0|{}~1|+|nor_conv_1x1~0|none~1|none~2|"
    # node 3 reads only node 0: whatever feeds nodes 1 and 2 cannot matter
    assert (space.isomorphism_key(space.parse(conv.format("avg_pool_3x3", "skip_connect")))
            == space.isomorphism_key(space.parse(conv.format("none", "nor_conv_1x1"))))
    # skip_connect passes its input on: conv(x) into node 1 then skip == conv(x) straight to node 2
    a = space.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|")
    b = space.parse("|none~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_1x1~2|")
    c = space.parse("|none~0|+|nor_conv_1x1~0|none~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert space.isomorphism_key(a) == space.isomorphism_key(b) != space.isomorphism_key(c)

