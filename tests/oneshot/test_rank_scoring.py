"""BatchNorm protocols of rank scoring: recalibration writes the exact image-weighted average of
batch means and biased variances, the three modes give different statistics and scores, and the
supernet is left exactly as it was."""
import pytest
import torch

import supernets
from oneshot.algorithms.rsps import RandomSinglePathSearch
from oneshot.rank.scoring import batchnorms, recalibrate_batchnorm, score_archs
from oneshot.batchnorm import preserved_batchnorm


def _model(track_running_stats=True):
    torch.manual_seed(0)
    return RandomSinglePathSearch(space="nb201", num_classes=3, in_channels=1, memory_format="contiguous",
                                  space_options={"C": 4, "N": 1, "track_running_stats": track_running_stats})


def _batches(sizes=(8, 5, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=g) * 2 + 1, torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def test_recalibration_is_the_exact_image_weighted_average():
    model = _model()
    arch = supernets.get("nb201").from_index(123)
    batches = _batches()
    stem_bn = model.supernet.stem[1]  # sees the stem conv's output, whatever the arch
    inputs = []
    hook = stem_bn.register_forward_pre_hook(lambda m, i: inputs.append(i[0].detach().clone()))
    with preserved_batchnorm(model.supernet):
        recalibrate_batchnorm(model, arch, batches)
        hook.remove()
        recalibrated_mean, recalibrated_var = stem_bn.running_mean.clone(), stem_bn.running_var.clone()
        assert int(stem_bn.num_batches_tracked) == 3
    n = sum(x.shape[0] for x in inputs)
    mean = sum(x.mean((0, 2, 3)) * x.shape[0] for x in inputs) / n
    var = sum(x.var((0, 2, 3), unbiased=False) * x.shape[0] for x in inputs) / n
    torch.testing.assert_close(recalibrated_mean, mean)
    torch.testing.assert_close(recalibrated_var, var)
    # not what an exponential moving average (PyTorch's default momentum 0.1) would give
    assert not torch.allclose(stem_bn.running_mean, mean)


def test_modes_give_different_statistics_and_scores_and_leave_the_supernet_alone():
    model = _model()
    space = supernets.get("nb201")
    archs = [space.from_index(i) for i in (5, 900, 4000)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val, train = _batches(seed=2), _batches(seed=3)
    scores = {mode: score_archs(model, archs, val, mode, train) for mode in ("recalibrate", "train", "running")}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert scores["recalibrate"] != scores["running"] and scores["train"] != scores["running"]
    assert scores["recalibrate"] != scores["train"]
    assert all(0.0 <= acc <= 1.0 and loss > 0 for s in scores.values() for acc, loss in s)
    assert score_archs(model, archs, val, "recalibrate", train) == scores["recalibrate"]  # deterministic


def test_batchnorms_without_running_statistics_are_recalibrated_then_restored():
    model = _model(track_running_stats=False)
    cell_norms = [bn for bn in batchnorms(model.supernet) if bn.running_mean is None]
    assert cell_norms  # NB201's BN0 cells
    arch = supernets.get("nb201").from_index(3000)  # convolutions on several edges
    with preserved_batchnorm(model.supernet):
        recalibrate_batchnorm(model, arch, _batches())
        assert any(bn.running_mean is not None and bn.track_running_stats for bn in cell_norms)
    assert all(bn.running_mean is None and not bn.track_running_stats for bn in cell_norms)


def test_bad_modes_are_named():
    model = _model()
    arch = [supernets.get("nb201").from_index(0)]
    with pytest.raises(ValueError, match="bn_mode='ema'"):
        score_archs(model, arch, _batches(), "ema")
    with pytest.raises(ValueError, match="needs training batches"):
        score_archs(model, arch, _batches(), "recalibrate", [])
