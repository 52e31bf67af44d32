"""Where the CUDA toolkit is and which GPUs to build for, for the opt-in CUDA build.

torch guesses ``CUDA_HOME`` as the grandparent of the ``nvcc`` on PATH; where that ``nvcc`` is
a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) the guess is wrong and the link
fails (``cannot find -lcudart``). This module follows the wrapper to the real toolkit. With no
GPU visible torch also builds an empty arch list, so the build names one: ``9.0`` (H100/H200)
unless ``TORCH_CUDA_ARCH_LIST`` says otherwise. Imports nothing but the standard library, so
``setup.py`` can use it before anything is installed.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

DEFAULT_ARCH_LIST = "9.0"
CUDA_ENV = "ONESHOT_CUDA"  # set to 1 to build the CUDA kernels too


class ToolkitNotFound(RuntimeError):
    """No CUDA toolkit with nvcc and the CUDA runtime could be found."""


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file()


def _wrapped_nvcc(script: Path) -> Path | None:
    """The nvcc that a small shell wrapper executes, if ``script`` is one."""
    try:
        if script.stat().st_size > 4096:
            return None
        text = script.read_text(errors="ignore")
    except OSError:
        return None
    match = re.search(r"(/\S+/bin/nvcc)\b", text)
    return Path(match.group(1)) if match else None


def cuda_home() -> str:
    """The CUDA toolkit root: ``CUDA_HOME``/``CUDA_PATH`` if they hold a toolkit, else the one
    behind the ``nvcc`` on PATH (through a wrapper script if it is one), else /usr/local/cuda.

    Raises:
        ToolkitNotFound: naming what was tried and how to point the build at a toolkit.
    """
    tried = []
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            root = Path(os.environ[variable])
            if _is_toolkit(root):
                return str(root)
            tried.append(f"{variable}={root}")
    nvcc = shutil.which("nvcc")
    if nvcc:
        path = Path(nvcc)
        for candidate in (_wrapped_nvcc(path), path.resolve()):
            if candidate is not None and _is_toolkit(candidate.resolve().parent.parent):
                return str(candidate.resolve().parent.parent)
        tried.append(f"nvcc on PATH ({nvcc})")
    default = Path("/usr/local/cuda")
    if _is_toolkit(default):
        return str(default.resolve())
    tried.append(str(default))
    raise ToolkitNotFound(
        f"no CUDA toolkit (bin/nvcc and include/cuda_runtime.h) found; tried {', '.join(tried)}. "
        f"Set CUDA_HOME to the toolkit root, or build without {CUDA_ENV}=1 for the CPU kernels only")


def cuda_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` if set, else 9.0."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_LIST


def cuda_requested() -> bool:
    """Whether the build should compile the CUDA kernels (``ONESHOT_CUDA=1``)."""
    return os.environ.get(CUDA_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cuda_build_environment() -> dict[str, str]:
    """The environment variables a CUDA build needs: ``CUDA_HOME`` and ``TORCH_CUDA_ARCH_LIST``.

    Raises:
        ToolkitNotFound: see :func:`cuda_home`.
    """
    return {"CUDA_HOME": cuda_home(), "TORCH_CUDA_ARCH_LIST": cuda_arch_list()}
