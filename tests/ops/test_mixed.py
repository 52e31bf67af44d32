"""MixedOp: the three decision kinds, checked against autograd in float64."""
import pytest
import torch

from ops import MixedOp, SampledPath, weighted_sum

CANDIDATES = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def _op(stride=1, **kw):
    torch.manual_seed(0)
    return MixedOp(CANDIDATES, 3, stride, affine=False, **kw).double()


def test_dense_is_the_weighted_sum_of_every_candidate():
    op = _op()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w = torch.softmax(torch.randn(5, dtype=torch.float64), 0)
    expected = sum(w[k] * op.ops[k](x) for k in range(5))
    assert torch.allclose(op(x, w), expected)


def test_gradcheck_dense_against_autograd():
    op = _op()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: op(x, torch.softmax(a, 0)), (x, alpha))


def test_gradcheck_single_path():
    op = _op()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: op(x, 3), (x,))


def test_gradcheck_sampled_path_straight_through():
    op = _op()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(alpha, 0)
    hard = torch.nn.functional.one_hot(torch.tensor(2), 5).double()
    # the input gradient is exact: only candidate 2 runs, scaled by 1
    fixed = (hard - soft.detach() + soft).detach()
    assert torch.autograd.gradcheck(lambda x: op(x, SampledPath(2, fixed)), (x,))
    # the architecture gradient is the soft one: d/dalpha of soft[2]*op_2(x) + sum_{k!=2} soft[k]
    upstream = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    (op(x, SampledPath(2, hard - soft.detach() + soft)) * upstream).sum().backward()
    straight_through = alpha.grad.clone()
    alpha.grad = None
    soft = torch.softmax(alpha, 0)
    relaxed = soft[2] * op.ops[2](x) + sum(soft[k] for k in range(5) if k != 2)
    expected, = torch.autograd.grad((relaxed * upstream).sum(), alpha)
    assert torch.allclose(straight_through, expected)


def test_sampled_path_runs_only_the_chosen_candidate_and_scales_by_one():
    op = _op()
    calls = []
    for k, m in enumerate(op.ops):
        m.register_forward_hook(lambda *_, k=k: calls.append(k))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    soft = torch.softmax(torch.randn(5, dtype=torch.float64), 0)
    hard = torch.nn.functional.one_hot(torch.tensor(3), 5).double()
    y = op(x, SampledPath(3, hard - soft.detach() + soft))
    assert calls == [3]
    assert torch.allclose(y, op.ops[3](x))


def test_single_path_runs_one_candidate():
    op = _op()
    calls = []
    for k, m in enumerate(op.ops):
        m.register_forward_hook(lambda *_, k=k: calls.append(k))
    op(torch.randn(1, 3, 4, 4, dtype=torch.float64), 1)
    assert calls == [1]


def test_bad_decisions_are_named():
    op = _op()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \[5\]"):
        op(x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(IndexError):
        op(x, 7)
    with pytest.raises(TypeError):
        op(x, "skip_connect")


def test_bn_after_pool_only_on_pools():
    op = MixedOp(["max_pool_3x3", "sep_conv_3x3", "avg_pool_3x3"], 4, 1, bn_after_pool=True)
    assert isinstance(op.ops[0][1], torch.nn.BatchNorm2d) and not op.ops[0][1].affine
    assert isinstance(op.ops[2][1], torch.nn.BatchNorm2d)
    assert type(op.ops[1]).__name__ == "SepConv"  # convolutions get no extra BN


def test_weighted_sum_uncomputed_terms_carry_gradient():
    w = torch.tensor([0.0, 1.0], requires_grad=True)
    out = weighted_sum(w, [None, torch.ones(3)])
    out.sum().backward()
    assert torch.equal(w.grad, torch.tensor([3.0, 3.0]))


@pytest.mark.parametrize("unsampled_gradient", [True, False])
def test_sampled_path_unsampled_gradient_option(unsampled_gradient):
    """True (xautodl NAS201SearchCell.forward_gdas): d out / d w[k] = sum(upstream) for every
    unsampled k; False (xautodl NASNet MixedOp.forward_gdas, ops[i](x) * w[i]): 0. The forward
    value and d out / d w[index] are the same."""
    op = _op()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    upstream = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = torch.nn.functional.one_hot(torch.tensor(2), 5).double().requires_grad_()
    path = SampledPath(2, w, unsampled_gradient=unsampled_gradient)
    assert path.unsampled_gradient is unsampled_gradient and SampledPath(2, w).unsampled_gradient
    y = op(x, path)
    assert torch.equal(y, op.ops[2](x))
    (y * upstream).sum().backward()
    unsampled = torch.tensor([0, 1, 3, 4])
    expected = upstream.sum() if unsampled_gradient else torch.tensor(0.0, dtype=torch.float64)
    assert torch.allclose(w.grad[unsampled], expected.expand(4))
    assert torch.allclose(w.grad[2], (op.ops[2](x) * upstream).sum())


def test_sampled_path_without_unsampled_gradient_arch_gradient():
    """d/dalpha is that of soft[i] * op_i(x) alone (no scalar terms of the other candidates)."""
    op = _op()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    upstream = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(alpha, 0)
    hard = torch.nn.functional.one_hot(torch.tensor(3), 5).double()
    (op(x, SampledPath(3, hard - soft.detach() + soft, unsampled_gradient=False)) * upstream).sum().backward()
    soft = torch.softmax(alpha, 0)
    expected, = torch.autograd.grad((soft[3] * op.ops[3](x) * upstream).sum(), alpha)
    assert torch.allclose(alpha.grad, expected)


def test_dense_pair_decision_runs_two_candidates_summed():
    op = _op().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    pair = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(op(x, pair), op.ops[1](x) + op.ops[3](x))
