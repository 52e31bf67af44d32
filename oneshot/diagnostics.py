"""Collapse diagnostics for differentiable search: why DARTS variants end in all-skip cells.

Zela et al., "Understanding and Robustifying Differentiable Architecture Search" (R-DARTS,
ICLR 2020; reference automl/RobustDARTS) show that as DARTS degenerates to parameter-free
cells, the dominant eigenvalue of the Hessian of the validation loss with respect to the
architecture parameters grows, and stop the search when it rises too fast (DARTS-ES).

- :func:`skip_connect_count`: ``skip_connect`` edges per cell type of a discretized architecture.
- :func:`dominant_hessian_eigenvalue`: power iteration on exact Hessian-vector products (double
  backward). R-DARTS builds the full Hessian (``src/search/analyze.py``, ``Analyzer._hessian``)
  and takes ``max(eigvals(H))``; power iteration needs only products, so it scales to the DARTS
  space's 224 parameters and beyond. R-DARTS differentiates the cross-entropy plus the Adam
  weight decay term (``grad + arch_weight_decay * alpha``), which shifts every eigenvalue by
  ``arch_weight_decay`` (1e-3); here the Hessian is that of the loss alone.
- :class:`EigenvalueEarlyStop`: R-DARTS's stopping rule (``src/utils.py`` ``EVLocalAvg.update`` /
  ``early_stop``, called from ``src/search/train_search.py``; defaults from
  ``src/search/args.py``).

Pure functions and classes: nothing here needs Lightning.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

import supernets
from supernets import Arch, SearchSpace
from supernets.labels import cell_of

from ops.kernels import use_fused

SKIP = "skip_connect"  # the name of the identity candidate in both NB201 and DARTS


def _op_indices(choice: Any) -> list[int]:
    """The candidate indices in one Arch choice: an int (NB201 edge), an ``(op, input)`` pair,
    or a tuple of such pairs (a DARTS node)."""
    if isinstance(choice, int):
        return [choice]
    if isinstance(choice, tuple) and len(choice) == 2 and all(isinstance(c, int) for c in choice):
        return [choice[0]]  # (op, input)
    if isinstance(choice, tuple):
        return [op for part in choice for op in _op_indices(part)]
    raise ValueError(f"cannot read candidate indices from the choice {choice!r}; expected an op "
                     "index, an (op, input) pair or a tuple of pairs")


def skip_connect_count(arch: Arch, space: SearchSpace | str) -> dict[str, int]:
    """Number of ``skip_connect`` edges per cell type of a discretized architecture.

    Args:
        arch: an architecture of ``space`` (``space.discretize`` output or a published cell).
        space: the space object or its registered name; its ``primitives`` name the op indices.

    Returns:
        ``{cell_type: count}``, every cell type present (``{"cell": n}`` for NB201,
        ``{"normal": n, "reduce": m}`` for DARTS).
    """
    space = supernets.get(space) if isinstance(space, str) else space
    space.check(arch)
    primitives: Sequence[str] = getattr(space, "primitives", ())
    if SKIP not in primitives:
        raise ValueError(f"space {space.name!r} has no {SKIP!r} candidate (its primitives: "
                         f"{', '.join(primitives) or 'none declared'})")
    counts: dict[str, int] = {}
    for label, choice in arch.items():
        cell_type = cell_of(label)
        counts[cell_type] = counts.get(cell_type, 0) + sum(
            primitives[op] == SKIP for op in _op_indices(choice))
    return counts


def dominant_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                                iterations: int = 20, tol: float = 1e-4,
                                generator: torch.Generator | None = None) -> float:
    """Eigenvalue of largest magnitude of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Power iteration on exact Hessian-vector products (``torch.autograd.grad`` of the gradient,
    built once with ``create_graph=True``); the answer is the Rayleigh quotient v'Hv of the last
    unit vector. Stops when it changes by less than ``tol`` relative to its size.

    R-DARTS reports ``max(eigvals(H))``, the largest *algebraic* eigenvalue; the two agree when
    the dominant eigenvalue is positive, as it is near a minimum of the validation loss.

    Args:
        loss_fn: computes the scalar loss (called once).
        params: the tensors the Hessian is taken over (architecture parameters).
        iterations: most Hessian-vector products.
        tol: relative change of the estimate that counts as converged.
        generator: seeds the random start vector without touching the global RNG, so that a
            diagnostic does not change the training stream.
    """
    params = [p for p in params]
    if not params:
        raise ValueError("dominant_hessian_eigenvalue needs at least one parameter")
    if iterations < 1:
        raise ValueError(f"iterations is {iterations}; it must be at least 1")
    # double backward: the fused kernels' backward ops are not differentiable, so the loss is
    # built on the unfused path (the same numbers)
    with torch.enable_grad(), use_fused(False):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if not any(g.requires_grad for g in grads):
            return 0.0  # the loss is linear in params (or does not depend on them)

        def hessian_vector(vector: list[torch.Tensor]) -> list[torch.Tensor]:
            products = torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True,
                                           allow_unused=True)
            return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, products)]

        vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        eigenvalue = None
        for _ in range(iterations):
            product = hessian_vector(vector)
            estimate = float(sum((v * h).sum() for v, h in zip(vector, product)))  # v'Hv, |v| = 1
            norm = torch.sqrt(sum((h * h).sum() for h in product))
            converged = eigenvalue is not None and abs(estimate - eigenvalue) <= tol * max(abs(estimate), 1e-12)
            eigenvalue = estimate
            if converged or float(norm) == 0.0:
                break
            vector = [h / norm for h in product]
    return eigenvalue


class EigenvalueEarlyStop:
    """R-DARTS's early stopping on the dominant eigenvalue (DARTS-ES).

    Rule (automl/RobustDARTS ``EVLocalAvg``, called every ``report_freq_hessian`` epochs from
    ``src/search/train_search.py``): keep a centred local average of the last ``window``
    eigenvalues, the current one attributed to the epoch ``window // 2`` measurements back (at
    the start fewer values are averaged, from ``ceil(window / 2)`` on). Compare it with the local
    average ``delta`` measurements earlier; once that earlier average's epoch is at least
    ``start_epoch``, stop when current / earlier > ``factor``, and return the architecture of
    that earlier epoch. Defaults are ``src/search/args.py``'s: ``--window 5``, ``--factor 1.3``,
    ``--delta 4``, ``--es_start_epoch 10``. With an eigenvalue every epoch, a stop at epoch e
    rolls back to epoch e - 2 - 4 = e - 6. (The paper states it as
    mean_k(lambda at i - k) / mean_k(lambda at i) < 0.75, returning the architecture of i - k.)
    R-DARTS does not test the last epoch; the caller skips it.

    Example:
        >>> stop = EigenvalueEarlyStop()
        >>> fired = [stop.update(e, 1.0 if e < 18 else 3.0) for e in range(19)]
        >>> fired.index(True), stop.stop_epoch  # (1 + 1 + 1 + 1 + 3) / 5 = 1.4 > 1.3 x 1.0
        (18, 12)
    """

    def __init__(self, window: int = 5, factor: float = 1.3, delta: int = 4, start_epoch: int = 10):
        if window < 1 or delta < 1:
            raise ValueError(f"window ({window}) and delta ({delta}) must be at least 1")
        if factor <= 0:
            raise ValueError(f"factor is {factor}; it must be positive (R-DARTS uses 1.3)")
        self.window, self.factor, self.delta, self.start_epoch = window, factor, delta, start_epoch
        self.epochs: list[int] = []
        self.eigenvalues: list[float] = []
        self.archs: dict[int, Any] = {}
        self.local_averages: list[tuple[int, float]] = []  # (centre epoch, average)
        self.stop_epoch: int | None = None
        self.stop_arch: Any = None

    @property
    def stopped(self) -> bool:
        return self.stop_epoch is not None

    def update(self, epoch: int, eigenvalue: float, arch: Any = None) -> bool:
        """Record the eigenvalue (and architecture) of ``epoch``; True once the rule has fired."""
        if self.stopped:
            return True
        self.epochs.append(int(epoch))
        self.eigenvalues.append(float(eigenvalue))
        self.archs[int(epoch)] = arch
        count, half = len(self.eigenvalues), self.window // 2
        if count < math.ceil(self.window / 2) or count - 1 - half < 0:
            return False
        recent = self.eigenvalues[max(0, count - self.window):]
        self.local_averages.append((self.epochs[count - 1 - half], sum(recent) / len(recent)))
        if len(self.local_averages) <= self.delta:
            return False
        earlier_epoch, earlier = self.local_averages[-1 - self.delta]
        if earlier_epoch < self.start_epoch:
            return False
        current = self.local_averages[-1][1]
        if earlier > 0 and current / earlier > self.factor:
            self.stop_epoch, self.stop_arch = earlier_epoch, self.archs[earlier_epoch]
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Plain types only (architectures as the caller gave them, e.g. ``Arch.to_json()``)."""
        return {"epochs": list(self.epochs), "eigenvalues": list(self.eigenvalues),
                "archs": {str(k): v for k, v in self.archs.items()},
                "local_averages": [list(x) for x in self.local_averages],
                "stop_epoch": self.stop_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self.eigenvalues = [float(v) for v in state["eigenvalues"]]
        self.archs = {int(k): v for k, v in state["archs"].items()}
        self.local_averages = [(int(e), float(v)) for e, v in state["local_averages"]]
        self.stop_epoch = state["stop_epoch"]
        self.stop_arch = None if self.stop_epoch is None else self.archs[self.stop_epoch]
