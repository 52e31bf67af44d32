"""The ``oneshot`` command: ``search`` and ``retrain`` (LightningCLI under our own dispatcher)
and ``info``.

``oneshot search`` with no arguments runs DARTS on NAS-Bench-201 over the embedded digits
dataset, offline, in minutes on a CPU. ``--config experiments/<setting>.yaml`` reproduces a
paper's search; dotted overrides (``--trainer.max_epochs 3``) and ``--print_config`` work as in
LightningCLI. ``--ckpt_path RUN/checkpoints/last.ckpt`` resumes an interrupted search.

``oneshot retrain --arch RUN/arch.json --config experiments/retrain_darts_cifar10.yaml`` trains
that architecture from scratch (``--genotype DARTS_V2`` for a published one) and writes
``result.json`` next to its best and last checkpoints.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch

COMMANDS = {
    "search": "train a supernet and export its architecture (LightningCLI; --help for options)",
    "retrain": "train one architecture from scratch (--arch FILE|STRING or --genotype NAME; "
               "LightningCLI)",
    "discretize": "write arch.json from a search run or checkpoint (--rule space|best_of_n)",
    "pipeline": "search, discretize and retrain in one run directory; resumes where it stopped "
                "(--retrain CONFIG, --run-dir DIR)",
    "rank": "rank correlation of supernet scores (or a score table) with ground truth; "
            "--train-ground-truth builds a table by stand-alone training",
    "info": "index, parameters and FLOPs of an architecture, or the table of a whole space",
}


class UserError(Exception):
    """A mistake in the input that the message explains; printed without a traceback."""


def _quiet_lightning() -> None:
    """Lightning's own noise: we pass argv on purpose; its pytree shim warns on every epoch."""
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


def _add_run_arguments(parser, defaults: dict, model_prefix: str) -> None:
    """What every training command shares: --ckpt_path, a forced ModelCheckpoint, and the
    data module's num_classes / in_channels linked into the model."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="resume from this checkpoint (RUN/checkpoints/last.ckpt)")
    parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
    parser.set_defaults({"checkpoint.save_last": True,
                         "data": {"class_path": "oneshot.data.DigitsDataModule"}, **defaults})
    parser.link_arguments("data.num_classes", f"{model_prefix}.num_classes", apply_on="instantiate")
    parser.link_arguments("data.in_channels", f"{model_prefix}.in_channels", apply_on="instantiate")


def _trainer_defaults(name: str) -> dict:
    return {"max_epochs": 15, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": name}}}


def _check_strategy(trainer, model) -> None:
    """Single-path algorithms leave unsampled candidates without gradients, which plain DDP
    rejects at the first backward; say so before anything runs."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if (getattr(model, "single_path", False) and isinstance(strategy, DDPStrategy)
            and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")):
        raise UserError(f"{type(model).__name__} trains one sampled path per step, so the other candidates "
                        "get no gradient and plain DDP stops at the first backward: use "
                        "--trainer.strategy ddp_find_unused_parameters_true")


def _search(argv: list[str]) -> None:
    _quiet_lightning()
    from lightning.pytorch.cli import LightningCLI

    from oneshot.algorithms import SearchAlgorithm
    from oneshot.algorithms.base import check_checkpoint_identity
    from oneshot.data import ImageDataModule

    class SearchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            _add_run_arguments(parser, {"model": {"class_path": "oneshot.algorithms.DartsSearch"}},
                               "model.init_args")

    cli = SearchCLI(
        SearchAlgorithm, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, args=argv, seed_everything_default=2,  # DARTS train_search.py --seed 2
        auto_configure_optimizers=False,  # both optimizers are the algorithm's own
        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "oneshot search"},
        trainer_defaults=_trainer_defaults("search"),
    )
    _check_strategy(cli.trainer, cli.model)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path:
        if not os.path.isfile(ckpt_path):
            raise UserError(f"--ckpt_path {ckpt_path}: no such file; pass RUN/checkpoints/last.ckpt of a search run")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        try:
            check_checkpoint_identity(checkpoint, cli.model.checkpoint_identity())
        except ValueError as error:
            raise UserError(f"--ckpt_path {ckpt_path}: {error}") from None
        del checkpoint
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    run_directory = cli.trainer.log_dir  # a collective under DDP: every rank asks
    if cli.trainer.is_global_zero and not cli.trainer.interrupted:
        arch = cli.model.export()
        path = cli.model.write_arch(arch, run_directory)
        print(f"architecture: {cli.model.space.format(arch)}\nrun directory: {run_directory}\n"
              f"wrote {path}")


def _arch_shorthand(argv: list[str]) -> list[str]:
    """``--arch X`` / ``--genotype NAME`` -> ``--model.arch X``, moved to the end of the command line
    so that it wins over ``--config`` (later arguments override earlier ones in LightningCLI)."""
    rest, chosen = [], {}
    i = 0
    while i < len(argv):
        flag, _, inline = argv[i].partition("=")
        if flag in ("--arch", "--genotype"):
            if inline:
                value = inline
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                raise UserError(f"{flag} needs a value")
            chosen[flag] = value
        else:
            rest.append(argv[i])
        i += 1
    if len(chosen) > 1:
        raise UserError("pass either --arch or --genotype, not both")
    return rest + [item for value in chosen.values() for item in ("--model.arch", value)]


def _retrain(argv: list[str]) -> None:
    _quiet_lightning()
    from lightning.pytorch.cli import LightningCLI

    from oneshot.data import ImageDataModule
    from oneshot.retrain import RetrainModule, write_result

    class RetrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # last.ckpt, and best.ckpt by final-protocol test accuracy (the val loader is the test set)
            _add_run_arguments(parser, {"checkpoint.monitor": "test_acc", "checkpoint.mode": "max",
                                        "checkpoint.save_top_k": 1, "checkpoint.filename": "best"},
                               "model")

        def before_instantiate_classes(self) -> None:
            # retraining uses the whole train set and validates on the test set: never bilevel
            self.config.data.init_args.bilevel = False

    cli = RetrainCLI(
        RetrainModule, ImageDataModule, subclass_mode_model=False, subclass_mode_data=True,
        run=False, args=_arch_shorthand(argv), seed_everything_default=0,  # DARTS train.py --seed 0
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "oneshot retrain",
                       "description": COMMANDS["retrain"] + ". --arch X and --genotype NAME are "
                       "shorthands for --model.arch X and override the config."},
        trainer_defaults=_trainer_defaults("retrain"),
    )
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path and not os.path.isfile(ckpt_path):
        raise UserError(f"--ckpt_path {ckpt_path}: no such file; pass RUN/checkpoints/last.ckpt of a retrain run")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    run_directory = cli.trainer.log_dir  # a collective under DDP: every rank asks
    if cli.trainer.is_global_zero and not cli.trainer.interrupted and run_directory is not None:
        record = cli.model.result(seed=cli.config.get("seed_everything"))
        path = write_result(record, run_directory)
        print(f"architecture: {record['arch']}\ntest accuracy: {record['test_acc']:.2f}% "
              f"(best {record['best_test_acc']:.2f}%), params {record['params']:,}\n"
              f"run directory: {run_directory}\nwrote {path}")


def _discretize(argv: list[str]) -> None:
    from oneshot.discretize import main as discretize_main

    discretize_main(argv)


def _pipeline(argv: list[str]) -> None:
    from oneshot.pipeline import main as pipeline_main

    pipeline_main(argv)


def _rank(argv: list[str]) -> None:
    from oneshot.rank.command import main as rank_main

    rank_main(argv)


def _info(argv: list[str]) -> None:
    import argparse

    import supernets
    from oneshot.info import describe, write_space_table

    parser = argparse.ArgumentParser(prog="oneshot info", description=COMMANDS["info"])
    parser.add_argument("--space", required=True, help=f"one of {', '.join(supernets.names())}")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", help="canonical string, JSON, or an arch.json file")
    what.add_argument("--genotype", help="a published architecture of the space, e.g. DARTS_V2")
    what.add_argument("--index", type=int, help="NAS-Bench-201 benchmark index")
    what.add_argument("--all", action="store_true", help="every architecture (enumerable spaces only)")
    parser.add_argument("--out", help="CSV file for --all (default: stdout)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--C", type=int, default=None, help="initial channels (DARTS evaluation: 36)")
    parser.add_argument("--layers", type=int, default=None, help="cells (DARTS evaluation: 20)")
    args = parser.parse_args(argv)
    try:
        space = supernets.get(args.space)
    except KeyError as error:
        raise UserError(error.args[0]) from None
    options = {k: v for k, v in (("C", args.C), ("layers", args.layers)) if v is not None}
    if args.all:
        write_space_table(space, args.out, num_classes=args.num_classes, **options)
        return
    print(describe(space, arch=args.arch, genotype=args.genotype, index=args.index,
                   num_classes=args.num_classes, **options))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
        print("usage: oneshot {" + ",".join(COMMANDS) + "} [options]\n\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\noneshot: error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    command, rest = argv[0], argv[1:]
    try:
        {"search": _search, "retrain": _retrain, "discretize": _discretize,
         "pipeline": _pipeline, "rank": _rank, "info": _info}[command](rest)
    except (UserError, FileNotFoundError, KeyError, IndexError, ValueError, ImportError) as error:
        if os.environ.get("ONESHOT_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"oneshot {command}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
