"""Dense mixing through the fused kernels (ops.fused_mixing) against the candidate-by-candidate sum.

Edge level in float32 (DARTS, PC-DARTS and NB201 edges: outputs, every gradient, BN buffers,
eval mode), how ``plan_edge`` splits an edge, a whole supernet weight step in float64, the
activations an edge keeps for backward, and single-path decisions never reaching the kernels.
Comparisons of the two paths are skipped, with the loader's reason, where the library is not
loaded (both paths would be the reference).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ops.mixed
from ops import MixedOp, PartialChannelMixedOp, SampledPath, kernels
from ops.candidates import FactorizedReduce, Identity
from ops.fused_mixing import plan_edge
from ops.kernels.reference import AVG_POOL, MAX_POOL, SKIP
from supernets import darts, nb201

FP32 = dict(atol=1e-5, rtol=1e-5)
# alpha and parameter gradients: sums over the batch through BN; a conv bias before a BN has a
# true gradient of 0, so its value is rounding noise of order 1e-5 (NB201's biased convs)
FP32_GRAD = dict(atol=1e-4, rtol=1e-4)
FP64 = dict(atol=1e-12, rtol=1e-9)


@pytest.fixture
def fused():
    if "cpu" not in kernels.status().devices:
        pytest.skip(f"fused kernels not loaded: {kernels.status().reason}")
    with kernels.use_fused(True):
        yield


@pytest.fixture
def fused_calls(monkeypatch):
    """Records, per dense MixedOp forward, whether the fused path produced the output."""
    calls: list[bool] = []
    original = ops.mixed.fused_mixed_forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(ops.mixed, "fused_mixed_forward", spy)
    return calls


def _oneshot_ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("oneshot::")}


# ---------------------------------------------------------------------------------------------
# 8. one edge, fused vs unfused, float32


def _darts_edge(stride, bn_after_pool=True):
    return MixedOp(darts.PRIMITIVES, 8, stride, affine=False, bn_after_pool=bn_after_pool), 8


def _pc_edge(stride):
    return PartialChannelMixedOp(darts.PRIMITIVES, 32, stride, affine=False, bn_after_pool=True,
                                 partial_channels=4), 32


def _nb201_edge(track_running_stats=True):
    if track_running_stats:
        return MixedOp(nb201.PRIMITIVES, 8, 1, affine=False), 8
    return nb201.NB201SearchCell(8, affine=False, track_running_stats=False).edges[nb201.EDGES[0]], 8


EDGES = {
    "darts-s1": lambda: _darts_edge(1),
    "darts-s2": lambda: _darts_edge(2),
    "darts-nobnpool-s2": lambda: _darts_edge(2, bn_after_pool=False),
    "pcdarts-s1": lambda: _pc_edge(1),
    "pcdarts-s2": lambda: _pc_edge(2),
    "nb201": lambda: _nb201_edge(True),
    "nb201-no-running-stats": lambda: _nb201_edge(False),
}


def _edge_step(op, x, alpha, upstream, fused, scale=1.0):
    """One forward/backward; returns output, x grad, alpha grad, parameter grads."""
    x = x.clone().requires_grad_()
    alpha = alpha.clone().requires_grad_()
    for p in op.parameters():
        p.grad = None
    with kernels.use_fused(fused):
        out = op(x, torch.softmax(alpha, 0) * scale)
    (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in op.named_parameters()}
    return out.detach(), x.grad, alpha.grad, grads


def _compare_edges(fused_op, plain_op, x, alpha, upstream, grad_tol, scale=1.0):
    f_out, f_gx, f_ga, f_gp = _edge_step(fused_op, x, alpha, upstream, True, scale)
    u_out, u_gx, u_ga, u_gp = _edge_step(plain_op, x, alpha, upstream, False, scale)
    torch.testing.assert_close(f_out, u_out, **FP32)
    torch.testing.assert_close(f_gx, u_gx, **FP32)
    torch.testing.assert_close(f_ga, u_ga, **grad_tol)
    assert f_gp.keys() == u_gp.keys()
    for name in f_gp:
        assert (f_gp[name] is None) == (u_gp[name] is None), name
        if f_gp[name] is not None:
            torch.testing.assert_close(f_gp[name], u_gp[name], **grad_tol, msg=lambda m, n=name: f"{n}: {m}")
    return f_out


def _compare_buffers(a: nn.Module, b: nn.Module, tol):
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name, buf in buffers_a.items():
        if buf.dtype == torch.long:
            assert torch.equal(buf, buffers_b[name]), name
        else:
            torch.testing.assert_close(buf, buffers_b[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("edge", list(EDGES))
def test_edge_fused_equals_unfused(edge, fused, fused_calls):
    torch.manual_seed(0)
    op, C = EDGES[edge]()
    op = op.to(memory_format=torch.channels_last)
    plain = copy.deepcopy(op)
    stride = op.stride
    size = 9 if stride == 1 else 8  # odd sizes at stride 1; PC-DARTS's bypass pool needs even ones
    x = torch.randn(4, C, size, size).to(memory_format=torch.channels_last)
    upstream = torch.randn(4, C, size // stride, size // stride)
    alpha = torch.randn(len(op.ops))
    scale = 0.7 if isinstance(op, PartialChannelMixedOp) else 1.0  # PC-DARTS edge normalization

    op.train(), plain.train()
    for step in range(2):  # the second step normalises with buffers the first one updated
        _compare_edges(op, plain, x + step, alpha, upstream, FP32_GRAD, scale)
        _compare_buffers(op, plain, FP32)
    assert fused_calls and all(fused_calls), "the fused path did not run"
    counters = [m.num_batches_tracked for m in op.modules() if isinstance(m, nn.BatchNorm2d)
                and m.track_running_stats]
    assert all(int(n) == 2 for n in counters)

    op.eval(), plain.eval()
    fused_calls.clear()
    _compare_edges(op, plain, x, alpha, upstream, FP32_GRAD, scale)
    assert fused_calls and all(fused_calls), "the fused path did not run in eval mode"
    _compare_buffers(op, plain, FP32)  # eval mode touches no buffer
    assert all(int(n) == 2 for n in counters)


def test_fused_edge_runs_the_oneshot_ops(fused):
    op, C = _darts_edge(1)
    x = torch.randn(2, C, 6, 6)
    w = torch.softmax(torch.randn(len(op.ops)), 0)
    assert _oneshot_ops_run(lambda: op(x, w)) == {"oneshot::mixed_pool", "oneshot::weighted_sum"}
    with kernels.use_fused(False):
        assert not _oneshot_ops_run(lambda: op(x, w))


def test_edge_with_bns_in_different_modes_falls_back(fused, fused_calls):
    """A pool BN in eval mode next to training-mode ones: not a shape the kernels take, so the
    unfused sum runs (and still equals it)."""
    torch.manual_seed(1)
    op, C = _darts_edge(1)
    op.train()
    op.ops[1][1].eval()  # the max pool's BN: running statistics
    plain = copy.deepcopy(op)
    x = torch.randn(4, C, 6, 6)
    alpha = torch.randn(len(op.ops))
    _compare_edges(op, plain, x, alpha, torch.randn(4, C, 6, 6), FP32_GRAD)
    assert fused_calls == [False]
    _compare_buffers(op, plain, FP32)


# ---------------------------------------------------------------------------------------------
# 9. plan_edge


def _last_bn(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1]


@pytest.mark.parametrize("stride", [1, 2])
def test_plan_edge_darts(stride):
    op, _ = _darts_edge(stride)
    names = darts.PRIMITIVES
    plan = plan_edge(op.ops, op.computed, stride)
    index = {name: names.index(name) for name in names}
    assert index["none"] not in op.computed
    pools = [index["max_pool_3x3"], index["avg_pool_3x3"]] + ([index["skip_connect"]] if stride == 1 else [])
    assert plan.pool_index == pools
    assert plan.pool_kinds == [MAX_POOL, AVG_POOL] + ([SKIP] if stride == 1 else [])
    assert plan.pool_bns[0] is op.ops[index["max_pool_3x3"]][1]
    assert plan.pool_bns[1] is op.ops[index["avg_pool_3x3"]][1]
    if stride == 1:
        assert plan.pool_bns[2] is None
    convs = [index[n] for n in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")]
    others = [index["skip_connect"]] if stride == 2 else []
    assert sorted(plan.sum_index) == sorted(convs + others)
    for k, body, after_relu, bn in zip(plan.sum_index, plan.sum_bodies, plan.sum_after_relu, plan.sum_bns):
        if k in convs:  # the body starts after the shared ReLU and stops before the final BN
            assert after_relu
            assert type(op.ops[k][0][0] if names[k].startswith("sep") else op.ops[k][0]) is nn.ReLU
            assert isinstance(body[0], nn.Conv2d)
            assert bn is _last_bn(op.ops[k]) and not bn.affine
            assert all(m is not bn for m in body)
            leaves = [m for m in op.ops[k].modules() if not list(m.children())]
            assert body == leaves[1:-1]
        else:  # FactorizedReduce: run whole, no BN handed to the kernel
            assert isinstance(op.ops[k], FactorizedReduce)
            assert body == [op.ops[k]] and not after_relu and bn is None


def test_plan_edge_darts_without_bn_after_pool():
    op, _ = _darts_edge(1, bn_after_pool=False)
    plan = plan_edge(op.ops, op.computed, 1)
    assert plan.pool_kinds == [MAX_POOL, AVG_POOL, SKIP]
    assert plan.pool_bns == [None, None, None]


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_plan_edge_nb201(track_running_stats):
    op, _ = _nb201_edge(track_running_stats)
    names = nb201.PRIMITIVES
    plan = plan_edge(op.ops, op.computed, 1)
    assert plan.pool_index == [names.index("skip_connect"), names.index("avg_pool_3x3")]
    assert plan.pool_kinds == [SKIP, AVG_POOL] and plan.pool_bns == [None, None]
    assert isinstance(op.ops[names.index("skip_connect")], Identity)
    assert plan.sum_index == [names.index("nor_conv_1x1"), names.index("nor_conv_3x3")]
    assert plan.sum_after_relu == [True, True]
    for k, body, bn in zip(plan.sum_index, plan.sum_bodies, plan.sum_bns):
        assert body == [op.ops[k][1]] and isinstance(body[0], nn.Conv2d) and body[0].bias is not None
        assert bn is op.ops[k][2] and bn.track_running_stats is track_running_stats


def test_plan_edge_leaves_unknown_ops_whole():
    """An inplace ReLU, an affine BN, a pool of another size: run as they are, no kernel BN."""
    ops_ = nn.ModuleList([
        nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False)),
        nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)),
        nn.MaxPool2d(5, 1, 2),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(4)),  # count_include_pad=True, affine BN
    ])
    plan = plan_edge(ops_, range(4), 1)
    assert plan.pool_index == []
    assert plan.sum_index == [0, 1, 2, 3]
    assert plan.sum_after_relu == [False, False, False, False]
    assert plan.sum_bns[0] is ops_[0][2] and plan.sum_bns[1:] == [None, None, None]


# ---------------------------------------------------------------------------------------------
# 10. a whole supernet weight step, float64


SUPERNETS = {  # (algorithm, its options): 3 DARTS cells are normal, reduce, reduce
    "darts": ("darts", dict(space="darts", space_options={"C": 8, "layers": 3})),
    "pcdarts": ("pcdarts", dict(space="darts", space_options={"C": 16, "layers": 3})),
    "nb201": ("darts", dict(space="nb201", space_options={"C": 8, "N": 1})),
    "nb201-no-running-stats": ("darts", dict(space="nb201", space_options={"C": 8, "N": 1,
                                                                           "track_running_stats": False})),
}


@pytest.mark.parametrize("name", list(SUPERNETS))
def test_supernet_weight_step_fused_equals_unfused(name, fused, fused_calls):
    from oneshot.algorithms import ALGORITHMS

    torch.manual_seed(0)
    algorithm, options = SUPERNETS[name]
    model = ALGORITHMS[algorithm](num_classes=10, in_channels=3, memory_format="channels_last", **options)
    model.on_fit_start()
    model.double()
    with torch.no_grad():
        for alpha in model.architecture_parameters():
            alpha.normal_()  # far from uniform: every candidate weight differs
    state = copy.deepcopy(model.state_dict())
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))

    results = []
    for use_fused in (True, False):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        with kernels.use_fused(use_fused):
            loss = model.loss_and_accuracy((x, y), model.decisions_for_weight_step())[0]
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        results.append((loss.detach(), grads, buffers))
    assert fused_calls and all(fused_calls)
    (loss, grads, buffers), (u_loss, u_grads, u_buffers) = results
    torch.testing.assert_close(loss, u_loss, **FP64)
    assert grads.keys() == u_grads.keys()
    assert any(n.startswith("alphas.") for n in grads)
    for n in grads:
        torch.testing.assert_close(grads[n], u_grads[n], **FP64, msg=lambda m, n=n: f"{n}: {m}")
    assert buffers.keys() == u_buffers.keys()
    for n in buffers:
        if buffers[n].dtype == torch.long:
            assert torch.equal(buffers[n], u_buffers[n]), n
        else:
            torch.testing.assert_close(buffers[n], u_buffers[n], **FP64, msg=lambda m, n=n: f"{n}: {m}")
    assert any(b.dtype == torch.long and int(b) == 1 for b in buffers.values()) or "no-running" in name


# ---------------------------------------------------------------------------------------------
# 11. what one edge keeps for backward


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("stride", [1, 2])
def test_fused_edge_saves_at_least_40_percent_less(stride, fused):
    torch.manual_seed(2)
    op, C = _darts_edge(stride)
    op = op.to(memory_format=torch.channels_last)
    x = torch.randn(8, C, 16, 16).to(memory_format=torch.channels_last).requires_grad_()
    alpha = torch.randn(len(op.ops), requires_grad=True)
    fused_bytes = _saved_bytes(lambda: op(x, torch.softmax(alpha, 0)))
    with kernels.use_fused(False):
        plain_bytes = _saved_bytes(lambda: op(x, torch.softmax(alpha, 0)))
    assert fused_bytes <= 0.6 * plain_bytes, (fused_bytes, plain_bytes)


# ---------------------------------------------------------------------------------------------
# 12. single-path decisions never reach the kernels


@pytest.mark.parametrize("decision", ["int", "sampled", "sampled-no-unsampled-gradient"])
@pytest.mark.parametrize("edge", ["darts-s1", "pcdarts-s1", "nb201"])
def test_single_path_decisions_skip_the_fused_ops(decision, edge, fused_calls):
    torch.manual_seed(3)
    op, C = EDGES[edge]()
    x = torch.randn(2, C, 6, 6, requires_grad=True)
    K = len(op.ops)
    chosen = 2
    soft = torch.softmax(torch.randn(K, requires_grad=True), 0)
    hard = nn.functional.one_hot(torch.tensor(chosen), K).float()
    made = {"int": chosen, "sampled": SampledPath(chosen, hard - soft.detach() + soft),
            "sampled-no-unsampled-gradient": SampledPath(chosen, hard - soft.detach() + soft, False)}[decision]

    def step():
        op(x, made).sum().backward()

    assert not _oneshot_ops_run(step)
    assert fused_calls == []
    if "cpu" in kernels.status().devices:  # control: a dense decision on the same edge does use them
        assert _oneshot_ops_run(lambda: op(x, soft.detach()))
        assert fused_calls == [True]


# ---------------------------------------------------------------------------------------------
# What the fused path must not change: second derivatives, other dtypes


@pytest.mark.parametrize("edge", ["darts-s1", "nb201"])
def test_hessian_of_alphas_equals_unfused(edge, fused):
    """The R-DARTS eigenvalue (``hessian_every``) takes Hessian-vector products by double
    backward; through the fused ops they must equal the unfused ones (or raise), not be silently
    different."""
    from oneshot.diagnostics import dominant_hessian_eigenvalue

    torch.manual_seed(4)
    op, C = EDGES[edge]()
    op = op.double()
    x = torch.randn(4, C, 6, 6, dtype=torch.float64)
    upstream = torch.randn(4, C, 6, 6, dtype=torch.float64)
    alpha = torch.randn(len(op.ops), dtype=torch.float64, requires_grad=True)

    def loss():
        return (op(x, torch.softmax(alpha, 0)) * upstream).square().sum()

    values = []
    for use_fused in (True, False):
        with kernels.use_fused(use_fused):
            values.append(dominant_hessian_eigenvalue(loss, [alpha], iterations=5,
                                                      generator=torch.Generator().manual_seed(0)))
    assert values[0] == pytest.approx(values[1], rel=1e-9)


def test_half_precision_edge_on_cpu_runs(fused):
    """The CPU kernels take float32/float64 only: a bfloat16 edge must still run (unfused), as it
    does with the fused path off, instead of raising from the kernel's dtype check."""
    torch.manual_seed(5)
    op, C = _darts_edge(1)
    op = op.bfloat16()
    x = torch.randn(2, C, 6, 6).bfloat16()
    w = torch.softmax(torch.randn(len(op.ops)), 0).bfloat16()
    with kernels.use_fused(False):
        expected = op(x, w)
    assert torch.equal(op(x, w), expected)
