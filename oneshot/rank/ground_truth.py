"""Ground-truth accuracies to rank one-shot estimates against.

Every source is reduced to one :class:`GroundTruth`: a map from the *canonical* arch string of a
search space (``SearchSpace.format``) to one number. Keys are canonical so that any valid spelling
of an arch (a JSON object, a re-ordered or padded string, an ``Arch`` built from a benchmark
index) joins with the table. Sources:

* :func:`load_table`: a CSV with an arch column and numeric columns (e.g. the NB201 CIFAR-10
  table ``index,arch,params_m,cifar10_valid_acc,cifar10_test_acc``);
* :func:`load_results`: ``result.json`` files written by ``oneshot retrain`` (seeds averaged);
* :func:`load_nb201_api`: the official NAS-Bench-201 / NATS-Bench (topology) API files, when
  ``nats_bench`` or ``nas_201_api`` is installed.

:func:`load_ground_truth` picks one from a spec string, and :func:`join` looks up the value of
each ranked arch, refusing (:class:`UnmatchedArchitectures`) when any is missing, so a rank
correlation is never computed over a silently shrunken set.

This module imports no torch at import time; the search spaces are imported when first needed.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover
    from supernets.base import Arch, SearchSpace

SpaceLike = Union["SearchSpace", str]
PathLike = Union[str, "os.PathLike[str]"]

API_PREFIX = "nb201-api:"
API_SUFFIXES = (".pth", ".pickle", ".pbz2")  # .pickle.pbz2 ends in .pbz2
NB201_SIZE = 15625
_COST_PREFIXES = ("params", "flops", "macs")
_GLOB_CHARS = ("*", "?", "[")
_CANONICAL_HINT = ("the table must cover every ranked architecture; check the space and that strings "
                   "are canonical (`oneshot info --space S --arch A` prints it)")


@dataclass(frozen=True)
class GroundTruth:
    """Canonical arch string -> value (e.g. a test accuracy in percent), with its provenance.

    Attributes:
        values: canonical arch string -> value (a mean where several records were found).
        source: the file, directory, glob(s) or API path it was read from.
        column: which value (a CSV column, a result.json key, or the API dataset/metric/hp).
        kind: ``"table"``, ``"nb201-api"`` or ``"results"``.
        counts: canonical arch string -> how many records were averaged into its value.
    """

    values: dict[str, float]
    source: str
    column: str
    kind: str
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, arch: object) -> bool:
        return arch in self.values

    def describe(self) -> dict[str, Any]:
        """The JSON-serializable record of where the ground truth came from."""
        return {"kind": self.kind, "source": self.source, "column": self.column, "n": len(self.values)}


class UnmatchedArchitectures(ValueError):
    """Some ranked architectures have no ground-truth value; ``missing`` lists all of them."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


# ---------------------------------------------------------------------------------------------
# Helpers


def _space(space: SpaceLike) -> "SearchSpace":
    """A SearchSpace from itself or its registered name (imports ``supernets`` lazily)."""
    if isinstance(space, str):
        import supernets

        return supernets.get(space)
    return space


def canonical(space: SpaceLike, arch: "Arch | str | Mapping[str, Any]") -> str:
    """The canonical string of ``arch`` (an Arch, a string in any accepted spelling, or a JSON
    object) in ``space``; ValueError/TypeError from the space if it is not a valid arch."""
    space = _space(space)
    if isinstance(arch, str):
        return space.format(space.load(arch))
    if isinstance(arch, Mapping) and "choices" in arch and not hasattr(arch, "space"):
        from supernets.base import Arch

        return space.format(space.check(Arch.from_json(arch)))
    return space.format(space.check(arch))


def _finite(text: Any) -> float | None:
    """``text`` as a finite float, or None."""
    if text is None or isinstance(text, bool):
        return None
    try:
        value = float(text.strip() if isinstance(text, str) else text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _is_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _mean(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    return {key: sums[key] / counts[key] for key in sums}


# ---------------------------------------------------------------------------------------------
# CSV tables


def _numeric_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """Columns whose non-empty cells all read as finite numbers (and that have at least one)."""
    numeric = []
    for name in columns:
        cells = [row.get(name) for row in rows]
        cells = [c for c in cells if c is not None and str(c).strip() != ""]
        if cells and all(_finite(c) is not None for c in cells):
            numeric.append(name)
    return numeric


def load_table(path: PathLike, space: SpaceLike, column: str | None = None,
               arch_column: str = "arch") -> GroundTruth:
    """Read a CSV table (with a header) of architectures and values.

    Every arch string is parsed with ``space`` and stored under its canonical string, so any
    valid spelling joins. With ``column=None`` the value column is the only numeric column other
    than ``index``, the arch column and cost columns (names starting with ``params``, ``flops`` or
    ``macs``); when there are several (the NB201 table has ``cifar10_valid_acc`` and
    ``cifar10_test_acc``) it must be named.

    Rows that repeat an arch are averaged and ``counts`` records how many were: the same arch
    written twice is normal when a table is the concatenation of shards or of several seeds, and
    a mean is what a single row of a table means anyway.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown or ambiguous column, a missing arch column, an arch that does not parse
            (file, row, text and the parse error) or a value that is empty or not a number.
    """
    space = _space(space)
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows: list[tuple[int, dict[str, Any]]] = []  # (line number, row)
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # a blank line
            rows.append((reader.line_num, row))
    if not columns:
        raise ValueError(f"{path}: empty file; expected a CSV with a header naming an arch column "
                         f"({arch_column!r}) and value columns")
    if arch_column not in columns:
        raise ValueError(f"{path}: no arch column {arch_column!r}; columns: {', '.join(columns)}")
    if column is None:
        excluded = {"index", arch_column}
        candidates = [c for c in columns if c not in excluded
                      and not c.strip().lower().startswith(_COST_PREFIXES)]
        numeric = _numeric_columns([row for _, row in rows], candidates)
        if len(numeric) != 1:
            found = (f"several candidate value columns: {', '.join(numeric)}" if numeric
                     else f"no numeric value column among {', '.join(columns)}")
            raise ValueError(f"{path}: {found}; pass --ground-truth-column NAME")
        column = numeric[0]
    elif column not in columns:
        raise ValueError(f"{path}: no column {column!r}; available columns: {', '.join(columns)}")
    if not rows:
        raise ValueError(f"{path}: the table has a header but no rows")

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for number, (line, row) in enumerate(rows, start=1):
        where = f"{path}, row {number} (line {line})"
        text = row.get(arch_column)
        try:
            key = canonical(space, text if text is not None else "")
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{where}: cannot parse arch {text!r} in space {space.name!r}: "
                             f"{error}") from None
        value = _finite(row.get(column))
        if value is None:
            raise ValueError(f"{where}: column {column!r} holds {row.get(column)!r}, "
                             f"not a finite number")
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1
    return GroundTruth(values=_mean(sums, counts), source=str(path), column=column, kind="table",
                       counts=counts)


# ---------------------------------------------------------------------------------------------
# result.json files of `oneshot retrain`


def _result_files(paths: Sequence[PathLike]) -> tuple[list[Path], list[str]]:
    """(result files found, in order and without duplicates; the descriptions of what was searched)."""
    found: list[Path] = []
    seen: set[str] = set()
    searched: list[str] = []

    def add(file: Path) -> None:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            found.append(file)

    def expand(entry: Path) -> None:
        if entry.is_dir():
            for file in sorted(entry.rglob("result.json")):
                if file.is_file():
                    add(file)
        elif entry.is_file():
            add(entry)

    for raw in paths:
        text = os.fspath(raw)
        if os.path.exists(text):
            entry = Path(text)
            searched.append(f"{text} (recursively for result.json)" if entry.is_dir() else text)
            expand(entry)
        elif _is_glob(text):
            searched.append(f"glob {text}")
            for match in sorted(glob.glob(text, recursive=True)):
                expand(Path(match))
        else:
            raise FileNotFoundError(f"result path {text!r} does not exist")
    return found, searched


def load_results(paths: PathLike | Sequence[PathLike], space: SpaceLike | None = None,
                 column: str = "test_acc") -> GroundTruth:
    """Read ``result.json`` files of ``oneshot retrain`` and average the runs of each arch.

    Args:
        paths: files, directories (searched recursively for ``result.json``) or glob patterns.
        space: the expected space (a SearchSpace or its name); by default each record's ``space``.
        column: the key to read (``test_acc``, ``best_test_acc``, ...).

    Several runs of one arch (seeds) are averaged; ``counts`` holds how many.

    Raises:
        FileNotFoundError: a path that does not exist and is not a glob.
        ValueError: no result.json found, a record that is not JSON, lacks ``arch`` or ``column``,
            records that mix spaces or disagree with ``space``, or an arch that does not parse.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    files, searched = _result_files(paths)
    if not files:
        raise ValueError(f"no result.json found; searched: {'; '.join(searched) or '(nothing)'}")
    expected = _space(space) if space is not None else None
    first: tuple[str, Path] | None = None  # (space name, file) of the first record
    spaces: dict[str, "SearchSpace"] = {}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for file in files:
        try:
            with open(file) as f:
                record = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{file}: expected a JSON object (a result.json of oneshot retrain)")
        name = record.get("space")
        if name is None:
            if expected is None:
                raise ValueError(f"{file}: the record has no 'space' key; pass the space")
            name = expected.name
        if expected is not None and name != expected.name:
            raise ValueError(f"{file}: the record is from space {name!r}, not {expected.name!r}")
        if first is None:
            first = (name, file)
        elif name != first[0]:
            raise ValueError(f"result records mix spaces: {first[1]} is {first[0]!r}, "
                             f"{file} is {name!r}")
        if name not in spaces:
            try:
                spaces[name] = expected if expected is not None else _space(name)
            except KeyError as error:
                raise ValueError(f"{file}: {error.args[0]}") from None
        if "arch" not in record:
            raise ValueError(f"{file}: no 'arch' key; available keys: {', '.join(sorted(record))}")
        try:
            key = canonical(spaces[name], record["arch"])
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{file}: cannot parse arch {record['arch']!r} in space {name!r}: "
                             f"{error}") from None
        if column not in record:
            raise ValueError(f"{file}: no key {column!r}; available keys: {', '.join(sorted(record))}")
        value = _finite(record[column])
        if value is None or isinstance(record[column], str):
            raise ValueError(f"{file}: {column!r} is {record[column]!r}, not a finite number")
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1
    source = ", ".join(os.fspath(p) for p in paths)
    return GroundTruth(values=_mean(sums, counts), source=source, column=column, kind="results",
                       counts=counts)


# ---------------------------------------------------------------------------------------------
# The official NAS-Bench-201 / NATS-Bench API


def _open_nb201_api(path: str | None) -> Any:
    """The benchmark API object from ``nats_bench`` (preferred) or ``nas_201_api``."""
    try:
        from nats_bench import create
    except ImportError:
        create = None
    if create is not None:
        return create(path, "tss", fast_mode=True, verbose=False)
    try:
        from nas_201_api import NASBench201API
    except ImportError:
        raise ImportError(
            "reading the NAS-Bench-201 benchmark files needs its API: `pip install nats_bench` "
            "(NATS-Bench topology files) or `pip install nas-bench-201` (NAS-Bench-201-v1_*.pth); "
            "a CSV table (--ground-truth table.csv with --ground-truth-column NAME) works without "
            "them") from None
    return NASBench201API(path, verbose=False)


def _more_info(api: Any, index: int, dataset: str, hp: str) -> Mapping[str, Any]:
    try:
        return api.get_more_info(index, dataset, hp=hp, is_random=False)
    except TypeError:  # nas_201_api < 2.0: use_12epochs_result instead of hp
        return api.get_more_info(index, dataset, use_12epochs_result=(str(hp) == "12"),
                                 is_random=False)


def load_nb201_api(path: PathLike | None, dataset: str = "cifar10", metric: str = "test",
                   hp: str = "200") -> GroundTruth:
    """Every NAS-Bench-201 arch's accuracy from the official benchmark API.

    Args:
        path: the benchmark file or directory (``NATS-tss-v1_0-3ffb9-simple``,
            ``NAS-Bench-201-v1_1-096897.pth``, ...); None: the API's default location.
        dataset: the benchmark's dataset name, passed through unchanged (``cifar10``,
            ``cifar10-valid`` for training on the train half, ``cifar100``, ``ImageNet16-120``).
        metric: ``"test"`` (``test-accuracy``) or ``"valid"`` (``valid-accuracy``).
        hp: the training schedule, ``"200"`` (or ``"12"``) epochs.

    Values are the means over the benchmark's seeds (``is_random=False``), in percent.

    Raises:
        ImportError: neither ``nats_bench`` nor ``nas_201_api`` is installed.
        ValueError: an unknown metric, or a metric the dataset does not have.
    """
    if metric not in ("test", "valid"):
        raise ValueError(f"metric must be 'test' or 'valid', not {metric!r}")
    from supernets import get

    space = get("nb201")
    api = _open_nb201_api(None if path is None else os.fspath(path))
    key = f"{metric}-accuracy"
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for index in range(len(api)):
        info = _more_info(api, index, dataset, hp)
        if key not in info:
            raise ValueError(f"the benchmark has no {key!r} for dataset {dataset!r} (index {index}); "
                             f"available: {', '.join(sorted(info))}"
                             + ("; for a validation accuracy on CIFAR-10 use dataset 'cifar10-valid'"
                                if dataset == "cifar10" else ""))
        value = _finite(info[key])
        if value is None:
            raise ValueError(f"the benchmark's {key!r} for index {index} is {info[key]!r}")
        arch_of = getattr(api, "arch", None)
        arch = space.parse(arch_of(index)) if arch_of is not None else space.from_index(index)
        name = space.format(arch)
        sums[name] = sums.get(name, 0.0) + value
        counts[name] = counts.get(name, 0) + 1
    source = "default API location" if path is None else os.fspath(path)
    return GroundTruth(values=_mean(sums, counts), source=source,
                       column=f"{dataset}/{key}/hp={hp}", kind="nb201-api", counts=counts)


# ---------------------------------------------------------------------------------------------
# Dispatch and join


def _is_api_path(path: Path) -> bool:
    """A benchmark file of the official APIs, or a directory holding NATS-tss files."""
    if path.is_file():
        return path.name.endswith(API_SUFFIXES)
    if path.is_dir():
        if path.name.startswith(("NATS-tss", "NAS-Bench-201")):
            return True
        return any(child.name.startswith("NATS-tss") or child.name.startswith("meta.pickle")
                   for child in path.iterdir())
    return False


def load_ground_truth(spec: PathLike, space: SpaceLike, column: str | None = None,
                      **api_options: Any) -> GroundTruth:
    """Load ground truth from ``spec``:

    * ``nb201-api:PATH``, a ``.pth`` / ``.pickle`` / ``.pickle.pbz2`` file or a directory of
      NATS-tss files: :func:`load_nb201_api` (``api_options``: dataset, metric, hp; a ``column``
      of ``test``/``valid`` is taken as the metric);
    * a directory, a glob, a ``result.json`` (or other ``.json``) file: :func:`load_results`
      (``column`` defaults to ``test_acc``);
    * any other file: a CSV, :func:`load_table`.

    Raises:
        FileNotFoundError: the path does not exist (or the glob matches nothing).
    """
    space = _space(space)
    text = os.fspath(spec)
    if text.startswith(API_PREFIX) or (text.endswith(API_SUFFIXES) and not _is_glob(text)) \
            or (os.path.isdir(text) and _is_api_path(Path(text))):
        path = text[len(API_PREFIX):] if text.startswith(API_PREFIX) else text
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"NAS-Bench-201 benchmark path {path!r} does not exist")
        if space.name != "nb201":
            raise ValueError(f"the NAS-Bench-201 API covers the nb201 space, not {space.name!r}")
        if column is not None:
            if column not in ("test", "valid") or "metric" in api_options:
                raise ValueError(f"with the NAS-Bench-201 API choose the value with dataset/metric/hp "
                                 f"options, not the column {column!r}")
            api_options = {**api_options, "metric": column}
        if path:
            directory = Path(path)
            if directory.is_dir() and not directory.name.startswith(("NATS-tss", "NAS-Bench-201")):
                inner = sorted(c for c in directory.iterdir() if c.name.startswith("NATS-tss"))
                if inner:
                    path = os.fspath(inner[0])
        return load_nb201_api(path or None, **api_options)
    if api_options:
        raise ValueError(f"options {sorted(api_options)} only apply to the NAS-Bench-201 API")
    if not os.path.exists(text):
        if _is_glob(text) and glob.glob(text, recursive=True):
            return load_results([text], space, column or "test_acc")
        raise FileNotFoundError(f"ground truth {text!r} does not exist")
    path = Path(text)
    if path.is_dir() or path.suffix == ".json":
        return load_results([text], space, column or "test_acc")
    return load_table(path, space, column)


def join(archs: Iterable["Arch | str"], truth: GroundTruth, space: SpaceLike) -> list[float]:
    """The ground-truth value of each arch, in order.

    ``archs`` are Arch objects or strings in any spelling the space parses; they are compared by
    canonical string.

    Raises:
        UnmatchedArchitectures: some archs have no value; ``.missing`` lists them all (canonical,
            without duplicates, in order).
    """
    space = _space(space)
    keys = [canonical(space, arch) for arch in archs]
    missing = list(dict.fromkeys(k for k in keys if k not in truth.values))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UnmatchedArchitectures(
            f"{len(missing)} of {len(set(keys))} ranked architecture(s) have no ground truth in "
            f"{truth.source} (column {truth.column}, {len(truth.values)} entries):\n  {shown}{more}\n"
            f"{_CANONICAL_HINT}", missing)
    return [truth.values[k] for k in keys]


__all__ = ["GroundTruth", "UnmatchedArchitectures", "canonical", "join", "load_ground_truth",
           "load_nb201_api", "load_results", "load_table"]
