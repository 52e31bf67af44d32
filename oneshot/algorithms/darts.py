"""DARTS: Differentiable Architecture Search (Liu, Simonyan, Yang, ICLR 2019).

Reference: quark0/darts@f276dd3 ``cnn/architect.py`` (``Architect``) and ``cnn/train_search.py``.
First order: the architecture gradient is dL_val(w, alpha)/dalpha at the current weights.
Second order (``unrolled=True``): the gradient of L_val(w', alpha) through one virtual SGD step
w' = w - xi (momentum * buf + dL_train/dw + wd * w), with xi the current weight lr, and the
Hessian-vector product approximated by finite differences with R = 0.01 / ||v||.
"""
from __future__ import annotations

from typing import Any

import torch

from oneshot.algorithms.base import all_reduce_mean
from oneshot.algorithms.differentiable import DifferentiableSearch


class DartsSearch(DifferentiableSearch):
    """DARTS, first (default) or second order.

    Args:
        unrolled: second-order approximation (DARTS ``--unrolled``; DARTS-V2).
        arch_step_first: take the architecture step before the weight step, as quark0/darts does
            for both orders and NB201's DARTS-V2; NB201's DARTS-V1 steps the weights first.
        hessian_epsilon: r in R = r / ||v|| (architect.py ``_hessian_vector_product``, r = 1e-2).
        **kwargs: the shared optimization settings of :class:`~oneshot.algorithms.differentiable.DifferentiableSearch`.
    """

    def __init__(self, *args: Any, unrolled: bool = False, arch_step_first: bool = True,
                 hessian_epsilon: float = 0.01, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.arch_step_first = arch_step_first

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor:
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        if self.hparams.unrolled:
            weight_optimizer = self.weight_optimizer()
            loss = self.unrolled_arch_gradient(train_batch, val_batch, weight_optimizer.optimizer)
        else:
            loss = self.supernet_loss(val_batch)
            self.manual_backward(loss)
            all_reduce_mean([a.grad for a in self.architecture_parameters()])
        arch_optimizer.step()
        return loss.detach()

    def supernet_loss(self, batch: Any) -> torch.Tensor:
        """Cross-entropy of the dense supernet under the current architecture distribution."""
        return self.loss_and_accuracy(batch, self.arch_weights())[0]

    def unrolled_arch_gradient(self, train_batch: Any, val_batch: Any,
                               weight_optimizer: torch.optim.SGD) -> torch.Tensor:
        """Set alpha.grad to the second-order DARTS gradient; return L_val(w', alpha).

        Gradients are averaged over ranks at every stage, so a data-parallel run computes what
        one process would with the global batch.
        """
        group = weight_optimizer.param_groups[0]
        xi, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        weights = [p for p in self.supernet.parameters() if p.requires_grad]
        alphas = self.architecture_parameters()
        original = [w.detach().clone() for w in weights]

        # virtual step w' = w - xi * (momentum * buf + dL_train/dw + wd * w)
        train_grads = list(torch.autograd.grad(self.supernet_loss(train_batch), weights))
        all_reduce_mean(train_grads)
        state = weight_optimizer.state
        with torch.no_grad():
            for w, g in zip(weights, train_grads):
                buf = state.get(w, {}).get("momentum_buffer")
                step = g + decay * w
                if buf is not None:
                    step = step + momentum * buf
                w.sub_(xi * step)

        # dL_val(w', alpha)/dalpha and v = dL_val(w', alpha)/dw'
        val_loss = self.supernet_loss(val_batch)
        grads = list(torch.autograd.grad(val_loss, alphas + weights))
        all_reduce_mean(grads)
        alpha_grads, v = grads[: len(alphas)], grads[len(alphas):]

        # finite-difference Hessian-vector product d2L_train/(dalpha dw) . v at the original w
        R = self.hparams.hessian_epsilon / torch.cat([g.flatten() for g in v]).norm()
        hessian_terms = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, g in zip(weights, original, v):
                    w.copy_(w0 + sign * R * g)
            hessian_terms.append(torch.autograd.grad(self.supernet_loss(train_batch), alphas))
        with torch.no_grad():
            for w, w0 in zip(weights, original):
                w.copy_(w0)
        hessian_vector = [(p - n) / (2 * R) for p, n in zip(*hessian_terms)]
        all_reduce_mean(hessian_vector)
        for alpha, g, h in zip(alphas, alpha_grads, hessian_vector):
            alpha.grad = g - xi * h
        return val_loss
