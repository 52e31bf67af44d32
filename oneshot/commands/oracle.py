"""``oneshot oracle``: query-based search on a benchmark table (no supernet), the baseline that
one-shot search is compared with on the same benchmark::

    oneshot oracle --strategy evolution --space nb201 --table nb201_cifar10.csv \\
        --column cifar10_valid_acc --budget 500 --seed 0 --out runs/oracle/rea_0

writes ``OUT/result.json`` (settings, ``best`` with every table column, ``history`` of every
query) and prints the best. The budget counts table queries; see :mod:`oneshot.oracle`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneshot.commands.common import UserError
from oneshot.commands.parsing import OneLineArgumentParser

if TYPE_CHECKING:
    from oneshot.oracle import Table

HELP = "query-based search (evolution, random) on a benchmark table column, no supernet"


def main(argv: list[str]) -> None:
    import supernets
    from oneshot.files import atomic_write_json
    from oneshot.oracle import STRATEGIES, Table, check_budget, strategy_params

    parser = OneLineArgumentParser(prog="oneshot oracle", description=HELP)
    parser.add_argument("--strategy", required=True, help=f"one of {', '.join(STRATEGIES)}")
    parser.add_argument("--space", required=True, help=f"one of {', '.join(supernets.names())}")
    parser.add_argument("--table", required=True, help="CSV with an 'arch' column and value columns")
    parser.add_argument("--column", required=True, help="the fitness column, e.g. cifar10_valid_acc")
    parser.add_argument("--budget", type=int, required=True, help="number of table queries")
    parser.add_argument("--seed", type=int, default=0, help="seed of random.Random (default 0)")
    parser.add_argument("--out", required=True, help="folder for result.json")
    parser.add_argument("--population-size", type=int, default=None,
                        help="evolution: population (default 10, as the NB201 paper)")
    parser.add_argument("--sample-size", type=int, default=None,
                        help="evolution: tournament sample (default 3, as the NB201 paper)")
    args = parser.parse_args(argv)

    given = {k: v for k, v in (("population_size", args.population_size),
                               ("sample_size", args.sample_size)) if v is not None}
    if any(value < 1 for value in given.values()):
        raise UserError("--population-size and --sample-size must be at least 1")
    params = strategy_params(args.strategy, given)  # unknown strategies fail before the table loads
    check_budget(args.budget)
    try:
        space = supernets.get(args.space)
    except KeyError as error:
        raise UserError(error.args[0]) from None
    started = time.perf_counter()
    table = Table.load(args.table, space, args.column)
    record = _run_with_progress(args.strategy, table, args.column, args.budget, args.seed, params)
    path = atomic_write_json(Path(args.out) / "result.json", record)
    best = record["best"]
    values = "  ".join(f"{k}={v:g}" for k, v in best.items() if k != "arch")
    print(f"best (query {record['best_query'] + 1} of {args.budget}): {best['arch']}\n  {values}\n"
          f"wrote {path} in {time.perf_counter() - started:.1f} s")


def _run_with_progress(strategy: str, table: Table, column: str, budget: int, seed: int,
                       params: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_oracle` with a progress bar showing the best value so far (on a terminal)."""
    from tqdm.auto import tqdm

    from oneshot.oracle import run_oracle

    best = float("-inf")
    with tqdm(total=budget, desc=f"oracle {strategy}", unit="query", leave=False, disable=None) as bar:
        def on_query(arch: object, value: float) -> None:
            nonlocal best
            if value > best:
                best = value
                bar.set_postfix({f"best {column}": f"{value:g}"}, refresh=False)
            bar.update()

        return run_oracle(strategy, table, column, budget, seed, params, on_query)
