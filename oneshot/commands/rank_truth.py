"""Build a ground-truth table by training architectures stand-alone (where no benchmark exists).

``oneshot rank --train-ground-truth --space nb201 --archs sample:50 --config RETRAIN.yaml --out DIR``
draws the architectures (the same list in every process for a seed), trains this shard's share
with ``oneshot retrain`` into ``DIR/archs/<key>/`` (``result.json``, checkpoints, TensorBoard),
and merges every ``result.json`` found under ``DIR/archs`` into ``DIR/ground_truth.csv``.

* **Resumable**: an architecture with a ``result.json`` is skipped; one with only a
  ``last.ckpt`` resumes from it. Rerun the same command after an interruption.
* **Shardable**: ``--shard i/n`` trains architectures ``i, i+n, i+2n, ...`` (0-based), so n array
  jobs or GPUs split the list without talking to each other; each merges what exists when it
  ends, and any later run (or ``--shard 0/1`` with everything done) writes the full table.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from oneshot.commands import retrain
from oneshot.commands.common import check_retrain_fits, logger_arguments, resume_arguments
from oneshot.files import atomic_write_text
from oneshot.rank.ground_truth import GroundTruth, load_results

if TYPE_CHECKING:
    from supernets import Arch, SearchSpace


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4), with the mistake named."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: needs 0 <= i < n")
    return index, count


def arch_key(space: "SearchSpace", arch: "Arch") -> str:
    """A folder name per architecture: the benchmark index where there is one, else a hash;
    never all digits (the logger would read it as a version number and rename the folder)."""
    if hasattr(space, "index"):
        return f"index_{space.index(arch):05d}"
    return "arch_" + hashlib.sha1(space.format(arch).encode()).hexdigest()[:12]


def write_table(truth: GroundTruth, path: Path) -> Path:
    """``arch,<column>,runs`` CSV, loadable by ``load_table`` (atomic)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arch", truth.column, "runs"])
    for arch, value in sorted(truth.values.items()):
        writer.writerow([arch, repr(value), truth.counts.get(arch, 1)])
    return atomic_write_text(path, buffer.getvalue())


def train_ground_truth(space: "SearchSpace", archs: Sequence["Arch"], config: str, out: Path,
                       shard: tuple[int, int] = (0, 1), retrain_args: Sequence[str] = ()) -> Path | None:
    """Train this shard's architectures; merge all results into ``out/ground_truth.csv``.

    Returns the table's path, or None when no architecture has a result yet.
    """
    check_retrain_fits(space.name, config, list(retrain_args), origin="--space")
    index, count = shard
    mine = list(archs)[index::count]
    folder = out / "archs"
    for number, arch in enumerate(mine, start=1):
        key = arch_key(space, arch)
        if (folder / key / "result.json").is_file():
            continue
        print(f"[ground truth {index}/{count}] {number}/{len(mine)}: {space.format(arch)}", flush=True)
        retrain.main(["--config", config, *retrain_args, "--arch", space.format(arch),
                  *logger_arguments(folder, key), *resume_arguments(folder / key)])
    if not folder.is_dir() or not any(folder.glob("*/result.json")):
        return None
    table = write_table(load_results([str(folder)], space=space.name), out / "ground_truth.csv")
    print(f"ground truth: {table}")
    return table
