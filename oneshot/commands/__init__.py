"""The ``oneshot`` command: one module per subcommand, each a parser plus ``main(argv)``.

Commands sit above the library (``oneshot`` -> ``supernets`` -> ``ops``) and only call its public
functions; the pipeline and the rank study call other commands' ``main``. Subcommands are
imported when run, so ``oneshot --help`` is quick.
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "search": "train a supernet and export its architecture (LightningCLI; --help for options)",
    "retrain": "train one architecture from scratch (--arch FILE|STRING or --genotype NAME; "
               "LightningCLI)",
    "discretize": "write arch.json from a search run or checkpoint (--rule rule|best_of_n|perturbation)",
    "pipeline": "search, discretize and retrain in one run directory; resumes where it stopped "
                "(--retrain CONFIG, --run-dir DIR)",
    "rank": "rank correlation of supernet scores (or a score table) with ground truth; "
            "--train-ground-truth builds a table by stand-alone training",
    "info": "index, parameters and FLOPs of an architecture, or the table of a whole space",
    "shrink": "Once-for-All progressive shrinking: every phase into one run directory; resumes "
              "(--config CONFIG, --schedule YAML, --run-dir DIR)",
    "oracle": "query-based search (evolution, random, reinforce) on a benchmark table column, no supernet",
    "latency": "measure a latency lookup table of the ofa-mbv3 space on this machine (for latency<=MS budgets)",
    "study": "collapse: every differentiable search on one space, N seeds, side by side (skip counts, "
             "eigenvalues, table lookups); resumable",
}
USER_ERRORS = (FileNotFoundError, KeyError, IndexError, ValueError, ImportError)  # UserError is a ValueError


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
        print("usage: oneshot {" + ",".join(COMMANDS) + "} [options]\n\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\noneshot: error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    command, rest = argv[0], argv[1:]
    try:
        importlib.import_module(f"oneshot.commands.{command}").main(rest)
    except Exception as error:
        faults = sys.modules.get("oneshot.faults")  # loaded by any command that trains (it needs lightning)
        if faults is not None and isinstance(error, faults.Preempted):  # a scheduler's signal
            print(f"oneshot {command}: {error}", file=sys.stderr)
            sys.exit(128 + error.signum)
        if not isinstance(error, USER_ERRORS) or os.environ.get("ONESHOT_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"oneshot {command}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
