"""Builds the fused mixed-op kernels in ``csrc/`` into one torch-op library, ``ops.kernels._C``.

``pyproject.toml`` declares the project; this file exists only because a compiled extension
cannot be declared there. The library registers its ops with the dispatcher (no pybind, no
Python C API), so it is tagged abi3; it is still tied to the torch it was built against.

* Build in the environment that runs it: ``pip install --no-build-isolation -e .`` (an isolated
  build would compile against a second, freshly downloaded torch).
* CPU kernels always. ``ONESHOT_CUDA=1`` adds ``csrc/cuda/*.cu``, with ``CUDA_HOME`` and
  ``TORCH_CUDA_ARCH_LIST`` from ``ops/kernels/toolkit.py``; a CUDA build that fails fails the install.
* Without ``ONESHOT_CUDA`` a failed compile only warns: the install succeeds without the library
  and ``ops.kernels`` runs its pure-PyTorch reference ops instead.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
EXTENSION = "ops.kernels._C"  # the loader globs ops/kernels/_C*.so
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3"]
LINK_FLAGS = ["-fopenmp"]


def load_toolkit() -> ModuleType:
    """``ops/kernels/toolkit.py`` loaded by path: importing ``ops`` would need torch and more."""
    spec = importlib.util.spec_from_file_location("_oneshot_toolkit", ROOT / "ops" / "kernels" / "toolkit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sources(cuda: bool) -> list[str]:
    """The extension's sources relative to the repository root: the schemas, every
    ``csrc/cpu/*.cpp`` and, with ``cuda``, every ``csrc/cuda/*.cu``."""
    patterns = ["cpu/*.cpp"] + (["cuda/*.cu"] if cuda else [])
    found = [path for pattern in patterns for path in sorted((ROOT / "csrc").glob(pattern))]
    return [path.relative_to(ROOT).as_posix() for path in [ROOT / "csrc" / "schemas.cpp", *found]]


def cuda_failure(reason: object, environment: dict[str, str]) -> str:
    """The one paragraph that a failed ``ONESHOT_CUDA=1`` build ends with."""
    return (f"building the CUDA kernels (ONESHOT_CUDA=1) failed: {reason}. Used "
            f"CUDA_HOME={environment.get('CUDA_HOME', '(none found)')} and TORCH_CUDA_ARCH_LIST="
            f"{environment.get('TORCH_CUDA_ARCH_LIST', '(unset)')}. Fix: set CUDA_HOME to a CUDA "
            "toolkit root (the folder holding bin/nvcc and include/cuda_runtime.h) whose major "
            "version matches torch.version.cuda, set TORCH_CUDA_ARCH_LIST to the GPUs to build for "
            "(e.g. 9.0), or build without ONESHOT_CUDA to get the CPU kernels only.")


def build_command(base: type, cuda: bool, environment: dict[str, str]) -> type:
    """``base`` (torch's ``BuildExtension``) made optional for CPU builds and explicit for CUDA."""
    from setuptools.errors import BaseError, CCompilerError, CompileError

    failures = (BaseError, CCompilerError, OSError, RuntimeError, subprocess.SubprocessError)

    class BuildKernels(base):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            try:
                super().run()
            except failures as error:
                if cuda:
                    raise CompileError(cuda_failure(error, environment)) from error
                # a warning, not a print: pip shows a build backend's warnings, not its output
                warnings.warn(f"the C++ kernels of {EXTENSION} were not built ({error}); oneshot "
                              "installs without them and uses the pure-PyTorch reference ops.",
                              stacklevel=1)
                self.extensions = []  # nothing to copy into the tree or to package

    return BuildKernels.with_options(use_ninja=shutil.which("ninja") is not None)


def main() -> None:
    toolkit = load_toolkit()
    cuda = toolkit.cuda_requested()
    environment: dict[str, str] = {}
    if cuda:
        try:
            environment = toolkit.cuda_build_environment()
        except toolkit.ToolkitNotFound as error:
            sys.exit(f"error: ONESHOT_CUDA=1, but {error}")
        os.environ.update(environment)  # before torch.utils.cpp_extension: it reads CUDA_HOME on import
    # pip runs this without activating the venv: let torch find the venv's `ninja` (a PyPI package).
    os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])

    from setuptools import setup
    from torch.utils import cpp_extension

    extension = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    setup(
        ext_modules=[extension(
            EXTENSION, sources(cuda), py_limited_api=True,
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, extra_link_args=LINK_FLAGS)],
        cmdclass={"build_ext": build_command(cpp_extension.BuildExtension, cuda, environment)},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
