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
  between rounds, 5 as published; ``--criterion acc|loss``);
* ``evolution``: SPOS's evolutionary search (megvii-model/SinglePathOneShot ``search.py``) under
  ``--constraint`` bounds (``flops<=330e6``: multiply-adds; ``params<=5e6``), every candidate
  scored with inherited weights after its BatchNorm statistics are rebuilt; the history, a
  resumable state, TensorBoard scalars and ``evolution.png`` go to the folder named like the
  output without ``.json`` (running the same command again resumes it).

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
from oneshot.selection.evolution import parse_constraints
from oneshot.selection.predictor import parse_budgets
from supernets import Arch

HELP = "write arch.json from a search run or checkpoint (--rule rule|best_of_n|perturbation|evolution)"


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
                             "DARTS-PT, per edge the op whose removal hurts validation accuracy most; evolution: "
                             "SPOS's evolutionary search under --constraint")
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
                        help="best_of_n: seed of the uniform samples; perturbation: of the edge order; "
                             "evolution: of the proposals and the data subsets")
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
    evolution = parser.add_argument_group("evolution (defaults: SPOS search.py and tester.py)")
    evolution.add_argument("--constraint", action="append", default=[], metavar="KEY<=VALUE",
                           help="a bound on the stand-alone network's cost, repeatable: flops<=330e6 (flops and "
                                "macs are multiply-adds, as papers print FLOPs), params<=5e6")
    evolution.add_argument("--population", type=int, default=None,
                           help="candidates per generation (evolution 50; predictor 100, OFA's)")
    evolution.add_argument("--generations", type=int, default=None,
                           help="generations (evolution 20; predictor 500, OFA's)")
    evolution.add_argument("--parents", type=int, default=10, help="top-k parents (10)")
    evolution.add_argument("--mutants", type=int, default=25, help="mutants per generation (25)")
    evolution.add_argument("--crossovers", type=int, default=25, help="crossovers per generation (25)")
    evolution.add_argument("--mutation-prob", type=float, default=0.1, help="per-choice redraw probability (0.1)")
    evolution.add_argument("--bn-mode", choices=("reset", "recalibrate", "train", "running"), default=None,
                           help="BatchNorm statistics before scoring: reset (SPOS: reset, then a moving average "
                                "over --bn-batches training batches), recalibrate (exact average), train, running")
    evolution.add_argument("--bn-batches", type=int, default=None,
                           help="training batches for the BN statistics (evolution 200; predictor 10, OFA's)")
    evolution.add_argument("--bn-batch-size", type=int, default=None, help="their batch size (evolution 128; predictor 200)")
    evolution.add_argument("--val-images", type=int, default=None,
                           help="fixed validation subset every candidate is scored on (evolution 40 x 200 = "
                                "8000; predictor 10,000)")
    evolution.add_argument("--val-batch-size", type=int, default=200, help="validation batch size (200)")
    predictor = parser.add_argument_group("predictor (OFA's search for a budget; defaults: ofa/nas); also "
                                          "--constraint (with latency<=MS), --population, --generations and the BN/"
                                          "validation options above")
    predictor.add_argument("--latency-table", default=None, metavar="JSON",
                           help="a table of `oneshot latency` for latency<=MS constraints")
    predictor.add_argument("--predictor-samples", type=int, default=1000,
                           help="distinct subnets measured to train the accuracy predictor (1000 per resolution)")
    predictor.add_argument("--predictor-epochs", type=int, default=100, help="predictor training epochs (100)")
    parser.add_argument("--data", default=None,
                        help="best_of_n, perturbation, evolution: data module name (default: the run's config.yaml, else digits)")
    parser.add_argument("--data-root", default=None, help="best_of_n, perturbation, evolution: folder of the data set")
    args = parser.parse_args(argv)
    if args.samples < 1 or (args.batches is not None and args.batches < 1):
        raise ValueError(f"--samples {args.samples} --batches {args.batches}: both must be at least 1")
    if args.proj_intv < 0 or (args.tune_batches is not None and args.tune_batches < 1):
        raise ValueError(f"--proj-intv {args.proj_intv} --tune-batches {args.tune_batches}: "
                         "--proj-intv must be at least 0, --tune-batches at least 1")
    if args.rule == "predictor":  # a bad constraint fails before the checkpoint loads
        constraints = parse_budgets(args.constraint)
    else:
        constraints = parse_constraints(args.constraint)
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
    out = Path(args.out) if args.out else run / f"arch_{args.rule}.json"
    if args.rule == "evolution":
        options.update(constraints=[str(c) for c in constraints], directory=str(out.with_suffix("")),
                       population=args.population or 50, generations=args.generations or 20, parents=args.parents,
                       mutants=args.mutants, crossovers=args.crossovers, mutation_prob=args.mutation_prob,
                       bn_mode=args.bn_mode or "reset", bn_batches=args.bn_batches or 200,
                       bn_batch_size=args.bn_batch_size or 128, val_images=args.val_images or 8000,
                       val_batch_size=args.val_batch_size)
    if args.rule == "predictor":
        options.pop("num_batches")
        options.update(constraints=list(args.constraint), directory=str(out.with_suffix("")),
                       latency_table=args.latency_table, predictor_samples=args.predictor_samples,
                       predictor_epochs=args.predictor_epochs, population=args.population or 100,
                       generations=args.generations or 500, bn_mode=args.bn_mode or "recalibrate",
                       bn_batches=args.bn_batches or 10, bn_batch_size=args.bn_batch_size or 200,
                       val_images=args.val_images or 10_000, val_batch_size=args.val_batch_size)
    chosen = selection.select(args.rule, model, datamodule, **options)
    if data_source is not None:
        chosen.settings["data"] = data_source
    write_record(out, model, chosen.arch, args.rule, ckpt, chosen.scores, chosen.settings)
    print(f"architecture: {model.space.format(chosen.arch)}\nrule: {args.rule}\nwrote {out}")
