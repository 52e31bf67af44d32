"""``oneshot discretize``: turn a trained supernet checkpoint into one architecture.

Architecture selection is a separate step from the search (Wang et al., "Rethinking
Architecture Selection in Differentiable NAS", ICLR 2021, argue that the rule matters as much as
the search), so a finished ``oneshot search`` run can be discretized again with another rule
without retraining, with any strategy of :mod:`oneshot.selection`:

* ``rule``: the algorithm's own ``export()``: the space's rule on its architecture
  distribution (DARTS top-2 per node, NAS-Bench-201 argmax per edge, PC-DARTS on the
  edge-normalized weights), or the stored best-of-N selection of RSPS;
* ``best_of_n``: NAS-Bench-201's selection for weight-sharing baselines (Dong & Yang, ICLR 2020,
  D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` ``search_find_best``):
  score ``--samples`` uniform architectures with the inherited weights on ``--batches``
  validation batches and keep the most accurate (:mod:`oneshot.selection.best_of_n`).

* ``perturbation``: DARTS-PT (Wang et al., ICLR 2021, ruocwang/darts-pt): per edge in random
  order, keep the op whose removal from the dense weights hurts validation accuracy most, then
  fix it; in the DARTS space also the two inputs per node by removal
  (:func:`oneshot.selection.perturbation.perturbation_select`; ``--proj-intv`` epochs of bilevel tuning
  between rounds, 5 as published; ``--criterion acc|loss``).

The result is written as JSON with the keys of the search's ``arch.json`` (``space``, ``arch``,
``choices``), so ``SearchSpace.load`` and ``oneshot info --arch`` read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from oneshot import selection
from oneshot.algorithms import load_algorithm
from oneshot.checkpoints import resolve_checkpoint, run_directory
from oneshot.commands.parsing import OneLineArgumentParser
from oneshot.data import datamodule_from_run
from oneshot.files import atomic_write_json
from supernets import Arch

HELP = "write arch.json from a search run or checkpoint (--rule rule|best_of_n|perturbation)"


def write_record(path: Path, model, arch: Arch, rule: str, source: Path, scores: Any,
                 settings: dict[str, Any]) -> None:
    """Write the arch JSON with the search's ``arch.json`` keys plus how it was chosen."""
    record = {"space": arch.space, "arch": model.space.format(arch), "choices": arch.to_json()["choices"],
              "rule": rule, "source": str(source), "algorithm": type(model).__name__, "scores": scores}
    if settings:
        record["settings"] = settings
    atomic_write_json(path, record)


def main(argv: list[str]) -> None:
    """``oneshot discretize RUN_OR_CKPT [--rule ...] [--out PATH] [--samples N] [--batches B]``."""
    parser = OneLineArgumentParser(
        prog="oneshot discretize",
        description="choose one architecture from a trained supernet (a run of `oneshot search`)")
    parser.add_argument("run_or_ckpt", metavar="RUN_OR_CKPT",
                        help="run directory (uses RUN/checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("--rule", choices=selection.names(), default="rule",
                        help="rule: the algorithm's own export (the space's rule on its distribution); best_of_n: best of --samples uniform "
                             "architectures by validation accuracy with inherited weights; perturbation: "
                             "DARTS-PT, per edge the op whose removal hurts validation accuracy most")
    parser.add_argument("--out", help="output JSON (default: RUN/arch_<rule>.json)")
    parser.add_argument("--samples", type=int, default=100,
                        help="best_of_n: architectures to score (NB201 RANDOM-NAS --select_num 100)")
    parser.add_argument("--batches", type=int, default=None,
                        help="best_of_n: validation batches per architecture (default 1, NB201); "
                             "perturbation: validation batches per measurement (default: all, DARTS-PT)")
    parser.add_argument("--next-batches", action="store_true",
                        help="best_of_n: score each candidate on the next batches, ties to the first "
                             "(NB201 search_find_best); default: all on the same batches, ties by loss")
    parser.add_argument("--seed", type=int, default=0,
                        help="best_of_n: seed of the uniform samples; perturbation: of the edge order")
    parser.add_argument("--proj-intv", type=int, default=5,
                        help="perturbation: epochs of bilevel tuning (weight lr/10) between decisions, "
                             "DARTS-PT's --proj_intv (published: 5); 0: no tuning")
    parser.add_argument("--tune-batches", type=int, default=None,
                        help="perturbation: at most this many batches per tuning epoch (default: all)")
    parser.add_argument("--criterion", choices=("acc", "loss"), default="acc",
                        help="perturbation: keep the op whose removal lowers validation accuracy most "
                             "(acc, published) or raises the loss most (loss)")
    parser.add_argument("--none-candidate", action="store_true",
                        help="perturbation, darts space: let `none` win an edge as DARTS-PT does (the "
                             "genotype then shows the first other op); default: never")
    parser.add_argument("--fresh-arch-optimizer", action="store_true",
                        help="perturbation: tune alphas with a new Adam (default: the search's state, "
                             "as DARTS-PT keeps its architect)")
    parser.add_argument("--data", default=None,
                        help="best_of_n, perturbation: data module name (default: the run's config.yaml, else digits)")
    parser.add_argument("--data-root", default=None, help="best_of_n, perturbation: folder of the data set")
    args = parser.parse_args(argv)
    if args.samples < 1 or (args.batches is not None and args.batches < 1):
        raise ValueError(f"--samples {args.samples} --batches {args.batches}: both must be at least 1")
    if args.proj_intv < 0 or (args.tune_batches is not None and args.tune_batches < 1):
        raise ValueError(f"--proj-intv {args.proj_intv} --tune-batches {args.tune_batches}: "
                         "--proj-intv must be at least 0, --tune-batches at least 1")
    ckpt = resolve_checkpoint(args.run_or_ckpt)
    run = run_directory(ckpt)
    model = load_algorithm(ckpt)
    datamodule, data_source = None, None
    if args.rule != "rule":
        datamodule, data_source = datamodule_from_run(run, args.data, args.data_root)
    options: dict[str, Any] = {"num_batches": args.batches, "seed": args.seed}
    if args.rule == "best_of_n":
        options.update(num_samples=args.samples, shared_batches=not args.next_batches)
    if args.rule == "perturbation":
        states = getattr(model, "checkpoint_optimizer_states", None) or []
        options.update(proj_interval=args.proj_intv, criterion=args.criterion, tune_batches=args.tune_batches,
                       none_candidate=args.none_candidate, fresh_arch_optimizer=args.fresh_arch_optimizer,
                       arch_optimizer_state=states[1] if len(states) > 1 else None,
                       progress=lambda line: print(line, flush=True))
    chosen = selection.select(args.rule, model, datamodule, **options)
    if data_source is not None:
        chosen.settings["data"] = data_source
    out = Path(args.out) if args.out else run / f"arch_{args.rule}.json"
    write_record(out, model, chosen.arch, args.rule, ckpt, chosen.scores, chosen.settings)
    print(f"architecture: {model.space.format(chosen.arch)}\nrule: {args.rule}\nwrote {out}")
