"""Query-based search on a benchmark table: the baselines one-shot search is compared with.

A strategy proposes architectures and reads each one's fitness from a table column (no supernet,
no training). Strategies are plain functions in :data:`STRATEGIES` (name -> function), all with
the signature ``(space, fitness, budget, rng, **params) -> list[Query]``.

The budget counts *queries*: every fitness lookup is one, duplicates included (the reference
re-evaluates a duplicate and pays for it again). The reference instead spends a simulated
training time (``--time_budget 12000`` seconds, each query costing the arch's benchmark training
plus evaluation time), so its number of queries varies with the archs it visits; ours is fixed.

Reference: D-X-Y/AutoDL-Projects@f46486e, ``exps/NAS-Bench-201-algos/R_EA.py`` (REA),
``exps/NAS-Bench-201-algos/RANDOM.py`` (random search) and their scripts
``scripts-search/NAS-Bench-201-algos/R-EA.sh`` / ``Random.sh``; paper: Dong & Yang, NAS-Bench-201,
ICLR 2020, after Real et al., "Regularized Evolution for Image Classifier Architecture Search",
AAAI 2019. The reference's fitness is the validation accuracy of one randomly picked seed after a
12-epoch schedule (``hp='12'``, ``cifar10-valid``); a CSV table here usually holds only 200-epoch
columns (the NB201 table: ``cifar10_valid_acc``, mean over seeds), a less noisy signal.
"""
from __future__ import annotations

import csv
import inspect
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import supernets
from oneshot.rank.ground_truth import GroundTruth, PathLike, SpaceLike, load_table
from supernets.base import Arch, SearchSpace
from supernets.labels import is_edge, node_of

Fitness = Callable[[Arch], float]


@dataclass(frozen=True)
class Query:
    """One fitness lookup: the arch, its value, and (evolution) the history index of its parent."""

    arch: Arch
    value: float
    parent: Optional[int] = None


class MissingArchitecture(ValueError):
    """A strategy proposed an arch the table does not hold: search needs a table covering the space."""


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Table:
    """Every numeric column of a CSV benchmark table, keyed by canonical arch string.

    Each column is read by :func:`~oneshot.rank.ground_truth.load_table`, so spellings, duplicate
    rows (averaged) and error messages are those of ``oneshot rank``. Columns that are not a
    number in every row (free text) are left out.
    """

    path: str
    space: SearchSpace
    columns: dict[str, GroundTruth]

    @classmethod
    def load(cls, path: PathLike, space: SpaceLike, column: str) -> "Table":
        """The table at ``path``; ``column`` (the fitness) must be one of its numeric columns.

        Raises:
            FileNotFoundError: no such file.
            ValueError: no such column (the message lists them), or an arch that does not parse.
        """
        space = supernets.get(space) if isinstance(space, str) else space
        if not Path(path).is_file():
            raise FileNotFoundError(f"table {path} does not exist; pass --table a CSV with an 'arch' "
                                    f"column and value columns")
        try:
            fitness = load_table(path, space, column)
        except ValueError as error:
            if "cannot parse arch" in str(error):
                raise ValueError(f"{error}; the table's archs must be {space.name!r} strings: "
                                 f"check --space") from None
            raise
        columns: dict[str, GroundTruth] = {}
        for name in _header(path):
            if name == column:
                columns[name] = fitness
            elif name != "arch":
                try:
                    columns[name] = load_table(path, space, name)
                except ValueError:
                    continue  # not a number in every row
        return cls(path=str(path), space=space, columns=columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())).values)

    def key(self, arch: Arch) -> str:
        """The canonical string of ``arch``, raising :class:`MissingArchitecture` if absent."""
        key = self.space.format(arch)
        if key not in next(iter(self.columns.values())).values:
            total = getattr(self.space, "num_archs", None)
            of = f" of the space's {total}" if total else ""
            listing = (f" (`oneshot info --space {self.space.name} --all` lists every arch)"
                       if total else "")
            raise MissingArchitecture(
                f"arch {key} is not in {self.path} ({len(self)}{of} archs): query-based search "
                f"needs a table that covers the whole space{listing}")
        return key

    def value(self, arch: Arch, column: str) -> float:
        return self.columns[column].values[self.key(arch)]

    def row(self, arch: Arch) -> dict[str, float]:
        """Every column's value of ``arch``, in file order."""
        key = self.key(arch)
        return {name: truth.values[key] for name, truth in self.columns.items()}

    def fitness(self, column: str) -> Fitness:
        """The lookup a strategy queries: arch -> ``column``'s value."""
        if column not in self.columns:
            raise ValueError(f"{self.path}: no numeric column {column!r}; available: "
                             f"{', '.join(self.columns)}")
        return lambda arch: self.value(arch, column)


def _header(path: PathLike) -> list[str]:
    """The column names (the first line), as ``load_table``'s reader sees them."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


# ---------------------------------------------------------------------------------------------
# Strategies


def check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"the budget is a number of table queries and must be at least 1, not "
                         f"{budget!r}; pass --budget N (the NB201 comparisons use a few hundred)")


def random_search(space: SearchSpace, fitness: Fitness, budget: int,
                  rng: random.Random) -> list[Query]:
    """Query ``budget`` uniformly random archs (each edge's op drawn uniformly, as the reference's
    ``random_architecture_func``, R_EA.py:115-128); repeats are queried and counted again
    (RANDOM.py:96-103)."""
    check_budget(budget)
    history = []
    for _ in range(budget):
        arch = space.sample(rng)
        history.append(Query(arch, fitness(arch)))
    return history


def mutate_as_reference(space: SearchSpace, arch: Arch, rng: random.Random) -> Arch:
    """REA's mutation (``mutate_arch_func``, R_EA.py:131-148): a node uniformly, then one of its
    input edges uniformly, then an op other than the current one uniformly.

    Unlike ``space.mutate`` (uniform over edges) an NB201 edge into node 1 is picked with
    probability 1/3, one into node 2 with 1/6 and one into node 3 with 1/9. The op always changes.

    Raises:
        ValueError: a space whose choices are not all cell edges over ``space.primitives``.
    """
    primitives = getattr(space, "primitives", None)
    if primitives is None or not all(is_edge(label) for label in arch):
        raise ValueError(f"REA's mutation picks a cell node, then an edge; space {space.name!r} "
                         f"is not a cell space with primitives (nb201 is)")
    nodes: dict[str, list[str]] = {}
    for label in arch:
        nodes.setdefault(node_of(label), []).append(label)
    label = rng.choice(nodes[rng.choice(list(nodes))])
    op = rng.choice([k for k in range(len(primitives)) if k != arch[label]])
    return Arch(arch.space, {k: (op if k == label else v) for k, v in arch.items()})


def regularized_evolution(space: SearchSpace, fitness: Fitness, budget: int, rng: random.Random,
                          population_size: int = 10, sample_size: int = 3) -> list[Query]:
    """Aging evolution (Real et al. 2019, Algorithm 1) as the NB201 paper ran it (R_EA.py:151-226).

    The first ``population_size`` queries are random archs. Then each cycle draws
    ``sample_size`` members of the population uniformly *with* replacement, takes the best of
    them as the parent (the first one on a tie), queries a mutation of it
    (:func:`mutate_as_reference`), adds the child and removes the oldest member, so the
    population is always the last ``population_size`` queries. A child that repeats an earlier
    arch is queried and counted again. Every query, the initial ones included, spends one unit of
    ``budget``; a budget below the population size ends during the initial random fill.

    Defaults: population 10 (R-EA.sh:37 ``--ea_population 10``) and sample size 3 (the paper's
    run, ``R-EA.sh cifar10 3 -1``: R-EA.sh:3, docs/NAS-Bench-201.md:233). The script's
    ``--ea_cycles 200`` is unused: the reference loops on the time budget (R_EA.py:196-197).
    """
    check_budget(budget)
    if population_size < 1 or sample_size < 1:
        raise ValueError(f"population_size and sample_size must be at least 1, not "
                         f"{population_size} and {sample_size}")
    history: list[Query] = []
    population: deque[int] = deque()  # history indices, oldest first
    while len(history) < budget:
        if len(population) < population_size:  # the initial random population
            arch, parent = space.sample(rng), None
        else:
            sample = [rng.choice(population) for _ in range(sample_size)]
            parent = max(sample, key=lambda i: history[i].value)
            arch = mutate_as_reference(space, history[parent].arch, rng)
        history.append(Query(arch, fitness(arch), parent))
        population.append(len(history) - 1)
        if len(population) > population_size:
            population.popleft()  # the oldest dies, whatever its fitness
    return history


def reinforce(space: SearchSpace, fitness: Fitness, budget: int, rng: random.Random,
              learning_rate: float = 0.001, baseline_momentum: float = 0.9, lstm_size: int = 32,
              lstm_layers: int = 2, tanh_constant: float = 2.5, temperature: float = 5.0) -> list[Query]:
    """REINFORCE as the NB201 paper's baseline (``exps/NAS-Bench-201-algos/reinforce.py``), with
    the ENAS controller (:class:`~oneshot.controller.Controller`, xautodl's NB201 settings: 2
    LSTM layers of 32, temperature 5, tanh 2.5) as the policy where the reference uses one
    softmax per edge (``Policy``).

    Per query: sample, read the fitness as the reward (the table's units), move the baseline (an
    exponential moving average with momentum 0.9, bias-corrected as the reference's
    ``ExponentialMovingAverage``) and then step Adam (lr 0.001, ``REINFORCE.sh 0.001``) on
    -(reward - baseline) * log p.
    """
    import torch

    from oneshot.controller import Controller

    check_budget(budget)
    primitives = getattr(space, "primitives", None)
    if primitives is None:
        raise ValueError(f"reinforce samples one op per edge; space {space.name!r} has no primitives (nb201 has)")
    labels = list(space.sample(random.Random(0)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.getrandbits(63))
        controller = Controller("sequence", [len(primitives)] * len(labels), lstm_size, lstm_layers,
                                lstm_bias=True, tanh_constant=tanh_constant, temperature=temperature)
    optimizer = torch.optim.Adam(controller.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    numerator = denominator = 0.0
    history: list[Query] = []
    while len(history) < budget:
        sample = controller(generator)
        arch = Arch(space.name, dict(zip(labels, sample.tokens)))
        reward = fitness(arch)
        history.append(Query(arch, reward))
        numerator = baseline_momentum * numerator + (1 - baseline_momentum) * reward
        denominator = baseline_momentum * denominator + (1 - baseline_momentum)
        loss = -sample.log_prob * (reward - numerator / denominator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


# Each takes (space, fitness, budget, rng) and then keyword parameters, each with its default.
Strategy = Callable[..., list[Query]]
STRATEGIES: dict[str, Strategy] = {"evolution": regularized_evolution, "random": random_search,
                                   "reinforce": reinforce}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; accepted: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_params(name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters ``name`` runs with: its defaults, overridden by ``given``.

    Raises:
        ValueError: an unknown strategy, or a parameter it does not take.
    """
    signature = inspect.signature(get_strategy(name))
    defaults = {k: p.default for k, p in list(signature.parameters.items())[4:]}
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "no parameters"
        raise ValueError(f"strategy {name!r} does not take {', '.join(unknown)} (it takes {takes})")
    return {**defaults, **(given or {})}


# ---------------------------------------------------------------------------------------------
# One run


def best_index(history: list[Query]) -> int:
    """The first query with the highest value (the reference's ``max`` over its history)."""
    return max(range(len(history)), key=lambda i: history[i].value)


def run_oracle(strategy: str, table: Table, column: str, budget: int, seed: int,
               params: Mapping[str, Any] | None = None,
               on_query: Callable[[Arch, float], None] | None = None) -> dict[str, Any]:
    """Run ``strategy`` on ``table``'s ``column`` and return the JSON record of ``result.json``:
    the settings, ``best`` (its arch and every table column), ``best_query`` (its 0-based index
    in ``history``) and ``history`` (every query in order: ``arch``, ``value`` and ``parent``,
    the index of the query it was mutated from, or None).

    The same arguments give the same record: all randomness comes from ``random.Random(seed)``.
    """
    function = get_strategy(strategy)
    params = strategy_params(strategy, params)
    check_budget(budget)
    lookup = table.fitness(column)

    def fitness(arch: Arch) -> float:
        value = lookup(arch)
        if on_query is not None:
            on_query(arch, value)
        return value

    history = function(table.space, fitness, budget, random.Random(seed), **params)
    best = best_index(history)
    space = table.space
    return {
        "strategy": strategy, "params": params, "space": space.name,
        "table": str(Path(table.path).resolve()), "column": column, "budget": budget, "seed": seed,
        "budget_unit": "queries (duplicates count)", "best_query": best,
        "best": {"arch": space.format(history[best].arch), **table.row(history[best].arch)},
        "history": [{"arch": space.format(q.arch), "value": q.value, "parent": q.parent}
                    for q in history],
    }


__all__ = ["Fitness", "MissingArchitecture", "Query", "STRATEGIES", "Strategy", "Table", "best_index",
           "check_budget", "get_strategy", "mutate_as_reference", "random_search",
           "regularized_evolution", "run_oracle", "strategy_params"]
