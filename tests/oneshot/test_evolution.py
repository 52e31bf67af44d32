"""Evolution (SPOS search.py) on synthetic fitness: constraints hold for every evaluated
candidate, nothing is evaluated twice, a resumed search equals an uninterrupted one, it beats
random search with the same budget, and bad input is named."""
import random

import pytest

import supernets
from oneshot.selection.evolution import (Constraint, Evolution, EvolutionSettings, ImpossibleConstraint,
                                         parse_constraints)
from oneshot.selection.evolve import pareto_front

DARTS = supernets.get("darts")
TARGET = DARTS.sample(random.Random(1234))
SMALL = EvolutionSettings(population=12, generations=6, parents=4, mutants=6, crossovers=6)


def fitness(arch):
    """Share of the ops and inputs equal to a hidden target's: a landscape with one peak."""
    same = sum((op == t_op) + (j == t_j) for k in TARGET for (op, j), (t_op, t_j) in zip(arch[k], TARGET[k]))
    return same / (4 * len(TARGET)), -same


def cost(arch):
    """A synthetic cost: the sum of the op indices (params) and of the inputs (macs)."""
    return {"params": float(sum(op for pair in arch.values() for op, _ in pair)),
            "macs": float(sum(j for pair in arch.values() for _, j in pair))}


def counting(evaluate):
    calls = []

    def wrapped(arch):
        calls.append(DARTS.format(arch))
        return evaluate(arch)
    return wrapped, calls


def test_constraints_hold_and_nothing_is_evaluated_twice():
    evaluate, calls = counting(fitness)
    limits = parse_constraints(["params<=60", "macs<=20"])
    evolution = Evolution(DARTS, evaluate, cost, limits, SMALL, seed=0)
    while not evolution.done:
        evolution.step()
    assert len(calls) == len(set(calls)) == len(evolution.history)
    assert all(c["params"] <= 60 and c["macs"] <= 20 for c in evolution.history)
    origins = {c["origin"] for c in evolution.history}
    assert {"mutation", "crossover", "random"} <= origins  # bred candidates also respect the limits
    assert len(evolution.history) <= SMALL.population * SMALL.generations
    best = evolution.ranked()[0]
    assert DARTS.format(evolution.best()) == best["arch"]
    assert best["accuracy"] == max(c["accuracy"] for c in evolution.history)


def test_parents_are_the_top_of_the_ranked_generations():
    evolution = Evolution(DARTS, fitness, cost, (), SMALL, seed=3)
    evolution.step()
    top = sorted(evolution.history, key=lambda c: -c["accuracy"])[:SMALL.parents]
    assert {DARTS.format(a) for a in evolution.parents()} == {c["arch"] for c in top}


def test_a_resumed_evolution_equals_an_uninterrupted_one():
    whole = Evolution(DARTS, fitness, cost, parse_constraints(["params<=45"]), SMALL, seed=7)
    while not whole.done:
        whole.step()
    first = Evolution(DARTS, fitness, cost, parse_constraints(["params<=45"]), SMALL, seed=7)
    first.step(), first.step()
    state = first.state()
    resumed = Evolution(DARTS, fitness, cost, parse_constraints(["params<=45"]), SMALL, seed=7)
    resumed.load_state(state)
    while not resumed.done:
        resumed.step()
    assert resumed.history == whole.history
    other = Evolution(DARTS, fitness, cost, parse_constraints(["params<=40"]), SMALL, seed=7)
    with pytest.raises(ValueError, match="other constraints"):
        other.load_state(state)


def test_evolution_beats_random_search_with_the_same_budget():
    gains = []
    for seed in range(5):
        evolution = Evolution(DARTS, fitness, cost, (), SMALL, seed=seed)
        while not evolution.done:
            evolution.step()
        rng = random.Random(seed)
        random_best = max(fitness(DARTS.sample(rng))[0] for _ in evolution.history)
        gains.append(evolution.ranked()[0]["accuracy"] - random_best)
    assert min(gains) > 0 and sum(gains) / len(gains) > 0.05, gains  # better on every seed


def test_an_impossible_constraint_names_the_smallest_cost_seen():
    evolution = Evolution(DARTS, fitness, cost, parse_constraints(["macs<=1"]), SMALL, seed=0)
    with pytest.raises(ImpossibleConstraint, match=r"macs<=1 after 1200 random proposals.*smallest cost seen: macs"):
        evolution.step()


@pytest.mark.parametrize("text, message", [
    ("flops<=", "not KEY<=VALUE"), ("latency<=3", "key 'latency' is unknown"),
    ("flops=<3", "not KEY<=VALUE"), ("flops<=3e6x", "not KEY<=VALUE")])
def test_bad_constraints_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_constraints([text])


def test_constraints_read_flops_as_multiply_adds():
    (limit,) = parse_constraints(["flops<=330e6"])
    assert limit == Constraint("flops", "<=", 330e6) and limit.cost_key == "macs"
    assert limit.allows({"macs": 330e6, "flops": 660e6}) and not limit.allows({"macs": 331e6, "flops": 0})
    assert [str(c) for c in parse_constraints(["flops<=330e6, params<5e6"])] == ["flops<=3.3e+08", "params<5e+06"]


def test_resample_redraws_each_choice_with_its_probability():
    space = supernets.get("nb201")
    arch = space.from_index(0)
    rng = random.Random(0)
    assert space.resample(arch, 0.0, rng) == arch
    changed = sum(space.resample(arch, 1.0, rng)[k] != arch[k] for _ in range(400) for k in arch)
    assert 0.75 * 400 * 6 < changed < 0.85 * 400 * 6  # redrawn always, equal to the old op 1/5 of the time


def test_pareto_front():
    points = [(1, 5), (2, 4), (2, 6), (3, 6), (0.5, 1), (4, 9)]
    assert pareto_front(points) == [4, 0, 2, 5]
