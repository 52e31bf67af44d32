"""Faults a long run survives: preemption, an interrupted resume, non-finite steps.

Two callbacks that every training command attaches (``--preemption.*``, ``--nonfinite.*``):

* :class:`Preemption`: SIGTERM or SIGINT lets the step in flight finish, writes ``last.ckpt`` at
  that step and ends the run with :class:`Preempted` (the command exits with 128 + the signal
  number, as schedulers expect). A run resumed from a checkpoint written mid-epoch skips the
  batches that epoch already trained (:class:`~oneshot.data.ResumableSampler`) and continues the
  process random streams from the step, so it ends where the uninterrupted run would. SLURM's
  requeue signal (SIGUSR1) stays with Lightning's ``SLURMEnvironment``, whose checkpoint resumes
  the same way.
* :class:`NonFiniteGuard`: an optimizer step whose gradients hold a NaN or inf is skipped (no
  parameter, moment or counter of that optimizer changes, and the module's buffers, BatchNorm
  statistics, go back to where the batch found them), counted and logged; after
  ``max_in_row`` such steps of one optimizer in a row the run writes a checkpoint of its last
  finite state and stops with :class:`NonFiniteSteps`, naming the step, that checkpoint and the
  usual causes.
* :class:`MemoryCheck`: before the first step, one forward of the weight step on a two-image
  batch measures the activations it saves for backward; scaled to the batch size and added to
  the parameters, their gradients and the optimizer states, it is the step's estimated peak.
  Above the device's free memory the run is refused (or warned about) with the estimate and the
  fixes, before an out-of-memory error an hour in.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch

from oneshot.checkpoints import capture_random_state, restore_random_state

SIGNALS = ("SIGTERM", "SIGINT")


class Preempted(Exception):
    """The run stopped on a signal after writing ``checkpoint``; exit with 128 + ``signum``."""

    def __init__(self, signum: int, checkpoint: str | None, step: int, epoch: int) -> None:
        self.signum, self.checkpoint, self.step, self.epoch = signum, checkpoint, step, epoch
        name = signal.Signals(signum).name
        where = f"checkpoint written: {checkpoint}; resume with --ckpt_path {checkpoint}" if checkpoint else \
            "no checkpoint could be written (no checkpoint folder)"
        super().__init__(f"stopped by {name} at epoch {epoch}, step {step}; {where}")


class NonFiniteSteps(ValueError):
    """Too many optimizer steps in a row had non-finite gradients."""


class InsufficientMemory(ValueError):
    """The step's estimated peak memory exceeds what the device has free."""


def checkpoint_path(trainer: L.Trainer) -> str | None:
    """Where the run's ``last.ckpt`` goes (its ModelCheckpoint folder), None without one."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None)
    if folder is None and trainer.log_dir is not None:
        folder = os.path.join(trainer.log_dir, "checkpoints")
    return None if folder is None else os.path.join(folder, "last.ckpt")


def write_checkpoint(trainer: L.Trainer) -> str | None:
    """``last.ckpt`` of the current step (every rank calls it: saving is a collective)."""
    path = checkpoint_path(trainer)
    if path is not None:
        trainer.save_checkpoint(path)
    return path


class Preemption(L.Callback):
    """Checkpoint at the current step on SIGTERM/SIGINT and stop; resume mid-epoch exactly.

    Args:
        signals: the signals that stop the run (SIGTERM: schedulers; SIGINT: Ctrl-C). A second
            SIGINT while the step finishes interrupts at once, as Python's default does.
    """

    def __init__(self, signals: tuple[str, ...] = SIGNALS) -> None:
        unknown = [s for s in signals if s not in signal.Signals.__members__]
        if unknown:
            raise ValueError(f"preemption signals {unknown}: not signals of this system; e.g. {', '.join(SIGNALS)}")
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._resume_state: dict[str, Any] | None = None

    # --- the signal ------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.signals:
            number = signal.Signals[name]
            self._previous[number] = signal.signal(number, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        received = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step: saving is a collective
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received:
            signum = self.received or signal.SIGTERM
            raise Preempted(signum, write_checkpoint(trainer), trainer.global_step, trainer.current_epoch)

    # --- resuming mid-epoch ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": capture_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A checkpoint written after batch k of an epoch: the loaders skip the k batches done,
        and the module's per-epoch settings (temperatures, dropout rates) are set again, since
        Lightning does not call ``on_train_epoch_start`` for an epoch it resumes mid-way."""
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not trainer.fit_loop.restarting or not done:
            self._resume_state = None
            return
        for loader in _train_loaders(trainer):
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "skip_batches"):
                sampler.skip_batches(done)
        pl_module.on_train_epoch_start()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._resume_state is not None:  # after the loader drew its seeds, as the first run did
            restore_random_state(self._resume_state.get("rng_states"))
            self._resume_state = None


def _train_loaders(trainer: L.Trainer) -> list[Any]:
    loaders = trainer.fit_loop._combined_loader
    if loaders is None:
        trainer.fit_loop.setup_data()
        loaders = trainer.fit_loop._combined_loader
    return list(loaders.flattened) if loaders is not None else []


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose gradients are not finite; stop after ``max_in_row`` in a row.

    Args:
        max_in_row: consecutive skipped steps of one optimizer that end the run (0: never).
    """

    CAUSES = ("a learning rate too high for this batch size (--model.init_args.learning_rate), "
              "an architecture learning rate too high (arch_learning_rate), a Gumbel or concrete "
              "temperature too low (tau_min), half precision overflowing, or NaN/inf in the data")

    def __init__(self, max_in_row: int = 10) -> None:
        if max_in_row < 0:
            raise ValueError(f"nonfinite max_in_row={max_in_row}: give 0 (never stop) or more")
        self.max_in_row = max_in_row
        self.skipped = 0
        self.in_row: dict[int, int] = {}
        self._handles: list[Any] = []
        self._trainer: L.Trainer | None = None
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        for index, optimizer in enumerate(trainer.optimizers):
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step(index)))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Keep the buffers (BatchNorm statistics) as they were before this batch's forwards, for
        a skipped step to put back: a NaN batch would otherwise poison them though no step ran."""
        buffers = [b for b in pl_module.buffers()]
        if len(buffers) != len(self._buffers) or any(b is not c for b, c in zip(buffers, self._buffers)):
            self._buffers, self._saved = buffers, [b.detach().clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(self._saved, [b.detach() for b in buffers])

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_step(self, index: int) -> Any:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            largest = torch.nn.utils.get_total_norm(grads, norm_type=float("inf")) if grads else None
            if largest is None or bool(torch.isfinite(largest)):  # max |g|: no overflow, NaN propagates
                self.in_row[index] = 0
                return
            for group in optimizer.param_groups:  # a parameter without a gradient is not stepped
                for p in group["params"]:
                    p.grad = None
            if self._buffers:  # the batch's statistics go with it
                with torch.no_grad():
                    torch._foreach_copy_([b for b in self._buffers], self._saved)
            self.skipped += 1
            self.in_row[index] = self.in_row.get(index, 0) + 1
            self._after_skip(index)
        return hook

    def _after_skip(self, index: int) -> None:
        trainer = self._trainer
        step, epoch = (trainer.global_step, trainer.current_epoch) if trainer is not None else (0, 0)
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"step {step} (epoch {epoch}): optimizer {index} has a non-finite gradient; the step is "
                       f"skipped ({self.in_row[index]} in a row, {self.skipped} in all)")
        if self.max_in_row and self.in_row[index] >= self.max_in_row:
            path = write_checkpoint(trainer) if trainer is not None else None
            saved = f"the last finite state is in {path}" if path else "no checkpoint folder to write to"
            raise NonFiniteSteps(f"step {step} (epoch {epoch}): {self.in_row[index]} steps of optimizer {index} in "
                                 f"a row had NaN or inf gradients and were skipped; {saved}. Usual causes: "
                                 f"{self.CAUSES}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("nonfinite_steps", float(self.skipped), on_epoch=True, sync_dist=False, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


class MemoryCheck(L.Callback):
    """Refuse (or warn about) a run whose weight step will not fit in the device's memory.

    Args:
        action: ``refuse`` (the default), ``warn`` or ``off``.
        probe_batch: images in the measuring forward; activations scale linearly from it.
        headroom: the fraction of the free memory the estimate may use (0.9).
        available_bytes: the memory to compare with (None: the device's free memory, on a CPU
            the system's available memory).
    """

    ACTIONS = ("refuse", "warn", "off")

    def __init__(self, action: str = "refuse", probe_batch: int = 2, headroom: float = 0.9,
                 available_bytes: int | None = None) -> None:
        if action not in self.ACTIONS:
            raise ValueError(f"memory_check action {action!r}; accepted: {', '.join(self.ACTIONS)}")
        if probe_batch < 1 or not 0 < headroom <= 1:
            raise ValueError(f"memory_check probe_batch={probe_batch}, headroom={headroom}: need >= 1 and (0, 1]")
        self.action, self.probe_batch, self.headroom, self.available_bytes = action, probe_batch, headroom, available_bytes
        self.estimate: dict[str, int] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.action == "off" or not hasattr(pl_module, "weight_decisions"):
            return
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the run's random streams stay untouched
            probe = _probe_batch(trainer, self.probe_batch)
            if probe is None:
                return
            self.estimate = estimate_step_memory(pl_module, probe[0], probe[1], trainer.optimizers)
        available = self.available_bytes if self.available_bytes is not None else free_memory(pl_module.device)
        if available is None or self.estimate["total"] <= self.headroom * available:
            return
        message = (f"the weight step needs about {_gib(self.estimate['total'])} ({_gib(self.estimate['activations'])} "
                   f"of activations at batch {self.estimate['batch_size']}, {_gib(self.estimate['state'])} of weights, "
                   f"gradients and optimizer state), more than the {_gib(available)} free on {pl_module.device}. "
                   "Fix: a smaller --data.init_args.batch_size, partial channels (space_options partial_channels, "
                   "PC-DARTS), the fused kernels (pip install with the C++/CUDA build), or fewer cells or channels "
                   "(space_options); --memory_check.action warn runs anyway")
        if self.action == "refuse":
            raise InsufficientMemory(message)
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(message)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _probe_batch(trainer: L.Trainer, size: int) -> tuple[Any, int] | None:
    """``size`` samples of the weight loader's dataset (the first loader of a paired one) and
    the loader's batch size, read from the dataset itself: iterating the loader would use up a
    resumed sampler's skip and draw from the process random stream."""
    from torch.utils.data import default_collate

    loaders = _train_loaders(trainer)
    dataset = getattr(loaders[0], "dataset", None) if loaders else None
    batch_size = getattr(loaders[0], "batch_size", None) if loaders else None
    if dataset is None or not batch_size or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return None
    batch = default_collate([dataset[k] for k in range(min(size, len(dataset)))])
    return (batch, int(batch_size)) if isinstance(batch, (tuple, list)) and len(batch) == 2 else None


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or the system's MemAvailable on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_step_memory(pl_module: Any, probe: Any, batch_size: int, optimizers: list[Any]) -> dict[str, int]:
    """Bytes of one weight step at ``batch_size``: the activations one forward on the ``probe``
    (images, labels) saves for backward, scaled up, plus weights, gradients and optimizer state
    (momentum one copy, Adam two). Buffers and gradients are put back; no parameter changes."""
    x, y = (t.to(pl_module.device) for t in probe)
    size = int(batch_size)
    saved: dict[int, int] = {}
    parameters = {p.untyped_storage().data_ptr() for p in pl_module.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointer = t.untyped_storage().data_ptr()
        if pointer not in parameters:
            saved[pointer] = t.untyped_storage().nbytes()
        return t

    buffers = [b.detach().clone() for b in pl_module.buffers()]
    grads = [(p, p.grad) for p in pl_module.parameters()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = pl_module.loss_and_accuracy((x, y), pl_module.weight_decisions((x, y)))[0]
        del loss
    finally:
        with torch.no_grad():
            for b, kept in zip(pl_module.buffers(), buffers):
                b.copy_(kept)
        for p, grad in grads:  # a decision that attacks (SDARTS-ADV) runs a backward of its own
            p.grad = grad
    weights = sum(p.numel() * p.element_size() for p in pl_module.parameters())
    moments = {torch.optim.SGD: 1, torch.optim.Adam: 2, torch.optim.AdamW: 2, torch.optim.RMSprop: 1}
    optimizer_state = sum(moments.get(type(o), 2) * sum(p.numel() * p.element_size() for g in o.param_groups
                                                        for p in g["params"]) for o in optimizers)
    activations = sum(saved.values()) * size // max(len(x), 1)
    state = 2 * weights + optimizer_state  # weights and their gradients
    return {"activations": activations, "state": state, "total": activations + state, "batch_size": size}
