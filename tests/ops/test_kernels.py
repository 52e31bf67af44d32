"""The fused ``oneshot::`` ops against their pure-PyTorch references (ops.kernels.reference).

Op level: float64 gradcheck, ``torch.library.opcheck``, float32 agreement with the reference
(ties, odd sizes, strides, layouts, channel slices, NaN), argument errors, what autograd saves,
the fallback when the library is switched off or missing, and ``torch.compile``. Tests of the
fused path are skipped, with the loader's reason, where the library is not loaded; the
reference and fallback tests always run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ops import kernels
from ops.kernels import reference

ROOT = Path(__file__).resolve().parents[2]
SKIP, AVG, MAX = reference.SKIP, reference.AVG_POOL, reference.MAX_POOL
KINDS = [[SKIP, AVG, MAX], [AVG, MAX], [SKIP, AVG], [MAX]]
FP32 = dict(atol=1e-5, rtol=1e-5)


def _fused_loaded() -> bool:
    return "cpu" in kernels.status().devices


@pytest.fixture
def fused():
    """Skip where the library is not loaded; otherwise make sure the fused path is switched on."""
    if not _fused_loaded():
        pytest.skip(f"fused kernels not loaded: {kernels.status().reason}")
    with kernels.use_fused(True):
        yield


def _running(C: int, rows: int = 2, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(rows, C, generator=g, dtype=dtype),
            torch.rand(rows, C, generator=g, dtype=dtype) + 0.5)


def _modes():
    # (batchnorm, training): no BN, BN with batch statistics, BN with running statistics
    return [(False, True), (True, True), (True, False)]


# ---------------------------------------------------------------------------------------------
# 1. gradcheck in float64


def _pool_cases():
    for kinds in KINDS:
        for stride in (1, 2):
            if SKIP in kinds and stride == 2:
                continue
            for batchnorm, training in _modes():
                yield pytest.param(kinds, stride, batchnorm, training,
                                   id=f"k{''.join(map(str, kinds))}-s{stride}-bn{int(batchnorm)}-tr{int(training)}")


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("kinds,stride,batchnorm,training", list(_pool_cases()))
def test_gradcheck_mixed_pool(kinds, stride, batchnorm, training, use_fused):
    if use_fused and not _fused_loaded():
        pytest.skip(f"fused kernels not loaded: {kernels.status().reason}")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(kinds), dtype=torch.float64, requires_grad=True)
    rm, rv = _running(3)  # fixed tensors, created outside the checked function

    def f(x, w):
        return kernels.mixed_pool(x, w, kinds, stride, batchnorm, training,
                                  rm if not training else None, rv if not training else None)[0]

    with kernels.use_fused(use_fused):
        assert torch.autograd.gradcheck(f, (x, w), fast_mode=True)


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("normalize", [[True, False, True], [False, False], [True], [False, True]],
                         ids=["TFT", "FF", "T", "FT"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_weighted_sum(normalize, training, use_fused):
    if use_fused and not _fused_loaded():
        pytest.skip(f"fused kernels not loaded: {kernels.status().reason}")
    torch.manual_seed(1)
    inputs = [torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in normalize]
    w = torch.randn(len(normalize), dtype=torch.float64, requires_grad=True)
    rows = sum(normalize)
    rm, rv = _running(3, rows)

    def f(w, *inputs):
        return kernels.weighted_sum(list(inputs), w, normalize, training,
                                    None if training else rm, None if training else rv)[0]

    with kernels.use_fused(use_fused):
        assert torch.autograd.gradcheck(f, (w, *inputs), fast_mode=True)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_full_jacobian(stride, fused):
    """The whole Jacobian (not fast mode's projections) on small shapes, BN with batch statistics."""
    torch.manual_seed(15)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    kinds = [MAX, SKIP, AVG] if stride == 1 else [AVG, MAX]
    w = torch.randn(len(kinds), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: kernels.mixed_pool(x, w, kinds, stride, True, True)[0], (x, w))
    inputs = [torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, *inputs: kernels.weighted_sum(list(inputs), w, [True, False, True], True)[0], (w, *inputs))


# ---------------------------------------------------------------------------------------------
# 2. opcheck


def _opcheck_cases():
    torch.manual_seed(2)
    rm, rv = _running(3, dtype=torch.float32)
    rm1, rv1 = _running(3, 1, dtype=torch.float32)
    x = lambda *s, **kw: torch.randn(*s, **kw)  # noqa: E731
    cl = torch.channels_last
    return {
        "mixed_pool": [
            (x(2, 3, 6, 7, requires_grad=True), x(3, requires_grad=True), [0, 1, 2], 1, True, True, None, None, 1e-5),
            (x(2, 3, 6, 7, requires_grad=True).to(memory_format=cl), x(2, requires_grad=True), [1, 2], 2, True,
             False, rm, rv, 1e-5),
            (x(2, 3, 5, 5, dtype=torch.float64), x(2, dtype=torch.float64), [2, 0], 1, False, True, None, None,
             1e-5),
        ],
        "weighted_sum": [
            ([x(2, 3, 4, 5, requires_grad=True) for _ in range(3)], x(3, requires_grad=True), [True, False, True],
             True, None, None, 1e-5),
            ([x(2, 3, 4, 5, requires_grad=True).to(memory_format=cl) for _ in range(2)], x(2, requires_grad=True),
             [False, True], False, rm1, rv1, 1e-3),
        ],
        # the backward ops have no autograd formula: their inputs do not require grad
        "mixed_pool_backward": [
            (x(2, 3, 6, 7), x(2, 3, 6, 7), x(3), [0, 1, 2], 1, True, True, x(2, 3), x(2, 3).abs(), 1e-5),
            (x(2, 3, 3, 4), x(2, 3, 6, 7), x(2), [2, 1], 2, False, True, torch.empty(0), torch.empty(0), 1e-5),
        ],
        "weighted_sum_backward": [
            (x(2, 3, 4, 5), [x(2, 3, 4, 5) for _ in range(2)], x(2), [True, False], True, x(1, 3),
             x(1, 3).abs(), 1e-5),
            (x(2, 3, 4, 5), [x(2, 3, 4, 5) for _ in range(2)], x(2), [True, True], False, x(2, 3),
             x(2, 3).abs(), 1e-5),
        ],
    }


@pytest.mark.parametrize("op", ["mixed_pool", "weighted_sum", "mixed_pool_backward", "weighted_sum_backward"])
def test_opcheck(op, fused):
    for args in _opcheck_cases()[op]:
        torch.library.opcheck(getattr(torch.ops.oneshot, op), args)


# ---------------------------------------------------------------------------------------------
# 3. float32 agreement with the reference


def _compare_mixed_pool(x, kinds, stride=1, batchnorm=True, training=True, running=None, leaf=None):
    """Output, statistics, and the gradients of ``leaf`` (x by default) and the weights."""
    leaf = x if leaf is None else leaf
    torch.manual_seed(3)
    w = torch.randn(len(kinds))
    rm, rv = running if running is not None else (None, None)
    results = []
    for impl in (lambda *a: torch.ops.oneshot.mixed_pool(*a), reference.mixed_pool):
        leaf.grad = None
        weights = w.clone().requires_grad_()
        out, mean, var = impl(x, weights, kinds, stride, batchnorm, training, rm, rv, 1e-5)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        (out * upstream).sum().backward()
        results.append((out, mean, var, leaf.grad.clone(), weights.grad.clone()))
    (out, mean, var, gx, gw), (r_out, r_mean, r_var, r_gx, r_gw) = results
    assert out.shape == r_out.shape
    torch.testing.assert_close(out, r_out, **FP32)
    torch.testing.assert_close(gx, r_gx, **FP32)
    torch.testing.assert_close(gw, r_gw, **FP32)
    torch.testing.assert_close(mean, r_mean, **FP32)
    torch.testing.assert_close(var, r_var, **FP32)
    return results


@pytest.mark.parametrize("kinds,stride,batchnorm,training", list(_pool_cases()))
def test_mixed_pool_matches_reference_with_ties(kinds, stride, batchnorm, training, fused):
    """Integer-valued inputs: many equal values in each max window; gradients must land where
    ATen puts them (the first maximum in row-major order)."""
    torch.manual_seed(5)
    x = torch.randint(-2, 3, (4, 5, 9, 7)).float().requires_grad_()
    running = _running(5, dtype=torch.float32) if not training else None
    _compare_mixed_pool(x, kinds, stride, batchnorm, training, running)


@pytest.mark.parametrize("shape", [(3, 4, 1, 1), (3, 4, 5, 2), (2, 3, 7, 9), (2, 3, 2, 5), (1, 2, 1, 6)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batchnorm", [False, True], ids=["nobn", "bn"])
def test_mixed_pool_odd_sizes(shape, stride, batchnorm, fused):
    if batchnorm and shape[0] * ((shape[2] - 1) // stride + 1) * ((shape[3] - 1) // stride + 1) < 2:
        pytest.skip("one value per channel: batch variance 0")
    torch.manual_seed(6)
    x = torch.randn(shape, requires_grad=True)
    kinds = [SKIP, AVG, MAX] if stride == 1 else [MAX, AVG]
    _compare_mixed_pool(x, kinds, stride, batchnorm)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("integer", [False, True], ids=["randn", "ties"])
def test_mixed_pool_channels_last(stride, integer, fused):
    torch.manual_seed(7)
    x = torch.randint(-2, 3, (4, 8, 9, 10)).float() if integer else torch.randn(4, 8, 9, 10)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    kinds = [SKIP, MAX, AVG] if stride == 1 else [AVG, MAX]
    (out, *_, gx, _), (r_out, *_) = _compare_mixed_pool(x, kinds, stride)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert gx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_mixed_pool_channel_slice_of_channels_last(stride, training, fused):
    """PC-DARTS passes x[:, :C/K] of a channels_last tensor: strided, neither layout contiguous."""
    torch.manual_seed(8)
    full = torch.randn(4, 16, 9, 8).to(memory_format=torch.channels_last).requires_grad_()
    x = full[:, :4]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    kinds = [SKIP, AVG, MAX] if stride == 1 else [MAX, AVG]
    running = _running(4, dtype=torch.float32) if not training else None
    results = _compare_mixed_pool(x, kinds, stride, True, training, running, leaf=full)
    assert results[0][3][:, 4:].abs().max() == 0  # no gradient leaks into the bypassed channels


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_mixed_pool_statistics_rows_of_absent_pools(training, fused):
    """The statistics rows of a pool that is not among the kinds are the reference's: mean 0,
    variance 1 with batch statistics, the running rows as given otherwise."""
    x = torch.randn(2, 3, 6, 7)
    rm, rv = _running(3, dtype=torch.float32)
    for kinds in ([SKIP, AVG], [MAX]):
        w = torch.rand(len(kinds))
        _, mean, var = torch.ops.oneshot.mixed_pool(x, w, kinds, 1, True, training, rm, rv, 1e-5)
        _, r_mean, r_var = reference.mixed_pool(x, w, kinds, 1, True, training, rm, rv, 1e-5)
        torch.testing.assert_close(mean, r_mean, **FP32)
        torch.testing.assert_close(var, r_var, **FP32)


def test_mixed_pool_nan_positions_match_aten(fused):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 8, 9)
    x[0, 0, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    x[1, 1, 7, 8] = float("nan")
    for stride in (1, 2):
        for kinds in ([MAX], [AVG, MAX]):
            w = torch.rand(len(kinds))
            out = torch.ops.oneshot.mixed_pool(x, w, kinds, stride, False, True, None, None, 1e-5)[0]
            expected = reference.mixed_pool(x, w, kinds, stride, False, True, None, None, 1e-5)[0]
            assert torch.isnan(out).any()
            assert torch.equal(torch.isnan(out), torch.isnan(expected))
            finite = ~torch.isnan(expected)
            torch.testing.assert_close(out[finite], expected[finite], **FP32)


def _compare_weighted_sum(inputs, normalize, training=True, running=None, leaves=None):
    leaves = inputs if leaves is None else leaves
    torch.manual_seed(10)
    w = torch.randn(len(inputs))
    rm, rv = running if running is not None else (None, None)
    results = []
    for impl in (lambda *a: torch.ops.oneshot.weighted_sum(*a), reference.weighted_sum):
        for t in leaves:
            t.grad = None
        weights = w.clone().requires_grad_()
        out, mean, var = impl(list(inputs), weights, normalize, training, rm, rv, 1e-5)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(11))
        (out * upstream).sum().backward()
        results.append((out, mean, var, [t.grad.clone() for t in leaves], weights.grad.clone()))
    (out, mean, var, gx, gw), (r_out, r_mean, r_var, r_gx, r_gw) = results
    torch.testing.assert_close(out, r_out, **FP32)
    for a, b in zip(gx, r_gx):
        torch.testing.assert_close(a, b, **FP32)
    torch.testing.assert_close(gw, r_gw, **FP32)
    torch.testing.assert_close(mean, r_mean, **FP32)
    torch.testing.assert_close(var, r_var, **FP32)
    return results


@pytest.mark.parametrize("normalize", [[True, False, True, True], [False, False], [True], [False, True]],
                         ids=["TFTT", "FF", "T", "FT"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_weighted_sum_matches_reference(normalize, training, layout, fused):
    torch.manual_seed(12)
    inputs = []
    for k in range(len(normalize)):
        t = torch.randn(4, 6, 5, 3) * (k + 1) + k
        if layout == "channels_last" or (layout == "mixed" and k % 2):
            t = t.to(memory_format=torch.channels_last)
        inputs.append(t.requires_grad_())
    running = _running(6, sum(normalize), dtype=torch.float32) if not training else None
    (out, *_), _ = _compare_weighted_sum(inputs, normalize, training, running)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_weighted_sum_channel_slices(fused):
    torch.manual_seed(13)
    fulls = [torch.randn(4, 12, 5, 6).to(memory_format=torch.channels_last).requires_grad_() for _ in range(2)]
    inputs = [fulls[0][:, :3], fulls[1][:, 3:6]]
    _compare_weighted_sum(inputs, [True, False], leaves=fulls)


def test_python_wrappers_take_the_fused_path(fused):
    """ops.kernels.mixed_pool / weighted_sum run the oneshot:: ops while the switch is on, the
    reference while it is off."""
    x = torch.randn(2, 3, 6, 7)
    w = torch.rand(3)

    def ran_oneshot(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        return {e.name for e in prof.events() if e.name.startswith("oneshot::")}

    assert "oneshot::mixed_pool" in ran_oneshot(lambda: kernels.mixed_pool(x, w, [0, 1, 2]))
    assert "oneshot::weighted_sum" in ran_oneshot(lambda: kernels.weighted_sum([x, x, x], w, [True] * 3))
    with kernels.use_fused(False):
        assert not ran_oneshot(lambda: kernels.mixed_pool(x, w, [0, 1, 2]))
        assert not ran_oneshot(lambda: kernels.weighted_sum([x, x, x], w, [True] * 3))
        assert not kernels.fused_available("cpu")
    assert kernels.fused_available("cpu")


# ---------------------------------------------------------------------------------------------
# 4. argument errors


def _pool(x, w, kinds, stride=1, batchnorm=False, training=True, rm=None, rv=None):
    return torch.ops.oneshot.mixed_pool(x, w, kinds, stride, batchnorm, training, rm, rv, 1e-5)


def _wsum(inputs, w, normalize, training=True, rm=None, rv=None):
    return torch.ops.oneshot.weighted_sum(inputs, w, normalize, training, rm, rv, 1e-5)


X = torch.randn(2, 3, 6, 7)
BAD_CALLS = {
    "weights-shape": (lambda: _pool(X, torch.rand(2), [0, 1, 2]), r"weights must have shape \[3\]"),
    "weights-2d": (lambda: _pool(X, torch.rand(1, 3), [0, 1, 2]), r"weights must have shape \[3\]"),
    "weights-int": (lambda: _pool(X, torch.ones(3, dtype=torch.long), [0, 1, 2]), "weights must be floating"),
    "x-int": (lambda: _pool(X.long(), torch.rand(3), [0, 1, 2]), "x has dtype Long"),
    "x-3d": (lambda: _pool(X[0], torch.rand(3), [0, 1, 2]), "x must be a 4-D"),
    "x-empty": (lambda: _pool(X[:0], torch.rand(3), [0, 1, 2]), "x must be non-empty"),
    "skip-stride2": (lambda: _pool(X, torch.rand(2), [0, 1], 2), r"skip \(kind 0\)"),
    "stride3": (lambda: _pool(X, torch.rand(2), [1, 2], 3), "stride must be 1 or 2"),
    "duplicate-kinds": (lambda: _pool(X, torch.rand(2), [1, 1]), "kinds must be distinct"),
    "kind-out-of-range": (lambda: _pool(X, torch.rand(2), [1, 3]), "kinds must be distinct"),
    "no-kinds": (lambda: _pool(X, torch.rand(0), []), "kinds must list 1 to 3"),
    "eval-no-running-mean": (lambda: _pool(X, torch.rand(2), [1, 2], 1, True, False),
                             "running_mean is required when training=False"),
    "eval-no-running-var": (lambda: _pool(X, torch.rand(2), [1, 2], 1, True, False, torch.zeros(2, 3)),
                            "running_var is required when training=False"),
    "running-shape": (lambda: _pool(X, torch.rand(2), [1, 2], 1, True, False, torch.zeros(3), torch.ones(2, 3)),
                      r"running_mean must have shape \[2, 3\]"),
    "ws-shape-mismatch": (lambda: _wsum([X, X[:, :, :5]], torch.rand(2), [True, False]),
                          r"inputs\[1\] has shape"),
    "ws-dtype-mismatch": (lambda: _wsum([X, X.double()], torch.rand(2), [True, False]), r"inputs\[1\] has dtype"),
    "ws-int": (lambda: _wsum([X.int(), X.int()], torch.rand(2), [True, False]), "inputs has dtype Int"),
    "ws-3d": (lambda: _wsum([X[0], X[0]], torch.rand(2), [True, False]), r"inputs\[0\] must be a 4-D"),
    "ws-weights-shape": (lambda: _wsum([X, X], torch.rand(3), [True, False]), r"weights must have shape \[2\]"),
    "ws-normalize-length": (lambda: _wsum([X, X], torch.rand(2), [True]), "normalize has 1 flags for 2 inputs"),
    "ws-empty": (lambda: _wsum([], torch.rand(0), []), "inputs must hold at least one tensor"),
    "ws-eval-no-running": (lambda: _wsum([X, X], torch.rand(2), [True, False], False),
                           "running_mean is required when training=False"),
    "ws-running-shape": (lambda: _wsum([X, X], torch.rand(2), [True, True], False, torch.zeros(1, 3),
                                       torch.ones(2, 3)), r"running_mean must have shape \[2, 3\]"),
    "pool-bwd-grad-shape": (lambda: torch.ops.oneshot.mixed_pool_backward(
        torch.randn(2, 3, 6, 6), X, torch.rand(2), [1, 2], 1, False, True, torch.empty(0), torch.empty(0), 1e-5),
        "grad must have the output's shape"),
    "ws-bwd-grad-shape": (lambda: torch.ops.oneshot.weighted_sum_backward(
        torch.randn(2, 3, 6, 6), [X], torch.rand(1), [False], True, torch.empty(0, 3), torch.empty(0, 3), 1e-5),
        "grad must match the inputs' shape"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_naming_the_argument(case, fused):
    call, message = BAD_CALLS[case]
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_arguments_through_autograd(fused):
    """The same errors come back when the inputs require grad (the autograd kernel's path)."""
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"weights must have shape \[3\]"):
        kernels.mixed_pool(x, torch.rand(2, requires_grad=True), [0, 1, 2])
    with pytest.raises(RuntimeError, match=r"inputs\[1\] has shape"):
        kernels.weighted_sum([x, x[:, :2]], torch.rand(2, requires_grad=True), [False, False])


# ---------------------------------------------------------------------------------------------
# 5. what autograd keeps


def _saved_bytes_beyond(fn, *keep: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves during ``fn()``, other than those of ``keep``."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    kept = {t.untyped_storage().data_ptr() for t in keep}
    return sum(n for ptr, n in storages.items() if ptr not in kept)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_mixed_pool_saves_only_inputs_and_statistics(training, fused):
    N, C, H, W = 4, 8, 16, 16
    x = torch.randn(N, C, H, W).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(3, requires_grad=True)
    rm, rv = _running(C, dtype=torch.float32)
    args = (x, w, [0, 1, 2], 1, True, training, None if training else rm, None if training else rv)
    fused_extra = _saved_bytes_beyond(lambda: kernels.mixed_pool(*args), x, w)
    assert fused_extra <= 2 * 2 * C * 4 + 64
    reference_extra = _saved_bytes_beyond(lambda: reference.mixed_pool(*args), x, w)
    assert reference_extra >= 2 * x.numel() * 4  # both pooled outputs at least: the check can fail


def test_fused_weighted_sum_saves_only_inputs_and_statistics(fused):
    N, C, H, W = 4, 8, 16, 16
    inputs = [torch.randn(N, C, H, W, requires_grad=True) for _ in range(3)]
    w = torch.rand(3, requires_grad=True)
    fused_extra = _saved_bytes_beyond(lambda: kernels.weighted_sum(inputs, w, [True, False, True]), *inputs, w)
    assert fused_extra <= 2 * 2 * C * 4 + 64
    reference_extra = _saved_bytes_beyond(lambda: reference.weighted_sum(inputs, w, [True, False, True]),
                                          *inputs, w)
    assert reference_extra >= inputs[0].numel() * 4


# ---------------------------------------------------------------------------------------------
# 6. fallback


def _python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != kernels.SWITCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


MIXED_STEP = textwrap.dedent("""
    import torch
    from ops import MixedOp
    from supernets.darts import PRIMITIVES
    torch.manual_seed(0)
    op = MixedOp(PRIMITIVES, 4, 1, affine=False, bn_after_pool=True)
    for _ in range(3):
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        alpha = torch.randn(len(PRIMITIVES), requires_grad=True)
        op(x, torch.softmax(alpha, 0)).square().sum().backward()
        assert x.grad is not None and alpha.grad is not None and torch.isfinite(alpha.grad).all()
    w = torch.rand(3)
    kernels.mixed_pool(x.detach(), w, [0, 1, 2])
    kernels.weighted_sum([x.detach()] * 3, w, [True, False, True])
    print("ok")
""")


def test_env_switch_runs_the_reference():
    script = textwrap.dedent("""
        import ops.kernels as kernels
        status = kernels.status()
        assert status.path == "reference" and status.devices == () and status.library is None, status
        assert "ONESHOT_KERNELS=reference" in status.reason, status.reason
        assert not kernels.fused_available("cpu")
    """) + MIXED_STEP
    result = _python(script, _env(ONESHOT_KERNELS="reference"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "oneshot: warning" not in result.stderr  # switched off on purpose: nothing to warn about


def test_missing_library_warns_once_and_runs_the_reference(tmp_path):
    script = textwrap.dedent(f"""
        from pathlib import Path
        import ops.kernels as kernels
        kernels.LIBRARY_DIR = Path({str(tmp_path)!r})
        status = kernels.status()
        assert status.path == "reference" and status.devices == () and status.library is None, status
        assert "not built" in status.reason, status.reason
        assert not kernels.fused_available("cpu")
    """) + MIXED_STEP
    result = _python(script, _env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("oneshot: warning:")]
    assert len(warnings) == 1, result.stderr
    assert "not built" in warnings[0]


# ---------------------------------------------------------------------------------------------
# 7. torch.compile


def test_torch_compile_fullgraph_matches_eager(fused):
    torch._dynamo.reset()

    def step(x, w_pool, y, w_sum):
        pooled, mean, var = kernels.mixed_pool(x, w_pool, [0, 1, 2], 1, True, True)
        out, _, _ = kernels.weighted_sum([pooled, y], w_sum, [True, False], True)
        return out, mean

    torch.manual_seed(14)
    leaves = [torch.randn(2, 4, 6, 7).to(memory_format=torch.channels_last), torch.rand(3),
              torch.randn(2, 4, 6, 7), torch.rand(2)]
    upstream = torch.randn(2, 4, 6, 7)
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        args = [t.clone().requires_grad_() for t in leaves]
        out, mean = fn(*args)
        (out * upstream).sum().backward()
        results.append((out, mean, [a.grad for a in args]))
    (out, mean, grads), (c_out, c_mean, c_grads) = results
    torch.testing.assert_close(c_out, out, **FP32)
    torch.testing.assert_close(c_mean, mean, **FP32)
    for a, b in zip(c_grads, grads):
        torch.testing.assert_close(a, b, **FP32)
