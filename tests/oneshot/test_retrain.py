"""Retraining from scratch (DARTS evaluation protocol, reference section (b); NB201 section (e)):
drop-path ramp, auxiliary loss weight, cutout geometry, published parameter counts, and the
``oneshot retrain`` command end to end on the embedded digits."""
import json
import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import supernets
from oneshot.commands import main
from oneshot.data import Cutout, DigitsDataModule
from oneshot.retrain import RetrainModule
from supernets import resolve_arch
from supernets.darts import NetworkImageNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS_CONFIG = os.path.join(ROOT, "experiments", "retrain_nb201_digits_cpu.yaml")
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
TINY = ["--config", DIGITS_CONFIG, "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.limit_train_batches", "2"]
TINY_DARTS = {"C": 4, "layers": 3}  # reductions at cells 1 and 2 (layers//3, 2*layers//3)


def _run_dir(root):
    return os.path.join(root, sorted(os.listdir(root))[-1])


# -- drop path ---------------------------------------------------------------------------------
class _RecordDropPath(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(module.network.drop_path_prob)


def test_drop_path_ramps_linearly_and_is_set_on_the_network(tmp_path):
    """DARTS train.py: model.drop_path_prob = 0.2 * epoch / epochs, at the start of each epoch."""
    model = RetrainModule("DARTS_V2", network_options=TINY_DARTS, in_channels=1, drop_path_prob=0.2)
    record = _RecordDropPath()
    trainer = L.Trainer(max_epochs=4, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=8, bilevel=False))
    assert record.seen == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert model.drop_path_at(600, 600) == pytest.approx(0.2) and model.drop_path_at(300, 600) == pytest.approx(0.1)


def test_drop_path_at_the_module_spares_identity_edges():
    """With the probability the module sets, skip_connect outputs still pass untouched: an
    all-skip normal cell with drop path 0.99 keeps every sample's output (DARTS model.py:
    ``if not isinstance(op, Identity): h = drop_path(h, p)``)."""
    darts = supernets.get("darts")
    skip = "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), " \
           "('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), " \
           "('skip_connect', 1)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), " \
           "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), " \
           "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
    model = RetrainModule(skip, network_options={"C": 4, "layers": 3}, in_channels=1, drop_path_prob=0.99)
    assert model.space is darts
    model.network.drop_path_prob = model.drop_path_at(99, 100)  # 0.9801
    model.network.train()
    cell = model.network.cells[0]  # normal: reductions are cells 1 and 2
    s = torch.randn(16, 12, 8, 8)
    torch.manual_seed(0)
    out = cell(s, s, model.network.drop_path_prob)
    assert (out.flatten(1).abs().sum(1) > 0).all()  # no sample was dropped
    assert torch.equal(out, cell(s, s, 0.0))  # and none was rescaled by 1 / keep_prob


def test_drop_path_is_refused_for_nb201():
    with pytest.raises(ValueError, match="no drop path"):
        RetrainModule(NB201_ARCH, network_options={"C": 4, "N": 1}, drop_path_prob=0.2)


# -- auxiliary loss ----------------------------------------------------------------------------
class _FixedOutputs(nn.Module):
    def __init__(self, logits, aux):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.logits, self.aux = logits, aux

    def forward(self, x):
        return (self.logits + self.weight, self.aux + self.weight)


def test_training_loss_is_ce_plus_0_4_auxiliary_ce(monkeypatch):
    torch.manual_seed(0)
    logits, aux, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(10, (5,))
    model = RetrainModule(NB201_ARCH, network_options={"C": 4, "N": 1}, auxiliary_weight=0.4)
    model.network = _FixedOutputs(logits, aux)
    monkeypatch.setattr(model, "log_dict", lambda *args, **kwargs: None)
    loss = model.training_step((torch.zeros(5, 3, 8, 8), y), 0)
    expected = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)


def test_label_smoothing_applies_to_both_heads():
    logits, aux, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    model = RetrainModule(NB201_ARCH, network_options={"C": 4, "N": 1}, label_smoothing=0.1)
    loss, _ = model.loss_from_outputs((logits, aux), y)
    expected = (F.cross_entropy(logits, y, label_smoothing=0.1)
                + 0.4 * F.cross_entropy(aux, y, label_smoothing=0.1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# -- cutout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("centre, rows, cols", [((16, 16), (8, 24), (8, 24)),  # 16x16 inside
                                                ((0, 31), (0, 8), (23, 32)),    # clipped at corner
                                                ((5, 20), (0, 13), (12, 28))])  # clipped at top
def test_cutout_zeroes_a_16_square_clipped_at_borders(monkeypatch, centre, rows, cols):
    draws = iter(centre)
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor(next(draws)))
    image = torch.randn(3, 32, 32) + 5.0  # no zeros of its own
    out = Cutout(16)(image)
    expected = torch.ones(32, 32, dtype=torch.bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = False
    assert torch.equal(out[0] != 0, expected) and torch.equal(out[1] != 0, expected)
    assert torch.equal(out[:, expected], image[:, expected])  # the rest is untouched
    assert (image != 0).all()  # the input is not modified in place


def test_cutout_is_applied_after_normalisation_on_digits():
    """Background pixels normalise to -mean/std != 0, so exact zeros can only come from a cutout
    applied after Normalize, and they form one square of side <= 4, clipped at the borders."""
    data = DigitsDataModule(batch_size=8, bilevel=False, cutout=4)
    data.setup()
    torch.manual_seed(0)
    for index in range(20):
        image, _ = data.train_set[index]
        zero = (image[0] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4
        assert zero.sum() == len(rows) * len(cols)  # a filled rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
    plain = DigitsDataModule(batch_size=8, bilevel=False)
    plain.setup()
    assert not any((plain.train_set[i][0] == 0).any() for i in range(20))
    assert not any((data.test_set[i][0] == 0).any() for i in range(20))  # never on the test set


def test_cutout_length_must_be_positive():
    with pytest.raises(ValueError, match="cutout"):
        DigitsDataModule(cutout=-1)


# -- architectures and parameters --------------------------------------------------------------
def test_darts_v2_has_the_published_parameter_count_at_evaluation_size():
    """quark0/darts: 3.3M (reference (b)); exact count 3,349,342 without the auxiliary tower."""
    model = RetrainModule("DARTS_V2", network_options={"C": 36, "layers": 20, "auxiliary": True})
    assert model.params == 3_349_342
    assert sum(p.numel() for p in model.parameters()) > model.params  # the tower exists, excluded


def test_space_is_inferred_from_the_arch(tmp_path):
    nb201 = supernets.get("nb201")
    assert resolve_arch(NB201_ARCH)[0] is nb201
    assert resolve_arch("DARTS_V2")[0].name == "darts"
    darts = supernets.get("darts")
    assert resolve_arch(darts.format(darts.genotypes["DARTS_V1"]))[1] == darts.genotypes["DARTS_V1"]
    path = tmp_path / "arch.json"
    arch = nb201.parse(NB201_ARCH)
    path.write_text(json.dumps({"space": "nb201", "arch": NB201_ARCH, "choices": arch.to_json()["choices"]}))
    assert resolve_arch(str(path)) == (nb201, arch)
    with pytest.raises(ValueError, match="cannot tell the space"):
        resolve_arch("resnet18")
    with pytest.raises(ValueError, match="belongs to space 'darts'"):
        resolve_arch("DARTS_V2", space="nb201")
    with pytest.raises(ValueError, match="accepted: C, N"):
        RetrainModule(NB201_ARCH, network_options={"layers": 3})


# -- the command -------------------------------------------------------------------------------
def test_retrain_cli_writes_result_checkpoints_and_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = supernets.get("nb201")
    arch = space.parse(NB201_ARCH)
    with open("arch.json", "w") as f:  # as `oneshot search` writes it
        json.dump({"space": "nb201", "arch": NB201_ARCH, "choices": arch.to_json()["choices"]}, f)
    main(["retrain", "--arch", "arch.json", *TINY, "--trainer.max_epochs", "2",
          "--model.network_options", "{C: 4, N: 1}"])
    run = _run_dir("runs/retrain_nb201_digits_cpu")
    result = json.load(open(os.path.join(run, "result.json")))
    assert set(result) >= {"test_acc", "best_test_acc", "params", "flops", "macs", "epochs", "seed",
                           "space", "arch", "arch_choices"}
    assert result["space"] == "nb201" and result["arch"] == NB201_ARCH and result["epochs"] == 2
    assert result["arch_choices"] == arch.to_json()["choices"] and result["seed"] == 0
    assert 0 <= result["test_acc"] <= result["best_test_acc"] <= 100
    expected = space.cost(arch, 10, (1, 1, 8, 8), C=4, N=1, in_channels=1)
    assert result["params"] == expected["params"] and result["flops"] == expected["flops"] > 0
    assert {"best.ckpt", "last.ckpt"} <= set(os.listdir(os.path.join(run, "checkpoints")))
    events = EventAccumulator(run)
    events.Reload()
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path_prob"} <= set(events.Tags()["scalars"])
    lrs = [e.value for e in events.Scalars("lr")]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.05)  # cosine over 2 epochs
    assert "test accuracy" in capsys.readouterr().out


def test_retrain_cli_published_genotype_on_a_tiny_darts_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["retrain", "--genotype", "DARTS_V2", *TINY, "--trainer.max_epochs", "1",
          "--model.space", "darts", "--model.network_options", "{C: 4, layers: 3}",
          "--model.drop_path_prob", "0.2", "--model.grad_clip", "5"])
    result = json.load(open(os.path.join(_run_dir("runs/retrain_nb201_digits_cpu"), "result.json")))
    darts = supernets.get("darts")
    assert result["space"] == "darts" and result["arch"] == darts.format(darts.genotypes["DARTS_V2"])


@pytest.mark.parametrize("how", ["command line", "config"])
def test_retrain_cli_forces_plain_batches_of_the_whole_train_set(tmp_path, monkeypatch, how):
    """`oneshot retrain` overrides data bilevel: true (a search data config) with false: training
    sees (x, y) batches of the whole train split and validates on the test set."""
    import yaml

    from oneshot.data import ImageDataModule

    monkeypatch.chdir(tmp_path)
    if how == "config":
        config = yaml.safe_load(open(DIGITS_CONFIG))
        config["data"]["init_args"]["bilevel"] = True
        with open("bilevel.yaml", "w") as f:
            yaml.safe_dump(config, f)
        args = ["--config", "bilevel.yaml", *TINY[2:]]
    else:
        args = [*TINY, "--data.init_args.bilevel", "true"]
    loaders, batches = [], []
    own_loader, own_val_loader, own_step = (ImageDataModule.train_dataloader, ImageDataModule.val_dataloader,
                                            RetrainModule.training_step)

    def train_dataloader(self):
        loaders.append(("train", self.bilevel, own_loader(self), len(self.train_set)))
        return loaders[-1][2]

    def val_dataloader(self):
        loaders.append(("val", self.bilevel, own_val_loader(self), len(self.test_set)))
        return loaders[-1][2]

    def training_step(self, batch, batch_idx):
        batches.append(batch)
        return own_step(self, batch, batch_idx)

    monkeypatch.setattr(ImageDataModule, "train_dataloader", train_dataloader)
    monkeypatch.setattr(ImageDataModule, "val_dataloader", val_dataloader)
    monkeypatch.setattr(RetrainModule, "training_step", training_step)
    main(["retrain", "--arch", NB201_ARCH, *args, "--trainer.max_epochs", "1",
          "--trainer.limit_val_batches", "1", "--model.network_options", "{C: 4, N: 1}"])
    assert os.path.isfile(os.path.join(_run_dir("runs/retrain_nb201_digits_cpu"), "result.json"))
    (_, train_bilevel, train_loader, n_train), (_, val_bilevel, val_loader, n_test) = loaders
    assert train_bilevel is False and val_bilevel is False
    assert isinstance(train_loader, torch.utils.data.DataLoader)  # not a CombinedLoader of two halves
    assert len(train_loader.dataset) == n_train == 1437  # the whole digits train split
    assert len(val_loader.dataset) == n_test == 360  # validation is the test set
    assert len(batches) == 2 and all(isinstance(b, (list, tuple)) and len(b) == 2 for b in batches)
    assert all(b[0].shape == (64, 1, 8, 8) and b[1].shape == (64,) for b in batches)


def test_retrain_cli_on_a_rank_other_than_0_writes_no_result(tmp_path, monkeypatch):
    """Under DDP only rank 0 writes result.json; a rank 1 is simulated by the trainer's rank."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    main(["retrain", "--arch", NB201_ARCH, *TINY, "--trainer.max_epochs", "1",
          "--trainer.limit_val_batches", "1", "--model.network_options", "{C: 4, N: 1}"])
    run = _run_dir("runs/retrain_nb201_digits_cpu")
    assert not os.path.exists(os.path.join(run, "result.json"))
    # rank 0 does write it: test_retrain_cli_writes_result_checkpoints_and_logs


def test_retrain_cli_refuses_arch_and_genotype_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["retrain", "--arch", NB201_ARCH, "--genotype", "DARTS_V2", *TINY])
    assert "either --arch or --genotype" in capsys.readouterr().err
    assert not os.path.exists("runs")


@pytest.mark.parametrize("name", ["retrain_darts_cifar10.yaml", "retrain_nb201_cifar10.yaml",
                                  "retrain_nb201_digits_cpu.yaml"])
def test_retrain_configs_parse_with_the_issues_command_line(name, capsys):
    """`oneshot retrain --arch arch.json --config experiments/<name>` (the arch is a literal here)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["retrain", "--arch", "DARTS_V2" if "darts" in name else NB201_ARCH,
              "--config", os.path.join(ROOT, "experiments", name), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "bilevel: false" in capsys.readouterr().out


def test_darts_cifar10_retrain_is_the_published_protocol():
    """quark0/darts cnn/train.py with --auxiliary --cutout (reference section (b))."""
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "experiments", "retrain_darts_cifar10.yaml")))
    model, data = config["model"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 600 and config["seed_everything"] == 0
    assert model["network_options"] == {"C": 36, "layers": 20, "auxiliary": True}
    assert (model["learning_rate"], model["learning_rate_min"], model["momentum"]) == (0.025, 0.0, 0.9)
    assert (model["weight_decay"], model["grad_clip"], model["nesterov"]) == (3e-4, 5.0, False)
    assert (model["auxiliary_weight"], model["drop_path_prob"]) == (0.4, 0.2)
    assert (data["batch_size"], data["cutout"], data["normalization"]) == (96, 16, "darts")


def test_nb201_cifar10_retrain_is_the_benchmark_protocol():
    """AutoDL 200E.config (reference section (e))."""
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "experiments", "retrain_nb201_cifar10.yaml")))
    model, data = config["model"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 200 and model["network_options"] == {"C": 16, "N": 5}
    assert (model["learning_rate"], model["learning_rate_min"], model["momentum"]) == (0.1, 0.0, 0.9)
    assert (model["weight_decay"], model["nesterov"], model["drop_path_prob"]) == (5e-4, True, 0.0)
    assert (data["batch_size"], data["cutout"], data["normalization"]) == (256, 0, "nb201")


def test_imagenet_retrain_config_is_the_published_protocol():
    """quark0/darts train_imagenet.py flags with --auxiliary; the paper's C=48 and 250 epochs."""
    import yaml

    with open(os.path.join(ROOT, "experiments", "retrain_darts_imagenet.yaml")) as f:
        config = yaml.safe_load(f)
    model, data = config["model"], config["data"]
    assert config["trainer"]["max_epochs"] == 250 and config["seed_everything"] == 0
    assert model["network_options"] == {"network": "imagenet", "C": 48, "layers": 14, "auxiliary": True}
    assert (model["learning_rate"], model["lr_schedule"], model["lr_gamma"]) == (0.1, "step", 0.97)
    assert (model["momentum"], model["weight_decay"], model["nesterov"]) == (0.9, 3e-5, False)
    assert (model["grad_clip"], model["auxiliary_weight"], model["drop_path_prob"]) == (5.0, 0.4, 0.0)
    assert model["label_smoothing"] == 0.1
    assert data["class_path"] == "oneshot.data.ImageNetDataModule"
    assert data["init_args"]["batch_size"] == 128


def test_retrain_step_schedule_decays_by_gamma_every_epoch():
    """train_imagenet.py StepLR(optimizer, 1, gamma=0.97): epoch e trains with 0.1 * 0.97**e."""
    from oneshot.retrain import RetrainModule

    model = RetrainModule("DARTS_V2", network_options={"network": "imagenet", "C": 8, "layers": 5},
                          num_classes=1000, learning_rate=0.1, lr_schedule="step", lr_gamma=0.97)
    assert isinstance(model.network, NetworkImageNet)
    scheduler = model.configure_optimizers()["lr_scheduler"]
    assert scheduler["interval"] == "epoch"
    lrs = []
    for _ in range(3):
        lrs.append(scheduler["scheduler"].optimizer.param_groups[0]["lr"])
        scheduler["scheduler"].optimizer.step()
        scheduler["scheduler"].step()
    assert lrs == pytest.approx([0.1, 0.097, 0.1 * 0.97 ** 2])
    with pytest.raises(ValueError, match="'exponential'.*accepted: cosine, step, linear"):
        RetrainModule("DARTS_V2", network_options={"C": 8, "layers": 5}, lr_schedule="exponential")


def test_retrain_linear_schedule_and_decay_on_weights_only_are_spos_templates():
    """SPOS Evaluation/template/train.py: LambdaLR(1 - step / total) stepped before each iteration,
    so iteration i (from 1) runs at lr * (1 - i / T); get_parameters: no decay on BN parameters."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from oneshot.data import DigitsDataModule
    from oneshot.retrain import RetrainModule

    class Lrs(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, module, *args):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # what this iteration uses

    torch.manual_seed(0)
    model = RetrainModule("2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3", num_classes=10, in_channels=1,
                          network_options={"stem_channels": 8, "stage_channels": [16, 24, 32, 48], "last_channels": 32},
                          learning_rate=0.5, lr_schedule="linear", decay_vectors=False, weight_decay=4e-5, grad_clip=0.0)
    lrs = Lrs()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False, callbacks=[lrs],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32, bilevel=False))
    assert lrs.lrs == pytest.approx([0.5 * (1 - i / 6) for i in range(1, 7)])
    decayed, plain = trainer.optimizers[0].param_groups
    assert plain["weight_decay"] == 0.0 and all(p.dim() > 1 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"]) and plain["params"]  # the affine BN parameters
