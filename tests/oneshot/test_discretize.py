"""`oneshot discretize`: the space rule equals the algorithm's export, best-of-N scores and picks,
the output loads as an architecture, and bad input is named."""
import json
import random

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import supernets
from oneshot.algorithms import DartsSearch, PCDartsSearch
from oneshot.data import DigitsDataModule
from oneshot.algorithms import load_algorithm
from oneshot.commands.common import UserError
from oneshot.commands.discretize import main
from oneshot.info import describe
from oneshot.selection.best_of_n import best_of_n

TINY = {"space": "nb201", "space_options": {"C": 4, "N": 1}, "num_classes": 10, "in_channels": 1}


def _search(run, cls, **kwargs):
    """A one-epoch search on digits whose last checkpoint is RUN/checkpoints/last.ckpt."""
    L.seed_everything(0)
    model = cls(**TINY, **kwargs)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        default_root_dir=run,  # the search writes RUN/arch.json there
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return model


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("darts_run")
    return run, _search(run, DartsSearch)


@pytest.fixture(scope="module")
def pcdarts_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pcdarts_run")
    return run, _search(run, PCDartsSearch, partial_channels=2, arch_warmup_epochs=0)


@pytest.mark.parametrize("which", ["darts_run", "pcdarts_run"])
def test_space_rule_equals_the_algorithms_own_export(which, request, capsys):
    run, trained = request.getfixturevalue(which)
    assert (run / "arch.json").is_file()  # the search's own record, next to the checkpoints
    main([str(run)])  # a run directory: RUN/checkpoints/last.ckpt
    path = run / "arch_rule.json"
    record = json.loads(path.read_text())
    space = supernets.get("nb201")
    assert space.load(str(path)) == trained.export()
    assert record["arch"] == space.format(trained.export())
    assert record["choices"] == json.loads((run / "arch.json").read_text())["choices"]
    assert record["rule"] == "rule" and record["algorithm"] == type(trained).__name__
    assert record["source"] == str(run / "checkpoints" / "last.ckpt")
    weights = trained.arch_weights()  # PC-DARTS: softmax(alpha) times the normalized betas
    assert set(record["scores"]) == set(weights)
    for label, values in record["scores"].items():
        assert values == pytest.approx(weights[label].tolist(), abs=1e-6)
    assert f"wrote {path}" in capsys.readouterr().out
    # the output is an architecture `oneshot info --arch` reads
    assert f"index:   {space.index(trained.export())}" in describe(space, arch=str(path))


def test_pcdarts_checkpoint_loads_as_pcdarts_with_its_betas(pcdarts_run):
    run, trained = pcdarts_run
    model = load_algorithm(run / "checkpoints" / "last.ckpt")
    assert type(model) is PCDartsSearch
    for label, beta in trained.betas.items():
        assert torch.equal(model.betas[label], beta.detach().cpu())


def test_loading_leaves_the_callers_random_state_alone(darts_run):
    run, _ = darts_run
    random.seed(123)
    torch.manual_seed(123)
    expected = random.random(), torch.rand(1)
    random.seed(123)
    torch.manual_seed(123)
    load_algorithm(run / "checkpoints" / "last.ckpt")  # restores the run's states internally
    assert (random.random(), torch.rand(1)) == expected


def test_best_of_n_writes_every_score_and_picks_the_most_accurate(darts_run, tmp_path):
    run, _ = darts_run
    out = tmp_path / "picked.json"
    main([str(run / "checkpoints" / "last.ckpt"), "--rule", "best_of_n", "--samples", "6",
          "--batches", "2", "--seed", "5", "--out", str(out)])
    record = json.loads(out.read_text())
    scores = record["scores"]
    assert len(scores) == 6 and all(len(row) == 3 for row in scores)
    best = min(scores, key=lambda row: (-row[1], row[2]))
    assert record["arch"] == best[0]
    assert record["settings"] == {"num_samples": 6, "num_batches": 2, "seed": 5, "data": "digits"}
    # the same seed, weights and batches give the same candidates and scores
    model = load_algorithm(run / "checkpoints" / "last.ckpt")
    data = DigitsDataModule()
    data.setup("fit")
    arch, direct = best_of_n(model, data.val_dataloader(), 6, 2, rng=random.Random(5))
    assert [row[0] for row in direct] == [row[0] for row in scores]
    assert [row[1] for row in direct] == pytest.approx([row[1] for row in scores])
    assert supernets.get("nb201").load(str(out)) == arch
    # --next-batches: NB201's protocol, each candidate on the next batches (here: other scores)
    main([str(run / "checkpoints" / "last.ckpt"), "--rule", "best_of_n", "--samples", "6",
          "--batches", "2", "--seed", "5", "--next-batches", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["settings"]["shared_batches"] is False
    _, reference = best_of_n(model, data.val_dataloader(), 6, 2, rng=random.Random(5), shared_batches=False)
    assert [row[1] for row in record["scores"]] == pytest.approx([row[1] for row in reference])
    assert [row[1] for row in reference] != pytest.approx([row[1] for row in direct])


def test_best_of_n_reads_the_data_of_the_runs_config(darts_run, tmp_path):
    run, _ = darts_run
    (run / "config.yaml").write_text("data:\n  class_path: oneshot.data.DigitsDataModule\n"
                                     "  init_args:\n    batch_size: 8\n    seed: 0\n")
    try:
        main([str(run), "--rule", "best_of_n", "--samples", "2"])
    finally:
        (run / "config.yaml").unlink()
    record = json.loads((run / "arch_best_of_n.json").read_text())
    assert "oneshot.data.DigitsDataModule from" in record["settings"]["data"]
    assert len(record["scores"]) == 2
    # one batch of 8 images: every accuracy is a multiple of 1/8
    assert all(abs(row[1] * 8 - round(row[1] * 8)) < 1e-6 for row in record["scores"])


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        main([str(missing)])
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        main([str(tmp_path)])  # a directory without checkpoints/last.ckpt


def test_foreign_checkpoint_and_non_checkpoint_are_refused(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, foreign)
    with pytest.raises(ValueError, match="not written by oneshot"):
        main([str(foreign)])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        main([str(text)])


def test_bad_options_are_refused(darts_run):
    run, _ = darts_run
    with pytest.raises(ValueError, match="--data 'mnist'.*digits"):
        main([str(run), "--rule", "best_of_n", "--data", "mnist"])
    with pytest.raises(ValueError, match="--samples 0"):
        main([str(run), "--rule", "best_of_n", "--samples", "0"])
    with pytest.raises(UserError, match="invalid choice: 'argmax'"):  # one line, not the usage
        main([str(run), "--rule", "argmax"])


def test_discretize_is_a_cli_command(capsys):
    from oneshot.commands import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["discretize", "no/such/run"])
    assert exit_info.value.code == 2 and "no/such/run" in capsys.readouterr().err
