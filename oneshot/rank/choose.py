"""Which architectures a rank study evaluates, and the de-isomorphic view of a space.

``--archs`` takes one of:

* ``all``: every architecture of a finite space (NB201: 15,625; 6,466 with ``deiso``);
* ``sample:N``: N distinct architectures drawn uniformly (from the ground truth's architectures
  when a table is given, so every pick can be joined; else from the space);
* ``stratified:N``: the ground truth's accuracy range cut into N equal-width bins, one
  architecture drawn from each non-empty bin, the rest drawn uniformly from those not yet
  taken (DYNAS/SUMNAS practice: the tails of the accuracy range are represented, which a
  uniform sample of a space dominated by mid-range cells is not);
* ``file:PATH``: the architectures listed in a file, one canonical string (or JSON) per line,
  ``#`` comments allowed, or a CSV with an ``arch`` column.

With ``deiso`` (NB201 only; aw_nas "de-isomorphic" evaluation), each class of isomorphic cells
(:meth:`supernets.nb201.NB201Space.isomorphism_key`) counts once: its ground truth is the mean
over the class's members in the table, and it is represented by its member of lowest benchmark
index.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from oneshot.rank.ground_truth import GroundTruth

if TYPE_CHECKING:
    from supernets import Arch, SearchSpace

KINDS = ("all", "sample", "stratified", "file")


def _require_isomorphism(space: "SearchSpace") -> None:
    if not hasattr(space, "isomorphism_key"):
        raise ValueError(f"--deiso: the {space.name!r} space defines no isomorphism classes (nb201 does)")


def deiso_truth(space: "SearchSpace", truth: GroundTruth) -> GroundTruth:
    """The ground truth with one entry per isomorphism class (its lowest-index member), valued
    at the class mean."""
    _require_isomorphism(space)
    classes: dict[str, list[str]] = {}
    for text in truth.values:
        classes.setdefault(space.isomorphism_key(space.parse(text)), []).append(text)
    values, counts = {}, {}
    for members in classes.values():
        representative = min(members, key=lambda t: space.index(space.parse(t)))
        values[representative] = sum(truth.values[t] for t in members) / len(members)
        counts[representative] = len(members)
    return GroundTruth(values=values, source=truth.source, column=truth.column, kind=truth.kind,
                       counts=counts)


def deiso_archs(space: "SearchSpace", archs: Sequence["Arch"]) -> list["Arch"]:
    """One representative (lowest index) per isomorphism class, in first-seen order."""
    _require_isomorphism(space)
    best: dict[str, "Arch"] = {}
    order: list[str] = []
    for arch in archs:
        key = space.isomorphism_key(arch)
        if key not in best:
            order.append(key)
            best[key] = arch
        elif space.index(arch) < space.index(best[key]):
            best[key] = arch
    return [best[key] for key in order]


def _read_arch_file(space: "SearchSpace", path: Path) -> list["Arch"]:
    if not path.is_file():
        raise FileNotFoundError(f"--archs file:{path}: no such file")
    text = path.read_text()
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if "," in first and "arch" in [c.strip() for c in first.split(",")]:
        with open(path, newline="") as f:
            lines = [row["arch"] for row in csv.DictReader(f)]
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    archs = []
    for number, line in enumerate(lines, start=1):
        try:
            archs.append(space.load(line))
        except (ValueError, KeyError) as error:
            raise ValueError(f"--archs file:{path}, entry {number} ({line[:80]!r}): {error}") from None
    if not archs:
        raise ValueError(f"--archs file:{path} lists no architectures")
    return archs


def parse_spec(spec: str) -> tuple[str, str]:
    """``sample:100`` -> ("sample", "100"); names what is accepted on a mistake."""
    kind, _, argument = spec.partition(":")
    if kind not in KINDS or (kind == "all") != (argument == ""):
        raise ValueError(f"--archs {spec!r}: accepted: all, sample:N, stratified:N, file:PATH")
    if kind in ("sample", "stratified") and (not argument.isdigit() or int(argument) < 2):
        raise ValueError(f"--archs {spec!r}: N must be an integer of at least 2")
    return kind, argument


def choose_archs(space: "SearchSpace", spec: str, truth: GroundTruth | None = None,
                 seed: int = 0, deiso: bool = False) -> list["Arch"]:
    """The architectures ``spec`` names (see the module docstring), reproducibly for ``seed``."""
    kind, argument = parse_spec(spec)
    rng = random.Random(seed)
    if kind == "file":
        archs = _read_arch_file(space, Path(argument))
        return deiso_archs(space, archs) if deiso else archs
    if truth is not None:
        pool = [space.parse(text) for text in truth.values]
    elif kind == "stratified":
        raise ValueError(f"--archs {spec}: stratifies over ground-truth accuracy; give --ground-truth")
    elif kind == "all" or getattr(space, "num_archs", None):
        if not hasattr(space, "enumerate") or not getattr(space, "num_archs", None):
            raise ValueError(f"--archs all: the {space.name!r} space is too large to enumerate; use sample:N")
        pool = list(space.enumerate())
    else:  # an open space: uniform samples, duplicates redrawn
        seen: dict[str, "Arch"] = {}
        while len(seen) < int(argument):
            arch = space.sample(rng)
            seen.setdefault(space.format(arch), arch)
        return list(seen.values())
    if deiso:
        pool = deiso_archs(space, pool)
    if kind == "all":
        return pool
    n = int(argument)
    if n > len(pool):
        raise ValueError(f"--archs {spec}: only {len(pool)} architectures are available"
                         f"{' (with the ground truth)' if truth is not None else ''}; ask for fewer")
    if kind == "sample":
        return rng.sample(pool, n)
    values = {id(a): truth.values[space.format(a)] for a in pool}
    low, high = min(values.values()), max(values.values())
    width = (high - low) / n or 1.0
    bins: dict[int, list["Arch"]] = {}
    for arch in pool:
        bins.setdefault(min(int((values[id(arch)] - low) / width), n - 1), []).append(arch)
    chosen = [rng.choice(bins[b]) for b in sorted(bins)]
    taken = {id(a) for a in chosen}
    rest = [a for a in pool if id(a) not in taken]
    return chosen + rng.sample(rest, n - len(chosen))
