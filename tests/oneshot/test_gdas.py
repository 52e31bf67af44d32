"""GDAS: straight-through Gumbel sampling, temperature schedule, rank-shared samples, CLI run."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import supernets
from oneshot.algorithms import gdas
from oneshot.algorithms.gdas import GdasSearch, gumbel_noise, gumbel_straight_through
from oneshot.commands import main
from ops.mixed import MixedOp

NB201_OPS = supernets.get("nb201").build_supernet(C=4, N=1).edges["1<-0"]
TINY = ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1",
        "--trainer.enable_model_summary", "false"]


def _tiny_model(**kwargs):
    torch.manual_seed(0)
    return GdasSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=3, in_channels=1, **kwargs)


@pytest.mark.parametrize("seed", range(5))
def test_forward_is_the_chosen_candidate_scaled_by_exactly_one(seed):
    torch.manual_seed(seed)
    mixed = MixedOp(NB201_OPS, C=4).eval()
    x = torch.randn(2, 4, 8, 8)
    alpha = torch.randn(len(NB201_OPS), requires_grad=True)
    path = gumbel_straight_through(alpha, tau=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(path.weights.detach(), F.one_hot(torch.tensor(path.index), len(NB201_OPS)).float())
    assert torch.equal(mixed(x, path), mixed.ops[path.index](x))


def test_supernet_with_samples_equals_the_sampled_single_path():
    model = _tiny_model().eval()
    with torch.no_grad():
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    x = torch.randn(4, 1, 8, 8)
    samples = model.sampled_decisions("weights")
    single_path = {label: path.index for label, path in samples.items()}
    assert torch.equal(model(x, samples), model(x, single_path))


def test_alpha_gradient_is_the_gumbel_softmax_gradient():
    torch.manual_seed(0)
    mixed = MixedOp(NB201_OPS, C=4)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = torch.randn(len(NB201_OPS), requires_grad=True)
    tau = 0.7
    path = gumbel_straight_through(alpha, tau, generator=torch.Generator().manual_seed(11))
    (mixed(x, path) * v).sum().backward()
    ours = alpha.grad.clone()

    # reference: the soft Gumbel-softmax weights with the same noise on what each candidate
    # contributes (the chosen op's output; a scalar 1 for the others, as GDAS's forward does)
    g = gumbel_noise(alpha.shape, torch.Generator().manual_seed(11))
    probs = F.softmax((F.log_softmax(alpha, -1) + g) / tau, -1)
    assert int(probs.argmax()) == path.index
    chosen = mixed.ops[path.index](x).detach()
    contributions = [chosen if k == path.index else torch.ones_like(chosen) for k in range(len(NB201_OPS))]
    soft = sum(p * c for p, c in zip(probs, contributions))
    expected, = torch.autograd.grad((soft * v).sum(), alpha)
    assert ours.abs().sum() > 0
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), (ours, expected)


def test_non_finite_draws_are_redrawn(monkeypatch):
    draws = [torch.tensor([float("inf"), 0.0, 0.0]), torch.tensor([0.0, 5.0, 0.0])]
    calls = []

    def fake_noise(shape, generator=None, device=None):
        calls.append(shape)
        return draws[len(calls) - 1]

    monkeypatch.setattr(gdas, "gumbel_noise", fake_noise)
    path = gumbel_straight_through(torch.zeros(3, requires_grad=True), tau=1.0)
    assert len(calls) == 2 and path.index == 1  # the inf draw (which argmaxes to 0) was discarded
    assert torch.isfinite(path.weights).all()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="tau"):
        gumbel_straight_through(torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="finite"):
        gumbel_straight_through(torch.tensor([0.0, float("nan"), 1.0]), tau=1.0)
    with pytest.raises(ValueError, match="tau_max"):
        _tiny_model(tau_max=0.1, tau_min=1.0)


def test_temperature_falls_linearly_from_tau_max_to_tau_min():
    model = _tiny_model()
    taus = [model.temperature(e, 250) for e in range(250)]
    assert taus[0] == 10.0 and taus[-1] == pytest.approx(0.1, abs=1e-12)
    steps = [a - b for a, b in zip(taus, taus[1:])]
    assert steps == pytest.approx([9.9 / 249] * 249)
    assert model.temperature(0, 1) == 10.0  # one epoch: no division by zero
    assert model.tau == 10.0  # outside a fit


def test_samples_depend_on_seed_and_step_not_on_the_process_rng(monkeypatch):
    """Every rank must sample the same path; the process RNG may differ between ranks."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    model = _tiny_model()
    with torch.no_grad():
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    torch.manual_seed(1)
    first = {k: p.index for k, p in model.sampled_decisions("weights").items()}
    torch.manual_seed(2)
    again = {k: p.index for k, p in model.sampled_decisions("weights").items()}
    assert first == again
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    others = [{k: p.index for k, p in model.sampled_decisions(f"weights{i}").items()} for i in range(5)]
    assert any(o != first for o in others)


def test_export_and_validation_use_the_argmax_path():
    model = _tiny_model()
    with torch.no_grad():
        for k, alpha in enumerate(model.alphas.values()):
            alpha.zero_()
            alpha[k % alpha.shape[0]] = 1.0
    arch = model.export()
    assert [arch[label] for label in model.alphas] == [k % 5 for k in range(6)]  # argmax incl. none
    model.on_validation_epoch_start()
    assert model._validation_decisions == model.space.decisions(arch)


def test_search_cli_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "gdas_nb201_digits_cpu.yaml")
    main(["search", "--config", config, "--trainer.max_epochs", "3", *TINY])
    run = tmp_path / "runs" / "gdas_nb201_digits_cpu" / "version_0"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run))
    events.Reload()
    taus = [s.value for s in events.Scalars("tau")]
    assert taus == pytest.approx([10.0, 5.05, 0.1])
    assert {"val_acc", "arch_loss", "train_loss"} <= set(events.Tags()["scalars"])
    model = GdasSearch.load_from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    space = supernets.get("nb201")
    arch = space.load(str(run / "arch.json"))
    assert model.export() == arch and json.load(open(run / "arch.json"))["algorithm"] == "GdasSearch"
    main(["info", "--space", "nb201", "--arch", str(run / "arch.json")])
    assert f"index:   {space.index(arch)}" in capsys.readouterr().out


def test_darts_space_search_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["search", "--model", "oneshot.algorithms.gdas.GdasSearch", "--trainer.max_epochs", "1", *TINY,
          "--model.init_args.space", "darts", "--model.init_args.space_options", "{C: 4, layers: 3}"])
    run = tmp_path / "runs" / "search" / "version_0"
    arch = supernets.get("darts").load(str(run / "arch.json"))
    assert GdasSearch.load_from_checkpoint(str(run / "checkpoints" / "last.ckpt")).export() == arch
