"""The CUDA launcher (csrc/cuda/mixed_ops_cuda.cu) compiles, links and registers its kernels.

No GPU is needed: nvcc builds the library, and the dispatcher then lists a CUDA kernel for
every ``oneshot::`` op (and still the CPU ones). The build runs in a subprocess: this process
may already hold the installed ``oneshot`` library, and a second library defining the same
``TORCH_LIBRARY(oneshot, ...)`` namespace would clash with it. Skipped where no CUDA toolkit
is found (:func:`ops.kernels.toolkit.cuda_build_environment`). Takes a minute or two on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops.kernels.toolkit import ToolkitNotFound, cuda_build_environment

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["csrc/schemas.cpp", "csrc/cpu/mixed_ops_cpu.cpp", "csrc/cuda/mixed_ops_cuda.cu"]
OPS = ("mixed_pool", "mixed_pool_backward", "weighted_sum", "weighted_sum_backward")

# Runs in the subprocess; CUDA_HOME and TORCH_CUDA_ARCH_LIST are in its environment before
# torch is imported (torch.utils.cpp_extension reads CUDA_HOME at import).
BUILD = textwrap.dedent("""
    import json, sys
    import torch
    from torch.utils.cpp_extension import load

    sources, build, ops = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    load(name="oneshot_cuda_build_check", sources=sources, build_directory=build,
         extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], extra_cuda_cflags=["-O3"],
         is_python_module=False, verbose=False)
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    print(json.dumps({op: {key: has(f"oneshot::{op}", key) for key in ("CPU", "CUDA")} for op in ops}))
""")


def test_cuda_kernels_build_and_register(tmp_path: Path) -> None:
    try:
        toolkit = cuda_build_environment()
    except ToolkitNotFound as error:
        pytest.skip(f"no CUDA toolkit: {error}")
    build = tmp_path / "build"
    build.mkdir()
    env = dict(os.environ, **toolkit)
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")
    env.setdefault("MAX_JOBS", "2")
    # torch runs `ninja`, which lives next to this interpreter in a venv that is not activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    sources = [str(ROOT / source) for source in SOURCES]
    result = subprocess.run(
        [sys.executable, "-c", BUILD, json.dumps(sources), str(build), json.dumps(OPS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (
        f"JIT build of {SOURCES} failed (CUDA_HOME={toolkit['CUDA_HOME']}, "
        f"TORCH_CUDA_ARCH_LIST={toolkit['TORCH_CUDA_ARCH_LIST']}):\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(registered[op]["CUDA"] for op in OPS), f"CUDA kernels missing: {registered}"
    assert all(registered[op]["CPU"] for op in OPS), f"CPU kernels missing: {registered}"
