"""Selection strategies: how one architecture is chosen from a trained supernet, by name.

One registry serves the search's ``selection`` option and ``oneshot discretize --rule``:

* ``rule``: the algorithm's own export, i.e. the space's discretization rule on its architecture
  distribution (DARTS top-2 per node, NB201 argmax per edge, PC-DARTS on the edge-normalized
  weights), the architecture R-DARTS's early stop rolled back to, or a selection the search
  already made (RSPS's best-of-N);
* ``best_of_n``: score uniform samples with inherited weights and keep the best
  (:mod:`oneshot.selection.best_of_n`, NAS-Bench-201's ``search_find_best``);
* ``perturbation``: DARTS-PT (:mod:`oneshot.selection.perturbation`);
* ``evolution``: SPOS's evolutionary search under cost constraints, every candidate scored with
  inherited weights after its BatchNorm statistics are rebuilt (:mod:`oneshot.selection.evolution`,
  :mod:`oneshot.selection.evolve`).

* ``controller``: ENAS's derivation: the best of ``num_samples`` controller samples, each scored
  on ``num_batches`` validation batches (:mod:`oneshot.controller`).

* ``predictor``: Once-for-All's search for a deployment budget on the ofa-mbv3 space: measure
  ``predictor_samples`` subnets (BN recalibrated), fit an MLP accuracy predictor, run OFA's
  evolution on the predicted accuracy with every candidate within ``constraints`` (``flops``,
  ``params``, or ``latency`` in ms from a ``latency_table``, :mod:`oneshot.latency`), and measure
  the winner (:mod:`oneshot.selection.predictor`).

A strategy receives the supernet through the small protocol of :mod:`oneshot.selection.protocol`
and validation data, and returns a :class:`Selection`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from oneshot.selection.best_of_n import best_of_n as score_best_of_n
from oneshot.selection.evolution import EvolutionSettings, parse_constraints
from oneshot.selection.evolve import run_evolution
from oneshot.selection.perturbation import perturbation_select
from oneshot.selection.predictor import FinderSettings, MeasureSettings, PredictorTraining, run_predictor_search
from supernets import Arch


@dataclass
class Selection:
    """The chosen architecture, the scores it was chosen by, and the strategy's settings."""

    arch: Arch
    scores: Any
    settings: dict[str, Any] = field(default_factory=dict)


Strategy = Callable[..., Selection]
STRATEGIES: dict[str, Strategy] = {}
AFTER_SEARCH_ONLY = ("perturbation",)  # they tune the supernet: `oneshot discretize`, not the search


def register(name: str) -> Callable[[Strategy], Strategy]:
    def add(strategy: Strategy) -> Strategy:
        if name in STRATEGIES:
            raise ValueError(f"selection strategy {name!r} is registered twice")
        STRATEGIES[name] = strategy
        return strategy
    return add


def names() -> list[str]:
    return list(STRATEGIES)


def check_name(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"selection {name!r} is unknown; accepted: {', '.join(STRATEGIES)}")
    return name


def select(name: str, model: Any, datamodule: Any = None, **options: Any) -> Selection:
    """Run the strategy ``name`` on ``model``; data-driven strategies need ``datamodule``."""
    strategy = STRATEGIES[check_name(name)]
    if name != "rule":
        if datamodule is None:
            raise ValueError(f"selection {name} scores on validation data: give a data module")
        hp = model.hparams
        if (datamodule.num_classes, datamodule.in_channels) != (hp.num_classes, hp.in_channels):
            raise ValueError(f"the data ({datamodule.num_classes} classes, {datamodule.in_channels} "
                             f"channels) do not match the supernet ({hp.num_classes} classes, "
                             f"{hp.in_channels} channels): pass the search's --data")
    return strategy(model, datamodule, **options)


def arch_weights_record(model: Any) -> dict[str, list[float]]:
    """The architecture distribution per label, rounded for JSON (empty without one)."""
    if not hasattr(model, "arch_weights"):
        return {}
    return {k: [round(float(p), 6) for p in w.detach().cpu()] for k, w in model.arch_weights().items()}


@register("rule")
def rule_strategy(model: Any, datamodule: Any = None, **_: Any) -> Selection:
    """The search's own export; the scores are the per-label weights it read."""
    try:
        arch = model.export()
    except RuntimeError as error:  # RSPS before its selection: nothing to export
        raise ValueError(f"{error}; use --rule best_of_n") from None
    return Selection(arch, arch_weights_record(model))


@register("best_of_n")
def best_of_n_strategy(model: Any, datamodule: Any, num_samples: int = 100, num_batches: int | None = None,
                       seed: int = 0, shared_batches: bool = True, **_: Any) -> Selection:
    """Best of ``num_samples`` uniform archs on ``num_batches`` (default 1) validation batches."""
    num_batches = 1 if num_batches is None else num_batches
    arch, scores = score_best_of_n(model, datamodule.val_dataloader(), num_samples, num_batches,
                             rng=random.Random(seed), shared_batches=shared_batches)
    settings = {"num_samples": len(scores), "num_batches": num_batches, "seed": seed}
    if not shared_batches:
        settings["shared_batches"] = False
    return Selection(arch, [[text, float(acc), float(loss)] for text, acc, loss in scores], settings)


@register("perturbation")
def perturbation_strategy(model: Any, datamodule: Any, num_batches: int | None = None, seed: int = 0,
                 fresh_arch_optimizer: bool = False, arch_optimizer_state: Any = None,
                 proj_interval: int = 0, criterion: str = "acc", tune_batches: int | None = None,
                 none_candidate: bool = False, progress: Callable[[str], None] | None = None,
                 **_: Any) -> Selection:
    """DARTS-PT; ``arch_optimizer_state`` continues the search's Adam unless ``fresh_arch_optimizer``."""
    if not hasattr(model, "alphas"):
        raise ValueError(f"selection perturbation needs architecture weights; {type(model).__name__} "
                         "has none: use best_of_n")
    state = None if fresh_arch_optimizer else arch_optimizer_state
    options = {"proj_interval": proj_interval, "criterion": criterion, "tune_batches": tune_batches,
               "none_candidate": none_candidate}
    torch.manual_seed(seed)  # the tuning's data order
    arch, scores = perturbation_select(
        model, datamodule.val_dataloader(),
        train_loader=datamodule.train_dataloader() if proj_interval else None,
        rng=random.Random(seed), num_batches=num_batches, arch_optimizer_state=state,
        progress=progress, **options)
    return Selection(arch, scores, {"num_batches": num_batches, "seed": seed, **options,
                                    "arch_optimizer": "fresh" if state is None else "the search's"})


@register("evolution")
def evolution_strategy(model: Any, datamodule: Any, constraints: Sequence[str] = (), seed: int = 0,
                       bn_mode: str = "reset", bn_batches: int = 200, bn_batch_size: int = 128,
                       val_images: int = 8000, val_batch_size: int = 200, directory: str | None = None,
                       progress: bool = True, population: int = 50, generations: int = 20, parents: int = 10,
                       mutants: int = 25, crossovers: int = 25, mutation_prob: float = 0.1, **_: Any) -> Selection:
    """SPOS evolution (search.py defaults); ``directory`` keeps its state (resumable per generation),
    TensorBoard scalars and ``evolution.png``. The scores are the whole history, best first."""
    settings = EvolutionSettings(population, generations, parents, mutants, crossovers, mutation_prob)
    evolution, protocol = run_evolution(
        model, datamodule, parse_constraints(constraints), settings, seed, bn_mode, bn_batches, bn_batch_size,
        val_images, val_batch_size, directory, progress)
    return Selection(evolution.best(), evolution.history, protocol)


@register("controller")
def controller_strategy(model: Any, datamodule: Any, num_samples: int = 100, num_batches: int | None = None,
                        seed: int = 0, shared_batches: bool = True, **_: Any) -> Selection:
    """ENAS's derivation: ``num_samples`` architectures from the trained controller (carpedm20
    ``derive_num_sample`` 100), each scored on the same ``num_batches`` (1) validation batches; the
    best is kept."""
    if not hasattr(model, "controller"):
        raise ValueError(f"selection controller samples from an ENAS controller; {type(model).__name__} has "
                         "none: use best_of_n or evolution")
    generator = torch.Generator().manual_seed(seed % 2**63)
    with torch.no_grad():
        candidates = [model.codec.arch(model.controller(generator).tokens) for _ in range(num_samples)]
    num_batches = 1 if num_batches is None else num_batches
    arch, scores = score_best_of_n(model, datamodule.val_dataloader(), num_batches=num_batches,
                                   candidates=candidates, shared_batches=shared_batches)
    return Selection(arch, [[text, float(acc), float(loss)] for text, acc, loss in scores],
                     {"num_samples": num_samples, "num_batches": num_batches, "seed": seed})


@register("predictor")
def predictor_strategy(model: Any, datamodule: Any, constraints: Sequence[str] = (), latency_table: str | None = None,
                       seed: int = 0, predictor_samples: int = 1000, predictor_resolutions: Sequence[int] | None = None,
                       predictor_epochs: int = 100, predictor_batch_size: int = 256, population: int = 100,
                       generations: int = 500, parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
                       mutate_prob: float = 0.1, resolution_mutate_prob: float = 0.5, sample_tries: int = 10_000,
                       bn_mode: str = "recalibrate", bn_batches: int = 10, bn_batch_size: int = 200,
                       val_images: int = 10_000, val_batch_size: int = 200, directory: str | None = None,
                       progress: bool = True, **_: Any) -> Selection:
    """OFA's predictor-guided search (defaults: ofa/nas and the author's guidance): each of
    ``predictor_samples`` distinct subnets measured at ``predictor_resolutions`` (default 4 evenly
    spaced enabled ones: 128, 160, 192, 224 of 128..224); the scores are that measured dataset."""
    arch, dataset, settings = run_predictor_search(
        model, datamodule, constraints, latency_table, seed, predictor_samples, predictor_resolutions,
        PredictorTraining(epochs=predictor_epochs, batch_size=predictor_batch_size, seed=seed),
        FinderSettings(population, generations, parent_ratio, mutation_ratio, mutate_prob, resolution_mutate_prob,
                       sample_tries),
        MeasureSettings(bn_mode, bn_batches, bn_batch_size, val_images, val_batch_size), directory, progress)
    return Selection(arch, dataset, settings)
