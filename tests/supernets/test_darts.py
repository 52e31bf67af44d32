"""The DARTS space: genotype encoding, published parameter counts, networks, DARTS rule."""
from __future__ import annotations

import random

import pytest
import torch

import supernets
from ops.mixed import MixedOp, SampledPath
from supernets.base import Arch, count_parameters
from supernets.darts import (EDGE_LABELS, GENOTYPE_META, NODE_LABELS, PRIMITIVES, Cell,
                             DartsSupernet, NetworkImageNet, drop_path)

DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


@pytest.fixture(scope="module")
def space():
    return supernets.get("darts")


def _uniform_weights() -> dict[str, torch.Tensor]:
    return {label: torch.full((8,), 1 / 8) for label in EDGE_LABELS}


# --- encoding -------------------------------------------------------------------------------


def test_published_genotypes_are_built_in(space):
    assert set(space.genotypes) == {"DARTS_V1", "DARTS_V2", "PC_DARTS", "GDAS", "PDARTS", "SDARTS_RS",
                                    "SDARTS_ADV", "DARTS_MINUS", "DRNAS", *(f"FAIRDARTS_{k}" for k in "ABCDEFG")}
    assert set(GENOTYPE_META) == set(space.genotypes)
    v2 = space.genotypes["DARTS_V2"]
    assert list(v2) == list(NODE_LABELS)
    assert v2["normal/2"] == ((4, 0), (4, 1))  # sep_conv_3x3 from inputs 0 and 1
    assert v2["normal/5"] == ((3, 0), (6, 2))  # skip_connect 0, dil_conv_3x3 2


@pytest.mark.parametrize("name", sorted(GENOTYPE_META))
def test_format_parse_round_trip(space, name):
    arch = space.genotypes[name]
    text = space.format(arch)
    assert space.parse(text) == arch
    assert space.format(space.parse(text)) == text
    assert space.load(text) == arch
    assert Arch.from_json(arch.to_json()) == arch


def test_format_is_the_genotype_repr(space):
    assert space.format(space.genotypes["DARTS_V2"]) == DARTS_V2_TEXT
    assert space.parse(DARTS_V2_TEXT) == space.genotypes["DARTS_V2"]


def test_parse_accepts_range_concat_as_printed_during_search(space):
    text = DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")
    assert text.count("range(2, 6)") == 2
    assert space.parse(text) == space.genotypes["DARTS_V2"]


@pytest.mark.parametrize("text, message", [
    (DARTS_V2_TEXT.replace("'dil_conv_3x3', 2", "'conv_9x9', 2"), "unknown op 'conv_9x9'.*sep_conv_3x3"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "input 5 is out of range for node 5"),
    (DARTS_V2_TEXT.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ", "", 1), "6 entries.*needs 8"),
    (DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4]"), "normal_concat"),
    (DARTS_V2_TEXT.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(2, 5)"), "reduce_concat"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "NAS-Bench-201 string; use --space nb201"),
    (DARTS_V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing reduce_concat"),
    ("Genotype(normal=[(__import__('os').getcwd(), 0)] * 8, normal_concat=[2, 3, 4, 5], "
     "reduce=[], reduce_concat=[2, 3, 4, 5])", "literal"),
    ("Genotype(normal=[", "cannot read"),
])
def test_parse_errors_name_the_problem(space, text, message):
    with pytest.raises(ValueError, match=message):
        space.parse(text)


def test_other_space_arch_is_rejected(space):
    with pytest.raises(ValueError, match="nb201"):
        space.format(Arch("nb201", {"1<-0": 1}))


# --- stand-alone network --------------------------------------------------------------------


@pytest.mark.parametrize("name, params, millions", [
    ("DARTS_V1", 3_169_414, 3.2),  # the paper says 3.3M; see GENOTYPE_META["DARTS_V1"]["note"]
    ("DARTS_V2", 3_349_342, 3.3),
    ("PC_DARTS", 3_634_678, 3.6),
    ("GDAS", 3_368_782, 3.4),
])
def test_published_parameter_counts(space, name, params, millions):
    net = space.build_network(space.genotypes[name], num_classes=10, C=36, layers=20, auxiliary=True)
    measured = count_parameters(net, exclude="auxiliary")
    assert measured == params == GENOTYPE_META[name]["params"]
    assert round(measured / 1e6, 1) == millions
    assert count_parameters(net) > measured  # the auxiliary head is there, and excluded
    if name != "DARTS_V1":
        assert round(measured / 1e6, 1) == GENOTYPE_META[name]["params_m"]


def test_cost_reports_params_without_auxiliary_and_flops(space):
    arch = space.genotypes["DARTS_V2"]
    cost = space.cost(arch, C=8, layers=5, auxiliary=True)
    net = space.build_network(arch, C=8, layers=5, auxiliary=True)
    assert cost["params"] == count_parameters(net, exclude="auxiliary") < count_parameters(net)
    assert cost["flops"] == 2 * cost["macs"] > 0


def test_published_flops_of_darts_v2(space):
    cost = space.cost(space.genotypes["DARTS_V2"])  # C=36, 20 cells, 1x3x32x32
    assert cost["params"] == 3_349_342
    assert round(cost["macs"] / 1e6) == 528  # DARTS_V2's published 528M multiply-adds


def test_auxiliary_head_after_cell_13_in_training_only(space):
    net = space.build_network(space.genotypes["DARTS_V2"], num_classes=7, C=8, layers=20, auxiliary=True)
    assert net.aux_position == 13 and net.cells[13].reduction
    seen = []
    net.auxiliary_head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape))
    x = torch.randn(2, 3, 32, 32)
    net.train()
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 7)
    assert seen == [torch.Size([2, 4 * 32, 8, 8])]  # cell 13 output: 4 nodes x 4C channels, 8x8
    net.eval()
    assert net(x).shape == (2, 7)
    assert len(seen) == 1  # not run in eval mode
    plain = space.build_network(space.genotypes["DARTS_V2"], C=8, layers=20).train()
    assert not hasattr(plain, "auxiliary_head") and plain(x).shape == (2, 10)


def test_drop_path_zero_probability_is_identity():
    x = torch.randn(4, 3, 2, 2)
    assert drop_path(x, 0.0) is x


def test_drop_path_scales_survivors_by_keep_prob():
    torch.manual_seed(0)
    out = drop_path(torch.ones(4000, 2, 3, 3), 0.3)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # one draw per sample
    kept = per_sample[:, 0] > 0
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert torch.equal(per_sample[~kept], torch.zeros_like(per_sample[~kept]))
    survivors = kept.float().mean().item()
    assert abs(survivors - 0.7) < 0.05
    assert abs(out.mean().item() - 1.0) < 0.07  # unbiased


def test_network_drop_path_is_read_from_the_attribute(space):
    torch.manual_seed(0)
    net = space.build_network(space.genotypes["DARTS_V2"], C=8, layers=5).train()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(net(x), net(x))  # p = 0: deterministic in training mode
    net.drop_path_prob = 0.5
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))  # never in eval mode


def test_drop_path_spares_identity_edges():
    # node 2 = skip_connect(s0) + sep_conv(s1); node 3 = sep_conv(s0) + dil_conv(s1); ...
    genotype = [("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("skip_connect", 2), ("skip_connect", 3), ("max_pool_3x3", 0), ("avg_pool_3x3", 1)]
    C = 4
    cell = Cell(genotype, C_prev_prev=6, C_prev=6, C=C, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(8, 6, 8, 8), torch.randn(8, 6, 8, 8)
    torch.manual_seed(0)
    out = cell(s0, s1, drop_prob=1.0 - 1e-7)  # every droppable op output is zeroed
    node2, node3, node4, node5 = out.split(C, dim=1)
    assert torch.equal(node2, cell.preprocess0(s0))  # identity survived, sep_conv dropped
    assert torch.equal(node3, torch.zeros_like(node3))
    assert torch.equal(node4, node2 + node3)  # two identities
    assert torch.equal(node5, torch.zeros_like(node5))  # pooling is dropped


# --- ImageNet mobile network (model.py NetworkImageNet, train_imagenet.py) -------------------


def test_darts_v2_imagenet_has_the_published_params_and_measured_macs(space):
    """DARTS paper Table 3: 4.7M params, 574M multiply-adds at C=48, 14 cells, 224x224."""
    cost = space.cost(space.genotypes["DARTS_V2"], num_classes=1000, input_size=(1, 3, 224, 224),
                      C=48, layers=14, network="imagenet", auxiliary=True)
    assert cost["params"] == 4_718_752 and round(cost["params"] / 1e6, 1) == 4.7  # auxiliary excluded
    # torch's counter (convs + the classifier) gives 530M, not the paper's 574M: quark0/darts
    # issue #46 reports 523M (conv + fc) and 545M (ptflops) for the same network.
    assert round(cost["macs"] / 1e6) == 530
    assert 0.07 < 1 - cost["macs"] / 574e6 < 0.08


def test_imagenet_network_stems_cells_and_heads_at_224(space):
    net = space.build_network(space.genotypes["DARTS_V2"], num_classes=7, C=8, layers=5,
                              auxiliary=True, network="imagenet")
    assert isinstance(net, NetworkImageNet)
    assert [i for i, cell in enumerate(net.cells) if cell.reduction] == [1, 3] and net.aux_position == 3
    assert type(net.cells[0].preprocess0).__name__ == "FactorizedReduce"  # stem0 is 2x stem1's size
    assert net.stem0[0].stride == (2, 2) and net.stem0[0].out_channels == 4  # C // 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 768
                   for m in net.auxiliary_head.modules())  # DARTS comments this BN out
    seen = []
    net.stem1.register_forward_hook(lambda m, inputs, out: seen.append(("stem1", out.shape)))
    net.auxiliary_head.register_forward_hook(lambda m, inputs, out: seen.append(("aux", inputs[0].shape)))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits, aux = net.train()(x)
        assert logits.shape == aux.shape == (1, 7)
        assert seen == [("stem1", (1, 8, 28, 28)), ("aux", (1, 4 * 4 * 8, 7, 7))]
        assert net.eval()(x).shape == (1, 7) and len(seen) == 3  # no auxiliary head in eval


def test_build_network_rejects_an_unknown_network(space):
    with pytest.raises(ValueError, match="'mobile'.*accepted: cifar, imagenet"):
        space.build_network(space.genotypes["DARTS_V2"], C=8, layers=5, network="mobile")


# --- supernet ------------------------------------------------------------------------------


def test_supernet_edges_are_28_labels_in_darts_order(space):
    sn = space.build_supernet(num_classes=10)
    assert isinstance(sn, DartsSupernet)
    expected = [f"{t}/{i}<-{j}" for t in ("normal", "reduce") for i in range(2, 6) for j in range(i)]
    assert list(sn.edges) == expected == list(EDGE_LABELS)
    assert expected[:5] == ["normal/2<-0", "normal/2<-1", "normal/3<-0", "normal/3<-1", "normal/3<-2"]
    assert all(ops == PRIMITIVES for ops in sn.edges.values())
    assert len(sn.cells) == 8 and [c.reduction for c in sn.cells].count(True) == 2
    assert sn.cells[2].reduction and sn.cells[5].reduction


def test_supernet_bn_is_affine_only_in_the_stem(space):
    sn = space.build_supernet(C=4, layers=5)
    affine = [n for n, m in sn.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and m.affine]
    assert affine == ["stem.1"]


@pytest.fixture()
def small_supernet(space):
    torch.manual_seed(0)
    return space.build_supernet(num_classes=10, C=4, layers=5)


def test_supernet_dense_forward_and_arch_gradient(small_supernet):
    alphas = {label: torch.zeros(8, requires_grad=True) for label in EDGE_LABELS}
    logits = small_supernet(torch.randn(2, 3, 16, 16), {k: a.softmax(0) for k, a in alphas.items()})
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas.values())


def test_supernet_runs_a_genotype_and_skips_absent_edges(space, small_supernet):
    decisions = space.decisions(space.genotypes["DARTS_V2"])
    assert list(decisions) == list(EDGE_LABELS)
    assert decisions["normal/2<-0"] == 4 and decisions["normal/5<-1"] is None
    assert sum(d is not None for d in decisions.values()) == 16
    x = torch.randn(2, 3, 16, 16)
    small_supernet.train()
    logits = small_supernet(x, decisions)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    for cell in small_supernet.cells:
        for op, (label, _, _) in zip(cell.mixed_ops, cell.edge_meta):
            grads = [p.grad for p in op.parameters()]
            if decisions[label] is None:  # absent edges are never run
                assert all(g is None for g in grads)
    # the same as dense one-hot weights ('none' on absent edges), so labels map to the right edges
    one_hot = {label: torch.nn.functional.one_hot(torch.tensor(0 if d is None else d), 8).float()
               for label, d in decisions.items()}
    assert torch.allclose(small_supernet(x, one_hot), logits, atol=1e-6)


def test_supernet_sampled_path_forward(small_supernet):
    soft = torch.zeros(8, requires_grad=True)
    probs = soft.softmax(0)
    decisions = {}
    for k, label in enumerate(EDGE_LABELS):
        index = 1 + k % 7
        hard = torch.nn.functional.one_hot(torch.tensor(index), 8).float()
        decisions[label] = SampledPath(index, hard - probs.detach() + probs)
    logits = small_supernet(torch.randn(2, 3, 16, 16), decisions)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert soft.grad is not None


def _pool_bns(sn):
    """BatchNorms that follow a pooling candidate inside a MixedOp."""
    found = []
    for name, m in sn.named_modules():
        if isinstance(m, MixedOp):
            for cand, op in zip(m.candidates, m.ops):
                if "pool" in cand and isinstance(op, torch.nn.Sequential):
                    found += [b for b in op if isinstance(b, torch.nn.BatchNorm2d)]
    return found


def test_supernet_defaults_are_darts_model_search(space):
    """Defaults unchanged: BN after every pool, no last activation, DARTS's parameter count."""
    sn = space.build_supernet()
    explicit = space.build_supernet(bn_after_pool=True, last_activation=False)
    assert count_parameters(sn) == count_parameters(explicit) == 1_930_618  # the count before the options
    assert list(sn.state_dict()) == list(explicit.state_dict()) and len(sn.state_dict()) == 4186
    assert sn.lastact is None and not any(k.startswith("lastact") for k in sn.state_dict())
    assert len(_pool_bns(sn)) == 8 * 14 * 2  # 8 cells x 14 edges x 2 pools


def test_supernet_gdas_options_drop_pool_bn_and_add_bn_relu_before_pooling(space):
    """xautodl cell_operations.POOLING has no BN; NASNetworkGDAS.lastact is BN + ReLU."""
    torch.manual_seed(0)
    default = space.build_supernet(C=4, layers=5)
    torch.manual_seed(0)
    sn = space.build_supernet(C=4, layers=5, bn_after_pool=False, last_activation=True)
    assert _pool_bns(default) and not _pool_bns(sn)
    for m in sn.modules():
        if isinstance(m, MixedOp):
            for cand, op in zip(m.candidates, m.ops):
                if "pool" in cand:
                    assert isinstance(op, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)), (cand, op)
    bn, relu = sn.lastact
    C_prev = sn.classifier.in_features
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.affine and bn.num_features == C_prev
    assert isinstance(relu, torch.nn.ReLU)
    # parameters: only the affine BN's 2 * C_prev more (the pool BNs are not affine)
    assert count_parameters(sn) == count_parameters(default) + 2 * C_prev
    pool_bn_keys = {k for k in default.state_dict() if k not in sn.state_dict()}
    assert pool_bn_keys and all(".ops.1.1." in k or ".ops.2.1." in k for k in pool_bn_keys)
    assert set(sn.state_dict()) - set(default.state_dict()) == {f"lastact.0.{k}" for k in bn.state_dict()}
    # the global pooling sees relu(bn(last cell output))
    seen = {}
    sn.cells[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("cell", out))
    sn.global_pooling.register_forward_hook(lambda m, a, out: seen.__setitem__("pool_in", a[0]))
    sn.eval()
    with torch.no_grad():
        sn(torch.randn(2, 3, 16, 16), {label: 4 for label in EDGE_LABELS})
        torch.testing.assert_close(seen["pool_in"], torch.relu(bn(seen["cell"])))
    assert (seen["pool_in"] >= 0).all()


def test_supernet_gdas_options_with_partial_channels(space):
    sn = space.build_supernet(C=8, layers=3, partial_channels=4, bn_after_pool=False)
    assert not _pool_bns(sn)


def test_supernet_sampled_path_gradient_of_unsampled_weights(small_supernet):
    """unsampled_gradient=False (xautodl NASNet MixedOp.forward_gdas): d out / d w[k] = 0 for the
    unsampled k; True (NB201 forward_gdas): every unsampled weight gets the summed term."""
    x = torch.randn(2, 3, 16, 16)
    small_supernet.eval()  # running statistics: the forward values can be compared exactly
    single_path = small_supernet(x, {label: 1 + k % 7 for k, label in enumerate(EDGE_LABELS)})
    grads = {}
    for flag in (True, False):
        weights = {label: torch.nn.functional.one_hot(torch.tensor(1 + k % 7), 8).float().requires_grad_()
                   for k, label in enumerate(EDGE_LABELS)}
        decisions = {label: SampledPath(1 + k % 7, weights[label], unsampled_gradient=flag)
                     for k, label in enumerate(EDGE_LABELS)}
        out = small_supernet(x, decisions)
        assert torch.equal(out, single_path)  # the same forward value either way
        out.sum().backward()
        grads[flag] = {label: w.grad for label, w in weights.items()}
    for k, label in enumerate(EDGE_LABELS):
        index = 1 + k % 7
        unsampled = [j for j in range(8) if j != index]
        assert torch.all(grads[False][label][unsampled] == 0), label
        assert grads[True][label][unsampled].abs().sum() > 0, label
        assert grads[False][label][index] != 0 and grads[True][label][index] != 0


def test_supernet_missing_label_names_it(small_supernet):
    decisions = {label: 0 for label in EDGE_LABELS if label != "reduce/4<-3"}
    with pytest.raises(KeyError, match="reduce/4<-3"):
        small_supernet(torch.randn(1, 3, 16, 16), decisions)


# --- decisions and the DARTS rule -----------------------------------------------------------


def test_decisions_errors(space):
    bad_label = Arch("darts", {("norm/2" if k == "normal/2" else k): v
                               for k, v in space.genotypes["DARTS_V2"].items()})
    with pytest.raises(KeyError, match="normal/2"):
        space.decisions(bad_label)
    bad_op = dict(space.genotypes["DARTS_V2"])
    bad_op["normal/3"] = ((8, 1), (5, 0))
    with pytest.raises(ValueError, match="op index 8"):
        space.decisions(Arch("darts", bad_op))


def _shared_input_arch(space):
    """DARTS_V2 with normal node 3 taking sep_conv_3x3 and sep_conv_5x5 both from input 1 and
    reduce node 4 taking max_pool_3x3 twice from input 0."""
    choices = dict(space.genotypes["DARTS_V2"])
    choices["normal/3"] = ((4, 1), (5, 1))
    choices["reduce/4"] = ((1, 0), (1, 0))
    return Arch("darts", choices)


def test_decisions_run_two_ops_of_one_edge_as_a_dense_pair(space, small_supernet):
    arch = _shared_input_arch(space)
    decisions = space.decisions(arch)
    pair = decisions["normal/3<-1"]
    assert torch.equal(pair, torch.tensor([0.0, 0, 0, 0, 1, 1, 0, 0]))
    assert torch.equal(decisions["reduce/4<-0"], torch.tensor([0.0, 2, 0, 0, 0, 0, 0, 0]))
    assert decisions["normal/3<-0"] is None and decisions["normal/3<-2"] is None
    assert decisions["normal/2<-0"] == 4  # other nodes keep int decisions
    small_supernet.eval()
    seen = {}
    for cell in small_supernet.cells:
        for op, (label, _, _) in zip(cell.mixed_ops, cell.edge_meta):
            if label in ("normal/3<-1", "reduce/4<-0"):
                op.register_forward_hook(lambda m, args, out, label=label: seen.setdefault(label, []).append(
                    (m, args[0], out)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert small_supernet(x, decisions).shape == (2, 10)
        for m, h, out in seen["normal/3<-1"]:  # the edge outputs sep_conv_3x3(h) + sep_conv_5x5(h)
            torch.testing.assert_close(out, m.ops[4](h) + m.ops[5](h))
        for m, h, out in seen["reduce/4<-0"]:  # the same op listed twice counts twice
            torch.testing.assert_close(out, 2 * m.ops[1](h))
    assert len(seen["normal/3<-1"]) == 3 and len(seen["reduce/4<-0"]) == 2


def test_build_network_runs_a_genotype_with_a_shared_input(space):
    arch = _shared_input_arch(space)
    net = space.build_network(arch, C=4, layers=5)
    cell = net.cells[0]  # normal: node 3's two ops both read state 1
    assert [j for _, j, _, _ in cell.op_meta[2:4]] == [1, 1]
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert space.parse(space.format(arch)) == arch


def test_discretize_missing_or_unknown_label_raises_key_error(space):
    weights = _uniform_weights()
    del weights["reduce/5<-4"]
    with pytest.raises(KeyError, match="reduce/5<-4"):
        space.discretize(weights)
    with pytest.raises(KeyError, match="unknown"):
        space.discretize({**_uniform_weights(), "1<-0": torch.ones(8)})


def test_discretize_follows_the_darts_rule(space):
    weights = _uniform_weights()
    # normal node 3: 'none' dominates edge 0 but is ignored; edge 2 has the best non-none op
    # (0.90), edge 0 the second best (0.13 > edge 1's uniform 0.125), so the order is 2 then 0.
    weights["normal/3<-0"] = torch.tensor([0.80, 0.01, 0.01, 0.01, 0.13, 0.01, 0.02, 0.01])
    weights["normal/3<-2"] = torch.tensor([0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.90])
    # normal node 4: all ties -> stable order keeps inputs 0 and 1, first non-none op (max_pool)
    # reduce node 5: edge 3 > edge 1 by max non-none weight, ties inside an edge -> first op
    weights["reduce/5<-1"] = torch.tensor([0.00, 0.10, 0.10, 0.20, 0.20, 0.20, 0.10, 0.10])
    weights["reduce/5<-3"] = torch.tensor([0.00, 0.05, 0.05, 0.05, 0.05, 0.30, 0.20, 0.30])
    arch = space.discretize(weights)
    assert arch["normal/3"] == ((7, 2), (4, 0))
    assert arch["normal/4"] == ((1, 0), (1, 1))
    assert arch["normal/2"] == ((1, 0), (1, 1))
    assert arch["reduce/5"] == ((5, 3), (3, 1))
    assert all(op != 0 for value in arch.values() for op, _ in value)  # never 'none'
    assert space.parse(space.format(arch)) == arch


def test_discretize_recovers_a_genotype_from_its_decisions(space):
    for name, arch in space.genotypes.items():
        if space.is_sparse(arch):  # FairDARTS cells come from discretize_threshold
            continue
        weights = {}
        for rank, (label, d) in enumerate(space.decisions(arch).items()):
            w = torch.full((8,), 0.01)
            w[0] = 0.5  # a large 'none' everywhere must not matter
            if d is not None:
                w[d] = 0.3
            weights[label] = w
        recovered = space.discretize(weights)
        # the rule lists kept inputs in descending weight order: here ties -> ascending input
        expected = {label: tuple(sorted(pair, key=lambda p: p[1])) for label, pair in arch.items()}
        assert dict(recovered) == expected, name


def test_discretize_pairs_keeps_the_top_two_op_input_pairs(space):
    """xautodl NASNetworkGDAS.genotype: rank all non-none (op, input) pairs of a node, keep 2."""
    weights = _uniform_weights()
    # normal node 3: the two best pairs are both on input 1 (sep_conv_3x3 0.40, sep_conv_5x5 0.35);
    # 'none' on input 0 is larger but ignored; input 2's best (0.30) comes third
    weights["normal/3<-0"] = torch.tensor([0.90, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01])
    weights["normal/3<-1"] = torch.tensor([0.05, 0.04, 0.04, 0.04, 0.40, 0.35, 0.04, 0.04])
    weights["normal/3<-2"] = torch.tensor([0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.30, 0.10])
    # reduce node 5: two pairs tie at 0.30 on input 3 and both beat input 1's best (0.25)
    weights["reduce/5<-1"] = torch.tensor([0.00, 0.10, 0.10, 0.20, 0.25, 0.15, 0.10, 0.10])
    weights["reduce/5<-3"] = torch.tensor([0.00, 0.05, 0.05, 0.05, 0.05, 0.30, 0.20, 0.30])
    arch = space.discretize_pairs(weights)
    assert arch["normal/3"] == ((4, 1), (5, 1))  # two ops from the same input
    assert space.discretize(weights)["normal/3"] == ((4, 1), (6, 2))  # DARTS: distinct inputs
    # ties: the stable order keeps input 0 first, then the lower op index (max_pool_3x3 = 1, then 2)
    assert arch["normal/2"] == ((1, 0), (2, 0))
    assert arch["reduce/5"] == ((5, 3), (7, 3))  # 0.30 twice on input 3, beating input 1's 0.25
    assert all(op != 0 for value in arch.values() for op, _ in value)  # never 'none'
    assert space.parse(space.format(arch)) == arch
    decisions = space.decisions(arch)  # runnable in the supernet
    assert torch.equal(decisions["normal/3<-1"], torch.tensor([0.0, 0, 0, 0, 1, 1, 0, 0]))
    with pytest.raises(KeyError, match="reduce/5<-4"):
        space.discretize_pairs({k: v for k, v in weights.items() if k != "reduce/5<-4"})


def test_discretize_pairs_equals_the_darts_rule_when_best_pairs_use_distinct_inputs(space):
    for arch in space.genotypes.values():
        if space.is_sparse(arch) or any(a[1] == b[1] for a, b in arch.values()):
            continue
        weights = {}
        for label, d in space.decisions(arch).items():
            w = torch.full((8,), 0.01)
            w[0] = 0.5
            if d is not None:
                w[d] = 0.3
            weights[label] = w
        assert space.discretize_pairs(weights) == space.discretize(weights)


# --- sampling and evolution -----------------------------------------------------------------


def _assert_valid(space, arch):
    assert list(arch) == list(NODE_LABELS)
    for label, ((op_a, j_a), (op_b, j_b)) in arch.items():
        node = int(label.split("/")[1])
        assert j_a != j_b and 0 <= j_a < node and 0 <= j_b < node
        assert 1 <= op_a < 8 and 1 <= op_b < 8
    assert space.parse(space.format(arch)) == arch
    space.decisions(arch)


def test_sample_mutate_crossover_give_valid_archs(space):
    rng = random.Random(0)
    inputs_seen = set()
    for _ in range(200):
        arch = space.sample(rng)
        _assert_valid(space, arch)
        inputs_seen.update(j for _, j in arch["normal/5"])
        child = space.mutate(arch, rng)
        _assert_valid(space, child)
        assert child != arch
        assert sum(child[k] != arch[k] for k in arch) == 1
        _assert_valid(space, space.crossover(arch, child, rng))
    assert inputs_seen == {0, 1, 2, 3, 4}
    for arch in space.genotypes.values():
        if not space.is_sparse(arch):
            _assert_valid(space, space.mutate(arch, rng))
