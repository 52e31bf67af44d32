"""The fused mixed-op kernels: loading the C++/CUDA library, the switch, the differentiable ops.

The library (``ops/kernels/_C*.so``, built from ``csrc/`` by the package build) registers the
``oneshot::`` ops with torch's dispatcher. Where it is missing or fails to load, every op runs
its pure-PyTorch reference (:mod:`ops.kernels.reference`) and one warning line says why;
:func:`status` says which path is active, and ``oneshot info --kernels`` prints it.

The switch: ``ONESHOT_KERNELS=reference`` in the environment never loads the library; inside a
process, :func:`use_fused` turns the fused path of mixed ops off and on (benchmarks and tests
compare both paths with it). The same switch governs the library-free fast paths of
:mod:`ops.polyphase`, so "unfused" always means the candidates exactly as the reference code
builds them.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ops.kernels import reference

LIBRARY_DIR = Path(__file__).resolve().parent
SWITCH_ENV = "ONESHOT_KERNELS"  # "reference": do not load the library
OPS = ("mixed_pool", "mixed_pool_backward", "weighted_sum", "weighted_sum_backward")
REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .` (needs a C++ compiler)"


@dataclass(frozen=True)
class KernelStatus:
    """Which path the fused ops take and why.

    Attributes:
        path: ``fused`` (the library is loaded) or ``reference`` (pure PyTorch).
        devices: device types with a fused kernel, e.g. ``("cpu",)`` or ``("cpu", "cuda")``.
        reason: one sentence: what was loaded, or why nothing was.
        library: the loaded library file, or None.
    """

    path: str
    devices: tuple[str, ...]
    reason: str
    library: str | None = None


_status: KernelStatus | None = None
_fused_enabled = True


def _warn(message: str) -> None:
    print(f"oneshot: warning: {message}", file=sys.stderr)


def _load() -> KernelStatus:
    if os.environ.get(SWITCH_ENV, "").strip().lower() == "reference":
        return KernelStatus("reference", (), f"{SWITCH_ENV}=reference: the library is not loaded")
    found = sorted(LIBRARY_DIR.glob("_C.*so"))
    if not found:
        status = KernelStatus("reference", (), f"the fused kernels are not built (no {LIBRARY_DIR}/_C.*so); "
                                               f"running the PyTorch reference path; {REBUILD_HINT}")
        _warn(status.reason)
        return status
    try:
        torch.ops.load_library(str(found[0]))
    except (OSError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        status = KernelStatus("reference", (), f"the fused kernels in {found[0].name} failed to load "
                                               f"({first_line}); running the PyTorch reference path; {REBUILD_HINT}")
        _warn(status.reason)
        return status
    from ops.kernels import registration

    registration.register()
    devices = tuple(device for device in ("cpu", "cuda")
                    if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", device.upper())
                           for op in OPS))
    return KernelStatus("fused", devices, f"loaded {found[0].name} with kernels for {', '.join(devices)}",
                        str(found[0]))


def status() -> KernelStatus:
    """Load the library on first use and say which path is active."""
    global _status
    if _status is None:
        _status = _load()
    return _status


# dtypes each device's kernels take (csrc/checks.h check_dtype)
KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64),
                 "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


def fused_available(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether mixed ops on ``device`` with ``dtype`` tensors take the fused path now (library
    loaded, a kernel for that device type and dtype, and the switch on)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return (_fused_enabled and device_type in status().devices
            and dtype in KERNEL_DTYPES.get(device_type, ()))


def fused_enabled() -> bool:
    """Whether the switch allows our fast paths: on unless :func:`use_fused` turned it off or
    ``ONESHOT_KERNELS=reference`` asks for the reference path. Paths that need no library (the
    polyphase dilated convolution of :mod:`ops.polyphase`) follow it alone."""
    return _fused_enabled and os.environ.get(SWITCH_ENV, "").strip().lower() != "reference"


@contextlib.contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """Turn the fused path of mixed ops on or off inside the block (the reference path when off)."""
    global _fused_enabled
    before, _fused_enabled = _fused_enabled, bool(enabled)
    try:
        yield
    finally:
        _fused_enabled = before


def mixed_pool(x: torch.Tensor, weights: torch.Tensor, kinds: Sequence[int], stride: int = 1,
               batchnorm: bool = False, training: bool = True, running_mean: torch.Tensor | None = None,
               running_var: torch.Tensor | None = None, eps: float = 1e-5
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parameter-free candidates of an edge in one pass: see
    :func:`ops.kernels.reference.mixed_pool`. Differentiable in ``x`` and ``weights``; the fused
    kernel saves nothing for backward but those and the statistics."""
    if fused_available(x.device, x.dtype):
        return torch.ops.oneshot.mixed_pool(x, weights, list(kinds), stride, batchnorm, training,
                                            running_mean, running_var, eps)
    return reference.mixed_pool(x, weights, kinds, stride, batchnorm, training, running_mean, running_var, eps)


def weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor, normalize: Sequence[bool],
                 training: bool = True, running_mean: torch.Tensor | None = None,
                 running_var: torch.Tensor | None = None, eps: float = 1e-5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weighted sum of candidate outputs, each optionally batch-normalised: see
    :func:`ops.kernels.reference.weighted_sum`. Differentiable in ``inputs`` and ``weights``."""
    if fused_available(inputs[0].device, inputs[0].dtype):
        return torch.ops.oneshot.weighted_sum(list(inputs), weights, [bool(b) for b in normalize], training,
                                              running_mean, running_var, eps)
    return reference.weighted_sum(inputs, weights, normalize, training, running_mean, running_var, eps)
