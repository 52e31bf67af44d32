"""Checkpoints: where they are, what they are, and the random state that makes a resume exact.

One loader (:func:`read_checkpoint`) reads a file and checks its identity for every command
(search and retrain resumes, discretize, rank); one writer (:class:`AtomicCheckpointIO`) never
leaves a half-written file in place of a whole one; training modules store and restore the
process random streams with :func:`capture_random_state` / :func:`restore_random_state`.
"""
from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

IDENTITY_KEY = "oneshot"  # checkpoint["oneshot"]: space, algorithm, choices, space options


def resolve_checkpoint(run_or_ckpt: str | Path) -> Path:
    """The checkpoint of a run directory (``RUN/checkpoints/last.ckpt``) or the file itself."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no such file; {path} is not a run directory of "
                                    "`oneshot search` (expected RUN/checkpoints/last.ckpt)")
        return ckpt
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory; pass a run directory of "
                                "`oneshot search` or its RUN/checkpoints/last.ckpt")
    return path


def run_directory(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to: the parent of ``checkpoints/``, else its folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def read_checkpoint(path: str | Path, expected: Mapping[str, Any] | None = None,
                    require_identity: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by oneshot on the CPU; check its identity against ``expected``
    (``require_identity=False`` accepts a checkpoint without one: older retrain runs).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a PyTorch checkpoint, not written by oneshot, or another run's identity.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass RUN/checkpoints/last.ckpt of a run")
    if path.stat().st_size == 0 or (_starts_like_zip(path) and not zipfile.is_zipfile(path)):
        raise ValueError(f"{path}: a truncated checkpoint ({path.stat().st_size} bytes; an interrupted write?); "
                         f"pass another checkpoint of {path.parent} or restart the run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors alike: it is not a checkpoint
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    identity = checkpoint.get(IDENTITY_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: a PyTorch file but not a Lightning checkpoint (no 'state_dict'); "
                         "pass RUN/checkpoints/last.ckpt of a oneshot run")
    if identity is None and not require_identity:
        return checkpoint
    if not isinstance(identity, dict) or "algorithm" not in identity:
        raise ValueError(f"{path}: not written by oneshot (no '{IDENTITY_KEY}' entry); pass a "
                         "RUN/checkpoints/last.ckpt of a oneshot run")
    if expected is not None:
        try:
            check_checkpoint_identity(checkpoint, expected)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return checkpoint


def _starts_like_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"  # torch.save writes a zip archive


def newest_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``*.ckpt`` of ``folder`` that is a whole archive (a write cut short leaves a
    temporary file, or with other writers a truncated one), None if there is none."""
    candidates = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in candidates if p.stat().st_size and zipfile.is_zipfile(p)), None)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against a kill during the write: the bytes go to
    a temporary file beside the target, are flushed to disk, then renamed over it, so the
    previous checkpoint stays whole until the new one is (Lightning's own writer stages the file
    in the system temp folder, from where the final move is a copy when that is another disk)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(descriptor, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _labels(identity: Mapping[str, Any]) -> Any:
    """The choice labels of an identity; checkpoints before choices recorded their ``edges``."""
    return identity.get("choices", identity.get("edges"))


def check_checkpoint_identity(checkpoint: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise ValueError if a checkpoint comes from another space, algorithm, choice set or
    space options than ``expected``."""
    found = checkpoint.get(IDENTITY_KEY)
    if found is None:
        raise ValueError(f"this checkpoint was not written by oneshot (no '{IDENTITY_KEY}' entry); "
                         "pass a RUN/checkpoints/last.ckpt of a oneshot run")
    for key in ("space", "algorithm", "choices", "space_options", "arch"):
        if key not in expected:
            continue
        value = _labels(found) if key == "choices" else found.get(key)
        if key == "space_options" and key not in found:
            continue  # checkpoints written before space options were recorded
        if value != expected[key]:
            shown = ("other labels", "these labels") if key == "choices" else (value, expected[key])
            raise ValueError(f"checkpoint {key} is {shown[0]!r} but this run's is {shown[1]!r}: resume "
                             "with the config of the run that wrote the checkpoint")


def capture_random_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU) random states as plain types and tensors, so that
    ``torch.load(weights_only=True)`` still reads a checkpoint that holds them."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                      float(cached))}


def restore_random_state(states: Mapping[str, Any] | None) -> None:
    """Continue the random streams exactly where :func:`capture_random_state` left them."""
    if not states:
        return
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)  # older runs: ndarray
    np.random.set_state((name, keys.astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
