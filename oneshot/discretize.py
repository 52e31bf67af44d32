"""``oneshot discretize``: turn a trained supernet checkpoint into one architecture.

Architecture selection is a separate step from the search (Wang et al., "Rethinking
Architecture Selection in Differentiable NAS", ICLR 2021, argue that the rule matters as much as
the search), so a finished ``oneshot search`` run can be discretized again with another rule
without retraining:

* ``space``: the algorithm's own ``export()``: the space's rule on its architecture
  distribution (DARTS top-2 per node, NAS-Bench-201 argmax per edge, PC-DARTS on the
  edge-normalized weights), or the stored best-of-N selection of RSPS;
* ``best_of_n``: NAS-Bench-201's selection for weight-sharing baselines (Dong & Yang, ICLR 2020,
  D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` ``search_find_best``):
  score ``--samples`` uniform architectures with the inherited weights on ``--batches``
  validation batches and keep the most accurate (:func:`oneshot.selection.best_of_n`).

* ``perturbation``: DARTS-PT (Wang et al., ICLR 2021, ruocwang/darts-pt): per edge in random
  order, keep the op whose removal from the dense weights hurts validation accuracy most, then
  fix it; in the DARTS space also the two inputs per node by removal
  (:func:`oneshot.perturbation.perturbation_select`; ``--proj-intv`` epochs of bilevel tuning
  between rounds, 5 as published; ``--criterion acc|loss``).

The result is written as JSON with the keys of the search's ``arch.json`` (``space``, ``arch``,
``choices``), so ``SearchSpace.load`` and ``oneshot info --arch`` read it.
"""
from __future__ import annotations

import argparse
import importlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from oneshot.files import atomic_write_json
from supernets import Arch

RULES = ("space", "best_of_n", "perturbation")


def resolve_checkpoint(run_or_ckpt: str) -> Path:
    """The checkpoint of a run directory (``RUN/checkpoints/last.ckpt``) or the file itself."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no such file; {path} is not a run directory of "
                                    "`oneshot search` (expected RUN/checkpoints/last.ckpt)")
        return ckpt
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory; pass a run directory of "
                                "`oneshot search` or its RUN/checkpoints/last.ckpt")
    return path


def run_directory(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to: the parent of ``checkpoints/``, else its folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_algorithm(ckpt: Path):
    """The search algorithm of a checkpoint written by ``oneshot search``, on the CPU.

    The class comes from the checkpoint's identity (``checkpoint["oneshot"]["algorithm"]``); the
    process-wide random states, which loading restores to the run's, are kept as they were.

    Raises:
        ValueError: the file is not a checkpoint, or not one of ``oneshot search``.
    """
    from oneshot.algorithms import ALGORITHMS

    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors alike: it is not a checkpoint
        raise ValueError(f"{ckpt}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    identity = checkpoint.get("oneshot") if isinstance(checkpoint, dict) else None
    if not isinstance(identity, dict) or "algorithm" not in identity:
        raise ValueError(f"{ckpt}: not written by `oneshot search` (no 'oneshot' entry); pass a "
                         "RUN/checkpoints/last.ckpt from a search run")
    classes = {cls.__name__: cls for cls in ALGORITHMS.values()}
    name = identity["algorithm"]
    if name not in classes:
        raise ValueError(f"{ckpt}: algorithm {name!r} is unknown; accepted: {', '.join(classes)}")
    epoch = checkpoint.get("epoch")
    optimizer_states = checkpoint.get("optimizer_states")
    del checkpoint
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        model = classes[name].load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False)
    finally:  # on_load_checkpoint resumes the run's random streams; this command should not
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    model.checkpoint_epoch = epoch  # which point of the search these weights are (rank per epoch)
    model.checkpoint_optimizer_states = optimizer_states  # [weight SGD, architecture Adam]: DARTS-PT tuning
    return model


def build_datamodule(run: Path, data: str | None, data_root: str | None):
    """The validation data to score on: ``--data NAME``, else the run's ``config.yaml``, else digits.

    Returns:
        The data module, set up for fitting, and a short description of where it came from.
    """
    from oneshot.data import DATAMODULES

    config = run / "config.yaml"
    if data is None and config.is_file():
        with open(config) as f:
            section = (yaml.safe_load(f) or {}).get("data") or {}
        class_path = section.get("class_path")
        if not class_path:
            raise ValueError(f"{config}: no data.class_path; pass --data {{{','.join(DATAMODULES)}}}")
        module_name, _, class_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        init_args = dict(section.get("init_args") or {})
        if data_root is not None:
            init_args["root"] = data_root
        source = f"{class_path} from {config}"
    else:
        name = data or "digits"
        if name not in DATAMODULES:
            raise ValueError(f"--data {name!r}: unknown data set; accepted: {', '.join(DATAMODULES)}")
        cls = DATAMODULES[name]
        init_args = {} if data_root is None else {"root": data_root}
        source = name
    datamodule = cls(**init_args)
    datamodule.setup("fit")
    return datamodule, source


def discretize(model, rule: str = "space", datamodule=None, num_samples: int = 100,
               num_batches: int | None = None, seed: int = 0, shared_batches: bool = True,
               fresh_arch_optimizer: bool = False, **perturbation: Any) -> tuple[Arch, Any, dict[str, Any]]:
    """The architecture ``rule`` chooses, the scores it chose by, and the rule's settings.

    Args:
        model: a loaded search algorithm.
        rule: ``space`` (the algorithm's ``export()``), ``best_of_n`` or ``perturbation``.
        datamodule: validation data for ``best_of_n`` and ``perturbation`` (``val_dataloader()``;
            ``train_dataloader()`` for the tuning of ``perturbation``).
        num_samples: uniform architectures scored by ``best_of_n`` (NB201 ``--select_num 100``).
        num_batches: validation batches each is scored on; None: ``best_of_n`` one
            (``search_find_best``), ``perturbation`` all (DARTS-PT's ``infer`` over the queue).
        seed: seed of the uniform samples (``perturbation``: of the edge order and the tuning).
        shared_batches: ``best_of_n``: every candidate on the same batches (default); False: the
            next batches per candidate, NB201's ``search_find_best`` protocol.
        fresh_arch_optimizer: ``perturbation``: tune the alphas with a new Adam instead of the
            search's (the checkpoint's state, which the reference keeps using).
        perturbation: ``proj_interval``, ``criterion``, ``tune_batches``, ``none_candidate``
            of :func:`oneshot.perturbation.perturbation_select`.

    Returns:
        The arch; the scores: for ``space`` the per-edge weights ``arch_weights()`` it was read
        from, for ``best_of_n`` the (arch string, accuracy, loss) of every candidate in scoring
        order, for ``perturbation`` the accuracy and loss with each op (and input) removed per edge
        (:func:`oneshot.perturbation.perturbation_select`); the settings (empty for ``space``).
    """
    from oneshot.selection import best_of_n

    if rule == "space":
        try:
            arch = model.export()
        except RuntimeError as error:  # RSPS before its selection: nothing to export
            raise ValueError(f"{error}; use --rule best_of_n") from None
        weights = {k: [round(float(p), 6) for p in w.detach().cpu()] for k, w in model.arch_weights().items()}
        return arch, weights, {}
    if rule in ("best_of_n", "perturbation"):
        if datamodule is None:
            raise ValueError(f"--rule {rule} scores on validation data: give a data module")
        if (datamodule.num_classes, datamodule.in_channels) != (model.hparams.num_classes,
                                                                model.hparams.in_channels):
            raise ValueError(f"the data ({datamodule.num_classes} classes, {datamodule.in_channels} "
                             f"channels) do not match the supernet ({model.hparams.num_classes} classes, "
                             f"{model.hparams.in_channels} channels): pass the search's --data")
    if rule == "perturbation":
        from oneshot.perturbation import perturbation_select

        if not model.differentiable:
            raise ValueError(f"--rule perturbation needs architecture weights; {type(model).__name__} "
                             "has none: use --rule best_of_n")
        options = {"proj_interval": 0, "criterion": "acc", "tune_batches": None, "none_candidate": False,
                   **perturbation}
        states = getattr(model, "checkpoint_optimizer_states", None) or []
        arch_state = None if fresh_arch_optimizer or len(states) < 2 else states[1]
        torch.manual_seed(seed)  # the tuning's data order
        arch, scores = perturbation_select(
            model, datamodule.val_dataloader(),
            train_loader=datamodule.train_dataloader() if options["proj_interval"] else None,
            rng=random.Random(seed), num_batches=num_batches, arch_optimizer_state=arch_state,
            progress=lambda line: print(line, flush=True), **options)
        return arch, scores, {"num_batches": num_batches, "seed": seed, **options,
                              "arch_optimizer": "fresh" if arch_state is None else "the search's"}
    if rule == "best_of_n":
        num_batches = 1 if num_batches is None else num_batches
        arch, scores = best_of_n(model, datamodule.val_dataloader(), num_samples, num_batches,
                                 rng=random.Random(seed), shared_batches=shared_batches)
        settings = {"num_samples": len(scores), "num_batches": num_batches, "seed": seed}
        if not shared_batches:
            settings["shared_batches"] = False
        return arch, [[text, float(acc), float(loss)] for text, acc, loss in scores], settings
    raise ValueError(f"--rule {rule!r}: accepted: {', '.join(RULES)}")


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
    parser = argparse.ArgumentParser(
        prog="oneshot discretize",
        description="choose one architecture from a trained supernet (a run of `oneshot search`)")
    parser.add_argument("run_or_ckpt", metavar="RUN_OR_CKPT",
                        help="run directory (uses RUN/checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("--rule", choices=RULES, default="space",
                        help="space: the algorithm's own export; best_of_n: best of --samples uniform "
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
    if args.rule in ("best_of_n", "perturbation"):
        datamodule, data_source = build_datamodule(run, args.data, args.data_root)
    perturbation = ({"proj_interval": args.proj_intv, "criterion": args.criterion,
                     "tune_batches": args.tune_batches, "none_candidate": args.none_candidate}
                    if args.rule == "perturbation" else {})
    arch, scores, settings = discretize(model, args.rule, datamodule, args.samples, args.batches, args.seed,
                                       shared_batches=not args.next_batches,
                                       fresh_arch_optimizer=args.fresh_arch_optimizer, **perturbation)
    if data_source is not None:
        settings["data"] = data_source
    out = Path(args.out) if args.out else run / f"arch_{args.rule}.json"
    write_record(out, model, arch, args.rule, ckpt, scores, settings)
    print(f"architecture: {model.space.format(arch)}\nrule: {args.rule}\nwrote {out}")
