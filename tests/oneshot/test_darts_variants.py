"""The DARTS variants: the piece each changes, checked by hand on a tiny supernet, and a CLI run each."""
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import supernets
from oneshot.algorithms import ALGORITHMS, load_algorithm
from oneshot.algorithms.darts_minus import DartsMinusSearch
from oneshot.algorithms.drnas import DrnasSearch
from oneshot.algorithms.fairdarts import FairDartsSearch
from oneshot.algorithms.sdarts import SDartsSearch, clip_to_simplex
from oneshot.algorithms.snas import SnasSearch, candidate_costs, concrete_sample
from oneshot.algorithms.darts import DartsSearch
from oneshot.commands import main

TINY_DARTS = {"C": 4, "layers": 3}


def _model(cls, space="darts", **kwargs):
    torch.manual_seed(0)
    options = TINY_DARTS if space == "darts" else {"C": 4, "N": 1}
    return cls(space=space, space_options=options, num_classes=3, in_channels=1,
               memory_format="contiguous", **kwargs)


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


# --- excluded candidates and search drop path (the shared base) -------------------------------
def test_excluded_candidates_get_weight_zero_and_no_gradient():
    model = _model(DartsSearch, excluded_candidates=["none"])
    weights = model.arch_weights()
    none = supernets.get("darts").primitives.index("none")
    for label, w in weights.items():
        w = w.detach()
        assert float(w[none]) == 0 and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
        expected = F.softmax(torch.cat([model.alphas[label][:none], model.alphas[label][none + 1:]]), -1)
        torch.testing.assert_close(torch.cat([w[:none], w[none + 1:]]), expected)
    sum(w[3] for w in weights.values()).backward()
    assert all(float(a.grad[none]) == 0 for a in model.alphas.values())


def test_gdas_refuses_excluded_candidates():
    from oneshot.algorithms import GdasSearch

    with pytest.raises(ValueError, match="GDAS samples over every candidate"):
        _model(GdasSearch, excluded_candidates=["none"])


def test_unknown_excluded_candidate_names_the_accepted_ones():
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        _model(DartsSearch, excluded_candidates=["sep_conv_9x9"])


def test_edge_drop_path_schedule_is_r_darts_linear_ramp():
    model = _model(DartsSearch, edge_drop_path=0.4)
    assert [model.edge_drop_path_prob(e, 5) for e in range(5)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    constant = _model(DartsSearch, edge_drop_path=0.3, edge_drop_path_schedule="constant")
    assert constant.edge_drop_path_prob(0, 5) == 0.3


def test_edge_drop_path_drops_whole_edge_outputs_in_training_only():
    model = _model(DartsSearch)
    x, _ = _batch()
    weights = {k: w.detach() for k, w in model.arch_weights().items()}
    model.supernet.eval()
    clean = model.supernet(x, weights)
    model.supernet.edge_drop_path_prob = 0.5
    assert torch.equal(model.supernet(x, weights), clean)  # eval: no drop
    model.supernet.train()
    torch.manual_seed(1)
    a = model.supernet(x, weights)
    torch.manual_seed(2)
    b = model.supernet(x, weights)
    assert not torch.equal(a, b)


def test_edge_drop_path_on_a_space_without_it_is_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="darts and nb201 spaces"):
        DartsSearch(space="spos", edge_drop_path=0.2)


def test_nb201_auxiliary_skip_and_drop_path():
    model = _model(DartsMinusSearch, space="nb201")
    supernet = model.supernet.eval()
    cell = next(c for c in supernet.cells if type(c).__name__ == "NB201SearchCell")
    x = torch.randn(2, 4, 8, 8)
    per_edge = [w.detach() for w in model.arch_weights().values()]
    with torch.no_grad():
        plain, with_beta = cell(x, per_edge), cell(x, per_edge, auxiliary_weight=0.5)
        node1_plain = cell.edges["1<-0"](x, per_edge[0])
    assert not torch.equal(plain, with_beta)
    # node 1 reads x through one edge: the auxiliary skip adds 0.5 x there
    nodes = []
    hook = cell.edges["2<-1"].register_forward_hook(lambda m, i, o: nodes.append(i[0]))
    with torch.no_grad():
        cell(x, per_edge, auxiliary_weight=0.5)
    hook.remove()
    torch.testing.assert_close(nodes[0], node1_plain + 0.5 * x)


# --- SDARTS -------------------------------------------------------------------------------------
def test_clip_to_simplex_is_sdarts_clip():
    torch.testing.assert_close(clip_to_simplex(torch.tensor([0.5, -0.2, 1.5])), torch.tensor([1 / 3, 0.0, 2 / 3]))
    assert torch.equal(clip_to_simplex(torch.tensor([-0.1, -0.3])), torch.tensor([1.0, 0.0]))


def test_random_smoothing_stays_within_epsilon_and_on_the_simplex():
    model = _model(SDartsSearch, perturbation="random", excluded_candidates=["none"])
    eps = model.epsilon(25, 50)
    assert eps == pytest.approx(0.03 + 0.27 * 0.5)
    clean = {k: w.detach() for k, w in model.arch_weights().items()}
    noisy = model._noise(clean, eps, "random")
    none = supernets.get("darts").primitives.index("none")
    for label, w in noisy.items():
        assert float(w.sum()) == pytest.approx(1.0) and float(w.min()) >= 0 and w[none] == 0
        # before renormalisation each entry moved by at most eps: the clamp only shrinks the move
        assert float((w * 1 - clean[label]).abs().max()) <= 2 * eps + 1e-6
    assert any(not torch.equal(noisy[k], clean[k]) for k in clean)


def test_adversarial_perturbation_does_not_lower_the_training_loss():
    model = _model(SDartsSearch, perturbation="adversarial", attack_steps=3)
    model.supernet.train()
    batch = _batch(8)
    clean = {k: w.detach() for k, w in model.arch_weights().items()}
    model.supernet.eval()
    with torch.no_grad():
        before = float(model.loss_and_accuracy(batch, clean)[0])
    model.supernet.train()
    adversarial = model.adversarial_perturbation(batch)
    assert model.supernet.training  # the attack runs in eval mode and restores the mode
    model.supernet.eval()
    with torch.no_grad():
        after = float(model.loss_and_accuracy(batch, adversarial)[0])
    assert after >= before
    eps = model.current_epsilon()
    for label, w in adversarial.items():
        assert float(w.sum()) == pytest.approx(1.0) and float(w.min()) >= 0
        assert float((w - clean[label]).abs().max()) <= 2 * eps + 1e-6


# --- DARTS- -------------------------------------------------------------------------------------
def test_darts_minus_beta_schedule_is_the_published_linear_decay():
    model = _model(DartsMinusSearch)
    betas, beta = [], 1.0
    for epoch in range(50):
        beta = model.beta(epoch, 50, beta)
        betas.append(beta)
    assert betas[0] == 1.0 and betas[-1] == pytest.approx(0.02)
    assert betas == pytest.approx([(50 - e) / 50 for e in range(50)])


def test_auxiliary_skip_adds_beta_times_skip_outside_the_softmax():
    model = _model(DartsMinusSearch)
    supernet = model.supernet.eval()
    cell = supernet.cells[0]  # a normal cell: the auxiliary op is an identity
    s = torch.randn(2, 12, 8, 8)  # the stem's 3 * C channels
    weights = {k: w.detach() for k, w in model.arch_weights().items()}
    with torch.no_grad():
        without = cell(s, s, weights, auxiliary_weight=0.0)
        with_beta = cell(s, s, weights, auxiliary_weight=0.3)
        inputs = cell.preprocess0(s) + cell.preprocess1(s)
    C = inputs.shape[1]  # node 2 (the first C channels) reads the two inputs, each by one edge
    torch.testing.assert_close(with_beta[:, :C] - without[:, :C], 0.3 * inputs, atol=1e-5, rtol=1e-4)
    assert type(supernet.cells[1].auxiliary_ops[0]).__name__ == "FactorizedReduce"
    assert type(supernet.cells[1].auxiliary_ops[4]).__name__ == "Identity"  # node 3 <- node 2


# --- FairDARTS ----------------------------------------------------------------------------------
def test_fairdarts_weights_are_independent_sigmoids_and_the_zero_one_loss_is_by_hand():
    model = _model(FairDartsSearch, excluded_candidates=["none"])
    with torch.no_grad():
        for a in model.alphas.values():
            a.copy_(torch.randn_like(a))
    none = supernets.get("darts").primitives.index("none")
    by_hand, count = 0.0, 0
    for label, w in model.arch_weights().items():
        alpha = model.alphas[label].detach()
        assert float(w[none]) == 0
        for k in range(8):
            if k != none:
                assert float(w[k]) == pytest.approx(1 / (1 + math.exp(-float(alpha[k]))))
                by_hand += (1 / (1 + math.exp(-float(alpha[k]))) - 0.5) ** 2
                count += 1
    assert count == 28 * 7
    assert float(model.zero_one_loss().detach()) == pytest.approx(-by_hand / count, rel=1e-5)


def test_fairdarts_zero_one_loss_pushes_sigmoids_away_from_one_half():
    model = _model(FairDartsSearch)
    with torch.no_grad():
        for a in model.alphas.values():
            a.fill_(0.1)
    model.zero_one_loss().backward()
    assert all(bool((a.grad < 0).all()) for a in model.alphas.values())  # descent raises alpha > 0


def test_fairdarts_export_is_the_threshold_rule():
    model = _model(FairDartsSearch, excluded_candidates=["none"])
    with torch.no_grad():
        for a in model.alphas.values():
            a.fill_(-3.0)
        model.alphas["normal/2<-1"][4] = 3.0  # sigmoid 0.95: sep_conv_3x3 from input 1
    arch = model.export()
    assert arch["normal/2"] == ((4, 1),) and all(arch[k] == () for k in arch if k != "normal/2")
    darts_rule = _model(FairDartsSearch, genotype_rule="darts")
    assert all(len(v) == 2 for v in darts_rule.export().values())


# --- DrNAS --------------------------------------------------------------------------------------
def test_drnas_pathwise_gradient_is_unbiased_for_the_dirichlet_mean():
    """The mean of the sampled gradient of v . w equals the gradient of v . E[w], E[w] = beta / sum(beta)."""
    model = _model(DrnasSearch, space="nb201")
    with torch.no_grad():
        for a in model.alphas.values():
            a.copy_(torch.randn_like(a))
    label, alpha = "1<-0", model.alphas["1<-0"]
    v = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.7])
    total = torch.zeros(5)
    draws = 3000
    for i in range(draws):
        alpha.grad = None
        (model.sampled_weights(f"mc/{i}")[label] * v).sum().backward()
        total += alpha.grad
    beta = F.elu(alpha) + 1
    (expected,) = torch.autograd.grad((beta / beta.sum() * v).sum(), alpha)
    torch.testing.assert_close(total / draws, expected, atol=0.03, rtol=0.1)


def test_drnas_sample_is_on_the_simplex_and_excluded_candidates_get_zero():
    model = _model(DrnasSearch, excluded_candidates=["none"])
    none = supernets.get("darts").primitives.index("none")
    for w in model.sampled_weights("x").values():
        assert float(w[none]) == 0 and float(w.detach().sum()) == pytest.approx(1.0) and bool((w >= 0).all())


def test_drnas_kl_is_against_the_uniform_dirichlet_by_hand():
    model = _model(DrnasSearch, space="nb201", reg_type="kl", reg_scale=0.5)
    with torch.no_grad():  # away from alpha = 0, where the KL (1e-5) is below float32 rounding
        for a in model.alphas.values():
            a.copy_(torch.randn_like(a))
    assert model.arch_decay() == 0.0  # kl: no Adam decay on alpha
    by_hand = 0.0
    for alpha in model.alphas.values():
        b = (F.elu(alpha) + 1).detach().double()
        b0, K = b.sum(), b.shape[0]
        # KL(Dir(b) || Dir(1)) = lgamma(b0) - sum lgamma(b) - lgamma(K) + sum (b - 1)(digamma(b) - digamma(b0))
        by_hand += float(torch.lgamma(b0) - torch.lgamma(b).sum() - math.lgamma(K)
                         + ((b - 1) * (torch.digamma(b) - torch.digamma(b0))).sum())
    assert float(model.kl_regulariser().detach()) == pytest.approx(0.5 * by_hand, rel=1e-5)
    assert _model(DrnasSearch, space="nb201", reg_scale=2e-3, arch_weight_decay=0.5).arch_decay() == 2e-3


# --- SNAS ---------------------------------------------------------------------------------------
def test_concrete_sample_is_softmax_of_perturbed_logits():
    alpha = torch.randn(8)
    z = concrete_sample(alpha, 0.5, torch.Generator().manual_seed(3))
    g = -torch.empty(8).exponential_(generator=torch.Generator().manual_seed(3)).log()
    torch.testing.assert_close(z, F.softmax((alpha + g) / 0.5, -1))


def test_snas_temperature_is_the_linear_schedule_over_150_epochs():
    model = _model(SnasSearch, space="nb201", resource_lambda=0.0)
    assert model.temperature(0, 10) == pytest.approx((1 - 1 / 150) * 0.97 + 0.03)
    assert model.temperature(149, 150) == pytest.approx(0.03)
    assert model.temperature(500, 150) == pytest.approx(0.03)


def test_snas_costs_follow_its_operations():
    assert candidate_costs("sep_conv_3x3", 16, 32, 1) == (2 * 16 * 9 + 2 * 256, (2 * 16 * 9 + 2 * 256) * 1024,
                                                           1024 * 8 * 16 + 2 * 16 * 9 + 2 * 256)
    assert candidate_costs("skip_connect", 16, 16, 2)[0] == 2 * 16 * 8
    assert candidate_costs("none", 16, 32, 1) == (0, 0, 0)


def test_snas_resource_penalty_is_the_mean_log_expected_cost():
    model = _model(SnasSearch)
    x, _ = _batch()
    z = model.sampled_weights()
    penalty = model.resource_penalty(z, x)
    total = [0.0, 0.0]
    for reduce, label, costs in model._costs:
        expected = (z[label].double() @ costs).tolist()
        total[reduce] += sum(math.log(v if abs(v) >= 1 else 1.0) for v in expected) / 3
    assert float(penalty.detach()) == pytest.approx(1.5e-3 * (total[0] / 6 + total[1] / 2), rel=1e-5)
    penalty.backward()
    assert all(a.grad is not None for a in model.alphas.values())


def test_snas_loss_reaches_weights_and_alphas_through_one_batch():
    """SNAS's step is one backward of CE + penalty on one training batch: both levels get gradient."""
    model = _model(SnasSearch)
    x, y = _batch()
    z = model.sampled_weights()
    (model.loss_and_accuracy((x, y), z)[0] + model.resource_penalty(z, x)).backward()
    assert all(a.grad is not None and float(a.grad.abs().sum()) > 0 for a in model.alphas.values())
    assert all(p.grad is not None for p in model.supernet.stem.parameters())


# --- end to end ---------------------------------------------------------------------------------
CLI = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
       "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
       "--trainer.enable_model_summary", "false", "--model.init_args.space", "darts",
       "--model.init_args.space_options", "{C: 4, layers: 3}"]


@pytest.mark.parametrize("algorithm, extra", [
    ("SDartsSearch", ["--model.init_args.perturbation", "random", "--model.init_args.excluded_candidates", "[none]"]),
    ("SDartsSearch", ["--model.init_args.perturbation", "adversarial", "--model.init_args.attack_steps", "2"]),
    ("DartsMinusSearch", []),
    ("DartsSearch", ["--model.init_args.edge_drop_path", "0.2"]),
    ("SnasSearch", ["--data.init_args.bilevel", "false"]),
    ("FairDartsSearch", ["--model.init_args.excluded_candidates", "[none]", "--model.init_args.threshold", "0.5"]),
    ("DrnasSearch", ["--model.init_args.excluded_candidates", "[none]", "--model.init_args.reg_type", "kl"]),
])
def test_variant_search_end_to_end(tmp_path, monkeypatch, algorithm, extra):
    monkeypatch.chdir(tmp_path)
    main(["search", "--model", f"oneshot.algorithms.{algorithm}", *CLI, *extra])
    root = os.path.join("runs", "search")
    run = os.path.join(root, sorted(os.listdir(root))[-1])
    space = supernets.get("darts")
    arch = space.load(os.path.join(run, "arch.json"))
    model = load_algorithm(os.path.join(run, "checkpoints", "last.ckpt"))
    assert type(model) is ALGORITHMS[next(k for k, v in ALGORITHMS.items() if v.__name__ == algorithm)]
    assert model.export() == arch


# --- P-DARTS ------------------------------------------------------------------------------------
from oneshot.algorithms.pdarts import PDartsSearch, drop_lowest, final_genotype, prune_candidates  # noqa: E402
from supernets.darts import EDGE_LABELS, PRIMITIVES  # noqa: E402


def test_pdarts_drop_lowest_is_get_min_k_and_get_min_k_no_zero():
    ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]
    assert drop_lowest(ops, [0.5, 0.1, 0.2, 0.1, 0.3], 2) == ["none", "skip_connect", "dil_conv_5x5"]
    # 'none' first (it is not among the lowest), then the lowest of the rest
    assert drop_lowest(ops, [0.5, 0.1, 0.2, 0.1, 0.3], 2, none_first=True) == [
        "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]


def test_pdarts_stage_transition_prunes_the_lowest_weights_per_edge():
    candidates = {label: PRIMITIVES for label in EDGE_LABELS}
    weights = {label: [0.3, 0.01, 0.02, 0.2, 0.15, 0.12, 0.1, 0.1] for label in EDGE_LABELS}
    weights["reduce/5<-4"] = [0.01, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.04]
    pruned = prune_candidates(candidates, weights, 3)
    assert pruned["normal"][0] == ["none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5"]  # tie: first dropped
    assert pruned["reduce"][13] == ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]
    assert all(len(ops) == 5 for cell in pruned.values() for ops in cell)


def test_pdarts_final_rule_limits_skips_in_the_normal_cell():
    three = ("skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    candidates = {label: three for label in EDGE_LABELS}
    # every normal edge prefers skip (0.5) over sep_conv (0.3); edges from input 0 are stronger
    weights = {label: [0.5 + (0.1 if label.endswith("<-0") else 0.0), 0.3, 0.2] for label in EDGE_LABELS}
    weights["normal/2<-1"] = [0.45, 0.35, 0.2]  # the weakest selected skip: removed first
    weights["normal/4<-0"] = weights["normal/5<-0"] = [0.9, 0.05, 0.05]  # the two that stay
    free = final_genotype(candidates, weights, max_skips=None)
    skip, sep3 = PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3")
    assert sum(op == skip for label, value in free.items() if label.startswith("normal") for op, _ in value) == 8
    limited = final_genotype(candidates, weights, max_skips=2)
    normal = {label: value for label, value in limited.items() if label.startswith("normal")}
    assert sum(op == skip for value in normal.values() for op, _ in value) == 2
    assert normal["normal/2"] == ((sep3, 0), (sep3, 1))  # its skips were weaker: next best op
    assert (skip, 0) in normal["normal/4"] and (skip, 0) in normal["normal/5"]
    assert all(j1 < j2 for value in limited.values() for (_, j1), (_, j2) in [value])  # genes in input order
    with_none = {label: ("none", "sep_conv_3x3", "skip_connect") for label in EDGE_LABELS}
    arch = final_genotype(with_none, {label: [0.9, 0.06, 0.04] for label in EDGE_LABELS}, None)
    assert all(op == sep3 for value in arch.values() for op, _ in value)  # 'none' never chosen


def test_pdarts_skip_dropout_schedule():
    model = _model(PDartsSearch, dropout_rates=(0.1, 0.4, 0.7), stage_layers=(3, 3, 3))
    assert model.skip_dropout_rate(0, 25) == pytest.approx(0.1 * 24 / 25)
    assert model.skip_dropout_rate(9, 25) == pytest.approx(0.1 * 15 / 25)
    assert model.skip_dropout_rate(10, 25) == pytest.approx(0.1)
    assert model.skip_dropout_rate(24, 25) == pytest.approx(0.1 * math.exp(-2.8))
    dropouts = [m for m in model.supernet.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 14 + 6 + 6  # stride-1 skips: normal, reduce, reduce (8 edges from the inputs strided)
    model.supernet.set_skip_dropout(0.25)
    assert {m.p for m in dropouts} == {0.25}


def test_pdarts_needs_the_previous_stage():
    with pytest.raises(ValueError, match="prune_from"):
        _model(PDartsSearch, stage=1, stage_layers=(3, 3, 3))


def test_pdarts_three_stages_end_to_end(tmp_path, monkeypatch):
    """Stage 1 and 2 start from the previous checkpoint with the pruned candidates, new weights."""
    monkeypatch.chdir(tmp_path)
    common = [*CLI, "--model", "oneshot.algorithms.PDartsSearch", "--model.init_args.stage_layers", "[3, 3, 3]",
              "--model.init_args.arch_warmup_epochs", "0"]
    previous = None
    for stage, ops in enumerate((8, 5, 3)):
        extra = ["--model.init_args.stage", str(stage), "--trainer.logger.init_args.version", f"stage{stage}"]
        if previous:
            extra += ["--model.init_args.prune_from", previous]
        main(["search", *common, *extra])
        run = os.path.join("runs", "search", f"stage{stage}")
        previous = os.path.join(run, "checkpoints", "last.ckpt")
        model = load_algorithm(previous)
        assert {len(c) for c in model.supernet.choices.values()} == {ops}
    arch = supernets.get("darts").load(os.path.join(run, "arch.json"))
    assert arch == model.export() and all(len(v) == 2 for v in arch.values())
    assert all(PRIMITIVES[op] in model.supernet.choices[f"{label}<-{j}"] for label, v in arch.items() for op, j in v)
    shutil.rmtree(os.path.join("runs", "search", "stage1"))  # the last stage's checkpoint stands alone
    assert load_algorithm(previous).supernet.choices == model.supernet.choices


# --- DrNAS's progressive DARTS-space search --------------------------------------------------------
from oneshot.algorithms.drnas import SEARCHED, top_candidates  # noqa: E402
from oneshot.checkpoints import read_checkpoint  # noqa: E402
from ops.net2wider import supernet_plan  # noqa: E402

DRNAS_STAGES = ["--model", "oneshot.algorithms.DrnasSearch", "--trainer.max_epochs", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "1", "--trainer.enable_model_summary", "false",
                "--model.init_args.space", "darts", "--model.init_args.space_options", "{C: 12, layers: 3}",
                "--model.init_args.cosine_t_max", "2", "--model.init_args.arch_warmup_epochs", "0"]


def test_drnas_prune_keeps_the_largest_raw_alphas_in_space_order():
    ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]
    assert top_candidates(ops, [0.3, -1.0, 0.3, 2.0, 0.1], 3) == ["max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def test_drnas_stage_zero_searches_seven_ops_on_a_sixth_of_the_channels():
    model = DrnasSearch(space="darts", space_options={"C": 12, "layers": 3}, stage=0, num_classes=3, in_channels=1)
    assert "none" not in SEARCHED and len(SEARCHED) == 7
    assert set(model.supernet.choices.values()) == {SEARCHED}
    assert model.hparams.space_options["partial_channels"] == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"stage": 2}, "stages 0, 1"),
    ({"stage": 1}, "set widen_from"),
    ({"stage": 0, "partial_channels": 4}, "comes from stage_partial_channels"),
    ({"stage": 0, "space": "nb201"}, "on the darts space"),
    ({"stage": 0, "keep_candidates": 8}, "keep 1 to 7"),
])
def test_drnas_stage_errors_name_the_fix(kwargs, message):
    kwargs = {"space": "darts", "space_options": {"C": 12, "layers": 3}, **kwargs}
    with pytest.raises(ValueError, match=message):
        DrnasSearch(**kwargs)


def test_drnas_stage_one_starts_where_stage_zero_ended(tmp_path, monkeypatch):
    """Top-4 candidates with their alphas, weights and momentum widened alike, the Adam state of
    the kept entries, the cosine continued; then a resumable, reloadable stage 1 run."""
    import lightning as L

    from oneshot.data import DigitsDataModule

    monkeypatch.chdir(tmp_path)
    main(["search", *DRNAS_STAGES, "--model.init_args.stage", "0", "--trainer.logger.init_args.version", "stage0"])
    path = os.path.join("runs", "search", "stage0", "checkpoints", "last.ckpt")
    before = read_checkpoint(path)
    model = DrnasSearch(space="darts", space_options={"C": 12, "layers": 3}, stage=1, widen_from=path,
                        cosine_t_max=2, memory_format="contiguous", num_classes=10, in_channels=1)
    L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=DigitsDataModule())
    old_state = before["state_dict"]
    labels = list(model.alphas)
    for index, label in enumerate(labels):
        alpha = old_state[f"alphas.{label}"]
        kept = top_candidates(SEARCHED, alpha.tolist(), 4)
        assert model.supernet.choices[label] == tuple(kept)
        positions = [SEARCHED.index(op) for op in kept]
        torch.testing.assert_close(model.alphas[label].detach(), alpha[positions])
        adam = model.optimizers()[1].optimizer.state[model.alphas[label]]
        torch.testing.assert_close(adam["exp_avg"], before["optimizer_states"][1]["state"][index]["exp_avg"][positions])
    label = labels[0]
    edge = "cells.0.mixed_ops.0.ops"
    if "sep_conv_3x3" in model.supernet.choices[label]:
        j, k = SEARCHED.index("sep_conv_3x3"), model.supernet.choices[label].index("sep_conv_3x3")
        new, old = model.supernet.state_dict()[f"{edge}.{k}.0.2.weight"], old_state[f"supernet.{edge}.{j}.0.2.weight"]
        assert new.shape[:2] == (3, 3) and old.shape[:2] == (2, 2) and torch.equal(new[:2, :2], old)
    sgd = model.optimizers()[0].optimizer
    old = model.space.build_supernet(**before["hyper_parameters"]["space_options"])
    old_index = {name: i for i, (name, _) in enumerate(old.named_parameters())}
    sources = supernet_plan(old, model.supernet, torch.Generator())
    widened = 0
    for name, parameter in model.supernet.named_parameters():  # momentum: old part kept, widened as its weight
        old_buffer = before["optimizer_states"][0]["state"][old_index[sources[name][0]]]["momentum_buffer"]
        buffer = sgd.state[parameter]["momentum_buffer"]
        assert buffer.shape == parameter.shape
        assert torch.equal(buffer[tuple(slice(0, n) for n in old_buffer.shape)], old_buffer)
        widened += buffer.shape != old_buffer.shape
    assert widened > 0
    assert model.epochs_before() == 1  # stage 0 ran one epoch of the 2-epoch cosine
    model.advance_lr_schedule(0)
    assert math.isclose(sgd.param_groups[0]["lr"], 0.001 + (0.025 - 0.001) * (1 + math.cos(math.pi / 2)) / 2)
    # the CLI: stage 1 runs, its checkpoint reloads without stage 0, and its export holds kept ops only
    main(["search", *DRNAS_STAGES, "--model.init_args.stage", "1", "--model.init_args.widen_from", path,
          "--trainer.logger.init_args.version", "stage1"])
    shutil.rmtree(os.path.join("runs", "search", "stage0"))
    stage1 = load_algorithm(os.path.join("runs", "search", "stage1", "checkpoints", "last.ckpt"))
    assert {len(c) for c in stage1.supernet.choices.values()} == {4}
    arch = supernets.get("darts").load(os.path.join("runs", "search", "stage1", "arch.json"))
    assert arch == stage1.export()
    assert all(PRIMITIVES[op] in stage1.supernet.choices[f"{label}<-{j}"] for label, v in arch.items() for op, j in v)


def test_drnas_stage_one_refuses_a_cosine_that_does_not_continue(tmp_path, monkeypatch):
    import lightning as L

    from oneshot.data import DigitsDataModule

    monkeypatch.chdir(tmp_path)
    main(["search", *DRNAS_STAGES, "--model.init_args.stage", "0", "--trainer.logger.init_args.version", "stage0"])
    path = os.path.join("runs", "search", "stage0", "checkpoints", "last.ckpt")
    model = DrnasSearch(space="darts", space_options={"C": 12, "layers": 3}, stage=1, widen_from=path,
                        num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="set cosine_t_max to the total of both stages"):
        L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=DigitsDataModule())
    with pytest.raises(ValueError, match="DrnasSearch checkpoint of stage 0"):
        DrnasSearch(space="darts", space_options={"C": 12, "layers": 3}, stage=1, widen_from=_pdarts_checkpoint())


def _pdarts_checkpoint():
    main(["search", *CLI, "--model", "oneshot.algorithms.PDartsSearch", "--model.init_args.stage_layers", "[3, 3, 3]",
          "--model.init_args.arch_warmup_epochs", "0", "--trainer.logger.init_args.version", "pdarts"])
    return os.path.join("runs", "search", "pdarts", "checkpoints", "last.ckpt")


def test_an_arch_warmup_as_long_as_the_run_is_refused():
    import lightning as L

    from oneshot.algorithms.pcdarts import PCDartsSearch
    from oneshot.data import DigitsDataModule

    model = PCDartsSearch(space="nb201", space_options={"C": 4, "N": 1}, partial_channels=2, arch_warmup_epochs=15)
    with pytest.raises(ValueError, match=r"arch_warmup_epochs=15 covers the whole run \(max_epochs=15\)"):
        L.Trainer(max_epochs=15, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=DigitsDataModule())
