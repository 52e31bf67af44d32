"""SDARTS: Stabilizing DARTS with amended gradient estimation on architectural parameters
(Chen & Hsieh, ICML 2020).

Reference: xiangning-chen/SmoothDARTS@d3dbfed ``sota/cnn/train_search.py`` (the step),
``attacker/perturb.py`` (``Random_alpha``, ``Linf_PGD_alpha``), ``attacker/linf_sgd.py`` and
``sota/cnn/model_search.py`` (``softmax_arch_parameters``, ``clip``).

What differs from first-order DARTS: the weight step runs on perturbed architecture weights.
The perturbation lives on the simplex, after the softmax: w = clip(softmax(alpha) + delta) with
clip = clamp to [0, 1] and divide by the sum (a row that clamps to all zeros keeps 1 at its
pre-clamp argmax). SDARTS-RS draws delta ~ U(-eps, eps) per element and step; SDARTS-ADV runs
PGD that maximises the training loss (7 signed-gradient steps of 2 eps / 7 from a random start,
each projected on the L-inf ball of radius eps and clipped, in eval mode on the weight step's own
batch, the perturbation dropped if it lowers the loss). eps rises linearly per epoch:
0.03 + (epsilon - 0.03) * e / E. The architecture step and validation see the clean softmax.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch

from oneshot.algorithms.darts import DartsSearch
from oneshot.algorithms.base import rank_shared_seed

PERTURBATIONS = ("random", "adversarial")


def clip_to_simplex(weights: torch.Tensor) -> torch.Tensor:
    """SDARTS ``Network.clip`` on one edge row: clamp to [0, 1], renormalise; an all-zero row
    becomes one-hot at its argmax before the clamp."""
    top = int(weights.argmax())
    clipped = weights.clamp(0.0, 1.0)
    if float(clipped.sum()) == 0.0:
        clipped = torch.zeros_like(clipped)
        clipped[top] = 1.0
    return clipped / clipped.sum()


class SDartsSearch(DartsSearch):
    """DARTS whose weight step sees architecture weights perturbed at random (RS) or by PGD (ADV).

    Args:
        perturbation: ``random`` (SDARTS-RS, ``--perturb_alpha random``) or ``adversarial``
            (SDARTS-ADV, ``--perturb_alpha pgd_linf``).
        epsilon: the radius reached at the end (``--epsilon_alpha`` 0.3); epoch e of E uses
            ``0.03 + (epsilon - 0.03) * e / E``.
        epsilon_start: the radius of epoch 0 (0.03 in train_search.py).
        attack_steps: PGD steps (``Linf_PGD_alpha`` steps=7); the step size is 2 eps / steps.
        random_start: start PGD from a random point of the ball (True in SDARTS).
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch`.
    """

    def __init__(self, *args: Any, perturbation: Literal["random", "adversarial"] = "random",
                 epsilon: float = 0.3, epsilon_start: float = 0.03, attack_steps: int = 7,
                 random_start: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation={perturbation!r}; accepted: {', '.join(PERTURBATIONS)}")
        if not 0 <= epsilon_start <= epsilon or attack_steps < 1:
            raise ValueError(f"need 0 <= epsilon_start ({epsilon_start}) <= epsilon ({epsilon}) and "
                             f"attack_steps ({attack_steps}) >= 1")

    def epsilon(self, epoch: int, epochs: int) -> float:
        """train_search.py: ``0.03 + (epsilon_alpha - 0.03) * epoch / epochs``."""
        h = self.hparams
        return float(h.epsilon_start + (h.epsilon - h.epsilon_start) * epoch / max(epochs, 1))

    def current_epsilon(self) -> float:
        epochs = self.planned_epochs()
        return self.epsilon(self.current_epoch, epochs)

    # --- the perturbations ------------------------------------------------------------------
    def _noise(self, clean: Mapping[str, torch.Tensor], epsilon: float, purpose: str) -> dict[str, torch.Tensor]:
        """U(-eps, eps) per element, identical on every rank; excluded candidates stay at 0."""
        generator = torch.Generator().manual_seed(rank_shared_seed("sdarts", self.global_step, purpose))
        noisy = {}
        for label, w in clean.items():
            delta = (torch.rand(w.shape, generator=generator, dtype=w.dtype) * 2 - 1) * epsilon
            noisy[label] = self._clip(label, w + delta.to(w.device))
        return noisy

    def _clip(self, label: str, weights: torch.Tensor) -> torch.Tensor:
        excluded = self.excluded.get(label)
        if excluded:  # not candidates at all: keep them out of the clamp and the sum
            weights = weights.clone()
            weights[excluded] = float("-inf")
        return clip_to_simplex(weights)

    def random_perturbation(self) -> dict[str, torch.Tensor]:
        clean = {k: w.detach() for k, w in self.arch_weights().items()}
        return self._noise(clean, self.current_epsilon(), "random")

    def adversarial_perturbation(self, batch: Any) -> dict[str, torch.Tensor]:
        """``Linf_PGD_alpha``: maximise the training loss over the ball, in eval mode."""
        h, epsilon = self.hparams, self.current_epsilon()
        step = 2 * epsilon / h.attack_steps
        clean = {k: w.detach() for k, w in self.arch_weights().items()}
        was_training = self.supernet.training
        self.supernet.eval()
        try:
            with torch.no_grad():
                loss_before = self.loss_and_accuracy(batch, clean)[0]
            current = self._noise(clean, epsilon, "start") if h.random_start else dict(clean)
            for _ in range(h.attack_steps):
                leaves = {k: w.clone().requires_grad_() for k, w in current.items()}
                loss = self.loss_and_accuracy(batch, leaves)[0]
                grads = torch.autograd.grad(loss, list(leaves.values()))
                with torch.no_grad():
                    for (label, w), g in zip(leaves.items(), grads):
                        moved = w + step * g.sign()  # ascent on the loss (Linf_SGD on -loss)
                        moved = clean[label] + (moved - clean[label]).clamp(-epsilon, epsilon)
                        current[label] = self._clip(label, moved)
            with torch.no_grad():
                loss_after = self.loss_and_accuracy(batch, current)[0]
        finally:
            self.supernet.train(was_training)
        return clean if float(loss_before) > float(loss_after) else current

    # --- the weight step on perturbed weights ------------------------------------------------
    def weight_decisions(self, train_batch: Any) -> Mapping[str, Any]:
        if self.hparams.perturbation == "random":
            return self.random_perturbation()
        return self.adversarial_perturbation(train_batch)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("sdarts_epsilon", self.current_epsilon(), on_epoch=True, sync_dist=True)
