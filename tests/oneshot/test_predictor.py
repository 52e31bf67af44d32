"""OFA's predictor-guided search: the encoding's layout and round trip, the predictor's frozen
offset and fit, the evolution under a budget, clear errors, and `select("predictor", ...)` end to
end on a tiny ofa-mbv3 supernet (files written, an interrupted dataset build resumed)."""
import json
import random

import lightning as L
import pytest
import torch

import supernets
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.data import DigitsDataModule
from oneshot.latency import measure_latency_table
from oneshot.selection import predictor as predictor_module
from oneshot.selection import select
from oneshot.selection.predictor import (ArchEncoder, AccuracyPredictor, EvolutionFinder, FinderSettings,
                                         PredictorTraining, active_key, evenly_spaced, load_predictor,
                                         parse_budgets, predict_accuracy, sample_subnets, train_predictor)
from supernets.ofa_mbv3 import (RESOLUTION, block_positions, depth_label, expand_label, kernel_label,
                                space_choices)

SPACE = supernets.get("ofa-mbv3")
TINY_WIDTHS = [8, 8, 8, 16, 16, 24, 24, 64, 96]
OFA_CHOICES = {**space_choices(), RESOLUTION: (128, 160, 192, 224)}


def _arch(resolution=160, depths=(2, 3, 4, 2, 3), kernel=5, expand=4):
    values = {RESOLUTION: resolution, **{depth_label(s): d for s, d in enumerate(depths, start=1)}}
    values.update({kernel_label(s, b): kernel for s, b in block_positions()})
    values.update({expand_label(s, b): expand for s, b in block_positions()})
    return supernets.Arch("ofa-mbv3", {label: values[label] for label in space_choices()})


# --- encoding ---------------------------------------------------------------------------------------

def test_the_layout_is_resolution_then_every_kernel_then_every_expand():
    encoder = ArchEncoder(OFA_CHOICES)
    assert encoder.n_features == 4 + 20 * 3 + 20 * 3  # OFA's MobileNetArchEncoder: n_dim 124
    arch = _arch(resolution=160, depths=(2, 3, 4, 2, 3), kernel=5, expand=4)
    feature = encoder.encode(arch)
    assert feature[:4].tolist() == [0, 1, 0, 0]
    kernels = feature[4:64].view(20, 3)
    expands = feature[64:].view(20, 3)
    for i, (s, b) in enumerate(block_positions()):
        active = b <= (2, 3, 4, 2, 3)[s - 1]
        assert kernels[i].tolist() == ([0, 1, 0] if active else [0, 0, 0])  # k5 of (3, 5, 7)
        assert expands[i].tolist() == ([0, 1, 0] if active else [0, 0, 0])  # e4 of (3, 4, 6)
    assert feature.sum() == 1 + 2 * 14


def test_decoding_gives_back_the_active_part_exactly():
    encoder = ArchEncoder(OFA_CHOICES)
    rng = random.Random(0)
    for _ in range(50):
        arch = SPACE.sample(rng, encoder.choices)
        feature = encoder.encode(arch)
        decoded = encoder.decode(feature)
        assert active_key(decoded) == active_key(arch)
        assert torch.equal(encoder.encode(decoded), feature)
        assert dict(decoded) == encoder.canonical(arch)
        for s, b in block_positions():  # skipped blocks at the smallest values
            if b > arch[depth_label(s)]:
                assert (decoded[kernel_label(s, b)], decoded[expand_label(s, b)]) == (3, 3)


def test_an_arch_outside_the_enabled_choices_is_named():
    encoder = ArchEncoder({**OFA_CHOICES, **{kernel_label(s, b): (3, 5) for s, b in block_positions()}})
    with pytest.raises(ValueError, match=r"stage1.block1.kernel = 7 is outside the enabled choices \(3, 5\)") as error:
        encoder.encode(_arch(kernel=7))
    assert "\n" not in str(error.value)
    skipped_seven = dict(_arch(kernel=5, depths=(2, 2, 2, 2, 2)))
    skipped_seven[kernel_label(1, 4)] = 7  # a skipped block: does nothing, is not encoded
    encoder.encode(skipped_seven)
    with pytest.raises(ValueError, match="resolution = 176"):
        encoder.encode(_arch(resolution=176))


def test_evenly_spaced_resolutions_are_ofas_dataset_sizes():
    assert evenly_spaced(range(128, 225, 4)) == (128, 160, 192, 224)
    assert evenly_spaced([32, 40]) == (32, 40)


def test_subnets_are_distinct_networks():
    encoder = ArchEncoder({**OFA_CHOICES, **{depth_label(s): (2,) for s in range(1, 6)},
                           **{kernel_label(s, b): (3,) for s, b in block_positions()},
                           **{expand_label(s, b): (3, 4) for s, b in block_positions()}})
    assert encoder.subnet_count() == 4 ** 5
    subnets = sample_subnets(encoder, 5000, random.Random(0))  # more than there are: all of them
    assert len(subnets) == 4 ** 5 and len({active_key(v) for v in subnets}) == 4 ** 5


# --- the predictor --------------------------------------------------------------------------------------

def test_base_acc_is_a_frozen_offset_of_the_training_mean():
    predictor = AccuracyPredictor(10, hidden=8, layers=2)
    assert "base_acc" not in dict(predictor.named_parameters())
    assert predictor.layers[-1].bias is None
    predictor.base_acc.fill_(0.7)
    torch.nn.init.zeros_(predictor.layers[-1].weight)
    assert torch.allclose(predictor(torch.rand(3, 10)), torch.full((3,), 0.7))

    features = torch.rand(40, 10)
    targets = 0.5 + 0.1 * features[:, 0]
    trained, report = train_predictor(features, targets, PredictorTraining(epochs=3, hidden=8, layers=2))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert report["train_size"] == 32 and report["val_size"] == 8
    assert float(trained.base_acc) == pytest.approx(float(targets[order[:32]].mean()), abs=1e-6)
    assert report["base_acc"] == pytest.approx(float(trained.base_acc))


def test_the_predictor_fits_a_linear_accuracy_to_a_fraction_of_a_point():
    encoder = ArchEncoder(OFA_CHOICES)
    rng = random.Random(1)
    archs = [SPACE.sample(rng, encoder.choices) for _ in range(1000)]
    features = encoder.encode_many(archs)
    weights = torch.randn(encoder.n_features, generator=torch.Generator().manual_seed(2)) * 0.01
    targets = 0.6 + features @ weights
    predictor, report = train_predictor(features, targets, PredictorTraining(epochs=100, hidden=128))
    spread = 100 * float(targets.std())  # 4.7 points
    assert report["val_rmse"] < 0.1 * spread, (report, spread)
    assert predict_accuracy(predictor, encoder, archs[:2]) == pytest.approx(
        predictor(features[:2]).tolist())


def test_accuracies_in_percent_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_predictor(torch.rand(10, 4), torch.full((10,), 75.0))


# --- budgets and the evolution ------------------------------------------------------------------------

def test_budgets_take_latency_besides_the_evolution_keys():
    flops, latency = parse_budgets(["flops<=300e6", "latency<=20"])
    assert (flops.cost_key, flops.limit) == ("macs", 300e6)
    assert (latency.cost_key, latency.limit, str(latency)) == ("latency", 20.0, "latency<=20")
    with pytest.raises(ValueError, match="accepted: flops, macs, params, latency"):
        parse_budgets(["speed<=3"])
    with pytest.raises(ValueError, match="'latency<=fast'"):
        parse_budgets(["latency<=fast"])


def _fake_cost(values):
    """Multiply-adds-like: grows with resolution, depth, kernel and expand."""
    key = active_key(values)
    return {"macs": key[0] * sum(key[1:]), "params": float(sum(key[1:]))}


def _fake_predict(population):
    return [sum(active_key(v)[1:]) / 1000.0 for v in population]


def test_every_candidate_and_the_winner_meet_the_budget():
    settings = FinderSettings(population=20, generations=8)
    limit = 160 * 150
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost, parse_budgets([f"flops<={limit}"]), settings)
    result = finder.run()
    assert all(_fake_cost(v)["macs"] <= limit for _, v in result["population"])
    assert len(result["population"]) == 5 + 20  # OFA: the parents stay with their 100 children
    assert all(c["macs"] <= limit for c in finder.candidates.values())
    assert _fake_cost(result["best"])["macs"] <= limit
    scores = [h["predicted_accuracy"] for h in result["history"]]
    assert len(scores) == 9 and scores == sorted(scores)
    assert result["predicted_accuracy"] == max(c["predicted_accuracy"] for c in finder.candidates.values())
    again = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost, parse_budgets([f"flops<={limit}"]), settings).run()
    assert again["best"] == result["best"]  # seeded


def test_mutation_redraws_kernel_and_expand_together_and_resolution_apart():
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost,
                             settings=FinderSettings(mutate_prob=0.0, resolution_mutate_prob=0.0))
    parent = dict(_arch())
    assert finder._mutated(parent) == parent
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost,
                             settings=FinderSettings(mutate_prob=0.0, resolution_mutate_prob=1.0))
    changed = {k for _ in range(20) for k, v in finder._mutated(parent).items() if v != parent[k]}
    assert changed == {RESOLUTION}
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost,
                             settings=FinderSettings(mutate_prob=1.0, resolution_mutate_prob=0.0))
    changed = {k for _ in range(20) for k, v in finder._mutated(parent).items() if v != parent[k]}
    assert RESOLUTION not in changed and kernel_label(3, 4) in changed and depth_label(5) in changed


def test_an_impossible_budget_fails_clearly():
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost, parse_budgets(["flops<=10"]))
    with pytest.raises(ValueError, match=r"flops<=10 cannot be met: the smallest subnet .* has flops 8960") as error:
        finder.run()
    assert "\n" not in str(error.value)
    finder = EvolutionFinder(OFA_CHOICES, _fake_predict, _fake_cost, parse_budgets(["params>=1e9"]),
                             FinderSettings(sample_tries=50))
    with pytest.raises(ValueError, match=r"no random subnet .* met params>=1e\+09 in 50 tries"):
        finder.run()


# --- end to end on a tiny supernet ---------------------------------------------------------------------

SMALL = dict(predictor_samples=6, predictor_epochs=20, population=8, generations=4, bn_batches=2, bn_batch_size=32,
             val_images=64, val_batch_size=64, progress=False)


@pytest.fixture(scope="module")
def tiny():
    L.seed_everything(0)
    model = RandomSinglePathSearch(space="ofa-mbv3", space_options={"base_widths": TINY_WIDTHS,
                                                                    "resolutions": [16, 24, 8]},
                                   num_classes=10, in_channels=1)
    model.enabled_choices = {**model.supernet.choices,  # a training phase that enabled fewer kernels
                             **{kernel_label(s, b): (3, 5) for s, b in block_positions()}}
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    return model, data


def test_select_predictor_end_to_end(tiny, tmp_path):
    model, data = tiny
    middle = SPACE.cost(SPACE.sample(random.Random(3), model.enabled_choices), num_classes=10, in_channels=1,
                        base_widths=TINY_WIDTHS)["macs"]
    chosen = select("predictor", model, data, constraints=[f"flops<={middle}"], directory=str(tmp_path), **SMALL)
    assert len(chosen.scores) == 12  # 6 subnets x resolutions 16, 24
    assert {SPACE.parse(r["arch"])[RESOLUTION] for r in chosen.scores} == {16, 24}
    assert all(SPACE.parse(r["arch"])[kernel_label(s, b)] in (3, 5)
               for r in chosen.scores for s, b in block_positions())
    settings = chosen.settings
    assert settings["cost"]["macs"] <= middle
    assert SPACE.cost(chosen.arch, num_classes=10, in_channels=1, base_widths=TINY_WIDTHS)["macs"] <= middle
    assert settings["constraints"] == [f"flops<={middle:g}"]
    assert settings["predictor"]["train_size"] == 8 and settings["predictor"]["val_size"] == 4
    assert settings["predictor_rmse"] >= 0 and 0 <= settings["measured_accuracy"] <= 1
    for name in ("predictor_dataset.json", "predictor.pt", "predictor_search.json", "predictor_search.png"):
        assert (tmp_path / name).stat().st_size > 0
    search = json.loads((tmp_path / "predictor_search.json").read_text())
    assert search["best"]["arch"] == SPACE.format(chosen.arch) and len(search["history"]) == 5
    encoder, predictor = load_predictor(tmp_path / "predictor.pt")
    assert predict_accuracy(predictor, encoder, [chosen.arch])[0] == pytest.approx(settings["predicted_accuracy"])
    outside = dict(chosen.arch)
    outside[kernel_label(1, 1)] = 7
    with pytest.raises(ValueError, match="outside the enabled choices"):
        encoder.encode(outside)


def test_an_interrupted_dataset_build_continues(tiny, tmp_path, monkeypatch):
    model, data = tiny
    calls = []
    real_scorer = predictor_module.scorer

    def counting_scorer(*args, **kwargs):
        evaluate, protocol = real_scorer(*args, **kwargs)

        def counted(arch):
            calls.append(arch)
            if len(calls) == 5 and interrupt:
                raise KeyboardInterrupt
            return evaluate(arch)
        return counted, protocol

    monkeypatch.setattr(predictor_module, "scorer", counting_scorer)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        select("predictor", model, data, directory=str(tmp_path), **SMALL)
    saved = json.loads((tmp_path / "predictor_dataset.json").read_text())
    assert len(saved["measured"]) == 4
    interrupt, calls[:] = False, []
    chosen = select("predictor", model, data, directory=str(tmp_path), **SMALL)
    assert len(calls) == 12 - 4 + (0 if chosen.arch in [SPACE.parse(r["arch"]) for r in chosen.scores] else 1)
    with pytest.raises(ValueError, match="measured with other scoring"):
        select("predictor", model, data, directory=str(tmp_path), **{**SMALL, "val_images": 32})


def test_a_latency_budget_uses_the_table(tiny, tmp_path):
    model, data = tiny
    table = measure_latency_table({"base_widths": TINY_WIDTHS}, 10, 1, [16, 24], [3, 5, 7], [3, 4, 6],
                                  repeats=1, warmup=0)
    table.save(tmp_path / "latency.json")
    limit = table.predict(SPACE.sample(random.Random(4), model.enabled_choices))
    chosen = select("predictor", model, data, constraints=[f"latency<={limit}"],
                    latency_table=str(tmp_path / "latency.json"), directory=str(tmp_path / "run"), **SMALL)
    assert table.predict(chosen.arch) <= limit and chosen.settings["cost"]["latency"] <= limit
    assert chosen.settings["latency_table"]["device"]["description"] == table.device["description"]
    with pytest.raises(ValueError, match="needs a latency table"):
        select("predictor", model, data, constraints=["latency<=5"], **SMALL)
    other = measure_latency_table({"base_widths": TINY_WIDTHS}, 100, 1, [16, 24], [3, 5], [3, 4, 6],
                                  repeats=1, warmup=0)
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="measured for 100 classes, not 10"):
        select("predictor", model, data, latency_table=str(tmp_path / "other.json"), **SMALL)


def test_only_the_ofa_space_has_a_predictor():
    model = RandomSinglePathSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1)
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    with pytest.raises(ValueError, match="encodes ofa-mbv3 subnets; this supernet is nb201"):
        select("predictor", model, data, **SMALL)


def test_the_predictor_trains_inside_lightnings_inference_mode():
    """The search's selection runs in validation, under inference mode: training must still work."""
    from oneshot.selection.predictor import train_predictor

    with torch.inference_mode():
        features = torch.rand(40, 6)
        targets = (features @ torch.linspace(0.0, 0.1, 6) + 0.5).clamp(0, 1)
        predictor, report = train_predictor(features, targets)
    assert report["val_rmse"] < 10.0
