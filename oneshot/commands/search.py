"""``oneshot search``: train a supernet and export its architecture (LightningCLI).

With no arguments it runs DARTS on NAS-Bench-201 over the embedded digits dataset, offline, in
minutes on a CPU. ``--config experiments/<setting>.yaml`` reproduces a paper's search; dotted
overrides (``--trainer.max_epochs 3``) and ``--print_config`` work as in LightningCLI.
``--ckpt_path RUN/checkpoints/last.ckpt`` resumes an interrupted search.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from oneshot.checkpoints import read_checkpoint
from oneshot.commands.common import UserError, add_run_arguments, config_value, quiet_lightning, trainer_defaults
from oneshot.commands.parsing import lightning_cli_class

HELP = "train a supernet and export its architecture (LightningCLI; --help for options)"


def select_ddp_setting(trainer: Any, model: Any) -> None:
    """Single-path algorithms leave unsampled candidates without gradients, which plain DDP
    rejects at the first backward: their DDP looks for unused parameters, chosen here rather
    than asked of the user."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if getattr(model, "single_path", False) and isinstance(strategy, DDPStrategy):
        strategy._ddp_kwargs["find_unused_parameters"] = True


DEFAULT_MODEL = "oneshot.algorithms.DartsSearch"


def with_default_model(argv: list[str]) -> list[str]:
    """``argv`` with ``--model DartsSearch`` in front when neither it nor a config names a model.

    A default class in the parser's defaults would lend its argument defaults to any other
    ``--model`` (jsonargparse issue #460: ``--model SposSearch`` would train with DARTS's lr), so
    the default is given as an argument, and only where no other model is chosen.
    """
    configs = [a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
               for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    named = any(a == "--model" or a.startswith(("--model=", "--model.class_path")) for a in argv)
    in_config = any(os.path.isfile(c) and config_value([c], ("model", "class_path")) for c in configs)
    return argv if named or in_config else ["--model", DEFAULT_MODEL, *argv]


def main(argv: list[str]) -> None:
    """Run the search; an interrupted run exits with status 130 after its checkpoint is written."""
    quiet_lightning()
    from oneshot.algorithms import SupernetTraining
    from oneshot.data import ImageDataModule

    class SearchCLI(lightning_cli_class()):
        def add_arguments_to_parser(self, parser) -> None:
            add_run_arguments(parser, {}, "model.init_args")

    cli = SearchCLI(
        SupernetTraining, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, args=with_default_model(argv), seed_everything_default=2,  # DARTS train_search.py --seed 2
        auto_configure_optimizers=False,  # the optimizers are the algorithm's own
        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "oneshot search"},
        trainer_defaults=trainer_defaults("search"),
    )
    select_ddp_setting(cli.trainer, cli.model)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path:
        try:
            read_checkpoint(ckpt_path, cli.model.checkpoint_identity())
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"--ckpt_path {error}") from None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    run_directory = cli.trainer.log_dir  # a collective under DDP: every rank asks
    if cli.trainer.interrupted:  # the run stopped early: say so to a scheduler or `oneshot shrink`
        print(f"search interrupted; resume with --ckpt_path {run_directory}/checkpoints/last.ckpt", file=sys.stderr)
        sys.exit(130)
    if cli.trainer.is_global_zero:
        try:
            arch = cli.model.export()
        except RuntimeError as reason:  # a phase of a staged run that selects nothing (OFA before its last)
            print(f"{reason}\nrun directory: {run_directory}")
            return
        path = cli.model.write_arch(arch, run_directory)
        print(f"architecture: {cli.model.space.format(arch)}\nrun directory: {run_directory}\n"
              f"wrote {path}")
