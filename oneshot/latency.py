"""Latency lookup tables for the ofa-mbv3 space: a subnet's latency as the sum of its parts.

Once-for-All searches under a latency budget with per-device lookup tables
(mit-han-lab/once-for-all ``ofa/nas/efficiency_predictor/latency_lookup_table.py``: one entry per
layer type, input shape and block configuration, summed over a subnet's layers). Here a table is
measured with torch on the device at hand: every distinct MBConv block (stage, first block of the
stage or a later one, whose input shapes differ; kernel; expand ratio) at every resolution, plus
the fixed parts (stem with the first block; head), each the median of ``repeats`` timed forwards
at batch 1 in eval mode without gradients. The blocks are the very modules a stand-alone
:class:`~supernets.ofa_mbv3.OfaMobileNetV3` is built of.

A table stands for one device, one set of network widths, class count and input channels; the
JSON file records them with the torch version, thread count and date, and :meth:`LatencyTable.check`
refuses a table measured for something else.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from oneshot.files import atomic_write_json
from supernets.ofa_mbv3 import (BASE_WIDTHS, EXPAND_RATIOS, KERNEL_SIZES, MAX_DEPTH, NUM_STAGES, RESOLUTION,
                                STAGES, OfaMobileNetV3, depth_label, expand_label, kernel_label, stage_widths)

TABLE_FORMAT = "oneshot-latency-table"
SPACE = "ofa-mbv3"
WIDTH_OPTIONS = ("width_mult", "base_widths")  # the space options that shape the blocks


def measure_hint(path: str | os.PathLike | None = None) -> str:
    out = f" --out {path}" if path else ""
    return (f"measure one with `oneshot latency --space {SPACE} --space-options '{{...}}' --num-classes N "
            f"--in-channels C --device DEVICE{out}`")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def describe_device(device: str | torch.device) -> str:
    """``cpu: <model>`` or ``cuda: <GPU name>``: what a latency table is valid for."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {cpu_model()}"
    return device.type


def widths_of(network_options: Mapping[str, Any]) -> list[int]:
    """The 9 stage widths the options give (the table's real identity, whatever spelling)."""
    return stage_widths(float(network_options.get("width_mult", 1.0)),
                        network_options.get("base_widths", BASE_WIDTHS))


def block_key(stage: int, block: int, kernel: int, expand: int) -> str:
    """``stage2.first.k5.e4``: blocks 2..4 of a stage share one entry (same shapes)."""
    return f"stage{stage}.{'first' if block == 1 else 'rest'}.k{kernel}.e{expand}"


def stage_input_sizes(resolution: int) -> list[tuple[int, int]]:
    """Per stage, the spatial size at its first block's input and at the later blocks' input
    ("same" padding: a stride-s conv gives ceil(size / s))."""
    size = -(-resolution // 2)  # the stride-2 stem
    sizes = []
    for stride, _, _ in STAGES:
        after = -(-size // stride)
        sizes.append((size, after))
        size = after
    return sizes


@torch.no_grad()
def time_module(module: nn.Module, input_shape: Sequence[int], device: torch.device, repeats: int,
                warmup: int) -> float:
    """Median milliseconds of one forward of ``module`` on a random input of ``input_shape``."""
    module = module.to(device).eval()
    x = torch.randn(*input_shape, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        module(x)
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        module(x)
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class _Head(nn.Module):
    """A network's head (final expand, pool, feature mix, classifier) as a module to time."""

    def __init__(self, network: OfaMobileNetV3):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.head(x)


def _uniform_network(kernel: int, expand: int, num_classes: int, in_channels: int,
                     network_options: Mapping[str, Any]) -> OfaMobileNetV3:
    """A stand-alone network with two blocks per stage, all of ``kernel`` and ``expand``: its
    blocks 2s-2 and 2s-1 are stage s's first and later block."""
    values: dict[str, int] = {RESOLUTION: 224}
    values.update({depth_label(s): 2 for s in range(1, NUM_STAGES + 1)})
    for s in range(1, NUM_STAGES + 1):
        for b in range(1, MAX_DEPTH + 1):
            values[kernel_label(s, b)], values[expand_label(s, b)] = kernel, expand
    return OfaMobileNetV3(values, num_classes, in_channels,  # type: ignore[arg-type]
                          float(network_options.get("width_mult", 1.0)),
                          network_options.get("base_widths", BASE_WIDTHS))


@dataclass
class LatencyTable:
    """Milliseconds of every part of an ofa-mbv3 subnet on one device.

    ``fixed[r]`` holds ``stem`` (stem conv and the fixed first block) and ``head``; ``blocks[r]``
    maps :func:`block_key` to the block's latency at resolution ``r``.
    """

    network_options: dict[str, Any]
    num_classes: int
    in_channels: int
    resolutions: list[int]
    kernel_sizes: list[int]
    expand_ratios: list[int]
    device: dict[str, Any]
    fixed: dict[int, dict[str, float]]
    blocks: dict[int, dict[str, float]]
    space: str = SPACE
    path: str | None = field(default=None, compare=False)

    @property
    def widths(self) -> list[int]:
        return widths_of(self.network_options)

    @property
    def name(self) -> str:
        return f"latency table {self.path}" if self.path else "the latency table"

    def __len__(self) -> int:
        return sum(len(v) for v in self.fixed.values()) + sum(len(v) for v in self.blocks.values())

    def parts(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """The entries a subnet's latency adds up (``stem``, ``head`` and its active blocks)."""
        resolution = int(arch[RESOLUTION])
        if resolution not in self.blocks:
            raise ValueError(f"{self.name} has no resolution {resolution} (it has "
                             f"{', '.join(map(str, self.resolutions))}): {measure_hint()} --resolutions ...")
        parts = dict(self.fixed[resolution])
        entries = self.blocks[resolution]
        for s in range(1, NUM_STAGES + 1):
            for b in range(1, int(arch[depth_label(s)]) + 1):
                key = block_key(s, b, int(arch[kernel_label(s, b)]), int(arch[expand_label(s, b)]))
                if key not in entries:
                    raise ValueError(f"{self.name} has no block {key} (kernels {self.kernel_sizes}, expand ratios "
                                     f"{self.expand_ratios}): {measure_hint()} --kernel-sizes ... --expand-ratios ...")
                parts[f"stage{s}.block{b}"] = entries[key]
        return parts

    def predict(self, arch: Mapping[str, Any]) -> float:
        """Predicted milliseconds of the subnet ``arch``: fixed parts plus its active blocks."""
        return sum(self.parts(arch).values())

    def check(self, space_name: str, network_options: Mapping[str, Any], device_description: str | None = None,
              num_classes: int | None = None, in_channels: int | None = None,
              choices: Mapping[str, Iterable[int]] | None = None) -> None:
        """ValueError naming the first thing that differs from what the table was measured for:
        the space, the widths, the classes, the input channels, the device (when given), or the
        resolutions, kernels and expand ratios ``choices`` can take."""
        hint = measure_hint()
        if space_name != self.space:
            raise ValueError(f"{self.name} is for the {self.space} space, not {space_name}: {hint}")
        widths = widths_of(network_options)
        if widths != self.widths:
            raise ValueError(f"{self.name} was measured for widths {self.widths}, not {widths} (the supernet's "
                             f"space options): {hint}")
        for what, theirs, mine in (("classes", self.num_classes, num_classes),
                                   ("input channels", self.in_channels, in_channels)):
            if mine is not None and int(mine) != theirs:
                raise ValueError(f"{self.name} was measured for {theirs} {what}, not {mine}: {hint}")
        if device_description is not None and device_description != self.device["description"]:
            raise ValueError(f"{self.name} was measured on {self.device['description']!r}, not on "
                             f"{device_description!r}: {measure_hint()} here")
        if choices is not None:
            self._check_coverage(choices, hint)

    def _check_coverage(self, choices: Mapping[str, Iterable[int]], hint: str) -> None:
        kernels = {v for k, vs in choices.items() if k.endswith(".kernel") for v in vs}
        expands = {v for k, vs in choices.items() if k.endswith(".expand") for v in vs}
        for what, needed, have, flag in (("resolutions", set(choices.get(RESOLUTION, ())), self.resolutions,
                                          "--resolutions"),
                                         ("kernel sizes", kernels, self.kernel_sizes, "--kernel-sizes"),
                                         ("expand ratios", expands, self.expand_ratios, "--expand-ratios")):
            missing = sorted(set(needed) - set(have))
            if missing:
                raise ValueError(f"{self.name} lacks the {what} {missing} the search can choose (it has "
                                 f"{have}): {hint} {flag} ...")

    # --- files ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": 1, "space": self.space, "unit": "ms",
                "network_options": self.network_options, "widths": self.widths, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolutions": self.resolutions,
                "kernel_sizes": self.kernel_sizes, "expand_ratios": self.expand_ratios, "device": self.device,
                "fixed": {str(r): v for r, v in self.fixed.items()},
                "blocks": {str(r): v for r, v in self.blocks.items()}}

    def save(self, path: str | os.PathLike) -> Path:
        self.path = os.fspath(path)
        return atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, record: Any, path: str | None = None) -> "LatencyTable":
        where = path or "the record"
        if not isinstance(record, dict) or record.get("format") != TABLE_FORMAT:
            raise ValueError(f"{where} is not a latency table (no \"format\": \"{TABLE_FORMAT}\"): "
                             f"{measure_hint(path)}")
        try:
            return cls(network_options=dict(record["network_options"]), num_classes=int(record["num_classes"]),
                       in_channels=int(record["in_channels"]), resolutions=[int(r) for r in record["resolutions"]],
                       kernel_sizes=[int(k) for k in record["kernel_sizes"]],
                       expand_ratios=[int(e) for e in record["expand_ratios"]], device=dict(record["device"]),
                       fixed={int(r): dict(v) for r, v in record["fixed"].items()},
                       blocks={int(r): dict(v) for r, v in record["blocks"].items()},
                       space=str(record["space"]), path=path)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{where} is a damaged latency table ({type(error).__name__}: {error}): "
                             f"{measure_hint(path)}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = os.fspath(path)
        try:
            record = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"latency table {path} does not exist: {measure_hint(path)}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a latency table (not JSON): {measure_hint(path)}") from None
        return cls.from_json(record, path)


def measure_latency_table(space_options: Mapping[str, Any] | None = None, num_classes: int = 1000,
                          in_channels: int = 3, resolutions: Sequence[int] = (224,),
                          kernel_sizes: Sequence[int] = KERNEL_SIZES, expand_ratios: Sequence[int] = EXPAND_RATIOS,
                          device: str | torch.device = "cpu", repeats: int = 20, warmup: int = 5,
                          progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Time every part of the ofa-mbv3 subnets ``space_options`` (the supernet's options; only
    ``width_mult`` and ``base_widths`` shape the blocks) can build, on ``device``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: at least one repeat and no negative warm-up")
    if not resolutions or not kernel_sizes or not expand_ratios:
        raise ValueError("give at least one resolution, kernel size and expand ratio")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here; measure on cpu, or on the GPU machine")
    options = {k: v for k, v in dict(space_options or {}).items() if k in WIDTH_OPTIONS}
    widths = widths_of(options)
    networks = {(k, e): _uniform_network(k, e, num_classes, in_channels, options)
                for k in kernel_sizes for e in expand_ratios}
    any_network = next(iter(networks.values()))
    stem = nn.Sequential(any_network.stem, any_network.first_block)
    head = _Head(any_network)
    fixed: dict[int, dict[str, float]] = {}
    blocks: dict[int, dict[str, float]] = {}
    for resolution in sorted(int(r) for r in resolutions):
        start = time.perf_counter()
        sizes = stage_input_sizes(resolution)
        fixed[resolution] = {
            "stem": time_module(stem, (1, in_channels, resolution, resolution), device, repeats, warmup),
            "head": time_module(head, (1, widths[6], sizes[-1][1], sizes[-1][1]), device, repeats, warmup)}
        entries: dict[str, float] = {}
        for (k, e), network in networks.items():
            for s, (first_size, rest_size) in enumerate(sizes, start=1):
                entries[block_key(s, 1, k, e)] = time_module(
                    network.blocks[2 * s - 2], (1, widths[s], first_size, first_size), device, repeats, warmup)
                entries[block_key(s, 2, k, e)] = time_module(
                    network.blocks[2 * s - 1], (1, widths[s + 1], rest_size, rest_size), device, repeats, warmup)
        blocks[resolution] = entries
        if progress:
            progress(f"resolution {resolution}: {len(entries) + 2} entries in {time.perf_counter() - start:.1f} s")
    description = {"description": describe_device(device), "type": device.type, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup, "batch_size": 1,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return LatencyTable(options, int(num_classes), int(in_channels), sorted(int(r) for r in resolutions),
                        sorted(int(k) for k in kernel_sizes), sorted(int(e) for e in expand_ratios), description,
                        fixed, blocks)


def measure_network_latency(arch: Mapping[str, Any], table: LatencyTable, device: str | torch.device = "cpu",
                            repeats: int = 20, warmup: int = 5) -> float:
    """Milliseconds of the whole stand-alone network of ``arch`` measured as the table's parts
    were: the check that the parts add up."""
    network = OfaMobileNetV3(arch, table.num_classes, table.in_channels,  # type: ignore[arg-type]
                             float(table.network_options.get("width_mult", 1.0)),
                             table.network_options.get("base_widths", BASE_WIDTHS))
    size = int(arch[RESOLUTION])
    return time_module(network, (1, table.in_channels, size, size), torch.device(device), repeats, warmup)
