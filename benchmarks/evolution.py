"""Wall time of SPOS's evolution (1,000 evaluations) on the CPU toy supernet.

The supernet is ``experiments/spos_digits_cpu.yaml``'s (20 choice blocks, small widths, 8x8
digits), freshly initialised: an evaluation costs the same whether or not it was trained. The
evolution is the reference's (population 50, 20 generations, 25 mutants + 25 crossovers,
``search.py``), without a constraint unless ``--constraint`` is given, each candidate scored on
``--val-images`` held-out images after the BN statistics are rebuilt (``--bn-mode``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/evolution.py                                  # exact recalibration, 256 + 256 images
    .venv/bin/python benchmarks/evolution.py --bn-mode reset --bn-batches 20 --bn-batch-size 64
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

TOY = {"stem_channels": 8, "stage_channels": [16, 32, 48, 64], "last_channels": 64}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--bn-mode", default="recalibrate", choices=("recalibrate", "reset", "train", "running"))
    parser.add_argument("--bn-batches", type=int, default=1)
    parser.add_argument("--bn-batch-size", type=int, default=256)
    parser.add_argument("--val-images", type=int, default=256)
    parser.add_argument("--val-batch-size", type=int, default=256)
    parser.add_argument("--constraint", action="append", default=[])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from oneshot.algorithms import SposSearch
    from oneshot.data import DigitsDataModule
    from oneshot.selection import select

    torch.manual_seed(0)
    model = SposSearch(space="spos", space_options=TOY, num_classes=10, in_channels=1,
                       memory_format="contiguous")
    datamodule = DigitsDataModule(batch_size=64, paired_batches=False)
    datamodule.setup("fit")
    half = args.population // 2
    start = time.perf_counter()
    chosen = select("evolution", model, datamodule, constraints=args.constraint, population=args.population,
                    generations=args.generations, mutants=half, crossovers=half, bn_mode=args.bn_mode,
                    bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size, val_images=args.val_images,
                    val_batch_size=args.val_batch_size, progress=False)
    seconds = time.perf_counter() - start
    n = len(chosen.scores)
    print(f"evolution: {n} evaluations in {seconds:.1f} s ({1000 * seconds / n:.1f} ms each), "
          f"{torch.get_num_threads()} threads")
    print(f"scoring: {chosen.settings['bn_mode']}, BN on {chosen.settings['bn_images']} images in "
          f"{chosen.settings['bn_batches']} batches, {chosen.settings['val_images']} validation images")
    print(f"best: {model.space.format(chosen.arch)}")


if __name__ == "__main__":
    main()
