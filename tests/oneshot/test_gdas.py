"""GDAS: straight-through Gumbel sampling, temperature schedule, rank-shared samples, CLI run."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

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


@pytest.mark.parametrize("faithful", [False, True], ids=["darts_defaults", "xautodl_nasnet"])
def test_darts_space_search_runs(tmp_path, monkeypatch, faithful):
    monkeypatch.chdir(tmp_path)
    options = "{C: 4, layers: 3, bn_after_pool: false, last_activation: true}" if faithful else "{C: 4, layers: 3}"
    extra = ["--model.init_args.unsampled_gradient", "false",
             "--model.init_args.genotype_rule", "pairs"] if faithful else []
    main(["search", "--model", "oneshot.algorithms.gdas.GdasSearch", "--trainer.max_epochs", "1", *TINY,
          "--model.init_args.space", "darts", "--model.init_args.space_options", options, *extra])
    run = tmp_path / "runs" / "search" / "version_0"
    arch = supernets.get("darts").load(str(run / "arch.json"))
    model = GdasSearch.load_from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    assert model.export() == arch
    assert (model.supernet.lastact is not None) is faithful
    assert model.hparams.genotype_rule == ("pairs" if faithful else "space")
    if faithful:
        assert "GDAS pairs" in json.load(open(run / "arch.json"))["rule"]


# --- xautodl's NASNet-space GDAS: sampled op times its own weight, pair genotype ---------------


NONE = supernets.get("darts").primitives.index("none")


def _darts_model(**kwargs):
    torch.manual_seed(0)
    return GdasSearch(space="darts", space_options={"C": 4, "layers": 3}, num_classes=3, in_channels=1,
                      **kwargs)


def _weight_gradients(model, x):
    samples = model.sampled_decisions("architecture")
    weights = [path.weights for path in samples.values()]
    logits = model(x, samples)
    grads = torch.autograd.grad(logits.square().sum(), weights)
    return samples, dict(zip(samples, grads))


def test_unsampled_weights_get_no_gradient_in_the_darts_space_with_the_option():
    """xautodl NASNet MixedOp.forward_gdas: ops[i](x) * w[i], so d out / d w[k] = 0, k != i."""
    model = _darts_model(unsampled_gradient=False)
    samples, grads = _weight_gradients(model, torch.randn(2, 1, 8, 8))
    assert all(path.unsampled_gradient is False for path in samples.values())
    for label, path in samples.items():
        unsampled = [k for k in range(len(grads[label])) if k != path.index]
        assert torch.all(grads[label][unsampled] == 0), label
        # a sampled 'none' outputs 0 and so passes no gradient at all, as in xautodl
        assert bool(grads[label][path.index] != 0) is (path.index != NONE), label
    assert any(path.index != NONE for path in samples.values())
    # the default keeps the summed term in the DARTS space too
    samples, grads = _weight_gradients(_darts_model(), torch.randn(2, 1, 8, 8))
    assert all(path.unsampled_gradient for path in samples.values())
    assert all(g.abs().sum() > g[samples[label].index].abs() for label, g in grads.items())


def test_nb201_keeps_the_summed_unsampled_term_by_default():
    """xautodl NAS201SearchCell.forward_gdas adds w[k] for every unsampled k: each gets the
    same, non-zero gradient (the sum of the upstream gradient of the edge output)."""
    model = _tiny_model()
    samples, grads = _weight_gradients(model, torch.randn(2, 1, 8, 8))
    assert all(path.unsampled_gradient for path in samples.values())
    for label, path in samples.items():
        unsampled = torch.stack([grads[label][k] for k in range(len(grads[label])) if k != path.index])
        assert unsampled.abs().min() > 0 and torch.allclose(unsampled, unsampled[0].expand_as(unsampled))


def test_arch_step_with_the_option_updates_alpha():
    model = _darts_model(unsampled_gradient=False)
    samples = model.sampled_decisions("architecture")
    loss, _ = model.loss_and_accuracy((torch.randn(2, 1, 8, 8), torch.tensor([0, 1])), samples)
    loss.backward()
    for label, alpha in model.alphas.items():  # every alpha whose sample is not 'none' moves
        assert bool(alpha.grad is not None and alpha.grad.abs().sum() > 0) is (samples[label].index != NONE)


def test_pairs_rule_export_and_validation_run_a_shared_input_genotype():
    model = _darts_model(genotype_rule="pairs")
    space = model.space
    with torch.no_grad():
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha) * 0.01)
        # normal node 3: sep_conv_3x3 and sep_conv_5x5 on input 1 are the two best pairs
        model.alphas["normal/3<-1"][4] = 3.0
        model.alphas["normal/3<-1"][5] = 2.5
    arch = model.export()
    weights = {k: w.detach() for k, w in model.arch_weights().items()}
    assert arch == space.discretize_pairs(weights) != space.discretize(weights)
    assert arch["normal/3"] == ((4, 1), (5, 1))
    assert "GDAS pairs" in model.arch_record(arch)["rule"]
    model.on_validation_epoch_start()
    decisions = model.decisions_for_validation(0)
    assert torch.equal(decisions["normal/3<-1"], torch.tensor([0.0, 0, 0, 0, 1, 1, 0, 0]))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8), decisions).shape == (2, 3)
    net = space.build_network(arch, num_classes=3, C=4, layers=3, in_channels=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_default_genotype_rule_is_the_spaces():
    model = _darts_model()
    weights = {k: w.detach() for k, w in model.arch_weights().items()}
    assert model.export() == model.space.discretize(weights)
    assert model.arch_record(model.export())["rule"] == "space default"


def test_genotype_rule_errors():
    with pytest.raises(ValueError, match="discretize_pairs"):
        _tiny_model(genotype_rule="pairs")
    with pytest.raises(ValueError, match="genotype_rule"):
        _darts_model(genotype_rule="top2")


def test_gdas_darts_config_builds_with_the_xautodl_options():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "gdas_darts_cifar10.yaml")
    with open(path) as f:
        init_args = yaml.safe_load(f)["model"]["init_args"]
    assert init_args["space_options"]["bn_after_pool"] is False
    assert init_args["space_options"]["last_activation"] is True
    assert init_args["unsampled_gradient"] is False and init_args["genotype_rule"] == "pairs"
    torch.manual_seed(0)
    model = GdasSearch(**init_args)
    sn = model.supernet
    assert len(sn.cells) == 6 and [c.reduction for c in sn.cells] == [False, False, True, False, True, False]
    assert isinstance(sn.lastact[0], torch.nn.BatchNorm2d) and isinstance(sn.lastact[1], torch.nn.ReLU)
    pools = [op for m in sn.modules() if isinstance(m, MixedOp)
             for cand, op in zip(m.candidates, m.ops) if "pool" in cand]
    assert pools and all(isinstance(op, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for op in pools)
    assert all(not p.unsampled_gradient for p in model.sampled_decisions("weights").values())
    weights = {k: w.detach() for k, w in model.arch_weights().items()}
    assert model.export() == model.space.discretize_pairs(weights)
    assert model(torch.randn(2, 3, 8, 8), model.sampled_decisions("weights")).shape == (2, 10)
