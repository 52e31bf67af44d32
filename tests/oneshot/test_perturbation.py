"""DARTS-PT perturbation selection: the op whose removal hurts most is kept, the masking follows the
reference (no renormalization, decided edges one-hot), DARTS nodes keep the two inputs whose removal
hurts most, runs are deterministic per seed, and `oneshot discretize --rule perturbation` writes a
loadable architecture."""
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import supernets
import oneshot.selection.perturbation as perturbation
from oneshot.algorithms import DartsSearch
from oneshot.data import DigitsDataModule
from oneshot.commands.discretize import main
from oneshot.selection.perturbation import perturbation_select

TINY = {"space": "nb201", "space_options": {"C": 4, "N": 1}, "num_classes": 10, "in_channels": 1}


@pytest.fixture(scope="module")
def digits():
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    return data


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return DartsSearch(**TINY)


def test_chosen_op_is_the_argmin_of_the_recorded_masked_accuracies(tiny, digits):
    arch, scores = perturbation_select(tiny, digits.val_dataloader(), rng=0, num_batches=1)
    assert sorted(scores["edge_order"]) == sorted(tiny.alphas)  # every NB201 edge decided once
    assert len(scores["base"]) == 6 and scores["tuning_epochs"] == [0] * 5
    for label, removed in scores["ops"].items():
        accuracies = [m["acc"] for m in removed]
        assert len(accuracies) == 5 and all(0.0 <= a <= 1.0 for a in accuracies)
        assert arch[label] == min(range(5), key=lambda i: (accuracies[i], i))  # first on ties


def test_loss_criterion_keeps_the_op_whose_removal_raises_the_loss_most(tiny, digits):
    arch, scores = perturbation_select(tiny, digits.val_dataloader(), rng=0, num_batches=1, criterion="loss")
    assert scores["criterion"] == "loss"
    for label, removed in scores["ops"].items():
        losses = [m["loss"] for m in removed]
        assert arch[label] == min(range(5), key=lambda i: (-losses[i], i))


def test_the_reference_tuning_schedule():
    # NB201: 6 rounds, projections at epochs 0, 5, 10, 15, 20 and the last of 25 (24)
    assert perturbation.tuning_epochs("nb201", 6, 5) == [5, 5, 5, 5, 4]
    # DARTS (sota/cnn/projection.py pt_project): 14 op rounds + 3 node rounds (nodes 3, 4, 5; node 2
    # has only two inputs and no round) = 17; num_projs = 16, so 5 * 16 + 1 = 81 epochs (0 ... 80),
    # projecting at 0, 5, ..., 80: 16 gaps of 5 (the epoch after the last projection is no gap)
    assert perturbation.tuning_epochs("darts", 17, 5) == [5] * 16
    assert perturbation.tuning_epochs("darts", 17, 1) == [1] * 16  # 17 epochs, a projection each
    assert perturbation.tuning_epochs("nb201", 6, 0) == [0] * 5


def test_tuning_trains_weights_and_undecided_alphas_between_rounds(tiny, digits, monkeypatch):
    seen = []
    real_tune = perturbation.tune

    def spy(model, decided, loader, weight_optimizer, arch_optimizer, max_batches=None):
        before = {k: a.detach().clone() for k, a in model.alphas.items()}
        conv = next(p for p in model.supernet.parameters() if p.dim() == 4).detach().clone()
        real_tune(model, decided, loader, weight_optimizer, arch_optimizer, max_batches)
        moved = {k for k, a in model.alphas.items() if not torch.equal(a, before[k])}
        weights_moved = not torch.equal(conv, next(p for p in model.supernet.parameters() if p.dim() == 4))
        seen.append((set(decided), moved, weights_moved, weight_optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(perturbation, "tune", spy)
    perturbation_select(tiny, digits.val_dataloader(), train_loader=digits.train_dataloader(),
                        proj_interval=2, rng=0, num_batches=1, tune_batches=1)
    assert len(seen) == 2 * 4 + 1  # gaps 2, 2, 2, 2, 1 after the first five rounds
    for decided, moved, weights_moved, lr in seen:
        assert weights_moved and lr == pytest.approx(tiny.hparams.learning_rate / 10)
        # no tuning follows the last decision, so some edge is always undecided here
        assert moved and not (moved & decided)


def _scripted_scorer(wanted, calls):
    """A scorer whose accuracy falls only when a wanted op loses its weight; records its inputs."""
    def scorer(model, weights, batches):
        calls.append({k: w.clone() for k, w in weights.items()})
        lost = sum(1 for label, op in wanted.items() if float(weights[label][op]) == 0.0)
        return {"acc": 0.9 - 0.1 * lost, "loss": 1.0 + lost}
    return scorer


def _wanted_scorer(wanted_ops, wanted_inputs):
    """A DARTS-space scorer: accuracy falls by 0.01 per wanted op or wanted input edge removed."""
    def scorer(model, weights, batches):
        lost = sum(1 for label, op in wanted_ops.items() if float(weights[label][op]) == 0.0)
        lost += sum(1 for node, inputs in wanted_inputs.items() for j in inputs
                    if float(weights[f"{node}<-{j}"].sum()) == 0.0)
        return {"acc": 0.9 - 0.01 * lost, "loss": 1.0 + lost}
    return scorer


def test_scripted_scores_give_the_known_answer_and_masking_follows_the_reference(tiny, monkeypatch):
    wanted = {"1<-0": 3, "2<-0": 1, "2<-1": 0, "3<-0": 4, "3<-1": 2, "3<-2": 3}
    calls = []
    monkeypatch.setattr(perturbation, "masked_scores", _scripted_scorer(wanted, calls))
    start = {k: w.detach().clone() for k, w in tiny.arch_weights().items()}
    arch, scores = perturbation_select(tiny, [(torch.zeros(1), torch.zeros(1))], rng=3)
    assert dict(arch) == wanted
    assert len(calls) == 6 * (1 + 5)  # per round: the base accuracy, then one per op
    one_hot = torch.nn.functional.one_hot
    for i, weights in enumerate(calls):
        round_index, position = divmod(i, 6)
        decided = scores["edge_order"][:round_index]
        for label in decided:  # a decided edge is the one-hot of its op from then on
            assert torch.equal(weights[label], one_hot(torch.tensor(wanted[label]), 5).to(weights[label]))
        differing = [k for k in weights if k not in decided and not torch.equal(weights[k], start[k])]
        if position == 0:  # the unperturbed accuracy opening the round
            assert differing == []
            continue
        label = scores["edge_order"][round_index]
        assert differing == [label]  # only the edge of this round
        changed = (weights[label] != start[label]).nonzero().flatten().tolist()
        assert changed == [position - 1] and float(weights[label][position - 1]) == 0.0  # no renormalization


def test_darts_space_keeps_the_two_inputs_whose_removal_hurts_most(monkeypatch):
    torch.manual_seed(0)
    model = DartsSearch(space="darts", space_options={"C": 4, "layers": 3}, num_classes=10, in_channels=1)
    space = model.space
    wanted_ops = {label: 1 + (i % 7) for i, label in enumerate(model.alphas)}  # never `none` (0)
    wanted_inputs = {"normal/2": (0, 1), "normal/3": (0, 2), "normal/4": (1, 3), "normal/5": (2, 4),
                     "reduce/2": (0, 1), "reduce/3": (1, 2), "reduce/4": (0, 3), "reduce/5": (0, 4)}

    monkeypatch.setattr(perturbation, "masked_scores", _wanted_scorer(wanted_ops, wanted_inputs))
    arch, scores = perturbation_select(model, [(torch.zeros(1), torch.zeros(1))], rng=0)
    for node, inputs in wanted_inputs.items():
        assert arch[node] == tuple((wanted_ops[f"{node}<-{j}"], j) for j in inputs)
    assert all(scores["ops"][label][0] is None for label in model.alphas)  # `none` is no candidate
    assert len(scores["nodes"]["normal/5"]) == 5  # each of the five inputs measured once
    # 17 rounds as the reference: 14 op rounds, 3 node rounds (node 2 has no round)
    assert set(scores["nodes"]) == {f"{c}/{n}" for c in ("normal", "reduce") for n in (3, 4, 5)}
    assert len(scores["base"]) == 17 and scores["tuning_epochs"] == [0] * 16
    assert space.format(arch).startswith("Genotype(")


def test_none_candidate_lets_none_win_and_the_genotype_reads_it_as_darts_does(monkeypatch):
    torch.manual_seed(0)
    model = DartsSearch(space="darts", space_options={"C": 4, "layers": 3}, num_classes=10, in_channels=1)

    def scorer(model, weights, batches):  # removing `none` hurts on every edge
        return {"acc": 0.5 if any(float(w[0]) == 0.0 for w in weights.values() if w.sum() > 0) else 0.9,
                "loss": 1.0}

    monkeypatch.setattr(perturbation, "masked_scores", scorer)
    arch, scores = perturbation_select(model, [(torch.zeros(1), torch.zeros(1))], rng=0, none_candidate=True)
    assert all(scores["ops"][label][0] is not None for label in model.alphas)  # `none` was measured
    # every edge is one-hot on `none`; DARTS's genotype() shows the first other op, max_pool_3x3
    assert all(op == 1 for node in arch for op, _ in arch[node])
    _, default_scores = perturbation_select(model, [(torch.zeros(1), torch.zeros(1))], rng=0)
    assert default_scores["ops"]["normal/2<-0"][0] is None  # by default `none` is no candidate


def test_tuning_continues_the_searchs_architecture_optimizer(tiny, digits, monkeypatch):
    trained = torch.optim.Adam(tiny.architecture_parameters(), lr=3e-4, betas=(0.5, 0.999))
    for _ in range(3):  # a search state: three steps taken
        trained.zero_grad()
        sum(a.sum() for a in tiny.alphas.values()).backward()
        trained.step()
    steps_seen = []
    real_tune = perturbation.tune

    def spy(model, decided, loader, weight_optimizer, arch_optimizer, max_batches=None):
        steps_seen.append(float(arch_optimizer.state_dict()["state"][0]["step"]))
        real_tune(model, decided, loader, weight_optimizer, arch_optimizer, max_batches)

    monkeypatch.setattr(perturbation, "tune", spy)
    perturbation_select(tiny, digits.val_dataloader(), train_loader=digits.train_dataloader(), proj_interval=1,
                        rng=0, num_batches=1, tune_batches=1, arch_optimizer_state=trained.state_dict())
    assert steps_seen[:2] == [3.0, 4.0]  # the search's count, then one alpha step per tuning batch
    wrong = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    with pytest.raises(ValueError, match="--fresh-arch-optimizer"):
        perturbation_select(tiny, digits.val_dataloader(), train_loader=digits.train_dataloader(),
                            proj_interval=1, num_batches=1, arch_optimizer_state=wrong)


def test_the_same_seed_gives_the_same_selection(tiny, digits):
    first = perturbation_select(tiny, digits.val_dataloader(), rng=7, num_batches=1)
    again = perturbation_select(tiny, digits.val_dataloader(), rng=7, num_batches=1)
    other = perturbation_select(tiny, digits.val_dataloader(), rng=8, num_batches=1)
    assert first == again
    assert other[1]["edge_order"] != first[1]["edge_order"]


def test_scoring_leaves_the_supernet_unchanged_and_bad_input_is_named(tiny, digits):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    perturbation_select(tiny, digits.val_dataloader(), rng=0, num_batches=1)
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats restored
    with pytest.raises(ValueError, match="proj_interval=2 needs a train_loader"):
        perturbation_select(tiny, digits.val_dataloader(), proj_interval=2)
    with pytest.raises(ValueError, match="criterion='top5'"):
        perturbation_select(tiny, digits.val_dataloader(), criterion="top5")
    with pytest.raises(ValueError, match="val_batches yielded nothing"):
        perturbation_select(tiny, [])


def test_discretize_rule_perturbation_writes_a_loadable_arch(tmp_path):
    run = tmp_path / "run"
    L.seed_everything(0)
    model = DartsSearch(**TINY)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        default_root_dir=run, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    main([str(run), "--rule", "perturbation", "--batches", "1", "--proj-intv", "1", "--tune-batches", "1",
          "--seed", "2"])
    path = run / "arch_perturbation.json"
    record = json.loads(path.read_text())
    arch = supernets.get("nb201").load(str(path))
    assert record["rule"] == "perturbation"
    assert record["settings"] == {"num_batches": 1, "seed": 2, "criterion": "acc", "proj_interval": 1,
                                  "tune_batches": 1, "none_candidate": False,
                                  "arch_optimizer": "the search's", "data": "digits"}
    assert set(record["scores"]["ops"]) == set(model.alphas)
    assert record["scores"]["tuning_epochs"] == [1] * 5
    for label, removed in record["scores"]["ops"].items():
        accuracies = [m["acc"] for m in removed]
        assert arch[label] == min(range(5), key=lambda i: (accuracies[i], i))


def _darts_model():
    torch.manual_seed(0)
    return DartsSearch(space="darts", space_options={"C": 4, "layers": 3}, num_classes=10, in_channels=1)


def _zeroed(weights, cell):
    return {k for k, w in weights.items() if k.startswith(cell + "/") and float(w.abs().sum()) == 0.0}


@pytest.mark.parametrize("criterion", ["acc", "loss"])
def test_topology_zeroes_only_the_measured_edge_and_keeps_the_reference_top2(monkeypatch, criterion):
    """project_edge measures each removal on fresh projected weights: an input dropped earlier for
    the node is not zeroed in later measurements, so interactions between dropped inputs (here a
    penalty when inputs 0 and 1 of node 4 are both gone) cannot change which two are kept."""
    model = _darts_model()
    wanted_ops = {label: 1 + (i % 7) for i, label in enumerate(model.alphas)}  # never `none`
    single = {3: {0: 0.0, 1: 0.0, 2: 0.0},  # all tied: the lower two inputs are kept
              4: {0: 0.0, 1: 0.001, 2: 0.002, 3: 0.003},
              5: {0: 0.004, 1: 0.0, 2: 0.004, 3: 0.0, 4: 0.004}}  # three tied at the top: keep 0, 2
    expected = {3: (0, 1), 4: (2, 3), 5: (0, 2)}  # cumulative dropping would keep (1, 3) for node 4
    calls = []

    def scorer(model, weights, batches):
        calls.append({k: w.clone() for k, w in weights.items()})
        hurt = 0.01 * sum(1 for label, op in wanted_ops.items() if float(weights[label][op]) == 0.0)
        for cell in ("normal", "reduce"):
            gone = {(int(k.split("/")[1].split("<-")[0]), int(k.split("<-")[1])) for k in _zeroed(weights, cell)}
            hurt += sum(single[n][j] for n, j in gone)
            hurt += 0.1 if {(4, 0), (4, 1)} <= gone else 0.0
        return {"acc": 0.9 - hurt, "loss": 1.0 + hurt}

    monkeypatch.setattr(perturbation, "masked_scores", scorer)
    arch, scores = perturbation_select(model, [(torch.zeros(1), torch.zeros(1))], rng=0, criterion=criterion)
    for cell in ("normal", "reduce"):
        for n, inputs in expected.items():
            assert arch[f"{cell}/{n}"] == tuple((wanted_ops[f"{cell}/{n}<-{j}"], j) for j in inputs)
        assert arch[f"{cell}/2"] == tuple((wanted_ops[f"{cell}/2<-{j}"], j) for j in (0, 1))
    # 17 bases, 7 candidates on each of 14 edges per cell, each input of nodes 3, 4, 5 once per cell
    assert len(calls) == 17 + 2 * 14 * 7 + 2 * (3 + 4 + 5)
    node_calls = calls[14 * (1 + 2 * 7):]  # after 14 op rounds: the node rounds' bases and measurements
    order = list(scores["nodes"])  # normal, reduce of round 15, then of 16, then of 17
    for r in range(3):
        base = node_calls.pop(0)
        for node in order[2 * r:2 * r + 2]:
            cell, n = node.split("/")
            for j in range(int(n)):  # only the measured edge is zeroed beyond the projection
                assert _zeroed(node_calls.pop(0), cell) - _zeroed(base, cell) == {f"{node}<-{j}"}
    assert node_calls == []


def test_genotype_reads_the_inputs_as_darts_pt_does_when_a_kept_edge_is_none(monkeypatch):
    """DARTS-PT's genotype() ranks a node's inputs by their largest weight but `none`: a kept input
    one-hot on `none` ranks with the dropped (all-zero) ones, the lowest of which then shows."""
    model = _darts_model()
    wanted_ops = {label: 1 + (i % 7) for i, label in enumerate(model.alphas)}
    wanted_ops["normal/3<-2"] = 0  # `none` wins this edge
    wanted_inputs = {"normal/3": (1, 2)}

    monkeypatch.setattr(perturbation, "masked_scores", _wanted_scorer(wanted_ops, wanted_inputs))
    arch, scores = perturbation_select(model, [(torch.zeros(1), torch.zeros(1))], rng=0, none_candidate=True)
    removed = scores["nodes"]["normal/3"]
    assert removed["0"]["acc"] > removed["1"]["acc"] == removed["2"]["acc"]  # inputs 1, 2 are kept
    # weights: input 1 one-hot on its op, 2 one-hot on `none`, 0 all zero: the stable sort gives 1, 0
    assert arch["normal/3"] == ((wanted_ops["normal/3<-1"], 1), (1, 0))
