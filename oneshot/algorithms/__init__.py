"""Search algorithms as LightningModules on one base, in two families, and the registry.

Importing a subclass here is what lets LightningCLI accept ``--model GdasSearch``.
:func:`load_algorithm` rebuilds the algorithm of any checkpoint that ``oneshot search`` wrote.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from oneshot.algorithms.base import SupernetTraining
from oneshot.algorithms.darts import DartsSearch
from oneshot.algorithms.darts_minus import DartsMinusSearch
from oneshot.algorithms.differentiable import DifferentiableSearch
from oneshot.algorithms.drnas import DrnasSearch
from oneshot.algorithms.enas import EnasSearch
from oneshot.algorithms.fairdarts import FairDartsSearch
from oneshot.algorithms.gdas import GdasSearch
from oneshot.algorithms.ofa import OfaSearch
from oneshot.algorithms.pcdarts import PCDartsSearch
from oneshot.algorithms.pdarts import PDartsSearch
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.algorithms.sdarts import SDartsSearch
from oneshot.algorithms.single_path import SinglePathSearch
from oneshot.algorithms.snas import SnasSearch
from oneshot.algorithms.spos import SposSearch
from oneshot.checkpoints import capture_random_state, read_checkpoint, restore_random_state

ALGORITHMS = {"darts": DartsSearch, "pcdarts": PCDartsSearch, "gdas": GdasSearch,
              "sdarts": SDartsSearch, "darts_minus": DartsMinusSearch, "fairdarts": FairDartsSearch,
              "drnas": DrnasSearch, "snas": SnasSearch, "pdarts": PDartsSearch,
              "rsps": RandomSinglePathSearch, "spos": SposSearch,
              "enas": EnasSearch, "ofa": OfaSearch}


def accepted_arguments(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def upgraded_hyperparameters(cls: type, hparams: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Hyperparameters of an older checkpoint as ``cls`` takes them now, and what was dropped.

    Single-path algorithms once carried unused architecture settings (alphas frozen at zero)
    and ``selection: rule`` meaning best-of-N; those are dropped or renamed here.
    """
    accepted = accepted_arguments(cls)
    upgraded = {k: v for k, v in hparams.items() if k in accepted}
    dropped = sorted(k for k in hparams if k not in accepted)
    if issubclass(cls, SinglePathSearch) and upgraded.get("selection") == "rule":
        upgraded["selection"] = "best_of_n"
    return upgraded, dropped


def load_algorithm(ckpt: str | Path) -> SupernetTraining:
    """The search algorithm of a checkpoint written by ``oneshot search``, on the CPU.

    The class comes from the checkpoint's identity (``checkpoint["oneshot"]["algorithm"]``); the
    process-wide random states, which loading restores to the run's, are kept as they were.
    Checkpoints of older versions load where their meaning is unchanged (see
    :func:`upgraded_hyperparameters`).

    Raises:
        ValueError: the file is not a checkpoint, not one of ``oneshot search``, or of an
            algorithm this version does not have.
    """
    checkpoint = read_checkpoint(ckpt)
    classes = {cls.__name__: cls for cls in ALGORITHMS.values()}
    name = checkpoint["oneshot"]["algorithm"]
    if name not in classes:
        raise ValueError(f"{ckpt}: algorithm {name!r} is unknown; accepted: {', '.join(classes)}")
    cls = classes[name]
    hparams, _ = upgraded_hyperparameters(cls, dict(checkpoint.get("hyper_parameters") or {}))
    states = capture_random_state()
    try:
        model = cls(**hparams)
        model.on_load_checkpoint(checkpoint)  # as Lightning: before the weights; it may upgrade them
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            raise ValueError(f"{ckpt}: its weights do not fit a {name} of this version ({error}); "
                             "rerun the search with this version, or load it with the version "
                             "that wrote it") from None
    finally:  # on_load_checkpoint resumes the run's random streams; a loader should not
        restore_random_state(states)
    model.checkpoint_epoch = checkpoint.get("epoch")  # which point of the search these weights are
    model.checkpoint_optimizer_states = checkpoint.get("optimizer_states")  # DARTS-PT continues the Adam
    return model


__all__ = ["SupernetTraining", "DifferentiableSearch", "SinglePathSearch", "DartsSearch",
           "PCDartsSearch", "GdasSearch", "SDartsSearch", "DartsMinusSearch", "FairDartsSearch",
           "DrnasSearch", "SnasSearch", "PDartsSearch", "RandomSinglePathSearch", "OfaSearch", "ALGORITHMS", "load_algorithm"]
