"""What the commands share: the user-error type, quiet Lightning, the arguments every training
command takes, trainer defaults, and how a stage is pointed at its folder and its checkpoint."""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Optional

import yaml


class UserError(ValueError):
    """A mistake in the input that the message explains; printed without a traceback."""


class LightningBanners(logging.Filter):
    """Drops Lightning's start-up lines that a oneshot command's summary makes redundant."""

    NOISE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "Seed set to", "LOCAL_RANK:",
             "`Trainer(limit_val_batches=1.0)`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_lightning() -> None:
    """Lightning's own noise: we pass argv on purpose; its pytree shim warns on every epoch; its
    advertisement (the litlogger tip), accelerator banner and seed line repeat what the command's
    own summary says; a mid-epoch resume is exact here (oneshot.faults), not 'unreliable'."""
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningBanners) for f in logger.filters):
            logger.addFilter(LightningBanners())


def add_run_arguments(parser: Any, defaults: dict, model_prefix: str) -> None:
    """What every training command shares: --ckpt_path, a forced ModelCheckpoint, and the
    data module's num_classes / in_channels linked into the model."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from oneshot.faults import MemoryCheck, NonFiniteGuard, Preemption

    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="resume from this checkpoint (RUN/checkpoints/last.ckpt)")
    parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
    parser.add_lightning_class_args(Preemption, "preemption")
    parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
    parser.add_lightning_class_args(MemoryCheck, "memory_check")
    parser.set_defaults({"checkpoint.save_last": True,
                         "data": {"class_path": "oneshot.data.DigitsDataModule"}, **defaults})
    parser.link_arguments("data.num_classes", f"{model_prefix}.num_classes", apply_on="instantiate")
    parser.link_arguments("data.in_channels", f"{model_prefix}.in_channels", apply_on="instantiate")


def trainer_defaults(name: str) -> dict:
    return {"max_epochs": 15, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": name}}}


def logger_arguments(run_dir: Path, stage: str) -> list[str]:
    """TensorBoardLogger arguments whose ``log_dir`` is ``run_dir/stage`` (save_dir/name/version)."""
    return ["--trainer.logger.init_args.save_dir", str(run_dir.parent),
            "--trainer.logger.init_args.name", run_dir.name,
            "--trainer.logger.init_args.version", stage]


def resume_arguments(stage_dir: Path) -> list[str]:
    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    return ["--ckpt_path", str(ckpt)] if ckpt.is_file() else []


def override(args: list[str], flag: str) -> Optional[str]:
    """The last value given to ``flag`` (``--flag V`` or ``--flag=V``) on a command line, or None."""
    value = None
    for i, item in enumerate(args):
        if item == flag and i + 1 < len(args):
            value = args[i + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value


def config_value(configs: list[str], keys: tuple[str, ...]) -> Any:
    """``configs``' value at the nested ``keys`` (the last config that sets it wins), or None."""
    value = None
    for path in configs:
        node: Any = yaml.safe_load(Path(path).read_text()) or {}
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


def check_retrain_fits(space: str, retrain_config: str, retrain_args: list[str], origin: str) -> None:
    """Refuse, before any training, a retrain config for another space than the architecture's.

    Raises:
        UserError: the retrain ``model.space`` differs from ``space``, or its
            ``model.network_options`` are not options of ``space``'s network.
    """
    import supernets

    wanted = override(retrain_args, "--model.space") or config_value([retrain_config], ("model", "space"))
    if wanted is not None and str(wanted) != space:
        raise UserError(
            f"the architecture is of space {space!r} ({origin}), but the retrain config "
            f"{retrain_config} sets model.space {wanted!r}; pass a retrain config for {space!r} "
            f"(e.g. experiments/retrain_{space}_*.yaml)")
    options = config_value([retrain_config], ("model", "network_options")) or {}
    given = override(retrain_args, "--model.network_options")
    if given is not None:
        options = yaml.safe_load(given) or {}
    if not isinstance(options, dict):
        raise UserError(f"model.network_options {options!r} is not a mapping")
    accepted = [p for p in inspect.signature(supernets.get(space).build_network).parameters
                if p not in ("self", "arch", "num_classes", "in_channels", "drop_path_prob")]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise UserError(
            f"the retrain config {retrain_config} sets model.network_options {unknown}, which "
            f"{space!r} networks ({origin}) do not take; accepted: {', '.join(accepted)}")
