"""The sampled single-path family: one architecture drawn per step trains its own path.

:class:`SinglePathSearch` has no architecture parameters: a sampler draws an architecture per
weight step from a generator every rank seeds identically (:func:`rank_shared_seed`), and only
that path runs. Batches are plain ``(x, y)`` or bilevel ``{"train", "val"}`` (only the training
half is used). The architecture comes from a data-driven selection after training
(``best_of_n`` by default; evolution joins in [2/8]). RSPS is the uniform sampler; SPOS adds its
FLOPs-constrained sampler in [2/8].
"""
from __future__ import annotations

import random
from typing import Any, Mapping

from oneshot.algorithms.base import SupernetTraining, rank_shared_seed
from supernets import Arch


class SinglePathSearch(SupernetTraining):
    """Supernet training on one sampled path per step; the selection chooses the architecture.

    Validation runs one sampled architecture per validation batch in eval mode, so it measures
    the supernet's average single-path quality (RANDOM-NAS.py ``valid_func``).

    Args:
        **kwargs: the shared settings of :class:`~oneshot.algorithms.base.SupernetTraining`;
            ``selection`` defaults to ``best_of_n``.
    """

    single_path = True  # only the sampled candidate runs
    default_selection = "best_of_n"
    sampler_name = "rsps"  # the stream name of the sampler's seeds (kept: resumed runs sample alike)
    optimizer_count = 1  # the weights' SGD (ENAS adds its controller's Adam)

    def check_selection(self, name: str) -> str:
        if name == "rule":
            raise ValueError(f"{type(self).__name__} has no architecture distribution for a rule to "
                             "discretize: use selection best_of_n")
        return super().check_selection(name)

    def sample_architecture(self, *purpose: Any) -> Arch:
        """An architecture from the sampler (uniform here), identical on every rank."""
        return self.space.sample(random.Random(rank_shared_seed(self.sampler_name, *purpose)))

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return self.space.decisions(self.sample_architecture("weights", self.global_step))

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self.space.decisions(self.sample_architecture("validation", self.current_epoch, batch_idx))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints before the family split held zero, frozen alphas and an unused Adam; both
        are dropped, so such runs still load, resume and select."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("alphas.")]:
            del state[key]
        if self.optimizer_count == 1 and len(checkpoint.get("optimizer_states") or []) == 2:
            checkpoint["optimizer_states"] = checkpoint["optimizer_states"][:1]
        super().on_load_checkpoint(checkpoint)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        train_batch = batch["train"] if isinstance(batch, Mapping) else batch
        loss, accuracy = self.weight_step(train_batch)
        self.log_training(loss, accuracy, train_batch[0].shape[0])
