"""``oneshot rank``: how well does a supernet (or any score table) rank architectures?

::

    oneshot rank RUN [RUN2 ...] --ground-truth TABLE [--ground-truth-column COL] --archs sample:100
    oneshot rank --scores SCORES.csv --space nb201 --ground-truth TABLE ...        # a baseline
    oneshot rank --train-ground-truth --space nb201 --archs sample:50 --config R.yaml --out DIR

Several runs (supernet seeds) or checkpoints (``--all-checkpoints``: every ``*.ckpt`` of a run,
tau per epoch) are scored on the same architectures and reported side by side with mean ± std.
The report (``rank.json``, ``rank.md``, ``rank.png``, TensorBoard) records the protocol: BN
mode, images used, how the architectures were chosen, de-isomorphism, seed, ground-truth
source and column.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, Sequence

from oneshot.rank import metrics
from oneshot.rank.choose import choose_archs, deiso_truth
from oneshot.rank.ground_truth import join, load_ground_truth, load_table
from oneshot.rank.report import write_report
from oneshot.rank.scoring import BN_MODES, fixed_batches, score_archs
from oneshot.algorithms import load_algorithm
from oneshot.checkpoints import resolve_checkpoint, run_directory
from oneshot.commands import rank_study
from oneshot.commands.parsing import OneLineArgumentParser
from oneshot.commands.rank_truth import parse_shard, train_ground_truth
from oneshot.data import datamodule_from_run

HELP = ("rank correlation of supernet scores (or a score table) with ground truth; "
        "--train-ground-truth builds a table by stand-alone training")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="oneshot rank",
        description="rank correlation between supernet scores (or a score table) and ground truth")
    parser.add_argument("sources", nargs="*", metavar="RUN_OR_CKPT",
                        help="search runs or checkpoints (several: seeds or epochs, aggregated)")
    parser.add_argument("--ground-truth", help="CSV table (arch column + value columns), a folder/glob "
                        "of `oneshot retrain` result.json files, or nb201-api:PATH")
    parser.add_argument("--ground-truth-column", default=None,
                        help="the table's value column (NB201 CSV: cifar10_test_acc or cifar10_valid_acc)")
    parser.add_argument("--benchmark-dataset", default=None,
                        help="nb201-api ground truth: cifar10 | cifar10-valid | cifar100 | ImageNet16-120")
    parser.add_argument("--benchmark-hp", default=None, help="nb201-api ground truth: 12 or 200 epochs")
    parser.add_argument("--archs", default="sample:100",
                        help="all | sample:N | stratified:N | file:PATH (default sample:100)")
    parser.add_argument("--deiso", action="store_true",
                        help="NB201: one architecture per isomorphism class, ground truth averaged over it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture choice and data subsets")
    parser.add_argument("--bn", choices=BN_MODES, default="recalibrate",
                        help="BatchNorm statistics when scoring: recalibrate (OFA: exact averages over "
                             "--bn-images training images), reset (SPOS: statistics reset, then a moving "
                             "average over them), train (batch statistics), running (stored)")
    parser.add_argument("--bn-images", type=int, default=2000, help="recalibration images (OFA: 2000)")
    parser.add_argument("--bn-batch-size", type=int, default=200, help="recalibration batch size (OFA: 200)")
    parser.add_argument("--val-images", type=int, default=1000,
                        help="fixed validation subset every architecture is scored on")
    parser.add_argument("--batch-size", type=int, default=250, help="validation batch size")
    parser.add_argument("--score", choices=("accuracy", "loss"), default="accuracy",
                        help="the supernet proxy the metrics use (loss: lower is better)")
    parser.add_argument("--all-checkpoints", action="store_true",
                        help="score every *.ckpt in each run's checkpoints/ folder (tau per epoch)")
    parser.add_argument("--data", default=None, help="data module name (default: the run's config.yaml)")
    parser.add_argument("--data-root", default=None, help="folder of the data set")
    parser.add_argument("--scores", default=None, help="rank a precomputed score table instead of a supernet")
    parser.add_argument("--scores-column", default=None, help="the score table's value column")
    parser.add_argument("--lower-is-better", action="store_true", help="--scores: smaller values rank first")
    parser.add_argument("--space", default=None, help="search space (needed with --scores and --train-ground-truth)")
    parser.add_argument("--train-ground-truth", action="store_true",
                        help="train --archs stand-alone with --config to build a ground-truth table")
    parser.add_argument("--config", default=None, help="--train-ground-truth: the retrain config")
    parser.add_argument("--retrain-args", default="", help="--train-ground-truth: extra retrain arguments")
    parser.add_argument("--shard", default="0/1", help="--train-ground-truth: train share i of n (0-based)")
    parser.add_argument("--top-ratio", type=float, default=0.1, help="top-K marked in the plot (default 10%%)")
    parser.add_argument("--sparse-bin", type=float, default=0.1, help="sparse Kendall tau bin (percent points)")
    parser.add_argument("--study", default=None,
                        help="run a whole study from one YAML (search, ground_truth, rank sections), "
                             "e.g. experiments/rank_nb201_embedded.yaml")
    parser.add_argument("--out", default=None, help="report folder (default: FIRST_RUN/rank, or runs/rank)")
    return parser


# -- data ------------------------------------------------------------------------------------------
def expand_sources(sources: Sequence[str], all_checkpoints: bool) -> list[Path]:
    paths = []
    for source in sources:
        folder = Path(source) / "checkpoints"
        if all_checkpoints and folder.is_dir():
            found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.name))
            if not found:
                raise FileNotFoundError(f"{folder}: no *.ckpt files")
            paths += found
        else:
            paths.append(resolve_checkpoint(source))
    return paths


# -- scoring ---------------------------------------------------------------------------------------
def supernet_sources(args: argparse.Namespace, archs: list, checkpoints: list[Path],
                     first_model: Any) -> tuple[list[dict], dict]:
    """Score ``archs`` with each checkpoint (the first already loaded); returns the sources and the
    protocol entries."""
    from tqdm.auto import tqdm

    space_name = first_model.space.name
    datamodule, data_source = datamodule_from_run(run_directory(checkpoints[0]), args.data, args.data_root)
    val_batches = fixed_batches(datamodule.arch_eval_set, args.val_images, args.batch_size, args.seed)
    bn_batches = (fixed_batches(datamodule.weight_set, args.bn_images, args.bn_batch_size, args.seed + 1)
                  if args.bn in ("recalibrate", "reset") else [])
    sources, seen_epochs = [], {}
    for i, ckpt in enumerate(checkpoints):
        model = first_model if i == 0 else load_algorithm(ckpt)
        if model.space.name != space_name:
            raise ValueError(f"{ckpt}: a {model.space.name!r} supernet, but the others are {space_name!r}")
        epoch = getattr(model, "checkpoint_epoch", None)
        run = run_directory(ckpt)
        if args.all_checkpoints and (run, epoch) in seen_epochs:  # last.ckpt repeats the final epoch
            continue
        seen_epochs[(run, epoch)] = ckpt
        model.eval()
        with tqdm(total=len(archs), desc=f"scoring {run.name}/{ckpt.name}", leave=False, disable=None) as bar:
            scored = score_archs(model, archs, val_batches, args.bn, bn_batches,
                                 progress=lambda done: bar.update(done - bar.n))
        sources.append({"name": str(ckpt), "epoch": epoch, "group": "_".join(run.parts[-2:]),
                        "scores": {"accuracy": [100.0 * a for a, _ in scored], "loss": [loss for _, loss in scored]}})
    images = sum(int(y.shape[0]) for _, y in val_batches)
    protocol = {"scorer": "supernet", "bn_mode": args.bn,
                "bn_images": sum(int(y.shape[0]) for _, y in bn_batches) if bn_batches else None,
                "val_images": images, "data": data_source, "val_split": "the search's validation half"}
    return sources, protocol


def score_table_sources(args: argparse.Namespace, space: Any, archs: list) -> tuple[list[dict], dict]:
    table = load_table(args.scores, space, column=args.scores_column)
    values = join(archs, table, space)
    return ([{"name": str(args.scores), "epoch": None, "scores": {table.column: values}}],
            {"scorer": "scores", "bn_mode": None, "score_table": str(args.scores),
             "score_column": table.column, "lower_is_better": args.lower_is_better})


def build_report(args: argparse.Namespace, space: Any, archs: list, truth_values: list[float],
                 population: list[float], sources: list[dict], protocol: dict[str, Any]) -> dict[str, Any]:
    """Metrics per source, their aggregate, the random baseline and the protocol, as one dict."""
    primary = protocol["score"]
    sign = -1.0 if primary == "loss" or protocol.get("lower_is_better") else 1.0
    for source in sources:
        ranked = [sign * v for v in source["scores"][primary]]
        source["metrics"] = metrics.rank_metrics(ranked, truth_values, bin_width=args.sparse_bin)
        if "loss" in source["scores"] and primary != "loss":  # the other proxy, for comparison
            source["metrics_loss"] = metrics.rank_metrics([-v for v in source["scores"]["loss"]],
                                                          truth_values, bin_width=args.sparse_bin)
    final = [sign * v for v in sources[-1]["scores"][primary]]  # the last checkpoint (or seed) picks
    order = sorted(range(len(archs)), key=lambda i: (-final[i], i))
    baseline = metrics.random_baseline(population, [truth_values[i] for i in order])
    return {"protocol": protocol, "archs": [space.format(a) for a in archs], "truth": truth_values,
            "sources": sources, "aggregate": metrics.aggregate([s["metrics"] for s in sources]),
            "random_baseline": {**baseline, "picked_by": sources[-1]["name"]}}


# -- the command -----------------------------------------------------------------------------------
def main(argv: list[str]) -> dict[str, Any] | None:
    """Run the command; returns the report (None for --train-ground-truth)."""
    import supernets

    args = build_parser().parse_args(argv)
    if args.study:
        return rank_study.run_study(Path(args.study), Path(args.out) if args.out else None, rank=main)["report"]
    if args.train_ground_truth:
        if not (args.space and args.config):
            raise ValueError("--train-ground-truth needs --space and --config (a retrain config, e.g. "
                             "experiments/retrain_nb201_digits_cpu.yaml)")
        space = supernets.get(args.space)
        archs = choose_archs(space, args.archs, None, args.seed, args.deiso)
        out = Path(args.out or "runs/ground_truth")
        table = train_ground_truth(space, archs, args.config, out, parse_shard(args.shard),
                                   shlex.split(args.retrain_args))
        if table is not None:
            print(f"rank against it: oneshot rank RUN --ground-truth {table} --ground-truth-column test_acc "
                  "--archs all")
        return None

    if not args.ground_truth:
        raise ValueError("give --ground-truth TABLE (or --train-ground-truth to build one)")
    if bool(args.sources) == bool(args.scores):
        raise ValueError("give either search runs/checkpoints (RUN_OR_CKPT) or --scores TABLE, not both or neither")
    checkpoints, first_model = [], None
    if args.scores:
        if not args.space:
            raise ValueError("--scores needs --space (the space its arch strings belong to)")
        space_name = args.space
    else:
        checkpoints = expand_sources(args.sources, args.all_checkpoints)
        first_model = load_algorithm(checkpoints[0])
        space_name = first_model.space.name
        if args.space and args.space != space_name:
            raise ValueError(f"--space {args.space}, but {checkpoints[0]} is a {space_name!r} supernet")
    space = supernets.get(space_name)
    api_options = {k: v for k, v in (("dataset", args.benchmark_dataset), ("hp", args.benchmark_hp)) if v}
    truth = load_ground_truth(args.ground_truth, space, column=args.ground_truth_column, **api_options)
    if args.deiso:
        truth = deiso_truth(space, truth)
    archs = choose_archs(space, args.archs, truth, args.seed, args.deiso)
    truth_values = join(archs, truth, space)
    if args.scores:
        sources, protocol = score_table_sources(args, space, archs)
        score = protocol["score_column"]
    else:
        sources, protocol = supernet_sources(args, archs, checkpoints, first_model)
        score = args.score
    protocol = {**protocol, "score": score, "space": space_name, "archs": args.archs, "n": len(archs),
                "deiso": args.deiso, "seed": args.seed, "ground_truth": truth.describe(),
                "sparse_bin": args.sparse_bin,
                "population": "every architecture of the ground truth (the baseline's distribution)"}
    report = build_report(args, space, archs, truth_values, list(truth.values.values()), sources, protocol)
    default = run_directory(checkpoints[0]) / "rank" if checkpoints else Path("runs/rank")
    paths = write_report(report, Path(args.out) if args.out else default, top_ratio=args.top_ratio)
    head = report["sources"][0]["metrics"]
    print(f"{len(archs)} architectures, {len(sources)} source(s), BN {protocol['bn_mode']}: "
          f"Kendall tau {head['kendall_tau']:.3f}, Spearman {head['spearman']:.3f}, "
          f"P@10% {head.get('precision@10%', float('nan')):.3f}")
    if len(sources) > 1:
        tau = report["aggregate"]["kendall_tau"]
        print(f"Kendall tau over {len(sources)} sources: {tau['mean']:.3f} ± {tau['std']:.3f}")
    print(f"report: {paths['markdown']} (also {paths['json'].name}, {paths['plot'].name}, tensorboard/)")
    return report
