"""Time and peak memory of one supernet weight step per search algorithm: ours vs xautodl.

One step = forward with the algorithm's weight-step decisions, cross-entropy loss, backward,
and one SGD step (momentum 0.9, weight decay 3e-4 on the weights; DARTS train_search.py) over
the weights and the architecture parameters that received a gradient (SGD skips ``None``).

Our rows are built through the real algorithm classes (``oneshot.algorithms``: ``DartsSearch``,
``PCDartsSearch`` with its default K = 4, ``GdasSearch``, ``RandomSinglePathSearch``) and run
``model.loss_and_accuracy(batch, model.decisions_for_weight_step())``, so they measure what a
search runs: dense softmax mixing (DARTS), dense partial-channel mixing times the edge
normalization (PC-DARTS), one straight-through Gumbel sample per edge at tau = 10 (GDAS; the
temperature outside a Trainer is ``tau_max``), one uniform single path (RSPS), one controller
sample (ENAS, its default controller; the sample's cost included). Outside a
Trainer ``global_step`` stays 0, so GDAS and RSPS would sample the same path at every step;
the benchmark advances ``PL_GLOBAL_SEED``, which their samplers read, once per step so each
step samples a fresh path as training does. The ``single`` row is a stand-alone network of one
path of comparable size: ``build_network(space.sample(Random(0)))`` for NAS-Bench-201 (C=16,
N=5) and ``build_network(DARTS_V2, C=16, layers=8)`` for the DARTS space. For SPOS
(``SposSearch``, full ImageNet widths, 10 classes, 64x64 input) both rows run the same path:
the supernet step is the sampled path plus the sampler and the dropped zero gradients, and
``single`` is that path's stand-alone network (affine BN, as retrained).

Compared against D-X-Y/AutoDL-Projects (``pip install --no-deps xautodl``), built with the
settings of our supernets (C=16, 8 cells / N=5, affine False, running stats on):
* darts: ``NASNetworkDARTS`` (search_model_darts_nasnet.py) and ``TinyNetworkDarts``
  (search_model_darts.py);
* gdas: ``NASNetworkGDAS`` (search_model_gdas_nasnet.py) and ``TinyNetworkGDAS``
  (search_model_gdas.py) with ``set_tau(10)``; their forward samples a fresh path from torch's
  global RNG at every call.
The NASNet models are re-laid out to DARTS' 8 cells (:func:`_relayout_darts_cells`).

Method:
* time: ``--warmup`` steps, then the median of ``--steps`` steps timed with
  ``time.perf_counter`` (``torch.cuda.synchronize`` around each step on CUDA). GDAS and RSPS
  steps differ with the sampled path: their median is over different paths;
* memory on CPU: every row runs in a fresh subprocess of this script; the peak is
  ``ru_maxrss`` after the steps minus ``ru_maxrss`` after model, optimizer and batch
  construction (ATen's CPU allocations are invisible to tracemalloc, RSS sees them); it
  includes allocator caching, which is the memory the process really holds;
* memory on CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation after construction.

Kernels (``--kernels``): each of our rows runs as ``fused`` (dense mixing through the fused
kernels of :mod:`ops.kernels` where the library is loaded), ``unfused`` (candidate by
candidate, the reference path) or ``compile`` (the unfused supernet under ``torch.compile``,
what a user would try instead; its warm-up steps include the compilation and its peak memory
the compiler's). Single-path algorithms (GDAS, RSPS, SPOS, ENAS) never take the fused path, so
their fused and unfused rows run the same code.

Usage (from the repository root)::

    .venv/bin/python benchmarks/step.py                       # both spaces, 4 algorithms, CPU
    .venv/bin/python benchmarks/step.py --spaces nb201 --algorithms gdas rsps --steps 20
    .venv/bin/python benchmarks/step.py --spaces spos --algorithms spos --steps 20   # SPOS vs its path alone
    .venv/bin/python benchmarks/step.py --device cuda --steps 50
    .venv/bin/python benchmarks/step.py --spaces darts --algorithms darts --kernels fused unfused compile
    .venv/bin/python benchmarks/step.py --profile --spaces darts --algorithms gdas  # top ops
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
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

SPACES = ("darts", "nb201", "spos")
CELL_ALGORITHMS = ("darts", "pcdarts", "gdas", "rsps")
ALGORITHMS = (*CELL_ALGORITHMS, "enas", "spos")
# The DARTS variants (not in the default run): row name -> (algorithm, options). Their weight step,
# what it costs next to DARTS's: SDARTS-ADV's includes its 7-step PGD attack on the batch.
VARIANTS = {"sdarts_rs": ("sdarts", {"perturbation": "random"}),
            "sdarts_adv": ("sdarts", {"perturbation": "adversarial"}),
            "darts_minus": ("darts_minus", {}), "fairdarts": ("fairdarts", {}),
            "drnas": ("drnas", {}), "snas": ("snas", {"edge_drop_path": 0.3, "edge_drop_path_schedule": "constant"})}
# ENAS's controller serves NB201 (one token per edge), not the DARTS space's node pairs
SPACE_ALGORITHMS = {"darts": (*CELL_ALGORITHMS, *VARIANTS), "nb201": (*CELL_ALGORITHMS, "enas", *VARIANTS),
                    "spos": ("spos",)}
IMPLEMENTATIONS = ("ours", "xautodl")
KERNEL_VARIANTS = ("fused", "unfused", "compile")
XAUTODL_ALGORITHMS = ("darts", "gdas")  # the xautodl search models compared here
INPUT_SHAPE = (3, 32, 32)  # CIFAR-10
SPOS_INPUT_SHAPE = (3, 64, 64)  # a CPU-sized input for the 32x-downsampling SPOS backbone (2x2 at the end)
NUM_CLASSES = 10
# DARTS train_search.py: --learning_rate 0.025 --momentum 0.9 --weight_decay 3e-4.
LR, MOMENTUM, WEIGHT_DECAY = 0.025, 0.9, 3e-4
GDAS_TAU = 10.0  # GDAS.sh --tau_max 10: the temperature of the first epoch
MEMORY_FORMAT = "channels_last"  # ours; set by --memory-format (xautodl runs as it ships)
XAUTODL_MISSING = "xautodl not installed: pip install --no-deps xautodl"


def xautodl_available() -> bool:
    return importlib.util.find_spec("xautodl") is not None


# ---------------------------------------------------------------------------------------------
# Models: each builder returns (model, weights, arch_params, step_loss, note) where step_loss(x, y)
# computes the loss of one weight step, decisions included.


Built = tuple[nn.Module, list[nn.Parameter], list[nn.Parameter],
              Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]


def build_ours(space: str, algorithm: str, device: torch.device, kernels: str = "fused") -> Built:
    from oneshot.algorithms import ALGORITHMS as CLASSES

    name, options = VARIANTS.get(algorithm, (algorithm, {}))
    model = CLASSES[name](space=space, num_classes=NUM_CLASSES, in_channels=INPUT_SHAPE[0],
                          memory_format=MEMORY_FORMAT, **options).to(device)
    model.on_fit_start()  # what a fit does first: the supernet in the chosen memory format
    if hasattr(model.supernet, "edge_drop_path_prob"):  # what the first epoch sets (SNAS: constant)
        model.supernet.edge_drop_path_prob = model.hparams.get("edge_drop_path", 0.0) if \
            model.hparams.get("edge_drop_path_schedule") == "constant" else 0.0
    if kernels == "compile":  # what a user would try instead of fused kernels: inductor, unfused ops
        model.supernet = torch.compile(model.supernet)
    steps = iter(range(1, 2**31))

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # a fresh GDAS/RSPS/ENAS sample per step; SPOS keeps one path: the single row's (spos_path)
        os.environ["PL_GLOBAL_SEED"] = "0" if space == "spos" else str(next(steps))
        return model.loss_and_accuracy((x, y), model.weight_decisions((x, y)))[0]

    note = f"{type(model).__name__}, input {str(model.input_memory_format()).split('.')[-1]}"
    arch_params = model.architecture_parameters() if hasattr(model, "architecture_parameters") else []
    return model, list(model.supernet.parameters()), arch_params, step_loss, note


def build_single(space: str, device: torch.device) -> Built:
    import supernets

    search_space = supernets.get(space)
    if space == "darts":  # the 8-cell, C=16 search layout, with DARTS_V2's cells
        arch = search_space.genotypes["DARTS_V2"]
        network = search_space.build_network(arch, num_classes=NUM_CLASSES, C=16, layers=8)
    elif space == "spos":  # the path the spos row trains, with affine BN as SPOS retrains it
        arch = spos_path()
        network = search_space.build_network(arch, num_classes=NUM_CLASSES)
    else:
        arch = search_space.sample(random.Random(0))
        network = search_space.build_network(arch, num_classes=NUM_CLASSES)
    network = network.to(device)
    layout = torch.channels_last if MEMORY_FORMAT == "channels_last" else torch.contiguous_format
    network = network.to(memory_format=layout)
    criterion = nn.CrossEntropyLoss()

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(network(x.contiguous(memory_format=layout)), y)

    return network, list(network.parameters()), [], step_loss, search_space.format(arch)


def _relayout_darts_cells(model: nn.Module, search_space: list[str], C: int, layers: int) -> None:
    """Rebuild xautodl's cells in the DARTS layout: ``layers`` cells, reductions at layers//3 and
    2*layers//3 (model_search.py), i.e. 2 N 2 N 2 for 8 cells.

    NASNetworkDARTS / NASNetworkGDAS lay out N, R, N-1, R, N-1 cells, which is 6 cells at N=2
    (and 9 at N=3): no N gives DARTS' 8. Only the list of cells changes; the cells (xautodl
    NASNetSearchCell), their forward and the network forward stay xautodl's own.
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


def build_xautodl(space: str, algorithm: str, device: torch.device) -> Built:
    from xautodl.models.cell_operations import SearchSpaceNames
    from xautodl.models.cell_searchs import (NASNetworkDARTS, NASNetworkGDAS, TinyNetworkDarts,
                                             TinyNetworkGDAS)

    if algorithm not in XAUTODL_ALGORITHMS:
        raise ValueError(f"no xautodl model for {algorithm!r}; compared: {', '.join(XAUTODL_ALGORITHMS)}")
    if space == "darts":
        # C=16, steps 4, multiplier 4, stem multiplier 3, the 8 DARTS ops.
        cls = NASNetworkDARTS if algorithm == "darts" else NASNetworkGDAS
        model = cls(C=16, N=2, steps=4, multiplier=4, stem_multiplier=3, num_classes=NUM_CLASSES,
                    search_space=SearchSpaceNames["darts"], affine=False, track_running_stats=True)
        _relayout_darts_cells(model, SearchSpaceNames["darts"], C=16, layers=8)
    elif space == "nb201":
        cls = TinyNetworkDarts if algorithm == "darts" else TinyNetworkGDAS
        model = cls(C=16, N=5, max_nodes=4, num_classes=NUM_CLASSES,
                    search_space=SearchSpaceNames["nas-bench-201"], affine=False,
                    track_running_stats=True)  # ours: track_running_stats=True
    else:
        raise ValueError(f"unknown space {space!r}; accepted: {', '.join(SPACES)}")
    if algorithm == "gdas":
        model.set_tau(GDAS_TAU)
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(model(x)[1], y)  # (features, logits); GDAS samples inside

    return model, list(model.get_weights()), list(model.get_alphas()), step_loss, cls.__name__


def spos_path() -> Any:
    """The path ``SposSearch`` samples at step 0 under seed 0 (the spos row's every step)."""
    from oneshot.algorithms.base import rank_shared_seed
    import supernets

    os.environ["PL_GLOBAL_SEED"] = "0"
    return supernets.get("spos").sample(random.Random(rank_shared_seed("spos", "weights", 0)))


def build(space: str, impl: str, algorithm: str, device: torch.device, kernels: str = "fused") -> Built:
    if impl == "ours":
        return build_single(space, device) if algorithm == "single" else build_ours(space, algorithm, device, kernels)
    if impl == "xautodl":
        return build_xautodl(space, algorithm, device)
    raise ValueError(f"unknown implementation {impl!r}; accepted: {', '.join(IMPLEMENTATIONS)}")


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


def make_step(args: argparse.Namespace, space: str, impl: str, algorithm: str, device: torch.device,
              kernels: str = "fused"):
    torch.manual_seed(0)
    model, weights, arch_params, step_loss, note = build(space, impl, algorithm, device, kernels)
    model.train()
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                                 {"params": arch_params, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM)
    x = torch.randn(args.batch_size, *(SPOS_INPUT_SHAPE if space == "spos" else INPUT_SHAPE), device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    after_backward = getattr(model, "after_weight_backward", lambda: None)  # SPOS drops zero gradients

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step_loss(x, y).backward()
        after_backward()
        optimizer.step()  # parameters off the sampled path have no gradient: SGD skips them

    return model, weights, arch_params, step, note


def measure(args: argparse.Namespace, space: str, impl: str, algorithm: str, kernels: str) -> dict[str, Any]:
    from ops.kernels import status, use_fused

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with use_fused(kernels == "fused"):
        return _measure(args, space, impl, algorithm, kernels, device) | {
            "kernels": kernels, "kernel_status": status().reason}


def _measure(args: argparse.Namespace, space: str, impl: str, algorithm: str, kernels: str,
             device: torch.device) -> dict[str, Any]:
    model, weights, arch_params, step, note = make_step(args, space, impl, algorithm, device, kernels)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    warmup_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - warmup_start
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
    return {"space": space, "impl": impl, "algorithm": algorithm, "note": note,
            "params": sum(p.numel() for p in weights),
            "arch_params": sum(p.numel() for p in arch_params),
            "breakdown": parameter_breakdown(weights, model),
            "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "peak_mb": peak_mb, "threads": torch.get_num_threads(), "warmup_s": warmup_s}


def run_worker(args: argparse.Namespace, space: str, impl: str, algorithm: str, kernels: str) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter so its RSS high-water mark is its own."""
    command = [sys.executable, os.path.abspath(__file__), "--_worker", space, impl, algorithm, kernels,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device,
               "--memory-format", args.memory_format]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker {space}/{impl}/{algorithm} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def planned_rows(args: argparse.Namespace, have_xautodl: bool) -> list[tuple[str, str, str, str]]:
    """(space, impl, algorithm, kernels) per row: ours per algorithm and kernel variant, the
    single network, then xautodl's models for the algorithms it has."""
    rows = []
    for space in args.spaces:
        rows += [(space, "ours", algorithm, kernels) for algorithm in args.algorithms
                 if algorithm in SPACE_ALGORITHMS[space] for kernels in args.kernels]
        rows.append((space, "ours", "single", "-"))
        if have_xautodl:
            rows += [(space, "xautodl", a, "-") for a in XAUTODL_ALGORITHMS if a in args.algorithms]
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def _ratio(a: float, b: float | None) -> str:
    return "-" if b is None else (f"{a / b:.2f}" if b > 0 else "n/a")


def print_table(rows: list[dict[str, Any]]) -> None:
    """Ratios: ours / xautodl for the same algorithm; every row / our unfused step of the same
    algorithm; every row / our DARTS step with the same kernels; every row / the space's
    stand-alone network (for SPOS the same path)."""
    header = (f"{'space':<6} {'impl':<8} {'algorithm':<9} {'kernels':<8} {'params':>10} {'ms/step':>9} "
              f"{'min ms':>9} {'peak MB':>8} | {'t/xautodl':>9} {'m/xautodl':>9} | {'t/unfused':>9} "
              f"{'m/unfused':>9} | {'t/DARTS':>7} {'m/DARTS':>7} | {'t/single':>8} {'m/single':>8}")
    print(header)
    print("-" * len(header))
    by_key = {(r["space"], r["impl"], r["algorithm"], r["kernels"]): r for r in rows}
    for r in rows:
        ours = r["impl"] == "ours" and r["algorithm"] != "single"
        xautodl = by_key.get((r["space"], "xautodl", r["algorithm"], "-")) if ours else None
        unfused = by_key.get((r["space"], "ours", r["algorithm"], "unfused")) if ours else None
        darts = by_key.get((r["space"], "ours", "darts", r["kernels"] if ours else "unfused"))
        single = by_key.get((r["space"], "ours", "single", "-"))
        print(f"{r['space']:<6} {r['impl']:<8} {r['algorithm']:<9} {r['kernels']:<8} {r['params']:>10,} "
              f"{r['median_ms']:>9.1f} {r['min_ms']:>9.1f} {r['peak_mb']:>8.1f} | "
              f"{_ratio(r['median_ms'], xautodl and xautodl['median_ms']):>9} "
              f"{_ratio(r['peak_mb'], xautodl and xautodl['peak_mb']):>9} | "
              f"{_ratio(r['median_ms'], unfused and unfused['median_ms']):>9} "
              f"{_ratio(r['peak_mb'], unfused and unfused['peak_mb']):>9} | "
              f"{_ratio(r['median_ms'], darts and darts['median_ms']):>7} "
              f"{_ratio(r['peak_mb'], darts and darts['peak_mb']):>7} | "
              f"{_ratio(r['median_ms'], single and single['median_ms']):>8} "
              f"{_ratio(r['peak_mb'], single and single['peak_mb']):>8}")
    print()
    for r in rows:
        extra = ""
        if r["kernels"] == "compile":
            extra = (f"; torch.compile warm-up (compilation) {r['warmup_s']:.0f} s, its peak memory "
                     f"includes the compiler's")
        print(f"{r['space']}/{r['impl']}/{r['algorithm']}/{r['kernels']}: {r['note']}{extra}")
    statuses = {r["kernel_status"] for r in rows if r.get("kernel_status")}
    for reason in statuses:
        print(f"kernels: {reason}")


def print_param_differences(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["space"], r["impl"], r["algorithm"]): r for r in rows}  # one row per kernel variant is enough
    for space in SPACES:
        for algorithm in XAUTODL_ALGORITHMS:
            ours = by_key.get((space, "ours", algorithm))
            theirs = by_key.get((space, "xautodl", algorithm))
            if not ours or not theirs:
                continue
            if ours["params"] == theirs["params"]:
                print(f"{space}/{algorithm}: same weight parameter count ({ours['params']:,}) on both sides")
                continue
            print(f"{space}/{algorithm}: weight parameter counts differ: ours {ours['params']:,}, "
                  f"xautodl {theirs['params']:,} ({theirs['params'] - ours['params']:+,}); by kind:")
            for kind in sorted(set(ours["breakdown"]) | set(theirs["breakdown"])):
                a, b = ours["breakdown"].get(kind, 0), theirs["breakdown"].get(kind, 0)
                if a != b:
                    print(f"    {kind:<24} ours {a:>9,}  xautodl {b:>9,}  ({b - a:+,})")


def profile(args: argparse.Namespace, space: str, impl: str, algorithm: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ops.kernels import use_fused

    kernels = args.kernels[0]
    _, _, _, step, note = make_step(args, space, impl, algorithm, device, kernels)
    with use_fused(kernels == "fused"):
        _profile_steps(args, step, note, space, impl, algorithm, device)


def _profile_steps(args: argparse.Namespace, step: Callable[[], None], note: str, space: str, impl: str,
                   algorithm: str, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(max(args.warmup, 1)):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = min(args.steps, 3)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    print(f"\n== {impl} {algorithm} {space} ({note}): top 15 ops by self CPU time over {steps} steps "
          f"(batch {args.batch_size}, {torch.get_num_threads()} threads, {device}) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES))
    parser.add_argument("--algorithms", nargs="+", choices=(*ALGORITHMS, *VARIANTS), default=list(ALGORITHMS),
                        help="our algorithms to measure (xautodl rows: darts and gdas among them); the DARTS "
                             "variants (sdarts_rs, sdarts_adv, darts_minus, fairdarts, drnas, snas) on request")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="layout of our supernet (SupernetTraining memory_format; auto = channels_last on CPU)")
    parser.add_argument("--profile", nargs="*", choices=IMPLEMENTATIONS, default=None,
                        help="print the top 15 ops by self CPU time of the step of each of "
                             "--algorithms instead of the table (default: ours; name 'xautodl' "
                             "to profile its models as well)")
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_VARIANTS, default=["fused", "unfused"],
                        help="our rows per variant: fused (ops.kernels, where the library is loaded), "
                             "unfused (candidate by candidate), compile (unfused under torch.compile: "
                             "what a user would try instead; its warm-up includes compilation)")
    parser.add_argument("--_worker", nargs=4, metavar=("SPACE", "IMPL", "ALGORITHM", "KERNELS"),
                        help=argparse.SUPPRESS)
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
                for algorithm in args.algorithms:
                    if impl == "ours" or algorithm in XAUTODL_ALGORITHMS:
                        profile(args, space, impl, algorithm)
        return 0
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
    rows = []
    for space, impl, algorithm, kernels in planned_rows(args, have_xautodl):
        rows.append(run_worker(args, space, impl, algorithm, kernels))
        r = rows[-1]
        print(f"  {space}/{impl}/{algorithm}/{kernels}: {r['median_ms']:.1f} ms, {r['peak_mb']:.1f} MB",
              flush=True)
    print()
    print_table(rows)
    print()
    print_param_differences(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
