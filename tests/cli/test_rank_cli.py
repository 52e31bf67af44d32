"""`oneshot rank` end to end on the embedded digits: a supernet ranked against a crafted table,
the report files and protocol, a score table ranked on the same joins, several sources
aggregated, unmatched architectures named, and the stand-alone ground truth trained in shards,
resumably."""
import csv
import json
import os
import shlex
import shutil

import lightning as L
import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

import oneshot.commands.retrain
import supernets
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.commands import main
from oneshot.data import DigitsDataModule
from oneshot.rank import metrics
from oneshot.commands.rank import main as rank_main

INDICES = [0, 11, 300, 1835, 2500, 4000, 6111, 7000, 9000, 12000, 14000, 15624]
SMALL = ["--val-images", "64", "--bn-images", "64", "--bn-batch-size", "32", "--batch-size", "32"]
RETRAIN = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                                       "retrain_nb201_digits_cpu.yaml"))
RETRAIN_TINY = ("--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2 "
                "--trainer.enable_progress_bar false --trainer.enable_model_summary false "
                "--model.network_options '{C: 4, N: 1}'")


@pytest.fixture(scope="module")
def space():
    return supernets.get("nb201")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rank") / "run"
    L.seed_everything(0)
    model = RandomSinglePathSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10,
                                   in_channels=1, selection_samples=2)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                        default_root_dir=run, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True, save_top_k=-1)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return run


def _table(path, space, indices, value):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "arch", "acc"])
        for i in indices:
            writer.writerow([i, space.format(space.from_index(i)), value(i)])
    return path


def test_supernet_against_a_table_writes_the_report_and_its_protocol(run, space, tmp_path, capsys):
    truth = _table(tmp_path / "truth.csv", space, INDICES, lambda i: 50 + (i * 7919) % 45)
    out = tmp_path / "report"
    main(["rank", str(run), "--ground-truth", str(truth), "--archs", "all", "--bn", "train",
          "--out", str(out), *SMALL])
    report = json.loads((out / "rank.json").read_text())
    assert report["protocol"]["bn_mode"] == "train" and report["protocol"]["n"] == len(INDICES)
    # the options given (SMALL) are what the protocol records; batch statistics: no BN images
    assert report["protocol"]["archs"] == "all" and report["protocol"]["val_images"] == 64
    assert report["protocol"]["bn_images"] is None
    assert report["protocol"]["ground_truth"]["column"] == "acc"
    by_arch = dict(zip(report["archs"], report["truth"]))
    assert by_arch == {space.format(space.from_index(i)): 50 + (i * 7919) % 45 for i in INDICES}
    source = report["sources"][0]
    assert source["epoch"] == 1  # last.ckpt, after the second epoch
    expected = metrics.kendall_tau(source["scores"]["accuracy"], report["truth"])
    assert source["metrics"]["kendall_tau"] == pytest.approx(expected)
    assert {"precision@10%", "br@10%", "wr@10%", "sparse_kendall_tau"} <= set(source["metrics"])
    assert (out / "rank.png").stat().st_size > 1000 and "bn_mode: train" in (out / "rank.md").read_text()
    assert any((out / "tensorboard").iterdir())
    assert "Kendall tau" in capsys.readouterr().out


def test_rank_defaults_are_2000_bn_images_1000_validation_images_and_100_sampled_archs():
    from oneshot.commands.rank import build_parser

    args = build_parser().parse_args([])
    assert (args.bn_images, args.val_images, args.archs) == (2000, 1000, "sample:100")
    assert (args.bn, args.bn_batch_size, args.batch_size, args.seed) == ("recalibrate", 200, 250, 0)


def test_the_defaults_are_what_a_run_uses_and_its_protocol_records(run, space, tmp_path, monkeypatch):
    """With no options, 100 sampled architectures are scored on 1,000 validation images after BN
    recalibration on 2,000 training images, and rank.json says so. The digits' search halves
    hold 718/719 images, so the run's data are stood in for by 3,000 images; the scorer is a
    stand-in that records what it is given."""
    import torch
    from types import SimpleNamespace
    from torch.utils.data import TensorDataset

    import oneshot.commands.rank as rank_command

    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(3000, 1, 8, 8, generator=g), torch.randint(0, 10, (3000,), generator=g))
    monkeypatch.setattr(rank_command, "datamodule_from_run",
                        lambda run, data, root: (SimpleNamespace(arch_eval_set=images, weight_set=images), "stand-in"))
    given = []

    def score_archs(model, archs, val_batches, bn_mode, bn_batches, progress=None):
        given.append((len(archs), [len(y) for _, y in val_batches], bn_mode, [len(y) for _, y in bn_batches]))
        return [(0.5 + 0.001 * i, 1.0 - 0.001 * i) for i in range(len(archs))]

    monkeypatch.setattr(rank_command, "score_archs", score_archs)
    indices = list(range(0, 15625, 125))  # 125 architectures to sample 100 from
    truth = _table(tmp_path / "truth.csv", space, indices, lambda i: 60 + i % 17)
    rank_main([str(run), "--ground-truth", str(truth), "--out", str(tmp_path / "defaults")])
    (n_archs, val_sizes, bn_mode, bn_sizes), = given
    assert n_archs == 100 and bn_mode == "recalibrate"
    assert sum(val_sizes) == 1000 and set(val_sizes) == {250}  # --batch-size 250
    assert sum(bn_sizes) == 2000 and set(bn_sizes) == {200}  # --bn-batch-size 200
    protocol = json.loads((tmp_path / "defaults" / "rank.json").read_text())["protocol"]
    assert (protocol["archs"], protocol["n"], protocol["bn_mode"]) == ("sample:100", 100, "recalibrate")
    assert (protocol["val_images"], protocol["bn_images"]) == (1000, 2000)


def test_score_table_and_several_sources_share_the_joins(run, space, tmp_path):
    truth = _table(tmp_path / "truth.csv", space, INDICES, lambda i: 60 + i / 1000)
    scores = _table(tmp_path / "scores.csv", space, INDICES, lambda i: -i)  # the exact reverse
    out = tmp_path / "scores_report"
    report = rank_main([
        "--scores", str(scores), "--scores-column", "acc", "--space", "nb201", "--ground-truth",
        str(truth), "--archs", "all", "--out", str(out)])
    assert report["sources"][0]["metrics"]["kendall_tau"] == pytest.approx(-1.0)
    assert report["protocol"]["scorer"] == "scores" and report["protocol"]["bn_mode"] is None
    flipped = rank_main([
        "--scores", str(scores), "--scores-column", "acc", "--lower-is-better", "--space", "nb201",
        "--ground-truth", str(truth), "--archs", "all", "--out", str(out)])
    assert flipped["sources"][0]["metrics"]["kendall_tau"] == pytest.approx(1.0)
    twice = rank_main([str(run), str(run / "checkpoints" / "last.ckpt"), "--ground-truth",
                                       str(truth), "--archs", "sample:6", "--out", str(out), *SMALL])
    tau = twice["aggregate"]["kendall_tau"]
    assert tau["n"] == 2 and tau["std"] == pytest.approx(0.0)  # the same weights, the same scores


def test_every_checkpoint_of_a_run_gives_tau_per_epoch(run, space, tmp_path):
    truth = _table(tmp_path / "truth.csv", space, INDICES, lambda i: 60 + i % 13)
    report = rank_main([str(run), "--all-checkpoints", "--ground-truth", str(truth), "--archs", "all",
                        "--out", str(tmp_path / "epochs"), *SMALL])
    assert [s["epoch"] for s in report["sources"]] == [0, 1]  # last.ckpt repeats epoch 1: skipped
    assert report["aggregate"]["kendall_tau"]["n"] == 2


NB201_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "nb201_cifar10.csv")


def test_the_shared_nb201_table_with_deiso(run, space, tmp_path):
    if not os.path.isfile(NB201_CSV):
        pytest.skip(f"NB201 table not found at {NB201_CSV}")
    report = rank_main([str(run), "--ground-truth", NB201_CSV, "--ground-truth-column", "cifar10_test_acc",
                        "--archs", "sample:8", "--deiso", "--bn", "running", "--out", str(tmp_path / "nb201"), *SMALL])
    assert report["protocol"]["deiso"] is True and report["protocol"]["ground_truth"]["n"] == 6466
    keys = {space.isomorphism_key(space.parse(a)) for a in report["archs"]}
    assert len(keys) == 8  # one per class
    population = report["random_baseline"]["population"]
    assert population["n"] == 6466 and 85 < population["mean"] < 90


def test_unmatched_architectures_are_listed(run, space, tmp_path, capsys):
    truth = _table(tmp_path / "truth.csv", space, INDICES[:-1], lambda i: 70.0 + i % 5)
    listing = tmp_path / "archs.txt"
    listing.write_text("\n".join(space.format(space.from_index(i)) for i in INDICES))
    with pytest.raises(SystemExit) as exit_info:
        main(["rank", str(run), "--ground-truth", str(truth), "--archs", f"file:{listing}", *SMALL])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "1 of 12" in err and space.format(space.from_index(INDICES[-1])) in err


def test_ground_truth_training_is_sharded_and_resumable(space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    original = oneshot.commands.retrain.main
    monkeypatch.setattr(oneshot.commands.retrain, "main", lambda argv: (calls.append(argv), original(argv))[1])
    base = ["rank", "--train-ground-truth", "--space", "nb201", "--archs", "sample:3", "--config", RETRAIN,
            "--retrain-args", RETRAIN_TINY, "--out", "gt"]
    main([*base, "--shard", "1/2"])
    assert len(calls) == 1
    with open("gt/ground_truth.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    main([*base, "--shard", "0/2"])
    main([*base, "--shard", "0/2"])  # everything of this shard is done: nothing is trained again
    assert len(calls) == 3
    with open("gt/ground_truth.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(0.0 <= float(r["test_acc"]) <= 100.0 for r in rows)
    folders = sorted(p.name for p in (tmp_path / "gt" / "archs").iterdir())
    assert all(name.startswith("index_") for name in folders)
    sampled = {space.format(space.from_index(int(name[6:]))) for name in folders}
    assert sampled == {r["arch"] for r in rows}


def test_a_whole_study_from_one_file_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiments = os.path.dirname(RETRAIN)
    study = {
        "search": {"config": "rsps_nb201_digits_cpu.yaml",  # beside the study file
                   "args": ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.max_epochs", "1",
                            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                            "--model.init_args.selection_samples", "2", "--trainer.enable_progress_bar", "false"]},
        "ground_truth": {"config": RETRAIN, "archs": "sample:3", "args": shlex.split(RETRAIN_TINY)},
        "rank": {"archs": "all", "bn": "recalibrate", "val_images": 64, "bn_images": 64, "bn_batch_size": 32},
    }
    path = tmp_path / "studies" / "study.yaml"  # the search config beside it, found from there
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(study))
    shutil.copy(os.path.join(experiments, "rsps_nb201_digits_cpu.yaml"), path.parent)
    report = rank_main(["--study", str(path), "--out", "study"])
    assert report["protocol"]["n"] == 3 and report["protocol"]["bn_mode"] == "recalibrate"
    assert report["protocol"]["bn_images"] == 64 and report["protocol"]["val_images"] == 64
    assert (tmp_path / "study" / "search" / "arch.json").is_file()
    assert (tmp_path / "study" / "ground_truth" / "ground_truth.csv").is_file()
    assert (tmp_path / "study" / "rank" / "rank.md").is_file()
    broken = tmp_path / "broken.yaml"
    broken.write_text("search: {config: x.yaml}\nrank: {}\nextra: 1\n")
    with pytest.raises(ValueError, match="unknown: extra; missing: ground_truth"):
        rank_main(["--study", str(broken)])


def test_options_that_do_not_fit_are_refused_before_scoring(run, space, tmp_path, capsys):
    truth = _table(tmp_path / "truth.csv", space, INDICES, lambda i: 70.0 + i % 5)
    for extra, message in ((["--benchmark-dataset", "cifar100"], "only apply to the NAS-Bench-201 API"),
                           (["--space", "darts"], "is a 'nb201' supernet")):
        with pytest.raises(SystemExit) as exit_info:
            main(["rank", str(run), "--ground-truth", str(truth), "--archs", "all", *extra, *SMALL])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
