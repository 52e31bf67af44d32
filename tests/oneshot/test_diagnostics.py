"""Collapse diagnostics: skip counts, the Hessian's dominant eigenvalue, R-DARTS's early stop."""
import json
import os

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import supernets
from oneshot.algorithms import DartsSearch
from oneshot.data import DigitsDataModule
from oneshot.diagnostics import EigenvalueEarlyStop, dominant_hessian_eigenvalue, skip_connect_count
from ops.kernels import use_fused


# --- skip_connect counts ------------------------------------------------------------------------
def test_skip_count_of_published_darts_cells():
    darts = supernets.get("darts")
    # quark0/darts genotypes.py DARTS_V1: normal has skip_connect at (node 3, input 0),
    # (node 4, input 0), (node 5, input 2); reduce at (3, 2), (4, 2), (5, 2)
    assert skip_connect_count(darts.genotypes["DARTS_V1"], darts) == {"normal": 3, "reduce": 3}
    # DARTS_V2: normal (4, 0), (5, 0); reduce (3, 2), (4, 2), (5, 2)
    assert skip_connect_count(darts.genotypes["DARTS_V2"], "darts") == {"normal": 2, "reduce": 3}
    # PC-DARTS: one skip (node 2, input 0) in normal, none in reduce: the zero is still reported
    assert skip_connect_count(darts.genotypes["PC_DARTS"], darts) == {"normal": 1, "reduce": 0}


def test_skip_count_of_nb201_cells():
    nb201 = supernets.get("nb201")
    all_skip = nb201.from_index(1835)  # the cell DARTS collapses to on NAS-Bench-201
    assert skip_connect_count(all_skip, nb201) == {"cell": 6}
    arch = nb201.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                       "+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    assert skip_connect_count(arch, nb201) == {"cell": 1}


def test_skip_count_refuses_an_arch_of_another_space():
    with pytest.raises(ValueError, match="nb201"):
        skip_connect_count(supernets.get("nb201").from_index(0), "darts")


# --- dominant Hessian eigenvalue -----------------------------------------------------------------
def _quadratic(eigenvalues, seed=0):
    """loss(x) = 0.5 x'Ax with A = Q diag(eigenvalues) Q', split over two parameter tensors."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x1 = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(n - 2, generator=g, dtype=torch.float64, requires_grad=True)

    def loss():
        x = torch.cat([x1, x2])
        return 0.5 * x @ a @ x
    return loss, [x1, x2]


@pytest.mark.parametrize("eigenvalues, expected", [
    ([4.0, -1.0, 0.5, 2.0, 0.0], 4.0),
    ([-5.0, 2.0, 1.0, -0.5, 3.0], -5.0),  # the largest magnitude is negative
])
def test_power_iteration_finds_the_dominant_eigenvalue_of_a_quadratic(eigenvalues, expected):
    loss, params = _quadratic(eigenvalues)
    value = dominant_hessian_eigenvalue(loss, params, iterations=200, tol=1e-10,
                                        generator=torch.Generator().manual_seed(1))
    assert value == pytest.approx(expected, rel=1e-6)


def test_power_iteration_does_not_touch_the_global_rng():
    loss, params = _quadratic([3.0, 1.0, 0.5])
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    dominant_hessian_eigenvalue(loss, params, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(1), expected_next)


def _tiny_model(**options):
    torch.manual_seed(0)
    return DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=3, in_channels=1,
                       **options)


def test_power_iteration_matches_the_exact_hessian_of_a_supernet_validation_loss():
    model = _tiny_model().double()
    with torch.no_grad():  # away from uniform, so that the Hessian has a clear dominant direction
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    g = torch.Generator().manual_seed(3)
    batch = torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    labels = list(model.alphas)
    params = [model.alphas[k] for k in labels]

    def loss_of(*alphas):
        return model.loss_and_accuracy(batch, {k: torch.softmax(a, -1) for k, a in zip(labels, alphas)})[0]

    with use_fused(False):  # the oracle differentiates twice: the fused ops' backward is not differentiable
        hessian = torch.autograd.functional.hessian(loss_of, tuple(p.detach() for p in params))
    n = sum(p.numel() for p in params)
    full = torch.cat([torch.cat([hessian[i][j].reshape(params[i].numel(), params[j].numel())
                                 for j in range(len(params))], 1) for i in range(len(params))], 0)
    assert full.shape == (n, n)
    spectrum = torch.linalg.eigvalsh(full)
    exact = float(spectrum[spectrum.abs().argmax()])
    assert abs(exact) > 1e-3
    value = dominant_hessian_eigenvalue(lambda: model.loss_and_accuracy(batch, model.arch_weights())[0],
                                        params, iterations=500, tol=1e-12,
                                        generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(exact, rel=1e-4)


# --- R-DARTS early stop ---------------------------------------------------------------------------
def test_early_stop_fires_at_the_r_darts_epoch_and_rolls_back():
    stop = EigenvalueEarlyStop(window=5, factor=1.3, delta=4, start_epoch=10)
    sequence = [1.0] * 18 + [3.0] * 5
    decisions = [stop.update(epoch, value, arch=f"arch@{epoch}") for epoch, value in enumerate(sequence)]
    # epoch 18: local average of epochs 14..18 = (4 + 3) / 5 = 1.4, centred on epoch 16; the one
    # 4 measurements back (epochs 10..14, centred on 12) is 1.0; 1.4 > 1.3 and 12 >= 10: stop
    assert decisions.index(True) == 18
    assert not any(decisions[:18])
    assert stop.stop_epoch == 12 and stop.stop_arch == "arch@12"


def test_early_stop_waits_for_start_epoch():
    stop = EigenvalueEarlyStop(start_epoch=10)
    # a steep rise early on: the earlier local average would be centred before epoch 10
    decisions = [stop.update(epoch, 1.0 if epoch < 8 else 10.0) for epoch in range(16)]
    assert not any(decisions)  # at epoch 15 the earlier average is centred on epoch 9
    assert stop.update(16, 10.0) is False  # centred on 10, but its window (8..12) already rose
    slow = EigenvalueEarlyStop(start_epoch=0)
    assert [slow.update(e, 1.0 if e < 8 else 10.0) for e in range(9)].index(True) == 8
    assert slow.stop_epoch == 2  # 8 - window // 2 - delta


def test_early_stop_does_not_fire_on_flat_or_slowly_rising_eigenvalues():
    flat, slow = EigenvalueEarlyStop(), EigenvalueEarlyStop()
    assert not any(flat.update(e, 0.5) for e in range(50))
    assert not any(slow.update(e, 1.0 + 0.01 * e) for e in range(50))  # < 1.3x over 4 epochs
    assert flat.stop_epoch is None and flat.stop_arch is None


def test_early_stop_with_eigenvalues_every_other_epoch():
    stop = EigenvalueEarlyStop(start_epoch=10)
    epochs = list(range(0, 40, 2))
    decisions = [stop.update(e, 1.0 if e < 30 else 5.0) for e in epochs]
    # epoch 30: average of epochs 22..30 = 1.8 centred on 26; earlier one centred on 18 is 1.0
    assert epochs[decisions.index(True)] == 30 and stop.stop_epoch == 18


def test_early_stop_state_round_trip():
    stop = EigenvalueEarlyStop(start_epoch=0)
    for e in range(6):
        stop.update(e, 1.0 + e, arch=e)
    copy = EigenvalueEarlyStop(start_epoch=0)
    copy.load_state_dict(json.loads(json.dumps(stop.state_dict())))
    assert [copy.update(e, 100.0, arch=e) for e in (6,)] == [stop.update(e, 100.0, arch=e) for e in (6,)]
    assert copy.stop_epoch == stop.stop_epoch and copy.local_averages == stop.local_averages


# --- in a search run --------------------------------------------------------------------------------
def _fit(tmp_path, epochs, **options):
    L.seed_everything(0)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                        **options)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="search")
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=logger,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return model, trainer


def test_search_logs_collapse_scalars(tmp_path):
    model, trainer = _fit(tmp_path, 2, hessian_every=1, hessian_iterations=5)
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"collapse/skip_connect/cell", "collapse/hessian_eigenvalue",
            "arch_entropy/mean_normalized"} <= scalars
    eigenvalues = events.Scalars("collapse/hessian_eigenvalue")
    assert [e.step for e in eigenvalues] == [0, 1]
    assert all(e.value == e.value and e.value != 0.0 for e in eigenvalues)  # finite, not 0
    skips = events.Scalars("collapse/skip_connect/cell")
    assert skips[-1].value == skip_connect_count(model.export(), "nb201")["cell"]


def test_diagnostic_leaves_training_state_alone(tmp_path):
    """Same seed with and without the diagnostic: identical alphas and BatchNorm statistics."""
    with_hessian, _ = _fit(tmp_path / "a", 2, hessian_every=1, hessian_iterations=3)
    without, _ = _fit(tmp_path / "b", 2)
    for a, b in zip(with_hessian.state_dict().values(), without.state_dict().values()):
        assert torch.equal(a, b)


def test_no_hessian_without_trainable_architecture(tmp_path):
    class Fixed(DartsSearch):
        def architecture_parameters(self):
            return []  # nothing trainable to take a Hessian of

    model = Fixed(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                  hessian_every=1)
    model._hessian_batch = (torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    assert model.hessian_eigenvalue() is None


def test_early_stop_needs_the_eigenvalue():
    with pytest.raises(ValueError, match="hessian_every"):
        _tiny_model(early_stop_on_eigenvalue=True)


def test_early_stop_stops_training_and_exports_the_rolled_back_arch(tmp_path, monkeypatch):
    calls = []

    def rising(self):  # a crafted eigenvalue curve: flat, then a jump at epoch 3
        calls.append(self.current_epoch)
        return 1.0 if self.current_epoch < 3 else 4.0

    monkeypatch.setattr(DartsSearch, "hessian_eigenvalue", rising)
    model, trainer = _fit(tmp_path, 10, hessian_every=1, early_stop_on_eigenvalue=True,
                          early_stop_options={"window": 1, "delta": 2, "start_epoch": 0})
    # window 1, delta 2: at epoch 3 the ratio 4 / (value of epoch 1) = 4 > 1.3
    assert calls == [0, 1, 2, 3] and trainer.current_epoch == 4  # stopped after epoch 3
    assert model.eigenvalue_early_stop.stop_epoch == 1
    record = json.load(open(os.path.join(trainer.log_dir, "arch.json")))
    assert record["epoch"] == 1 and "early stop" in record["rule"]
    rolled_back = model.eigenvalue_early_stop.stop_arch
    assert model.export() == rolled_back
    assert record["arch"] == supernets.get("nb201").format(rolled_back)


def test_early_stop_state_survives_a_checkpoint(tmp_path):
    nb201 = supernets.get("nb201")
    model = _tiny_model(hessian_every=1, early_stop_on_eigenvalue=True,
                        early_stop_options={"window": 1, "delta": 1, "start_epoch": 0})
    model.eigenvalue_early_stop.update(0, 1.0, nb201.from_index(1835))
    assert model.eigenvalue_early_stop.update(1, 2.0, nb201.from_index(6111))
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    restored = _tiny_model(hessian_every=1, early_stop_on_eigenvalue=True,
                           early_stop_options={"window": 1, "delta": 1, "start_epoch": 0})
    restored.on_load_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=True))
    assert restored.export() == nb201.from_index(1835)  # the rolled-back arch, not the current one
    assert restored.eigenvalue_early_stop.eigenvalues == [1.0, 2.0]
