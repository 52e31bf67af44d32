"""OFA progressive shrinking, one phase: the distillation loss against a hand computation, the
batch resolution shared by every rank, OFA's warm-up + cosine, exact BN recalibration into an
elastic BN's slice, the phase's choices, and the one-line errors of a phase started wrongly."""
import math
import random
from types import SimpleNamespace

import pytest
import torch

from oneshot.algorithms.ofa import PHASES, OfaSearch, soft_cross_entropy
from oneshot.rank.scoring import recalibrate_batchnorm
from supernets import Arch
from supernets.ofa_mbv3 import depth_label, expand_label, kernel_label

TINY = {"space_options": {"base_widths": [8, 8, 8, 16, 16, 24, 24, 32, 48], "resolutions": [16, 32, 8]},
        "num_classes": 10, "in_channels": 1, "validation_resolutions": [16, 32]}


def test_soft_cross_entropy_is_the_hand_computation():
    torch.manual_seed(0)
    logits, teacher = torch.randn(3, 5), torch.randn(3, 5)
    p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in teacher.tolist()]
    expected = 0.0
    for row, probs in zip(logits.tolist(), p):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += -sum(q * (v - log_z) for q, v in zip(probs, row))
    assert soft_cross_entropy(logits, torch.softmax(teacher, 1)).item() == pytest.approx(expected / 3, rel=1e-6)


def test_the_batch_resolution_is_the_same_on_every_rank_and_uses_every_size(monkeypatch):
    model = OfaSearch(phase="full", **TINY)
    sequences = []
    for rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(rank)), monkeypatch.setenv("RANK", str(rank))
        random.seed(100 + rank), torch.manual_seed(100 + rank)  # process RNGs differ per rank
        sequences.append([model.step_resolution(step) for step in range(60)])
    assert sequences[0] == sequences[1] and set(sequences[0]) == {16, 24, 32}
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert [model.step_resolution(step) for step in range(60)] != sequences[0]  # the run's seed decides


def test_warm_up_then_cosine_per_iteration_as_the_reference():
    model = OfaSearch(phase="full", learning_rate=0.03, warmup_epochs=1, warmup_lr=-1.0, **TINY)
    model._trainer = SimpleNamespace(world_size=4, max_epochs=3, num_training_batches=10)
    init = 0.03 * 4  # init_lr = base_lr * number of devices
    for t in (0, 4, 9):  # warmup_adjust_learning_rate: T_cur = t + 1 of T_total = 10
        assert model.lr_factor(t) * init == pytest.approx((t + 1) / 10 * (init + 1.0) - 1.0)
    for t in (10, 15, 29):  # calc_learning_rate over the 2 epochs after the warm-up
        assert model.lr_factor(t) * init == pytest.approx(0.5 * init * (1 + math.cos(math.pi * (t - 10) / 20)))


def test_recalibration_writes_exact_averages_into_the_elastic_slice():
    torch.manual_seed(0)
    model = OfaSearch(phase="expand2", kd_ratio=0.0, **TINY)
    arch = model.space.smallest()  # expand 3: a narrow slice of every middle BN
    block = model.supernet.stages[0][0]
    seen = []
    hook = block.expand_bn.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    batches = [(torch.randn(n, 1, 8, 8), torch.zeros(n, dtype=torch.long)) for n in (5, 3)]
    before = block.expand_bn.running_mean.clone()
    recalibrate_batchnorm(model, arch, batches)
    hook.remove()
    seen = seen[-2:]
    channels = seen[0].shape[1]
    assert channels < block.expand_bn.num_features
    mean = sum(x.mean((0, 2, 3)) * x.shape[0] for x in seen) / 8
    var = sum(((x - x.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3)) * x.shape[0] for x in seen) / 8
    torch.testing.assert_close(block.expand_bn.running_mean[:channels], mean)
    torch.testing.assert_close(block.expand_bn.running_var[:channels], var)
    assert torch.equal(block.expand_bn.running_mean[channels:], before[channels:])


def test_a_phase_samples_only_its_choices_and_names_values_it_did_not_train():
    model = OfaSearch(phase="depth1", **TINY)
    for step in range(20):
        arch = model.sample_architecture("weights", step, 0)
        assert all(arch[expand_label(s, 1)] == 6 and arch[depth_label(s)] in (3, 4) for s in range(1, 6))
    assert {model.space.sample(random.Random(i))[kernel_label(1, 1)] for i in range(30)} == {3, 5, 7}
    outside = Arch("ofa-mbv3", {**dict(model.space.largest()), depth_label(2): 2})
    with pytest.raises(ValueError, match="stage2.depth = 2 is outside what phase depth1 trained .*phase depth2"):
        model.loss_and_accuracy((torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), dict(outside))
    resolution = Arch("ofa-mbv3", {**dict(model.space.largest()), "resolution": 20})
    with pytest.raises(ValueError, match="resolution = 20 is outside .*the supernet serves only these"):
        model.loss_and_accuracy((torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), dict(resolution))
    with pytest.raises(ValueError, match=r"validation_resolutions \[20\] are not among"):
        OfaSearch(phase="depth1", **{**TINY, "validation_resolutions": [16, 20]})


def test_the_validation_grid_is_the_reference_one():
    names = [name for name, _ in OfaSearch(phase="kernel", **TINY).validation_grid()]
    assert names == [f"R{r}-D4-E6-K{k}" for k in (3, 5, 7) for r in (16, 32)]
    grid = OfaSearch(phase="expand2", **TINY).validation_grid()
    assert len(grid) == 16 and {name.split("-")[1] for name, _ in grid} == {"D2", "D4"}
    assert {name.split("-")[2] for name, _ in grid} == {"E3", "E6"}


def test_phases_started_wrongly_get_one_line_errors(tmp_path):
    trainer = SimpleNamespace(ckpt_path=None)
    model = OfaSearch(phase="depth1", **TINY)
    model._trainer = trainer
    with pytest.raises(ValueError, match="phase depth1 continues the weights of phase kernel: pass"):
        model.on_fit_start()
    full = OfaSearch(phase="full", **TINY)
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": full.state_dict(), "hyper_parameters": dict(full.hparams),
                "oneshot": full.checkpoint_identity()}, path)
    wrong = OfaSearch(phase="depth1", init_from=str(path), **TINY)
    wrong._trainer = trainer
    with pytest.raises(ValueError, match="holds phase 'full'; phase depth1 starts from phase 'kernel'"):
        wrong.on_fit_start()
    with pytest.raises(ValueError, match="phase 'nope': one of full, kernel"):
        OfaSearch(phase="nope", **TINY)
    assert list(PHASES) == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
