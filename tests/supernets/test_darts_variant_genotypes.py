"""Published genotypes of the DARTS variants: parameter counts, and FairDARTS's sparse cells."""
import math

import pytest
import torch

import supernets
from supernets.darts import GENOTYPE_META, NODE_LABELS, PRIMITIVES, EDGE_LABELS, Cell
from supernets.labels import edge_label


@pytest.fixture(scope="module")
def space():
    return supernets.get("darts")


def _count(net, auxiliary=False):
    return sum(p.numel() for n, p in net.named_parameters() if auxiliary or "auxiliary" not in n)


@pytest.mark.parametrize("name, params, millions", [
    ("PDARTS", 3_433_798, 3.4),        # P-DARTS paper: 3.4M
    ("SDARTS_ADV", 3_344_806, 3.3),    # SDARTS paper: 3.3M
    ("DARTS_MINUS", 3_454_318, 3.5),   # DARTS- paper: 3.5M
    ("SDARTS_RS", 3_606_166, 3.6),     # (the paper's 3.4M does not match the released genotype)
    ("DRNAS", 4_099_294, 4.1),         # DrNAS README: 4.1M
])
def test_variant_parameter_counts(space, name, params, millions):
    net = space.build_network(space.genotypes[name], C=36, layers=20, auxiliary=True)
    assert _count(net) == params == GENOTYPE_META[name]["params"]
    assert round(params / 1e6, 1) == millions


# FairDARTS README / genotypes.py comments, counted by thop: with the auxiliary head, except c
@pytest.mark.parametrize("letter, published, with_auxiliary", [
    ("A", 2.83, True), ("B", 3.88, True), ("C", 2.59, False), ("D", 3.84, True),
    ("E", 3.12, True), ("F", 3.62, True), ("G", 3.375, True)])
def test_fairdarts_parameter_counts_match_the_published_ones(space, letter, published, with_auxiliary):
    net = space.build_network(space.genotypes[f"FAIRDARTS_{letter}"], C=36, layers=20, auxiliary=True)
    meta = GENOTYPE_META[f"FAIRDARTS_{letter}"]
    assert _count(net) == meta["params"] and _count(net, auxiliary=True) == meta["params_with_auxiliary"]
    scale = 1000 if letter == "G" else 100  # the published figures are truncated, not rounded
    assert math.floor(_count(net, auxiliary=with_auxiliary) / 1e6 * scale) / scale == published


def test_fairdarts_cell_concatenates_only_nodes_with_an_input(space):
    arch = space.genotypes["FAIRDARTS_A"]  # normal: nodes 2, 4, 5 (node 3 receives nothing)
    assert space.is_sparse(arch) and arch["normal/3"] == ()
    net = space.build_network(arch, C=8, layers=5)
    normal = net.cells[0]
    assert normal.sparse and normal.concat == (2, 4, 5) and normal.multiplier == 3
    out = normal(torch.randn(2, 24, 8, 8), torch.randn(2, 24, 8, 8))
    assert out.shape == (2, 3 * 8, 8, 8)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_fairdarts_edge_from_a_node_without_input_is_skipped(space):
    arch = space.genotypes["FAIRDARTS_C"]  # normal node 5 reads node 3, which receives nothing
    assert ((PRIMITIVES.index("skip_connect"), 3) in arch["normal/5"]) and arch["normal/3"] == ()
    cell = space.build_network(arch, C=8, layers=5).cells[0]
    assert [(node, j) for node, j, _, _ in cell.op_meta if node == 5] == [(5, 0)]


def test_fairdarts_drop_path_is_per_node_and_spares_no_identity():
    # node 2 = skip(s0) + skip(s1): DARTS would keep both identities; FairDARTS drops the node
    cell = Cell([[("skip_connect", 0), ("skip_connect", 1)], [], [("sep_conv_3x3", 2)], []],
                C_prev_prev=4, C_prev=4, C=4, reduction=False, reduction_prev=False, sparse=True).train()
    out = cell(torch.randn(8, 4, 6, 6), torch.randn(8, 4, 6, 6), drop_prob=1.0 - 1e-7)
    assert cell.concat == (2, 4) and torch.equal(out, torch.zeros_like(out))


def test_discretize_threshold_is_fairdarts_threshold_sparse(space):
    weights = {label: torch.full((8,), 0.1) for label in EDGE_LABELS}
    sep3, skip = PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("skip_connect")
    weights[edge_label("normal/2", 0)][sep3] = 0.9    # kept
    weights[edge_label("normal/2", 1)][skip] = 0.8    # a top-2 edge below 0.85: dropped
    weights[edge_label("normal/3", 2)][skip] = 0.95   # kept: node 3 has one input
    weights[edge_label("normal/4", 3)][sep3] = 0.99
    weights[edge_label("normal/4", 0)][sep3] = 0.97
    weights[edge_label("normal/4", 1)][skip] = 0.96   # third best: not a top-2 edge
    for label in EDGE_LABELS:
        weights[label][PRIMITIVES.index("none")] = 0.99  # 'none' never counts
    arch = space.discretize_threshold(weights, 0.85)
    assert arch["normal/2"] == ((sep3, 0),)
    assert arch["normal/3"] == ((skip, 2),)
    assert arch["normal/4"] == ((sep3, 3), (sep3, 0))
    assert arch["normal/5"] == () and arch["reduce/2"] == ()
    assert space.parse(space.format(arch)) == arch


def test_darts_cell_refuses_a_node_without_input(space):
    with pytest.raises(ValueError, match="cell='darts' needs two entries"):
        space.build_network(space.genotypes["FAIRDARTS_A"], C=8, layers=5, cell="darts")
    net = space.build_network(space.genotypes["FAIRDARTS_D"], C=8, layers=5, cell="fairdarts")
    assert net.cells[0].sparse


def test_fairdarts_text_with_too_many_entries_is_refused(space):
    text = space.format(space.genotypes["FAIRDARTS_A"]).replace(
        "('max_pool_3x3', 4, 0)", "('max_pool_3x3', 4, 0), ('skip_connect', 4, 1), ('skip_connect', 4, 2)")
    with pytest.raises(ValueError, match="at most 2 per node"):
        space.parse(text)


def test_cell_reads_a_flat_genotype_written_as_json_lists(space):
    flat = space.genotype_lists(space.genotypes["DARTS_V2"])["normal"]
    as_json = [list(entry) for entry in flat]
    a = Cell(flat, 4, 4, 4, reduction=False, reduction_prev=False)
    b = Cell(as_json, 4, 4, 4, reduction=False, reduction_prev=False)
    assert a.op_meta == b.op_meta and a.multiplier == b.multiplier == 4
