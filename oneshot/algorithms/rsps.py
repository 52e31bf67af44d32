"""Random search with weight sharing (RSPS; "RANDOM-NAS" in NAS-Bench-201).

Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture Search" (UAI 2019),
as NAS-Bench-201 runs it: D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/RANDOM-NAS.py`` with
``scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh`` and ``configs/nas-benchmark/algos/RANDOM.config``.

What differs from the base: there are no architecture parameters to learn. Each weight step
trains one uniformly sampled architecture as a single path (``random_genotype`` then a forward
in ``search_func``); there is no architecture step. After training, best-of-N selection
(:func:`oneshot.selection.best_of_n`, ``search_find_best``) scores ``selection_samples`` uniform
architectures with the inherited weights and exports the best.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Mapping

import torch

from oneshot.algorithms.base import SearchAlgorithm
from oneshot.algorithms.gdas import rank_shared_seed
from oneshot.selection import best_of_n
from supernets import Arch


class RandomSinglePathSearch(SearchAlgorithm):
    """Uniform single-path supernet training, then best-of-N selection.

    The alphas the base creates are set to zero and frozen: softmax(0) is the uniform
    distribution the architectures are sampled from, so what is logged as the architecture
    distribution is true, and the architecture optimizer never sees a gradient (its step does
    nothing). Samples come from a ``random.Random`` seeded by (global seed, step), identical on
    every rank under data parallelism.

    Validation runs one uniformly sampled architecture per validation batch in eval mode, as
    RANDOM-NAS.py's ``valid_func`` does (``random_genotype`` before each batch): it measures
    the supernet's average single-path quality. The selection runs at the end of the last
    epoch's validation (so the last checkpoint holds it), or at the end of training when no
    validation ran then; until then :meth:`export` has nothing to return.

    Args:
        selection_samples: architectures scored at the end (RANDOM-NAS.sh ``--select_num 100``).
        selection_batches: validation batches each is scored on (``search_find_best``: one).
        **kwargs: the shared optimization settings of :class:`SearchAlgorithm`.
    """

    arch_step_first = False  # no architecture step; the order is immaterial
    differentiable = False  # nothing to take a Hessian of (base: hessian_every is skipped)

    def __init__(self, *args: Any, selection_samples: int = 100, selection_batches: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if selection_samples < 1 or selection_batches < 1:
            raise ValueError(f"selection_samples={selection_samples}, selection_batches={selection_batches}: "
                             "both must be at least 1")
        with torch.no_grad():
            for alpha in self.alphas.values():
                alpha.zero_()  # softmax(0): the uniform sampling distribution
                alpha.requires_grad_(False)
        self.selection: dict[str, Any] | None = None

    # --- training: one uniform single path per weight step -----------------------------------
    def sample_architecture(self, *purpose: Any) -> Arch:
        """A uniform architecture from a generator that every rank seeds identically."""
        return self.space.sample(random.Random(rank_shared_seed("rsps", *purpose)))

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return self.space.decisions(self.sample_architecture("weights", self.global_step))

    def architecture_step(self, train_batch: Any, val_batch: Any) -> None:
        return None  # RANDOM-NAS.py search_func: weight step only

    # --- validation: a sampled architecture per batch ----------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        arch = self.sample_architecture("validation", self.current_epoch, batch_idx)
        loss, accuracy = self.loss_and_accuracy(batch, self.space.decisions(arch))
        self.log_dict({"val_loss": loss, "val_acc": accuracy}, prog_bar=True, on_epoch=True,
                      batch_size=batch[0].shape[0], sync_dist=True)

    # --- selection and export ------------------------------------------------------------------
    def select_architecture(self) -> Arch:
        """Best-of-N on the validation loader, run by rank 0 and broadcast to every rank."""
        trainer = self.trainer
        record = None
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            if datamodule is not None:
                loader = datamodule.val_dataloader()  # the full split, no distributed sampler
            elif trainer.val_dataloaders is not None:
                loader = trainer.val_dataloaders
            else:
                raise ValueError("RandomSinglePathSearch selects on validation data: fit with a "
                                 "datamodule or val_dataloaders")
            h = self.hparams
            rng = random.Random(rank_shared_seed("rsps", "selection", self.global_step))
            arch, scores = best_of_n(self, loader, h.selection_samples, h.selection_batches, rng=rng)
            record = {"arch": arch.to_json(), "global_step": int(self.global_step),
                      "epoch": int(self.current_epoch), "num_samples": len(scores),
                      "num_batches": int(h.selection_batches),
                      "scores": [[text, float(acc), float(loss)] for text, acc, loss in scores]}
        self.selection = trainer.strategy.broadcast(record, src=0)
        return self.export()

    @torch.no_grad()
    def export(self) -> Arch:
        """The architecture chosen by best-of-N selection."""
        if self.selection is None:
            raise RuntimeError("RandomSinglePathSearch has no architecture before its best-of-N "
                               "selection, which runs at the end of training")
        return Arch.from_json(self.selection["arch"])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0 and self.current_epoch >= max_epochs - 1:
            self.select_architecture()
            super().on_validation_epoch_end()  # logs and writes arch.json with the selection

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.trainer.interrupted:
            return
        if self.selection is None or self.selection["global_step"] != self.global_step:
            arch = self.select_architecture()  # no validation after the last training step
            run_directory = self.trainer.log_dir  # a collective under DDP: every rank asks
            if self.trainer.is_global_zero:
                self.write_arch(arch, run_directory)

    def write_arch(self, arch: Arch, directory: str | None) -> str | None:
        """The base's ``arch.json`` plus the selection: every candidate's accuracy and loss."""
        path = super().write_arch(arch, directory)
        if path is None or self.selection is None:
            return path
        with open(path) as f:
            record = json.load(f)
        record["rule"] = (f"best of {self.selection['num_samples']} uniform samples by accuracy on "
                          f"{self.selection['num_batches']} validation batch(es)")
        record["selection"] = {k: self.selection[k] for k in ("epoch", "num_samples", "num_batches", "scores")}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
        return path

    # --- checkpoints: the selection travels with the weights ---------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["selection"] = self.selection

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.selection = checkpoint.get("selection")
