"""``oneshot retrain``: train one architecture from scratch (LightningCLI).

``oneshot retrain --arch RUN/arch.json --config experiments/retrain_darts_cifar10.yaml`` trains
that architecture (``--genotype DARTS_V2`` for a published one) and writes ``result.json`` next
to its best and last checkpoints.
"""
from __future__ import annotations

from oneshot.checkpoints import read_checkpoint
from oneshot.commands.common import UserError, add_run_arguments, quiet_lightning, trainer_defaults
from oneshot.commands.parsing import lightning_cli_class

HELP = "train one architecture from scratch (--arch FILE|STRING or --genotype NAME; LightningCLI)"


def arch_shorthand(argv: list[str]) -> list[str]:
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


def main(argv: list[str]) -> None:
    quiet_lightning()
    from oneshot.data import ImageDataModule
    from oneshot.retrain import RetrainModule, write_result

    class RetrainCLI(lightning_cli_class()):
        def add_arguments_to_parser(self, parser) -> None:
            # last.ckpt, and best.ckpt by final-protocol test accuracy (the val loader is the test set)
            add_run_arguments(parser, {"checkpoint.monitor": "test_acc", "checkpoint.mode": "max",
                                       "checkpoint.save_top_k": 1, "checkpoint.filename": "best"},
                              "model")

        def before_instantiate_classes(self) -> None:
            # retraining uses the whole train set and validates on the test set: never bilevel
            self.config.data.init_args.bilevel = False

    cli = RetrainCLI(
        RetrainModule, ImageDataModule, subclass_mode_model=False, subclass_mode_data=True,
        run=False, args=arch_shorthand(argv), seed_everything_default=0,  # DARTS train.py --seed 0
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "oneshot retrain",
                       "description": HELP + ". --arch X and --genotype NAME are shorthands for "
                       "--model.arch X and override the config."},
        trainer_defaults=trainer_defaults("retrain"),
    )
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path:
        try:
            read_checkpoint(ckpt_path, cli.model.checkpoint_identity(), require_identity=False)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"--ckpt_path {error}") from None
    if cli.trainer.max_epochs == 0:  # evaluate only (an inherited OFA subnet without fine-tuning)
        cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    else:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    run_directory = cli.trainer.log_dir  # a collective under DDP: every rank asks
    if cli.trainer.is_global_zero and not cli.trainer.interrupted and run_directory is not None:
        record = cli.model.result(seed=cli.config.get("seed_everything"))
        path = write_result(record, run_directory)
        print(f"architecture: {record['arch']}\ntest accuracy: {record['test_acc']:.2f}% "
              f"(best {record['best_test_acc']:.2f}%), params {record['params']:,}\n"
              f"run directory: {run_directory}\nwrote {path}")
