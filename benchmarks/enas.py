"""ENAS costs on the CPU: a child step against the stand-alone network of the same path, the
controller's sample + update per ``num_aggregate`` samples, and the controller phase's share of
an epoch of the CPU config (``experiments/enas_nb201_digits_cpu.yaml``).

Usage (from the repository root, nothing else running)::

    .venv/bin/python benchmarks/enas.py
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def timed(step, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def child_against_single(batch: int = 64) -> None:
    """NB201 (C=16, N=5, CIFAR-sized input): one SGD step of the controller's path in the
    supernet and in its stand-alone network."""
    from oneshot.algorithms import EnasSearch

    torch.manual_seed(0)
    model = EnasSearch(space="nb201", num_classes=10, in_channels=3, memory_format="contiguous",
                       lstm_size=32, lstm_layers=2, lstm_bias=True, tanh_constant=2.5, temperature=5.0)
    os.environ["PL_GLOBAL_SEED"] = "0"
    arch = model.sample_architecture("weights", 0)
    decisions = model.space.decisions(arch)
    single = model.space.build_network(arch, num_classes=10)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    loss = nn.CrossEntropyLoss()
    runs = {}
    for name, network, forward in (("child", model.supernet, lambda: model.supernet(x, decisions)),
                                   ("single", single, lambda: single(x))):
        optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=2.5e-4)

        def step(forward=forward, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss(forward(), y).backward()
            optimizer.step()
        runs[name] = timed(step)
    print(f"nb201 child step {runs['child']:.1f} ms, stand-alone {runs['single']:.1f} ms: "
          f"{runs['child'] / runs['single']:.2f}x ({model.space.format(arch)}, batch {batch})")


def controller_update(num_aggregate: int = 20) -> None:
    """The controller alone: ``num_aggregate`` samples with their backward and one Adam step."""
    from oneshot.controller import Controller, Reinforce

    for kind, sizes, settings in (("sequence", [5] * 6, dict(lstm_size=32, lstm_layers=2, lstm_bias=True,
                                                                 tanh_constant=2.5, temperature=5.0)),
                                  ("micro", [5, 5], dict(tanh_constant=1.1, op_tanh_reduce=2.5)),
                                  ("macro", [12, 6], dict(tanh_constant=1.5))):
        torch.manual_seed(0)
        controller = Controller(kind, sizes, **settings)
        trainer = Reinforce(controller, torch.optim.Adam(controller.parameters(), lr=1e-3),
                            entropy_weight=1e-4, skip_weight=0.8 if kind == "macro" else 0.0,
                            num_aggregate=num_aggregate)
        generator = torch.Generator().manual_seed(0)

        def update():
            trainer.update(trainer.sample(generator), [0.5] * num_aggregate)
        print(f"controller {kind}: sample + update of {num_aggregate} samples {timed(update, repeats=5):.1f} ms")


def controller_share() -> None:
    """The CPU config: the time of the child epochs against the controller phases, and within the
    phases the controller's own work (sampling and updating) against the rewards' child forwards."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from oneshot.algorithms import EnasSearch
    from oneshot.controller import Reinforce
    from oneshot.data import DigitsDataModule

    own = {"seconds": 0.0}
    for name in ("sample", "update"):
        method = getattr(Reinforce, name)

        def timed_method(self, *args, method=method, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                own["seconds"] += time.perf_counter() - start
        setattr(Reinforce, name, timed_method)

    class Clock(Callback):
        def __init__(self):
            self.train, self.controller = 0.0, 0.0

        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_validation_epoch_start(self, trainer, module):
            self.train += time.perf_counter() - self.start
            before = time.perf_counter()
            module.controller_phase()  # runs here, once per epoch, and is timed alone
            self.controller += time.perf_counter() - before

    L.seed_everything(0)
    model = EnasSearch(space="nb201", space_options={"C": 8, "N": 2, "track_running_stats": False},
                       num_classes=10, in_channels=1, lstm_size=32, lstm_layers=2, lstm_bias=True,
                       tanh_constant=2.5, temperature=5.0, train_steps=5, num_aggregate=10,
                       controller_betas=(0.0, 0.999), controller_eps=1e-3, controller_grad_clip=5.0,
                       learning_rate=0.05, learning_rate_min=0.0005, weight_decay=2.5e-4, nesterov=True,
                       selection="best_of_n", selection_samples=1)
    clock = Clock()
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock], limit_val_batches=1,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    total = clock.train + clock.controller
    print(f"CPU config, 3 epochs: child training {clock.train:.1f} s, controller phases {clock.controller:.1f} s "
          f"({100 * clock.controller / total:.1f}% of the epochs; 5 x 10 samples per epoch, each rewarded "
          f"on a 64-image batch); the controller's own sampling and updates {own['seconds']:.2f} s "
          f"({100 * own['seconds'] / total:.1f}%), the rest the rewards' child forwards")


if __name__ == "__main__":
    child_against_single()
    controller_update()
    controller_share()
