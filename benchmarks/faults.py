"""The cost per step of the fault-tolerance callbacks (target: under 1% of a step).

Two measurements on one DARTS search step (first order, CPU, random 32x32 images):

* isolated: the time of what the callbacks add to a step, called on the real model after a
  real backward: ``NonFiniteGuard`` (copy of the module's buffers before the batch, the largest
  |gradient| of each optimizer before its step) and ``Preemption`` (a flag test after the
  batch), against the median step time;
* end to end: ``Trainer.fit`` over the same batches with and without the two callbacks,
  alternated ``--repeats`` times (on shared cores the spread is larger than the effect).

Usage::

    .venv/bin/python benchmarks/faults.py                       # NB201 supernet, C=16, N=5, batch 64
    .venv/bin/python benchmarks/faults.py --space darts --options "{C: 16, layers: 8}"
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneshot.algorithms import DartsSearch  # noqa: E402
from oneshot.faults import NonFiniteGuard, Preemption  # noqa: E402


class RandomBatches(L.LightningDataModule):
    def __init__(self, batches: int, batch_size: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = [{"train": (torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g)),
                      "val": (torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g))}
                     for _ in range(batches)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=None)  # the prepared batches, as they are


def fit_time(space: str, options: dict, batches: int, batch_size: int, guarded: bool) -> float:
    torch.manual_seed(0)
    model = DartsSearch(space=space, space_options=options, num_classes=10, in_channels=3)
    callbacks = [NonFiniteGuard(), Preemption()] if guarded else []
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    data = RandomBatches(batches, batch_size)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return (time.perf_counter() - started) / batches


def isolated(space: str, options: dict, batch_size: int, repeats: int) -> tuple[float, float]:
    """(median step ms, median ms the callbacks add to one step)."""
    torch.manual_seed(0)
    model = DartsSearch(space=space, space_options=options, num_classes=10, in_channels=3, memory_format="contiguous")
    data = RandomBatches(1, batch_size).data[0]
    sgd = torch.optim.SGD(model.supernet.parameters(), lr=0.01, momentum=0.9)
    adam = torch.optim.Adam(model.architecture_parameters(), lr=3e-4)
    guard, preemption = NonFiniteGuard(), Preemption()
    hooks = [guard._pre_step(0), guard._pre_step(1)]
    steps, added = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for optimizer, (x, y) in ((adam, data["val"]), (sgd, data["train"])):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x, model.arch_weights()), y).backward()
            optimizer.step()
        steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        guard.on_train_batch_start(None, model, None, 0)  # type: ignore[arg-type]
        hooks[0](sgd, (), {})
        hooks[1](adam, (), {})
        _ = preemption.received is not None
        added.append(time.perf_counter() - started)
    return 1000 * statistics.median(steps[1:]), 1000 * statistics.median(added[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--options", default="{C: 16, N: 5}", help="space options, YAML")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="batches per end-to-end fit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    options = yaml.safe_load(args.options)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.space} {options}, batch {args.batch_size}")
    step, added = isolated(args.space, options, args.batch_size, repeats=6)
    print(f"isolated: step {step:.1f} ms, callbacks {added:.3f} ms per step = {100 * added / step:.2f}% of a step")
    plain, guarded = [], []
    for _ in range(args.repeats):  # alternated, so drifts of a shared machine hit both
        plain.append(fit_time(args.space, options, args.batches, args.batch_size, guarded=False))
        guarded.append(fit_time(args.space, options, args.batches, args.batch_size, guarded=True))
    p, g = statistics.median(plain), statistics.median(guarded)
    print(f"end to end: {1000 * p:.1f} ms/step without, {1000 * g:.1f} ms/step with the callbacks "
          f"({100 * (g - p) / p:+.2f}%; runs without: {', '.join(f'{1000 * t:.0f}' for t in plain)}, "
          f"with: {', '.join(f'{1000 * t:.0f}' for t in guarded)})")


if __name__ == "__main__":
    main()
