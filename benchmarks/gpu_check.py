"""One-stop check of the fused CUDA kernels on a GPU machine (H100/H200), in under 5 minutes.

Steps:
  a. load the kernels: ``ops.kernels`` (the installed library). Where it has no CUDA kernels,
     the whole check re-runs in a subprocess with ``ONESHOT_KERNELS=reference`` (so the
     installed CPU-only library is not loaded: a second ``oneshot`` library would clash with
     it) that JIT-builds ``csrc/`` with the CUDA toolkit (``ops.kernels.toolkit``) and loads
     that. Faster, and what step d needs: reinstall with CUDA first,
     ``ONESHOT_CUDA=1 pip install --no-build-isolation -e .``;
  b. every op (forward and backward) on CUDA against the CPU kernels: float64/float32 tight,
     float16/bfloat16 inputs against float32 CPU results loosely; contiguous, channels_last
     and strided inputs, stride 1 and 2, odd and 1x1 sizes, ties (integer-valued inputs),
     batch and running statistics; plus bitwise run-to-run determinism;
  c. ``torch.autograd.gradcheck`` in float64 on CUDA through the differentiable API
     (``ops.kernels.mixed_pool`` / ``ops.kernels.weighted_sum``);
  d. ``benchmarks/step.py --device cuda --spaces darts --algorithms darts --kernels fused
     unfused compile`` in a subprocess, its output printed;
  e. a summary table. Exit status 0 when every check passed, 1 otherwise, 2 without a GPU.

Usage (from the repository root)::

    .venv/bin/python benchmarks/gpu_check.py                      # everything
    .venv/bin/python benchmarks/gpu_check.py --skip-benchmark     # a-c only (~1 min with the library built)
    .venv/bin/python benchmarks/gpu_check.py --jit                # test the JIT build of csrc/ even if installed
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OPS = ("mixed_pool", "mixed_pool_backward", "weighted_sum", "weighted_sum_backward")
SOURCES = ("csrc/schemas.cpp", "csrc/cpu/mixed_ops_cpu.cpp", "csrc/cuda/mixed_ops_cuda.cu")
JIT_CHILD_FLAG = "--_jit-child"
REINSTALL = "ONESHOT_CUDA=1 pip install --no-build-isolation -e ."
# relative error bound per dtype: max |cuda - cpu| / max(1, max |cpu|)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}
# weight gradients sum over every element: looser
WEIGHT_GRAD_FACTOR = 20.0


@dataclass
class Check:
    """One row of the summary: a group of comparisons and its worst error."""

    name: str
    tolerance: float = 0.0
    worst: float = 0.0
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def record(self, case: str, error: float, tolerance: float | None = None) -> None:
        self.cases += 1
        bound = self.tolerance if tolerance is None else tolerance
        if not error <= bound:  # NaN fails
            self.failures.append(f"{case}: error {error:.3g} > {bound:.3g}")
        if math.isnan(error) or error > self.worst:
            self.worst = error


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", key)


def cuda_kernels_registered() -> bool:
    return all(has_kernel(op, "CUDA") for op in OPS)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|); inf on a shape or NaN-pattern mismatch."""
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if a.shape != e.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    if not torch.equal(a.isnan(), e.isnan()):
        return math.inf
    finite = ~e.isnan()
    if not finite.any():
        return 0.0
    return ((a - e)[finite].abs().max() / max(1.0, e[finite].abs().max().item())).item()


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x in a memory layout: contiguous, channels_last, or a strided view of a larger tensor."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        N, C, H, W = x.shape
        big = torch.zeros(N, 2 * C, H + 1, 2 * W, dtype=x.dtype, device=x.device)
        view = big[:, ::2, 1:, ::2]
        view.copy_(x)
        return view
    return x.contiguous()


def sample(shape: Sequence[int], ties: bool, generator: torch.Generator) -> torch.Tensor:
    if ties:
        return torch.randint(-2, 3, tuple(shape), generator=generator).double()
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# (a) loading


def build_jit(build_dir: Path) -> str:
    """JIT-build csrc/ (CPU + CUDA) into ``build_dir`` and load it; returns the library path."""
    from torch.utils.cpp_extension import load  # CUDA_HOME is in the environment already

    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"[a] JIT-building {', '.join(SOURCES)} in {build_dir} (CUDA_HOME={os.environ.get('CUDA_HOME')}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}) ...", flush=True)
    load(name="oneshot_gpu_check", sources=[str(REPO_ROOT / s) for s in SOURCES], build_directory=str(build_dir),
         extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], extra_cuda_cflags=["-O3"],
         is_python_module=False, verbose=False)
    print(f"[a] built and loaded in {time.perf_counter() - started:.0f} s", flush=True)
    return str(build_dir / "oneshot_gpu_check.so")


def route_api_to_loaded_library(library: str) -> None:
    """Make ``ops.kernels``'s differentiable API take the fused path with the JIT library (it was
    started with ONESHOT_KERNELS=reference so that it would not load the installed one)."""
    import ops.kernels as kernels
    from ops.kernels import registration

    registration.register()
    devices = tuple(d for d in ("cpu", "cuda") if all(has_kernel(op, d.upper()) for op in OPS))
    kernels._status = kernels.KernelStatus("fused", devices, f"JIT build of csrc/ ({library})", library)


def rerun_with_jit(argv: Sequence[str]) -> int:
    """Re-run this script in a subprocess that JIT-builds the kernels (see the module docstring)."""
    from ops.kernels.toolkit import ToolkitNotFound, cuda_build_environment

    try:
        toolkit = cuda_build_environment()
    except ToolkitNotFound as error:
        print(f"gpu_check: the loaded oneshot library has no CUDA kernels and no CUDA toolkit was found "
              f"to JIT-build them ({error}). Reinstall with CUDA: {REINSTALL}", file=sys.stderr)
        return 1
    env = dict(os.environ, **toolkit, ONESHOT_KERNELS="reference")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # ninja in the venv
    return subprocess.call([sys.executable, os.path.abspath(__file__), JIT_CHILD_FLAG, *argv], env=env)


# ---------------------------------------------------------------------------------------------
# (b) CUDA against the CPU kernels


def pool_cases(quick: bool) -> list[tuple]:
    shapes = [(2, 3, 7, 5), (1, 1, 1, 1), (3, 5, 2, 9), (4, 16, 32, 32)]
    kinds_list = [[0, 1, 2], [2, 0, 1], [1, 2], [2], [1], [0]]
    layouts = ["contiguous", "channels_last", "strided"]
    cases = []
    for shape, kinds, stride, batchnorm, training, ties, layout in itertools.product(
            shapes, kinds_list, (1, 2), (True, False), (True, False), (False, True), layouts):
        if (stride == 2 and 0 in kinds) or (not batchnorm and not training):
            continue
        if quick and (layout == "strided" or shape == (4, 16, 32, 32)):
            continue
        cases.append((shape, kinds, stride, batchnorm, training, ties, layout))
    return cases


def check_mixed_pool(dtype: torch.dtype, fwd: Check, bwd: Check, generator: torch.Generator, quick: bool) -> None:
    """CUDA ``dtype`` against the CPU kernels (in float32 for the half types, on the same rounded
    values); the backward gets the same statistics on both sides."""
    low = dtype in (torch.float16, torch.bfloat16)
    cpu_dtype = torch.float32 if low else dtype
    weight_tol = TOLERANCE[dtype] * WEIGHT_GRAD_FACTOR
    for shape, kinds, stride, batchnorm, training, ties, layout in pool_cases(quick):
        if low and ties and batchnorm:
            continue  # BN of a tied (near-constant) pool amplifies half rounding beyond any fixed bound
        case = f"{list(shape)} kinds={kinds} stride={stride} bn={batchnorm} training={training} ties={ties} {layout}"
        x = sample(shape, ties, generator).to(dtype)
        w = torch.randn(len(kinds), generator=generator, dtype=torch.float64).to(dtype)
        C = shape[1]
        rm = None if training else torch.randn(2, C, generator=generator, dtype=torch.float64).to(dtype)
        rv = None if training else (torch.rand(2, C, generator=generator, dtype=torch.float64) + 0.5).to(dtype)
        cpu = lambda t: None if t is None else t.to(cpu_dtype)  # noqa: E731
        cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
        x_cuda = arrange(x.cuda(), layout)
        args = (kinds, stride, batchnorm, training)
        got = torch.ops.oneshot.mixed_pool(x_cuda, w.cuda(), *args, cuda(rm), cuda(rv), 1e-5)
        want = torch.ops.oneshot.mixed_pool(arrange(x.to(cpu_dtype), layout), w.to(cpu_dtype), *args,
                                            cpu(rm), cpu(rv), 1e-5)
        for name, a, b in zip(("out", "mean", "var"), got, want):
            fwd.record(f"{case} {name}", relative_error(a, b))
        if got[0].is_contiguous(memory_format=torch.channels_last) != want[0].is_contiguous(
                memory_format=torch.channels_last):
            fwd.failures.append(f"{case}: output memory format differs from the CPU kernel's")
        grad = torch.randn(want[0].shape, generator=generator, dtype=torch.float64).to(dtype)
        grad = arrange(grad, "channels_last" if layout == "channels_last" else "contiguous")
        mean, var = (got[1], got[2]) if low else (want[1], want[2])  # the statistics both sides use
        gx, gw = torch.ops.oneshot.mixed_pool_backward(grad.cuda(), x_cuda, w.cuda(), *args, mean.cuda(), var.cuda(),
                                                       1e-5)
        gx_ref, gw_ref = torch.ops.oneshot.mixed_pool_backward(
            grad.to(cpu_dtype), arrange(x.to(cpu_dtype), layout), w.to(cpu_dtype), *args, mean.cpu().to(cpu_dtype),
            var.cpu().to(cpu_dtype), 1e-5)
        bwd.record(f"{case} grad_x", relative_error(gx, gx_ref))
        bwd.record(f"{case} grad_weights", relative_error(gw, gw_ref), weight_tol)


def sum_cases(quick: bool) -> list[tuple]:
    cases = []
    shapes = [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 1, 3), (8, 16, 16, 16)]
    for K in (1, 2, 3, 5, 8):
        for pattern in ("all", "none", "alternate"):
            for shape in shapes[:3] if quick else shapes:
                normalize = [pattern == "all" or (pattern == "alternate" and k % 2 == 0) for k in range(K)]
                for training in (True, False):
                    cases.append((K, normalize, shape, training))
    return cases


def check_weighted_sum(dtype: torch.dtype, fwd: Check, bwd: Check, generator: torch.Generator,
                       quick: bool) -> None:
    low = dtype in (torch.float16, torch.bfloat16)
    cpu_dtype = torch.float32 if low else dtype
    weight_tol = TOLERANCE[dtype] * WEIGHT_GRAD_FACTOR
    layouts = ("contiguous", "channels_last", "strided")
    for K, normalize, shape, training in sum_cases(quick):
        case = f"K={K} normalize={normalize} {list(shape)} training={training}"
        inputs = [(torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.5).to(dtype)
                  for _ in range(K)]
        w = torch.randn(K, generator=generator, dtype=torch.float64).to(dtype)
        rows, C = sum(normalize), shape[1]
        rm = None if training or not rows else torch.randn(rows, C, generator=generator, dtype=torch.float64).to(dtype)
        rv = None if training or not rows else (torch.rand(rows, C, generator=generator, dtype=torch.float64)
                                                + 0.5).to(dtype)
        cuda_inputs = [arrange(t.cuda(), layouts[k % 3]) for k, t in enumerate(inputs)]
        cpu_inputs = [arrange(t.to(cpu_dtype), layouts[k % 3]) for k, t in enumerate(inputs)]
        got = torch.ops.oneshot.weighted_sum(cuda_inputs, w.cuda(), normalize, training,
                                             None if rm is None else rm.cuda(), None if rv is None else rv.cuda(), 1e-5)
        want = torch.ops.oneshot.weighted_sum(cpu_inputs, w.to(cpu_dtype), normalize, training,
                                              None if rm is None else rm.to(cpu_dtype),
                                              None if rv is None else rv.to(cpu_dtype), 1e-5)
        for name, a, b in zip(("out", "mean", "var"), got, want):
            fwd.record(f"{case} {name}", relative_error(a, b))
        grad = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        mean, var = (got[1], got[2]) if low else (want[1], want[2])
        grads, gw = torch.ops.oneshot.weighted_sum_backward(grad.cuda(), cuda_inputs, w.cuda(), normalize, training,
                                                            mean.cuda(), var.cuda(), 1e-5)
        grads_ref, gw_ref = torch.ops.oneshot.weighted_sum_backward(
            grad.to(cpu_dtype), cpu_inputs, w.to(cpu_dtype), normalize, training, mean.cpu().to(cpu_dtype),
            var.cpu().to(cpu_dtype), 1e-5)
        for k, (a, b) in enumerate(zip(grads, grads_ref)):
            bwd.record(f"{case} grad_inputs[{k}]", relative_error(a, b))
        bwd.record(f"{case} grad_weights", relative_error(gw, gw_ref), weight_tol)


def check_determinism(check: Check, generator: torch.Generator) -> None:
    """Two runs of every op at DARTS size give bitwise-equal results (no atomics)."""
    x = torch.randn(64, 16, 32, 32, generator=generator).cuda().contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, generator=generator).cuda()
    ys = [torch.randn(64, 16, 32, 32, generator=generator).cuda() for _ in range(4)]
    wk = torch.randn(4, generator=generator).cuda()
    normalize = [True, False, True, True]

    def run() -> list[torch.Tensor]:
        out, mean, var = torch.ops.oneshot.mixed_pool(x, w, [0, 1, 2], 1, True, True, None, None, 1e-5)
        gx, gw = torch.ops.oneshot.mixed_pool_backward(torch.ones_like(out), x, w, [0, 1, 2], 1, True, True,
                                                       mean, var, 1e-5)
        s, sm, sv = torch.ops.oneshot.weighted_sum(ys, wk, normalize, True, None, None, 1e-5)
        gys, gwk = torch.ops.oneshot.weighted_sum_backward(out.contiguous(), ys, wk, normalize, True, sm, sv, 1e-5)
        return [out, mean, var, gx, gw, s, sm, sv, *gys, gwk]

    first, second = run(), run()
    for i, (a, b) in enumerate(zip(first, second)):
        check.record(f"output {i}", 0.0 if torch.equal(a, b) else math.inf)


# ---------------------------------------------------------------------------------------------
# (c) gradcheck through the differentiable API


def check_gradients(check: Check) -> None:
    import ops.kernels as kernels

    if not kernels.fused_available("cuda"):
        check.failures.append(f"ops.kernels does not route CUDA to the fused kernels: {kernels.status().reason}")
        return
    g = torch.Generator().manual_seed(1)
    dev = torch.device("cuda")

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dev).requires_grad_()

    running = (torch.randn(2, 3, generator=g, dtype=torch.float64).to(dev),
               (torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5).to(dev))
    cases: list[tuple[str, Callable, tuple]] = []
    for kinds, stride, batchnorm, training, layout in (([0, 1, 2], 1, True, True, "contiguous"),
                                                       ([1, 2], 2, True, True, "channels_last"),
                                                       ([2, 0], 1, False, True, "contiguous"),
                                                       ([0, 1, 2], 1, True, False, "channels_last")):
        stats = (None, None) if training else running

        def fn(x, w, kinds=kinds, stride=stride, batchnorm=batchnorm, training=training, stats=stats):
            return kernels.mixed_pool(x, w, kinds, stride, batchnorm, training, *stats)[0]

        x = arrange(leaf(2, 3, 5, 6).detach(), layout).requires_grad_()
        cases.append((f"mixed_pool kinds={kinds} stride={stride} bn={batchnorm} training={training} {layout}",
                           fn, (x, leaf(len(kinds)))))
    for normalize, training in (([True, False, True], True), ([True, False, True], False), ([False, False], True)):
        rows = sum(normalize)
        stats = (None, None) if training else (torch.randn(rows, 3, generator=g, dtype=torch.float64).to(dev),
                                               (torch.rand(rows, 3, generator=g, dtype=torch.float64) + 0.5).to(dev))

        def fn(w, *inputs, normalize=normalize, training=training, stats=stats):
            return kernels.weighted_sum(list(inputs), w, normalize, training, *stats)[0]

        cases.append((f"weighted_sum normalize={normalize} training={training}", fn,
                           (leaf(len(normalize)), *[leaf(2, 3, 4, 5) for _ in normalize])))
    for name, fn, inputs in cases:
        try:
            ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
        except RuntimeError as error:  # gradcheck raises on a mismatch
            check.failures.append(f"{name}: {str(error).splitlines()[0][:200]}")
            check.cases += 1
            continue
        check.record(name, 0.0 if ok else math.inf)


# ---------------------------------------------------------------------------------------------
# (d) the benchmark


def run_benchmark(check: Check, timeout: float, jit: bool) -> None:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "step.py"), "--device", "cuda", "--spaces", "darts",
               "--algorithms", "darts", "--kernels", "fused", "unfused", "compile"]
    print(f"[d] {' '.join(command)}", flush=True)
    if jit:
        print("[d] WARNING: step.py runs in its own process with the installed library, which has no CUDA "
              f"kernels: its 'fused' rows fall back to the reference path. Reinstall first: {REINSTALL}", flush=True)
        check.note = "fused rows = reference (no installed CUDA kernels)"
    env = {k: v for k, v in os.environ.items() if k != "ONESHOT_KERNELS"}
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or ""
        print(out if isinstance(out, str) else out.decode(errors="replace"))
        check.failures.append(f"timed out after {timeout:.0f} s")
        return
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr[-4000:])
        check.failures.append(f"exit status {result.returncode}")
    check.cases = 1
    check.note = (check.note + "; " if check.note else "") + f"{time.perf_counter() - started:.0f} s"


# ---------------------------------------------------------------------------------------------
# (e) summary


def summary(checks: Sequence[Check]) -> bool:
    print("\n== summary ==")
    print(f"{'check':<44} {'result':<6} {'cases':>6} {'worst error':>12} {'bound':>9}  note")
    for c in checks:
        worst = "-" if c.cases == 0 or c.tolerance == 0 else f"{c.worst:.2e}"
        bound = "-" if c.tolerance == 0 else f"{c.tolerance:.1e}"
        print(f"{c.name:<44} {'ok' if c.ok else 'FAIL':<6} {c.cases:>6} {worst:>12} {bound:>9}  {c.note}")
    for c in checks:
        for failure in c.failures[:5]:
            print(f"FAIL {c.name}: {failure}")
        if len(c.failures) > 5:
            print(f"FAIL {c.name}: ... and {len(c.failures) - 5} more")
    passed = all(c.ok for c in checks)
    print("ALL PASSED" if passed else "SOME CHECKS FAILED")
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jit_child = JIT_CHILD_FLAG in argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-benchmark", action="store_true", help="skip step d (benchmarks/step.py)")
    parser.add_argument("--benchmark-timeout", type=float, default=150.0, help="seconds for step d")
    parser.add_argument("--quick", action="store_true", help="fewer layouts and no DARTS-size cases in step b")
    parser.add_argument("--jit", action="store_true", help="JIT-build csrc/ even if the installed library has CUDA")
    parser.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "oneshot_gpu_check_build"),
                        help="where the JIT build goes")
    args = parser.parse_args([a for a in argv if a != JIT_CHILD_FLAG])
    started = time.perf_counter()

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"torch.cuda.is_available() is False); run this on a GPU machine", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)

    # (a) load
    import ops.kernels as kernels

    jit = jit_child
    if jit_child:
        route_api_to_loaded_library(build_jit(Path(args.build_dir)))
    elif args.jit or (kernels.status() is not None and not cuda_kernels_registered()):
        print(f"[a] {kernels.status().reason}", flush=True)
        print(f"[a] no CUDA kernels loaded; JIT-building them in a subprocess (faster next time: {REINSTALL})",
              flush=True)
        return rerun_with_jit(argv)
    load_check = Check("a. kernels loaded (CPU + CUDA)")
    for op in OPS:
        load_check.record(op, 0.0 if has_kernel(op, "CUDA") and has_kernel(op, "CPU") else math.inf)
    load_check.note = kernels.status().reason[:60]
    checks = [load_check]
    if not load_check.ok:
        return 0 if summary(checks) else 1

    # (b) against the CPU kernels
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        fwd = Check(f"b. forward ops {name} vs CPU", TOLERANCE[dtype])
        bwd = Check(f"b. backward ops {name} vs CPU", TOLERANCE[dtype])
        t0 = time.perf_counter()
        check_mixed_pool(dtype, fwd, bwd, generator, args.quick)
        check_weighted_sum(dtype, fwd, bwd, generator, args.quick)
        fwd.note = f"{time.perf_counter() - t0:.0f} s"
        checks += [fwd, bwd]
        print(f"[b] {name}: forward {'ok' if fwd.ok else 'FAIL'}, backward {'ok' if bwd.ok else 'FAIL'} "
              f"({fwd.cases + bwd.cases} comparisons)", flush=True)
    determinism = Check("b. bitwise run-to-run determinism")
    check_determinism(determinism, generator)
    checks.append(determinism)

    # (c) gradcheck
    gradients = Check("c. gradcheck float64 on CUDA (Python API)")
    t0 = time.perf_counter()
    check_gradients(gradients)
    gradients.note = f"{time.perf_counter() - t0:.0f} s"
    checks.append(gradients)
    print(f"[c] gradcheck: {'ok' if gradients.ok else 'FAIL'}", flush=True)

    # (d) benchmark
    if not args.skip_benchmark:
        bench = Check("d. benchmarks/step.py fused/unfused/compile")
        run_benchmark(bench, args.benchmark_timeout, jit)
        checks.append(bench)

    passed = summary(checks)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
