"""``oneshot info``: what an architecture costs, and the table of a whole space.

Parameters and FLOPs come from the built stand-alone network (``SearchSpace.cost``), at the
space's evaluation size, input size and number of classes unless the options say otherwise
(DARTS: C=36, 20 cells, 32x32, 10 classes; SPOS: 224x224, 1000 classes).
"""
from __future__ import annotations

import csv
import sys
from typing import Any

import supernets
from supernets import Arch, SearchSpace


def chosen_arch(space: SearchSpace, arch: str | None = None, genotype: str | None = None,
                index: int | None = None) -> Arch:
    """An Arch of ``space`` from exactly one of: a string/JSON/file, a published name, an index."""
    if genotype is not None:
        published = getattr(space, "genotypes", {})
        if genotype not in published:
            hint = "; published names belong to the darts space (--space darts)" if not published else ""
            raise ValueError(f"unknown genotype {genotype!r} for space {space.name!r}; accepted: "
                             f"{', '.join(published) or 'none'}{hint}")
    if arch is None and genotype is None and index is None:
        raise ValueError("give one of --arch, --genotype or --index")
    return supernets.resolve_arch(genotype or arch, space, index)[1]


def _classes(num_classes: int | None) -> dict[str, int]:
    """``num_classes`` as a keyword argument, none when None: each space's ``cost`` then uses its
    own default (10 for nb201 and darts, 1000 for spos)."""
    return {} if num_classes is None else {"num_classes": num_classes}


def describe(space: SearchSpace, arch: str | None = None, genotype: str | None = None,
             index: int | None = None, num_classes: int | None = None, **options: Any) -> str:
    """A few lines a researcher can paste: canonical string, index, params, FLOPs."""
    resolved = chosen_arch(space, arch, genotype, index)
    cost = space.cost(resolved, **_classes(num_classes), **options)
    lines = [f"space:   {space.name}", f"arch:    {space.format(resolved)}"]
    if hasattr(space, "index"):
        lines.append(f"index:   {space.index(resolved)}")
    if options:
        lines.append("network: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    lines += [f"params:  {cost['params']:,} ({cost['params'] / 1e6:.6f} M, auxiliary head excluded)",
              f"FLOPs:   {cost['macs'] / 1e6:.2f} M multiply-adds per image ({cost['flops'] / 1e6:.2f} M FLOPs)"]
    meta = getattr(space, "genotype_meta", {}).get(genotype or "") if genotype else None
    if meta:
        lines.append(f"source:  {meta['source']}")
        reported = [f"{meta['params_m']} M params" if meta.get("params_m") else "",
                    f"{meta['test_error']}% CIFAR-10 test error" if meta.get("test_error") else ""]
        if any(reported):
            lines.append("reported: " + ", ".join(r for r in reported if r))
        if meta.get("note"):
            lines.append(f"note:    {meta['note']}")
    return "\n".join(lines)


def write_space_table(space: SearchSpace, out: str | None, num_classes: int | None = None,
                      **options: Any) -> None:
    """CSV of every architecture: index, arch, params, FLOPs (multiply-adds).

    Raises:
        ValueError: the space is too large to enumerate (spos, darts).
    """
    try:
        archs = list(space.enumerate())
    except NotImplementedError as error:
        raise ValueError(f"{error}: --all lists enumerable spaces only; describe one "
                         "architecture with --arch") from None
    handle = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(["index", "arch", "params", "flops_macs"])
        for i, (arch, cost) in enumerate(zip(archs, space.costs(archs, **_classes(num_classes), **options))):
            writer.writerow([space.index(arch) if hasattr(space, "index") else i, space.format(arch),
                             cost["params"], int(cost["macs"])])
    finally:
        if out:
            handle.close()


def describe_kernels() -> str:
    """Which path dense mixed ops take (fused kernels or the PyTorch reference), and why."""
    import torch

    from ops import kernels

    status = kernels.status()
    devices = ", ".join(status.devices) or "none"
    lines = [f"mixed-op kernels: {status.path}" + (f" (devices: {devices})" if status.path == "fused" else ""),
             f"why: {status.reason}"]
    if status.library:
        lines.append(f"library: {status.library}")
    if status.path == "fused" and "cuda" not in status.devices:
        lines.append("cuda: not built; build it with ONESHOT_CUDA=1 pip install --no-build-isolation -e . "
                     "(TORCH_CUDA_ARCH_LIST defaults to 9.0)")
    lines.append(f"switch: {kernels.SWITCH_ENV}=reference runs the reference path without loading the library")
    lines.append(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    return "\n".join(lines)
