"""setup.py compiles every kernel source under csrc/, so a new kernel file cannot be left out.

Reads setup.py's own source list (importing setup.py defines functions only; ``setup()`` runs
when setuptools executes it as ``__main__``). No build happens here.
"""
from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
COMPILED = {".c", ".cc", ".cpp", ".cxx", ".cu"}  # headers are included, not compiled


def load_setup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oneshot_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def present() -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in (ROOT / "csrc").rglob("*")
            if path.suffix in COMPILED}


def test_the_cuda_build_compiles_every_source_under_csrc():
    assert set(load_setup().sources(cuda=True)) == present()


def test_the_cpu_build_compiles_every_source_but_the_cuda_ones():
    cpu = load_setup().sources(cuda=False)
    assert len(cpu) == len(set(cpu))
    assert set(cpu) == {path for path in present() if not path.endswith(".cu")}
    assert cpu[0] == "csrc/schemas.cpp"


def test_the_build_backend_gets_what_setup_py_imports():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    names = {spec.split(">")[0].split("<")[0].split("=")[0].strip().lower() for spec in requires}
    assert {"setuptools", "torch"} <= names
