"""OFA figures: one progressive-shrinking step vs stand-alone steps of the same subnets, the time
to deploy one subnet (extraction and BN recalibration), and the accuracy predictor's training.

These are OFA's rows of ``benchmarks/step.py``; they live here because an OFA step is not one
forward/backward: it is a teacher forward, then ``k`` subnets each forward and backward on the same
batch with their gradients accumulated, then one SGD step.

* ``step``: the supernet step of :class:`~oneshot.algorithms.ofa.OfaSearch` (phase ``expand2``,
  OFA's widths, 10 classes), exactly its ``training_step`` body, with k = 1, 2, 4 subnets and KD;
  against it, k stand-alone steps of the same subnets (``space.build_network``, their own SGD),
  distilled from the same teacher forward ("alone+KD", the same work without elastic machinery)
  and without KD ("alone"). The subnets are drawn once per k (seed 0) and kept, so both sides
  run the same networks at every step; rows are interleaved step by step, the median is reported.
* ``deploy``: :func:`~supernets.ofa_mbv3.extract_network` of a random subnet, and the exact BN
  recalibration over ``--bn-images`` images in batches of ``--bn-batch-size`` (OFA: 2,000, 200).
* ``predictor``: train OFA's predictor on a measured dataset (``predictor_dataset.json`` of a
  predictor selection, e.g. ``oneshot shrink --config experiments/ofa_mbv3_digits_cpu.yaml``'s
  ``expand2/predictor``): wall time and validation RMSE.

Usage (repository root, nothing else running)::

    .venv/bin/python benchmarks/ofa.py --resolution 128 --batch-size 16 --steps 10
    .venv/bin/python benchmarks/ofa.py --predictor-dataset RUN/expand2/predictor/predictor_dataset.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneshot.algorithms.ofa import OfaSearch  # noqa: E402
from oneshot.rank.scoring import recalibrate_batchnorm  # noqa: E402
from oneshot.selection.predictor import ArchEncoder, PredictorTraining, train_predictor  # noqa: E402
from supernets import Arch  # noqa: E402
from supernets.ofa_mbv3 import RESOLUTION, extract_network  # noqa: E402

CLASSES = 10


def subnets(model: OfaSearch, count: int, resolution: int) -> list[Arch]:
    rng = random.Random(0)
    return [Arch("ofa-mbv3", {**dict(model.space.sample(rng)), RESOLUTION: resolution}) for _ in range(count)]


def supernet_step(model: OfaSearch, archs: list[Arch], optimizer: torch.optim.Optimizer, x, y) -> None:
    """OfaSearch.training_step's body (manual_backward is backward outside a Trainer)."""
    optimizer.zero_grad()
    model.teacher.train()
    with torch.no_grad():
        teacher_logits = model.teacher(x)
    for arch in archs:
        logits = model.supernet(x, model.space.decisions(arch))
        loss = model.loss(logits, y) + model.hparams.kd_ratio * model.distillation(logits, teacher_logits)
        loss.backward()
    optimizer.step()


def alone_steps(model: OfaSearch, networks: list, optimizers: list, x, y, distil: bool) -> None:
    teacher_logits = None
    if distil:
        model.teacher.train()
        with torch.no_grad():
            teacher_logits = model.teacher(x)
    for network, optimizer in zip(networks, optimizers):
        optimizer.zero_grad()
        logits = network(x)
        loss = model.loss(logits, y)
        if distil:
            loss = loss + model.hparams.kd_ratio * model.distillation(logits, teacher_logits)
        loss.backward()
        optimizer.step()


def sgd(parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, nesterov=True, weight_decay=3e-5)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_steps(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = OfaSearch(phase="expand2", num_classes=CLASSES, in_channels=3, kd_ratio=1.0)
    model.train()
    optimizer = sgd(model.supernet.parameters())
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    y = torch.randint(0, CLASSES, (args.batch_size,))
    print(f"step: OfaSearch expand2 (OFA widths, {CLASSES} classes), batch {args.batch_size} at "
          f"{args.resolution}px, median of {args.steps} after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    print(f"{'subnets':>8} {'supernet ms':>12} {'alone+KD ms':>12} {'alone ms':>10} {'ratio+KD':>9} {'ratio':>7}")
    for k in args.subnets:
        archs = subnets(model, k, args.resolution)
        networks = [model.space.build_network(a, num_classes=CLASSES).train() for a in archs]
        optimizers = [sgd(n.parameters()) for n in networks]
        runs = {"supernet": lambda: supernet_step(model, archs, optimizer, x, y),
                "alone+KD": lambda: alone_steps(model, networks, optimizers, x, y, True),
                "alone": lambda: alone_steps(model, networks, optimizers, x, y, False)}
        for _ in range(args.warmup):
            for run in runs.values():
                run()
        times = {name: [] for name in runs}
        for _ in range(args.steps):  # interleaved: drift of a shared machine hits every row alike
            for name, run in runs.items():
                times[name].append(timed(run))
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        print(f"{k:>8} {ms['supernet']:>12.1f} {ms['alone+KD']:>12.1f} {ms['alone']:>10.1f} "
              f"{ms['supernet'] / ms['alone+KD']:>8.2f}x {ms['supernet'] / ms['alone']:>6.2f}x")


def bench_deploy(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = OfaSearch(phase="expand2", num_classes=CLASSES, in_channels=3, kd_ratio=0.0)
    arch = subnets(model, 1, args.resolution)[0]
    batches = [(torch.randn(min(args.bn_batch_size, args.bn_images - i), 3, args.resolution, args.resolution),
                torch.zeros(min(args.bn_batch_size, args.bn_images - i), dtype=torch.long))
               for i in range(0, args.bn_images, args.bn_batch_size)]
    extract = [timed(lambda: extract_network(model.supernet, arch)) for _ in range(5)]
    recalibrate = timed(lambda: recalibrate_batchnorm(model, arch, batches))
    print(f"deploy: {model.space.format(arch)}\n  extraction {1000 * statistics.median(extract):.1f} ms (median of 5); "
          f"BN recalibration over {args.bn_images} images at {args.resolution}px in batches of "
          f"{args.bn_batch_size}: {recalibrate:.2f} s")


def bench_predictor(args: argparse.Namespace) -> None:
    record = json.loads(Path(args.predictor_dataset).read_text())
    encoder = ArchEncoder(record["context"]["choices"])
    space = OfaSearch(phase="full").space  # the parser of ofa-mbv3 strings
    archs = [dict(space.parse(text)) for text in record["measured"]]
    features = encoder.encode_many(archs)
    targets = torch.tensor([accuracy for accuracy, _ in record["measured"].values()])
    start = time.perf_counter()
    _, report = train_predictor(features, targets, PredictorTraining(epochs=args.predictor_epochs))
    seconds = time.perf_counter() - start
    print(f"predictor: {len(targets)} measured (subnet, resolution) pairs, {features.shape[1]} features, "
          f"{args.predictor_epochs} epochs: {seconds:.2f} s; validation RMSE {report['val_rmse']:.2f} points "
          f"(train {report['train_rmse']:.2f}); accuracies span {100 * float(targets.min()):.1f}.."
          f"{100 * float(targets.max()):.1f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--subnets", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--bn-images", type=int, default=2000)
    parser.add_argument("--bn-batch-size", type=int, default=200)
    parser.add_argument("--predictor-dataset", default=None)
    parser.add_argument("--predictor-epochs", type=int, default=100)
    parser.add_argument("--only", choices=("step", "deploy", "predictor"), default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    if args.only in (None, "step"):
        bench_steps(args)
    if args.only in (None, "deploy"):
        bench_deploy(args)
    if args.predictor_dataset and args.only in (None, "predictor"):
        bench_predictor(args)


if __name__ == "__main__":
    main()
