"""Time and peak memory of one dense-DARTS supernet training step: ours vs xautodl.

One step = forward, cross-entropy loss, backward to the weights and the architecture
parameters, and one SGD step (momentum 0.9, weight decay 3e-4 on the weights; DARTS
train_search.py). Mixing is dense DARTS: ``decisions = {label: softmax(alpha[label])}``.

Compared against D-X-Y/AutoDL-Projects (``pip install --no-deps xautodl``):
``NASNetworkDARTS`` (xautodl/models/cell_searchs/search_model_darts_nasnet.py) for the DARTS
space and ``TinyNetworkDarts`` (search_model_darts.py) for NAS-Bench-201, built with the
settings of our supernets (C=16, 8 cells / N=5, affine False, running stats on).

Method:
* time: ``--warmup`` steps, then the median of ``--steps`` steps timed with
  ``time.perf_counter`` (``torch.cuda.synchronize`` around each step on CUDA);
* memory on CPU: every (space, implementation) runs in a fresh subprocess of this script;
  the peak is ``ru_maxrss`` after the steps minus ``ru_maxrss`` after model, optimizer and
  batch construction (ATen's CPU allocations are invisible to tracemalloc, RSS sees them);
  it includes allocator caching, which is the memory the process really holds;
* memory on CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation after construction.

Usage (from the repository root)::

    .venv/bin/python benchmarks/step.py                       # both spaces, CPU
    .venv/bin/python benchmarks/step.py --threads 2 --steps 20
    .venv/bin/python benchmarks/step.py --device cuda
    .venv/bin/python benchmarks/step.py --profile --spaces darts   # top ops of our step
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

SPACES = ("darts", "nb201")
IMPLEMENTATIONS = ("ours", "xautodl")
INPUT_SHAPE = (3, 32, 32)  # CIFAR-10
NUM_CLASSES = 10
# DARTS train_search.py: --learning_rate 0.025 --momentum 0.9 --weight_decay 3e-4.
LR, MOMENTUM, WEIGHT_DECAY = 0.025, 0.9, 3e-4
MEMORY_FORMAT = "channels_last"  # ours; set by --memory-format (xautodl runs as it ships)
XAUTODL_MISSING = "xautodl not installed: pip install --no-deps xautodl"


def xautodl_available() -> bool:
    return importlib.util.find_spec("xautodl") is not None


# ---------------------------------------------------------------------------------------------
# Models: each builder returns (model, weights, alphas, step_forward) where step_forward(x)
# returns logits with the dense softmax mixing computed inside, as a training step does.


Built = tuple[nn.Module, list[nn.Parameter], list[nn.Parameter], Callable[[torch.Tensor], torch.Tensor]]


def build_ours(space: str, device: torch.device) -> Built:
    import supernets

    model = supernets.get(space).build_supernet(num_classes=NUM_CLASSES).to(device)
    if MEMORY_FORMAT == "channels_last":  # what SearchAlgorithm(memory_format="auto") does on CPU
        model = model.to(memory_format=torch.channels_last)
    # DARTS init: 1e-3 * randn per edge (model_search.py _initialize_alphas).
    alphas = nn.ParameterDict({
        label.replace("/", ":").replace("<-", "_from_"): nn.Parameter(1e-3 * torch.randn(len(ops), device=device))
        for label, ops in model.edges.items()})
    pairs = [(label, alphas[label.replace("/", ":").replace("<-", "_from_")]) for label in model.edges]

    def forward(x: torch.Tensor) -> torch.Tensor:
        decisions = {label: torch.softmax(alpha, dim=-1) for label, alpha in pairs}
        if MEMORY_FORMAT == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x, decisions)

    return model, list(model.parameters()), list(alphas.values()), forward


def _relayout_darts_cells(model: nn.Module, search_space: list[str], C: int, layers: int) -> None:
    """Rebuild xautodl's cells in the DARTS layout: ``layers`` cells, reductions at layers//3 and
    2*layers//3 (model_search.py), i.e. 2 N 2 N 2 for 8 cells.

    NASNetworkDARTS lays out N, R, N-1, R, N-1 cells, which is 6 cells at N=2 (and 9 at N=3):
    no N gives DARTS' 8. Only the list of cells changes; the cells (xautodl NASNetSearchCell),
    their forward and the network forward stay xautodl's own.
    """
    from xautodl.models.cell_searchs.search_cells import NASNetSearchCell

    C_prev_prev = C_prev = 3 * C
    C_curr, reduction_prev, cells = C, False, nn.ModuleList()
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cells.append(NASNetSearchCell(search_space, 4, 4, C_prev_prev, C_prev, C_curr, reduction,
                                      reduction_prev, False, True))
        C_prev_prev, C_prev, reduction_prev = C_prev, 4 * C_curr, reduction
    if C_prev != model.classifier.in_features:
        raise RuntimeError(f"relayout ends at {C_prev} channels, xautodl's head expects "
                           f"{model.classifier.in_features}")
    model.cells = cells
    model._Layer = layers


def build_xautodl(space: str, device: torch.device) -> Built:
    from xautodl.models.cell_operations import SearchSpaceNames
    from xautodl.models.cell_searchs import NASNetworkDARTS, TinyNetworkDarts

    if space == "darts":
        # C=16, steps 4, multiplier 4, stem multiplier 3, the 8 DARTS ops.
        model = NASNetworkDARTS(C=16, N=2, steps=4, multiplier=4, stem_multiplier=3,
                                num_classes=NUM_CLASSES, search_space=SearchSpaceNames["darts"],
                                affine=False, track_running_stats=True)
        _relayout_darts_cells(model, SearchSpaceNames["darts"], C=16, layers=8)
    elif space == "nb201":
        model = TinyNetworkDarts(C=16, N=5, max_nodes=4, num_classes=NUM_CLASSES,
                                 search_space=SearchSpaceNames["nas-bench-201"], affine=False,
                                 track_running_stats=True)  # ours: track_running_stats=True
    else:
        raise ValueError(f"unknown space {space!r}; accepted: {', '.join(SPACES)}")
    model = model.to(device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)[1]  # (features, logits)

    return model, list(model.get_weights()), list(model.get_alphas()), forward


BUILDERS = {"ours": build_ours, "xautodl": build_xautodl}


def parameter_breakdown(weights: list[nn.Parameter], model: nn.Module) -> dict[str, int]:
    """Weight parameters per module kind and role (conv weight / conv bias / BN / linear)."""
    ids = {id(p) for p in weights}
    counts: Counter[str] = Counter()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in ids:
                counts[f"{type(module).__name__}.{name}"] += p.numel()
    return dict(counts)


# ---------------------------------------------------------------------------------------------
# One measurement (runs in a fresh process)


def make_step(args: argparse.Namespace, space: str, impl: str, device: torch.device):
    torch.manual_seed(0)
    model, weights, alphas, forward = BUILDERS[impl](space, device)
    model.train()
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                                 {"params": alphas, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM)
    x = torch.randn(args.batch_size, *INPUT_SHAPE, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(forward(x), y)
        loss.backward()
        optimizer.step()

    return model, weights, alphas, step


def measure(args: argparse.Namespace, space: str, impl: str) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights, alphas, step = make_step(args, space, impl, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"space": space, "impl": impl, "params": sum(p.numel() for p in weights),
            "arch_params": sum(p.numel() for p in alphas),
            "breakdown": parameter_breakdown(weights, model),
            "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def run_worker(args: argparse.Namespace, space: str, impl: str) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter so its RSS high-water mark is its own."""
    command = [sys.executable, os.path.abspath(__file__), "--_worker", space, impl,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device,
               "--memory-format", args.memory_format]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker {space}/{impl} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'space':<6} {'impl':<8} {'params':>10} {'ms/step':>9} {'min ms':>9} {'peak MB':>9} " \
             f"{'time ratio':>10} {'mem ratio':>9}"
    print(header)
    print("-" * len(header))
    reference = {r["space"]: r for r in rows if r["impl"] == "xautodl"}
    for r in rows:
        ref = reference.get(r["space"])
        t_ratio = m_ratio = "-"
        if ref is not None and r["impl"] == "ours":
            t_ratio = f"{r['median_ms'] / ref['median_ms']:.2f}"
            m_ratio = f"{r['peak_mb'] / ref['peak_mb']:.2f}" if ref["peak_mb"] > 0 else "n/a"
        print(f"{r['space']:<6} {r['impl']:<8} {r['params']:>10,} {r['median_ms']:>9.1f} "
              f"{r['min_ms']:>9.1f} {r['peak_mb']:>9.1f} {t_ratio:>10} {m_ratio:>9}")


def print_param_differences(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["space"], r["impl"]): r for r in rows}
    for space in SPACES:
        ours, theirs = by_key.get((space, "ours")), by_key.get((space, "xautodl"))
        if not ours or not theirs:
            continue
        if ours["params"] == theirs["params"]:
            print(f"{space}: same weight parameter count ({ours['params']:,}) on both sides")
            continue
        print(f"{space}: weight parameter counts differ: ours {ours['params']:,}, xautodl "
              f"{theirs['params']:,} ({theirs['params'] - ours['params']:+,}); by kind:")
        kinds = sorted(set(ours["breakdown"]) | set(theirs["breakdown"]))
        for kind in kinds:
            a, b = ours["breakdown"].get(kind, 0), theirs["breakdown"].get(kind, 0)
            if a != b:
                print(f"    {kind:<24} ours {a:>9,}  xautodl {b:>9,}  ({b - a:+,})")


def profile(args: argparse.Namespace, space: str, impl: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, _, _, step = make_step(args, space, impl, device)
    for _ in range(max(args.warmup, 1)):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = min(args.steps, 3)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    print(f"\n== {impl} {space}: top 15 ops by self CPU time over {steps} steps "
          f"(batch {args.batch_size}, {torch.get_num_threads()} threads, {device}) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES))
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="layout of our supernet (SearchAlgorithm memory_format; auto = channels_last on CPU)")
    parser.add_argument("--profile", nargs="*", choices=IMPLEMENTATIONS, default=None,
                        help="print the top 15 ops by self CPU time of the step instead of the "
                             "table (default: ours; name 'xautodl' to profile it as well)")
    parser.add_argument("--_worker", nargs=2, metavar=("SPACE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    global MEMORY_FORMAT
    args = parse_args(argv)
    MEMORY_FORMAT = args.memory_format
    if args._worker:
        print(json.dumps(measure(args, *args._worker)))
        return 0
    have_xautodl = xautodl_available()
    if args.profile is not None:
        for space in args.spaces:
            for impl in args.profile or ["ours"]:
                if impl == "xautodl" and not have_xautodl:
                    print(XAUTODL_MISSING)
                    continue
                profile(args, space, impl)
        return 0
    impls = ["ours"] + (["xautodl"] if have_xautodl else [])
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device "
          f"{args.device}, threads {args.threads or torch.get_num_threads()}, batch "
          f"{args.batch_size}, warm-up {args.warmup}, median of {args.steps} steps, ours in "
          f"{args.memory_format}, xautodl as it ships (contiguous)")
    print("peak memory: " + ("torch.cuda.max_memory_allocated minus the allocation after "
                             "construction" if args.device.startswith("cuda") else
                             "ru_maxrss increase over the value after model/optimizer/batch "
                             "construction, one fresh process per row"))
    if not have_xautodl:
        print(XAUTODL_MISSING)
    rows = [run_worker(args, space, impl) for space in args.spaces for impl in impls]
    print()
    print_table(rows)
    print()
    print_param_differences(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
