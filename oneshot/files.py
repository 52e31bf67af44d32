"""Atomic writes: every artifact a later command reads (arch.json, result.json, pipeline.json,
rank reports, ground-truth tables) is written to ``NAME.tmp`` and renamed, so an interruption
never leaves half a file for the next command to trip over."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` (creating its folder) via ``path.tmp`` + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, record: Any, **dump_options: Any) -> Path:
    """``record`` as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(record, indent=1, **dump_options))
