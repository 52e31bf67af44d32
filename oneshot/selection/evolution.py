"""Evolutionary architecture search under cost constraints (SPOS, Guo et al., ECCV 2020).

The protocol of megvii-model/SinglePathOneShot ``src/Search/search.py`` (``EvolutionSearcher``),
for any space: a population of 50; per generation the top 10 of everything evaluated so far are
the parents; 25 mutants (a parent with each choice redrawn with p = 0.1,
:meth:`~supernets.base.SearchSpace.resample`) and 25 crossovers (per choice from either of two
parents) are proposed, each generator making at most 10x its quota of proposals, and random
architectures fill the population. A proposal already evaluated, or over a constraint, is
rejected before it is evaluated; nothing is evaluated twice.

Where this differs from the reference:

* the reference breeds and evaluates a 21st population after the 20th generation and never
  ranks it (1,050 evaluations); here the search stops after ranking the 20th (1,000, the same
  top-10);
* the reference's random fill tries forever; here it gives up after ``random_tries`` x its
  quota (an impossible constraint then ends with an error naming the smallest cost seen);
* ties in accuracy go to the lower loss, then to the earlier evaluated.

:class:`Evolution` knows only a space, an ``evaluate(arch) -> (accuracy, loss)`` and a
``cost(arch) -> {"params", "macs", ...}``; :func:`oneshot.selection.evolution_strategy` binds them
to a supernet. Its state is a plain dict, saved after every generation, so a resumed search
continues exactly where it stopped.
"""
from __future__ import annotations

import operator
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from supernets import Arch, SearchSpace

COST_KEYS = {"flops": "macs", "macs": "macs", "params": "params"}  # flops as papers print them
_COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE_]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """A bound on one cost: ``flops<=330e6``. ``flops`` and ``macs`` both mean multiply-adds,
    the unit NAS papers print as FLOPs (SPOS's 330M limit); ``params`` counts parameters."""

    key: str
    op: str
    limit: float

    @property
    def cost_key(self) -> str:
        return COST_KEYS[self.key]

    def allows(self, cost: Mapping[str, float]) -> bool:
        return _COMPARISONS[self.op](cost[self.cost_key], self.limit)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.limit:g}"


def parse_constraints(texts: Sequence[str]) -> list[Constraint]:
    """``["flops<=330e6", "params<=5e6"]`` -> constraints; ValueError naming the bad one."""
    constraints = []
    for text in texts:
        for part in str(text).split(","):
            if not part.strip():
                continue
            match = _CONSTRAINT.match(part)
            if not match:
                raise ValueError(f"constraint {part.strip()!r} is not KEY<=VALUE (e.g. flops<=330e6, params<=5e6; "
                                 f"operators <=, <, >=, >)")
            key, op, value = match.groups()
            if key not in COST_KEYS:
                raise ValueError(f"constraint key {key!r} is unknown; accepted: {', '.join(COST_KEYS)} "
                                 "(flops and macs are multiply-adds)")
            try:
                limit = float(value)
            except ValueError:
                raise ValueError(f"constraint {part.strip()!r}: {value!r} is not a number") from None
            constraints.append(Constraint(key, op, limit))
    return constraints


@dataclass(frozen=True)
class EvolutionSettings:
    """The reference's defaults (search.py ``main``)."""

    population: int = 50        # --population-num
    generations: int = 20       # --max-epochs
    parents: int = 10           # --select-num (top-k)
    mutants: int = 25           # --mutation-num
    crossovers: int = 25        # --crossover-num
    mutation_prob: float = 0.1  # --m_prob
    tries: int = 10             # proposals per place for mutation and crossover (max_iters = 10 x quota)
    random_tries: int = 100     # proposals per place for the random fill (the reference: unbounded)

    def check(self) -> None:
        if min(self.population, self.generations, self.parents) < 1 or min(self.mutants, self.crossovers) < 0:
            raise ValueError(f"evolution settings {asdict(self)}: population, generations and parents must "
                             "be at least 1, mutants and crossovers at least 0")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob={self.mutation_prob}: a probability between 0 and 1")


Evaluate = Callable[[Arch], tuple[float, float]]
Cost = Callable[[Arch], Mapping[str, float]]


class ImpossibleConstraint(ValueError):
    """No proposal satisfied the constraints."""


class Evolution:
    """The search state and its steps; :meth:`run` drives it to the end.

    State (JSON-serializable, see :meth:`state`): every evaluated candidate in order (arch,
    generation, origin, accuracy, loss, cost), the rejected proposals' smallest cost, the
    generation reached, and the random generator's state.
    """

    def __init__(self, space: SearchSpace, evaluate: Evaluate, cost: Cost, constraints: Sequence[Constraint] = (),
                 settings: EvolutionSettings = EvolutionSettings(), seed: int = 0,
                 context: Mapping[str, Any] | None = None) -> None:
        settings.check()
        self.context = dict(context or {})  # how candidates are scored and costed: part of the identity
        self.space, self.evaluate, self.cost = space, evaluate, cost
        self.constraints, self.settings, self.seed = list(constraints), settings, seed
        self.rng = random.Random(seed)
        self.history: list[dict[str, Any]] = []   # every evaluated candidate, in order
        self.generation = 0                       # generations ranked so far
        self.population: list[str] = []           # the current generation's candidates
        self.smallest_rejected: dict[str, float] = {}
        self._index: dict[str, int] = {}          # arch string -> position in history
        self._costs: dict[str, Mapping[str, float]] = {}

    # --- candidates ---------------------------------------------------------------------------
    def cost_of(self, arch: Arch) -> Mapping[str, float]:
        key = self.space.format(arch)
        if key not in self._costs:
            self._costs[key] = dict(self.cost(arch))
        return self._costs[key]

    def _propose(self, arch: Arch, origin: str, on_evaluated: Callable[[], None] | None) -> bool:
        """Evaluate ``arch`` unless it was evaluated before or breaks a constraint."""
        key = self.space.format(arch)
        if key in self._index:
            return False
        cost = self.cost_of(arch)
        if not all(c.allows(cost) for c in self.constraints):
            for c in self.constraints:
                value = cost[c.cost_key]
                self.smallest_rejected[c.key] = min(value, self.smallest_rejected.get(c.key, value))
            return False
        accuracy, loss = self.evaluate(arch)
        self._index[key] = len(self.history)
        self.history.append({"arch": key, "generation": self.generation, "origin": origin,
                             "accuracy": float(accuracy), "loss": float(loss),
                             **{k: float(v) for k, v in cost.items()}})
        self.population.append(key)
        if on_evaluated:
            on_evaluated()
        return True

    def _fill(self, propose: Callable[[], Arch], origin: str, quota: int, tries: int,
              on_evaluated: Callable[[], None] | None) -> int:
        added = 0
        for _ in range(quota * tries):
            if added == quota:
                break
            added += self._propose(propose(), origin, on_evaluated)
        return added

    def ranked(self) -> list[dict[str, Any]]:
        """Every evaluated candidate, best first: accuracy, then lower loss, then earlier."""
        order = sorted(range(len(self.history)),
                       key=lambda i: (-self.history[i]["accuracy"], self.history[i]["loss"], i))
        return [self.history[i] for i in order]

    def parents(self) -> list[Arch]:
        """The top ``parents`` of every generation ranked so far (the reference's keep_top_k)."""
        ranked_keys = {c["arch"] for c in self.history if c["generation"] < self.generation}
        top = [c for c in self.ranked() if c["arch"] in ranked_keys][: self.settings.parents]
        return [self.space.parse(c["arch"]) for c in top]

    # --- one generation -----------------------------------------------------------------------
    def breed(self, on_evaluated: Callable[[], None] | None = None) -> None:
        """Fill the next population: mutants and crossovers of the parents, then random ones."""
        s, rng, space = self.settings, self.rng, self.space
        self.population = []
        parents = self.parents()
        if parents:
            self._fill(lambda: space.resample(rng.choice(parents), s.mutation_prob, rng), "mutation",
                       s.mutants, s.tries, on_evaluated)
            self._fill(lambda: space.crossover(rng.choice(parents), rng.choice(parents), rng), "crossover",
                       s.crossovers, s.tries, on_evaluated)
        self._fill(lambda: space.sample(rng), "random", s.population - len(self.population), s.random_tries,
                   on_evaluated)
        if not self.population:
            raise ImpossibleConstraint(self._impossible_message())

    def _impossible_message(self) -> str:
        seen = ", ".join(f"{k} {v:.4g}" for k, v in self.smallest_rejected.items()) or "none"
        limits = ", ".join(map(str, self.constraints))
        return (f"no new architecture satisfies {limits} after {self.settings.population * self.settings.random_tries} "
                f"random proposals (smallest cost seen: {seen}); relax the constraint")

    def step(self, on_evaluated: Callable[[], None] | None = None) -> dict[str, Any]:
        """Breed and evaluate one generation, then rank it; returns its summary."""
        self.breed(on_evaluated)
        scores = [self.history[self._index[k]]["accuracy"] for k in self.population]
        self.generation += 1
        best = self.ranked()[0]
        return {"generation": self.generation, "evaluated": len(self.history), "best_accuracy": best["accuracy"],
                "best_arch": best["arch"], "mean_accuracy": sum(scores) / len(scores)}

    @property
    def done(self) -> bool:
        return self.generation >= self.settings.generations

    def best(self) -> Arch:
        return self.space.parse(self.ranked()[0]["arch"])

    # --- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"settings": asdict(self.settings), "constraints": [str(c) for c in self.constraints],
                "seed": self.seed, "space": self.space.name, "context": self.context, "generation": self.generation,
                "history": self.history, "smallest_rejected": self.smallest_rejected,
                "rng": [version, list(internal), gauss]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`; ValueError when it was made with other settings."""
        mine = self.state()
        changed = [k for k in ("settings", "constraints", "seed", "space", "context") if state.get(k) != mine[k]]
        if changed:
            raise ValueError("the saved evolution was run with other " + ", ".join(
                f"{k} ({state.get(k)} then, {mine[k]} now)" for k in changed)
                + "; rerun with the same options to resume, or write to another --out")
        self.generation = int(state["generation"])
        self.history = [dict(c) for c in state["history"]]
        self._index = {c["arch"]: i for i, c in enumerate(self.history)}
        self.smallest_rejected = dict(state["smallest_rejected"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.population = [c["arch"] for c in self.history if c["generation"] == self.generation - 1]
