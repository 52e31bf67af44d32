"""Every declared dependency is used: imported by the code, or named here as what needs it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("oneshot", "supernets", "ops")

IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml"}
USED_WITHOUT_IMPORT = {
    "jsonargparse": "LightningCLI parses the search and retrain command lines with it",
    "tensorboard": "TensorBoardLogger and torch.utils.tensorboard write the run logs with it",
}


def declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=\[ ;]", spec, maxsplit=1)[0].lower() for spec in project["dependencies"]]


def test_every_declared_dependency_is_imported_or_explained():
    sources = "\n".join(path.read_text() for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    unused = []
    for name in declared():
        if name in USED_WITHOUT_IMPORT:
            continue
        module = IMPORT_NAMES.get(name, name)
        if not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", sources, flags=re.MULTILINE):
            unused.append(name)
    assert unused == [], f"declared in pyproject.toml but never imported: {unused}"
