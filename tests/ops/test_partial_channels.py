"""PC-DARTS partial channel connections: channel shuffle, PartialChannelMixedOp, supernets with K > 1."""
import pytest
import torch
import torch.nn.functional as F

import supernets
from ops.mixed import MixedOp, PartialChannelMixedOp, SampledPath, channel_shuffle, channel_unshuffle

NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
DARTS_OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5"]


def _op(candidates=NB201_OPS, C=8, stride=1, k=4, **kw):
    torch.manual_seed(0)
    return PartialChannelMixedOp(candidates, C, stride, affine=False, partial_channels=k, **kw).double()


def _x(C=8, size=4, seed=1):
    return torch.randn(2, C, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _weights(n, seed=2):
    return torch.softmax(torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), 0)


# --- channel shuffle --------------------------------------------------------------------------


@pytest.mark.parametrize("C, groups", [(8, 4), (12, 3), (6, 2), (5, 1)])
def test_channel_shuffle_is_the_reference_permutation_and_unshuffle_inverts_it(C, groups):
    x = torch.arange(C, dtype=torch.float64).view(1, C, 1, 1).expand(2, C, 3, 3).contiguous()
    y = channel_shuffle(x, groups)
    # model_search.channel_shuffle: view (B, g, C/g, H, W), transpose 1 and 2, flatten
    expected = x.view(2, groups, C // groups, 3, 3).transpose(1, 2).reshape(2, C, 3, 3)
    assert torch.equal(y, expected)
    order = y[0, :, 0, 0].long().tolist()
    assert sorted(order) == list(range(C))  # a permutation of the channels
    assert order == [g * (C // groups) + i for i in range(C // groups) for g in range(groups)]
    assert torch.equal(channel_unshuffle(y, groups), x)
    assert torch.equal(channel_shuffle(channel_unshuffle(x, groups), groups), x)


def test_channel_shuffle_keeps_channels_last_and_passes_gradients():
    x = _x().to(memory_format=torch.channels_last).requires_grad_()
    y = channel_shuffle(x, 4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, channel_shuffle(x.detach().contiguous(), 4))
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, channel_unshuffle(upstream, 4))  # the adjoint of a permutation


def test_channel_shuffle_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="groups=3"):
        channel_shuffle(_x(C=8), 3)


# --- PartialChannelMixedOp --------------------------------------------------------------------


def test_candidates_are_built_with_c_over_k_channels():
    op = _op(DARTS_OPS, C=8, k=4, bn_after_pool=True)
    conv = op.ops[DARTS_OPS.index("sep_conv_3x3")]
    assert all(m.in_channels == 2 for m in conv.modules() if isinstance(m, torch.nn.Conv2d))
    pool = op.ops[DARTS_OPS.index("max_pool_3x3")]
    assert isinstance(pool[1], torch.nn.BatchNorm2d) and pool[1].num_features == 2 and not pool[1].affine


@pytest.mark.parametrize("decision", ["dense", "int", "sampled"])
def test_only_the_first_c_over_k_channels_reach_the_candidates(decision):
    op = _op(C=8, k=4)
    w = _weights(5)
    d = {"dense": w, "int": 3, "sampled": SampledPath(3, F.one_hot(torch.tensor(3), 5).double())}[decision]
    x = _x(C=8)
    perturbed = x.clone()
    perturbed[:, 2:] += torch.randn_like(perturbed[:, 2:])  # every channel but the first C/K = 2
    y, y_perturbed = channel_unshuffle(op(x, d), 4), channel_unshuffle(op(perturbed, d), 4)
    assert torch.equal(y[:, :2], y_perturbed[:, :2])  # the candidates' part is unchanged
    assert not torch.allclose(y[:, 2:], y_perturbed[:, 2:])  # the bypass carries the change
    assert torch.allclose(y[:, 2:], x[:, 2:])  # bypassed unchanged (total weight 1)
    reference = MixedOp.forward(op, x[:, :2], d)  # the candidates on the first C/K channels
    assert torch.allclose(y[:, :2], reference)


def test_stride_two_edges_max_pool_the_bypass():
    op = _op(DARTS_OPS, C=8, stride=2, k=4, bn_after_pool=True)
    x = _x(C=8, size=6)
    y = channel_unshuffle(op(x, _weights(8)), 4)
    assert y.shape == (2, 8, 3, 3)
    assert torch.allclose(y[:, 2:], F.max_pool2d(x[:, 2:], 2, 2))
    assert torch.allclose(y[:, :2], MixedOp.forward(op, x[:, :2], _weights(8)))


@pytest.mark.parametrize("stride", [1, 2])
def test_edge_normalization_scales_the_whole_edge(stride):
    """PartialChannelMixedOp(x, softmax(a) * b) == b * PartialChannelMixedOp(x, softmax(a))."""
    op = _op(DARTS_OPS, C=8, stride=stride, k=4, bn_after_pool=True).eval()
    x, w, b = _x(C=8), _weights(8), torch.tensor(0.37, dtype=torch.float64)
    scaled = op(x, w * b)
    assert torch.allclose(scaled, b * op(x, w))
    assert not torch.allclose(scaled, op(x, w))  # the bypass is scaled too, not only the ops


def test_single_path_and_sampled_decisions_leave_the_bypass_unscaled():
    op = _op(C=8, k=4)
    x = _x(C=8)
    soft = _weights(5)
    straight_through = F.one_hot(torch.tensor(2), 5).double() - soft.detach() + soft
    for d in (2, SampledPath(2, straight_through)):
        y = channel_unshuffle(op(x, d), 4)
        assert torch.allclose(y[:, 2:], x[:, 2:])
        assert torch.allclose(y[:, :2], op.ops[2](x[:, :2]))


def test_k_equal_one_is_a_plain_mixed_op():
    partial = _op(DARTS_OPS, C=4, k=1, bn_after_pool=True)
    torch.manual_seed(0)
    plain = MixedOp(DARTS_OPS, 4, 1, affine=False, bn_after_pool=True).double()
    x, w = _x(C=4), _weights(8)
    assert torch.equal(partial(x, w), plain(x, w))
    assert torch.equal(partial(x, 5), plain(x, 5))


def test_bad_partial_channels_and_inputs_are_named():
    with pytest.raises(ValueError, match="partial_channels=3.*C=8"):
        PartialChannelMixedOp(NB201_OPS, 8, 1, partial_channels=3)
    with pytest.raises(ValueError, match="partial_channels=0"):
        PartialChannelMixedOp(NB201_OPS, 8, 1, partial_channels=0)
    op = _op(C=8, k=4)
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        op(_x(C=4), _weights(5))
    with pytest.raises(ValueError, match=r"shape \[5\]"):
        op(_x(C=8), _weights(4))


def test_gradcheck_dense_partial_channels():
    op = _op(C=4, k=2)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: op(x, torch.softmax(a, 0) * b), (x, alpha, beta))


# --- supernets ----------------------------------------------------------------------------------


SPACES = [("nb201", {"C": 8, "N": 1}), ("darts", {"C": 8, "layers": 3})]


@pytest.mark.parametrize("space_name, options", SPACES)
def test_supernets_build_partial_channel_edges_with_the_same_labels(space_name, options):
    space = supernets.get(space_name)
    torch.manual_seed(0)
    plain = space.build_supernet(num_classes=3, in_channels=1, **options)
    torch.manual_seed(0)
    partial = space.build_supernet(num_classes=3, in_channels=1, partial_channels=4, **options)
    assert list(partial.edges) == list(plain.edges) and partial.edges == plain.edges
    edge_types = {type(m) for m in plain.modules() if isinstance(m, MixedOp)}
    assert edge_types == {MixedOp}  # K = 1 (the default) is unchanged
    edges = [m for m in partial.modules() if isinstance(m, MixedOp)]
    assert edges and all(isinstance(m, PartialChannelMixedOp) and m.partial_channels == 4 for m in edges)
    assert sum(p.numel() for p in partial.parameters()) < sum(p.numel() for p in plain.parameters())
    x = torch.randn(2, 1, 8, 8)
    dense = {label: torch.softmax(torch.randn(len(ops)), 0) for label, ops in partial.edges.items()}
    single = {label: 1 for label in partial.edges}
    assert partial(x, dense).shape == partial(x, single).shape == (2, 3)


def test_darts_supernet_pools_keep_their_bn_and_reduction_edges_pool_the_bypass():
    sn = supernets.get("darts").build_supernet(num_classes=3, C=8, layers=3, in_channels=1, partial_channels=4)
    reduce_cell = sn.cells[1]
    assert reduce_cell.reduction
    for op, (label, j, _) in zip(reduce_cell.mixed_ops, reduce_cell.edge_meta):
        assert isinstance(op.bypass_pool, torch.nn.MaxPool2d) == (j < 2), label
        pool = op.ops[DARTS_OPS.index("avg_pool_3x3")]
        assert isinstance(pool[1], torch.nn.BatchNorm2d) and pool[1].num_features == op.channels // 4


@pytest.mark.parametrize("space_name, options", SPACES)
def test_supernet_rejects_k_that_does_not_divide_c(space_name, options):
    with pytest.raises(ValueError, match="partial_channels=3"):
        supernets.get(space_name).build_supernet(num_classes=3, partial_channels=3, **options)
