"""Best-of-N selection: picks the best score, shares batches, is reproducible, restores the mode."""
import random

import pytest
import torch

import supernets
import oneshot.selection.best_of_n as selection
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.selection.best_of_n import best_of_n, score_architecture
from supernets import Arch


def _model():
    torch.manual_seed(0)
    return RandomSinglePathSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=3,
                                  in_channels=1, memory_format="contiguous")


def _batches(n=3, size=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_picks_the_best_accuracy_and_breaks_ties_by_loss(monkeypatch):
    def crafted(model, arch, batches):  # accuracy = share of nor_conv_3x3 edges, loss = first op
        return sum(v == 3 for v in arch.values()) / 6, float(arch["1<-0"])

    monkeypatch.setattr(selection, "score_architecture", crafted)
    space = supernets.get("nb201")
    candidates = [space.from_index(i) for i in range(50)]
    best, scores = best_of_n(_model(), _batches(), candidates=candidates)
    expected = max(candidates, key=lambda a: (crafted(None, a, None)[0], -crafted(None, a, None)[1]))
    assert best == expected
    assert [s[0] for s in scores] == [space.format(a) for a in candidates]
    all_conv = dict.fromkeys(space.from_index(0), 3)
    low_loss = Arch("nb201", {**all_conv, "1<-0": 0})  # 5 of 6 convs, loss 0
    same_acc = Arch("nb201", {**all_conv, "1<-0": 1})  # 5 of 6 convs, loss 1
    assert best_of_n(_model(), _batches(), candidates=[same_acc, low_loss])[0] == low_loss


def test_scores_are_real_single_path_evaluations_on_shared_batches():
    model = _model()
    model.train()
    batches = _batches(n=3)
    drawn = []

    def loader():
        for batch in batches:
            drawn.append(batch)
            yield batch

    best, scores = best_of_n(model, loader(), num_samples=5, num_batches=2, rng=3)
    assert len(drawn) == 2  # the first two batches, drawn once, shared by all five candidates
    assert model.training  # the mode is restored
    model.eval()
    arch = model.space.parse(scores[0][0])
    with torch.no_grad():
        logits = [model(x, model.space.decisions(arch)) for x, _ in batches[:2]]
    y = torch.cat([y for _, y in batches[:2]])
    logits = torch.cat(logits)
    assert scores[0][1] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert scores[0][2] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert best == model.space.parse(max(scores, key=lambda s: (s[1], -s[2]))[0])


def test_same_rng_same_choice_other_rng_other_candidates():
    model, batches = _model(), _batches()
    first = best_of_n(model, batches, num_samples=8, rng=random.Random(4))
    again = best_of_n(model, batches, num_samples=8, rng=4)
    assert first == again
    other = best_of_n(model, batches, num_samples=8, rng=5)
    assert [s[0] for s in other[1]] != [s[0] for s in first[1]]


def test_bad_arguments_are_named():
    model = _model()
    with pytest.raises(ValueError, match="batches yielded nothing"):
        best_of_n(model, [], num_samples=2)
    with pytest.raises(ValueError, match="num_samples=0"):
        best_of_n(model, _batches(), num_samples=0)
    with pytest.raises(ValueError, match="num_batches=0"):
        best_of_n(model, _batches(), num_batches=0)
    with pytest.raises(ValueError, match="space 'darts'"):
        best_of_n(model, _batches(), candidates=[supernets.get("darts").sample(random.Random(0))])


def test_score_architecture_weights_batches_by_size():
    model = _model().eval()
    arch = model.space.from_index(0)
    batches = _batches(n=1, size=6) + _batches(n=1, size=2)
    accuracy, loss = score_architecture(model, arch, batches)
    parts = [score_architecture(model, arch, [b]) for b in batches]
    assert accuracy == pytest.approx((6 * parts[0][0] + 2 * parts[1][0]) / 8)
    assert loss == pytest.approx((6 * parts[0][1] + 2 * parts[1][1]) / 8)


def test_every_algorithm_can_select_best_of_n(tmp_path, monkeypatch):
    """DARTS with selection=best_of_n exports the best-scoring sample, not its argmax."""
    import lightning as L

    from oneshot.algorithms import DartsSearch
    from oneshot.data import DigitsDataModule

    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                        selection="best_of_n", selection_samples=5)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    scores = model.selection["scores"]
    assert len(scores) == 5
    best = max(scores, key=lambda s: (s[1], -s[2]))[0]
    assert model.space.format(model.export()) == best


def test_reference_protocol_scores_each_candidate_on_the_next_batch(monkeypatch):
    seen = []

    def crafted(model, arch, batches):  # everyone scores 0.5: ties go to the first sampled
        seen.append([b[0] for b in batches])
        return 0.5, 1.0 / (len(seen))

    monkeypatch.setattr(selection, "score_architecture", crafted)
    space = supernets.get("nb201")
    batches = _batches(n=3)
    candidates = [space.from_index(i) for i in range(5)]
    best, _ = best_of_n(_model(), batches, candidates=candidates, shared_batches=False)
    assert best == candidates[0]  # the reference keeps the first of equal accuracies
    expected = [batches[i % 3][0] for i in range(5)]  # next batch each, re-iterating the loader
    assert all(got[0] is want for got, want in zip(seen, expected))
    seen.clear()
    best, _ = best_of_n(_model(), batches, candidates=candidates)  # shared: lower loss wins ties
    assert best == candidates[-1] and all(got[0] is batches[0][0] for got in seen)
