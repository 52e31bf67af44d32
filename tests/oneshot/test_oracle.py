"""Query-based search on a table: REA as the NB201 reference runs it, random search, the table view."""
import csv
import random
from collections import Counter
from statistics import mean

import pytest

import supernets
from oneshot.oracle import (STRATEGIES, MissingArchitecture, Query, Table, best_index,
                            mutate_as_reference, random_search, regularized_evolution, run_oracle,
                            strategy_params)

NB201 = supernets.get("nb201")
EDGES = NB201.edge_labels


_DRAW = random.Random(1)
WEIGHTS = {(label, op): _DRAW.uniform(0, 10) for label in EDGES for op in range(5)}


def _synthetic_fitness(arch):
    """A smooth landscape: a fixed score per (edge, op) summed over edges, plus a small wiggle."""
    wiggle = random.Random(NB201.index(arch)).uniform(0, 1)
    return round(sum(WEIGHTS[label, arch[label]] for label in EDGES) + wiggle, 4)


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def full_table(tmp_path_factory):
    """Every NB201 arch: a fitness column, a second numeric column and a text column."""
    rows = [[NB201.format(a), _synthetic_fitness(a), NB201.index(a) % 7, "note"]
            for a in NB201.enumerate()]
    path = _write(tmp_path_factory.mktemp("table") / "full.csv", ["arch", "fit", "other", "comment"], rows)
    return Table.load(path, "nb201", "fit")


def _is_window_best(history, i, population):
    """Whether query i's parent is as good as the best of the `population` queries before it."""
    return history[history[i].parent].value == max(q.value for q in history[i - population:i])


def test_evolution_beats_random_search_on_average(full_table):
    fitness = full_table.fitness("fit")
    best = {name: mean(max(q.value for q in STRATEGIES[name](NB201, fitness, 150, random.Random(s)))
                       for s in range(10))
            for name in ("evolution", "random")}
    assert best["evolution"] > best["random"] + 1.0, best


def test_same_seed_same_record_and_another_seed_differs(full_table):
    for strategy in STRATEGIES:
        first = run_oracle(strategy, full_table, "fit", 60, seed=3)
        assert run_oracle(strategy, full_table, "fit", 60, seed=3) == first
        assert run_oracle(strategy, full_table, "fit", 60, seed=4)["history"] != first["history"]


@pytest.mark.parametrize("budget", [1, 4, 10, 11, 57])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_history_length_is_the_budget(full_table, strategy, budget):
    record = run_oracle(strategy, full_table, "fit", budget, seed=0)
    assert len(record["history"]) == budget
    assert record["best"]["fit"] == max(q["value"] for q in record["history"])


def test_duplicates_are_queried_and_count_toward_the_budget():
    calls = []
    history = regularized_evolution(NB201, lambda a: calls.append(a) or _synthetic_fitness(a), 400,
                                     random.Random(0))
    assert len(calls) == len(history) == 400
    assert len(set(calls)) < 400  # evolution revisits archs and pays for each visit


def test_aging_population_is_the_last_queries_and_the_oldest_dies():
    population = 10
    history = regularized_evolution(NB201, _synthetic_fitness, 300, random.Random(2),
                                    population_size=population, sample_size=3)
    assert all(q.parent is None for q in history[:population])  # the random initial population
    parents = [q.parent for q in history[population:]]
    for i, parent in enumerate(parents, start=population):
        assert i - population <= parent < i  # only the last `population` queries are alive
        child, mother = history[i].arch, history[parent].arch
        assert sum(child[e] != mother[e] for e in EDGES) == 1  # one edge, always a different op
    offsets = Counter(i - p for i, p in enumerate(parents, start=population))
    assert offsets[population] > 0  # the oldest member can still be chosen ...
    assert max(offsets) == population  # ... but never once it has died


def test_the_parent_is_the_best_of_the_tournament():
    # A sample of 200 draws (with replacement) from 5 members holds the best one for sure.
    history = regularized_evolution(NB201, _synthetic_fitness, 100, random.Random(0),
                                    population_size=5, sample_size=200)
    assert all(_is_window_best(history, i, 5) for i in range(5, 100))
    # A sample of one is a uniformly random member: not always the best.
    history = regularized_evolution(NB201, _synthetic_fitness, 100, random.Random(0),
                                    population_size=5, sample_size=1)
    assert not all(_is_window_best(history, i, 5) for i in range(5, 100))


def test_mutation_picks_a_node_first_as_the_reference():
    rng, arch = random.Random(0), NB201.sample(random.Random(5))
    changed = Counter()
    for _ in range(18000):
        child = mutate_as_reference(NB201, arch, rng)
        (label,) = [e for e in EDGES if child[e] != arch[e]]  # exactly one edge, op always new
        changed[label] += 1
    expected = {"1<-0": 1 / 3, "2<-0": 1 / 6, "2<-1": 1 / 6, "3<-0": 1 / 9, "3<-1": 1 / 9, "3<-2": 1 / 9}
    for label, share in expected.items():
        assert changed[label] / 18000 == pytest.approx(share, abs=0.015)


def test_random_search_draws_uniform_archs_and_keeps_repeats():
    history = random_search(NB201, _synthetic_fitness, 50, random.Random(0))
    assert len(history) == 50 and all(isinstance(q, Query) and q.parent is None for q in history)


def test_best_is_the_first_maximum():
    a, b = NB201.from_index(1), NB201.from_index(2)
    assert best_index([Query(a, 1.0), Query(b, 3.0), Query(a, 3.0)]) == 1


def test_table_row_holds_every_numeric_column(full_table):
    arch = NB201.from_index(6111)
    assert list(full_table.columns) == ["fit", "other"]  # the text column is left out
    assert full_table.row(arch) == {"fit": _synthetic_fitness(arch), "other": 6111 % 7}
    assert len(full_table) == 15625


def test_an_arch_missing_from_the_table_is_an_error(tmp_path):
    rows = [[NB201.format(NB201.from_index(i)), i] for i in range(40)]
    table = Table.load(_write(tmp_path / "part.csv", ["arch", "fit"], rows), "nb201", "fit")
    with pytest.raises(MissingArchitecture, match="40 of the space's 15625 archs.*covers the whole space"):
        run_oracle("evolution", table, "fit", 20, seed=0)


@pytest.mark.parametrize("call, message", [
    (lambda: strategy_params("annealing"), "unknown strategy 'annealing'; accepted: evolution, random"),
    (lambda: strategy_params("random", {"sample_size": 3}), "'random' does not take sample_size"),
    (lambda: random_search(NB201, _synthetic_fitness, 0, random.Random(0)), "at least 1"),
    (lambda: regularized_evolution(NB201, _synthetic_fitness, 5, random.Random(0), sample_size=0),
     "sample_size must be at least 1"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_defaults_are_the_nb201_papers():
    assert strategy_params("evolution") == {"population_size": 10, "sample_size": 3}
    assert strategy_params("evolution", {"sample_size": 10})["sample_size"] == 10


def test_reinforce_learns_on_a_synthetic_table_and_is_deterministic():
    """The controller as REINFORCE's policy: on a fitness that rewards conv ops per edge it ends
    sampling better archs than it started with, and the same seed gives the same queries."""
    import random as _random

    import supernets
    from oneshot.oracle import reinforce

    space = supernets.get("nb201")

    def fitness(arch):
        return float(sum(arch[label] == 3 for label in arch))  # nor_conv_3x3 everywhere is best

    first = reinforce(space, fitness, 300, _random.Random(0), learning_rate=0.01)
    again = reinforce(space, fitness, 300, _random.Random(0), learning_rate=0.01)
    assert [q.arch for q in first] == [q.arch for q in again]
    early = sum(q.value for q in first[:50]) / 50
    late = sum(q.value for q in first[-50:]) / 50
    assert late > early + 1.0, (early, late)
