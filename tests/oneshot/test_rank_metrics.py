"""Rank-disorder metrics: agree with scipy, match hand-computed cases, reject bad input."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from oneshot.rank.metrics import (
    aggregate,
    best_rank_at_k,
    format_ratio,
    kendall_in_top_k,
    kendall_tau,
    pearson,
    precision_at_k,
    random_baseline,
    rank_metrics,
    sparse_kendall_tau,
    spearman,
    worst_rank_at_k,
)


def _random_pair(seed: int, n: int = 50, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values, so both sides have many ties
        truth = rng.integers(0, 5, n).astype(float)
        scores = truth + rng.integers(-2, 3, n)
    else:
        truth = rng.normal(70.0, 3.0, n)
        scores = truth + rng.normal(0.0, 3.0, n)
    return scores, truth


# --------------------------------------------------------------------------- against scipy
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed, ties):
    scores, truth = _random_pair(seed, ties=ties)
    assert kendall_tau(scores, truth) == pytest.approx(stats.kendalltau(scores, truth).statistic, abs=1e-12)
    assert spearman(scores, truth) == pytest.approx(stats.spearmanr(scores, truth).statistic, abs=1e-12)
    assert pearson(scores, truth) == pytest.approx(stats.pearsonr(scores, truth).statistic, abs=1e-12)
    binned = np.round(truth / 0.5) * 0.5
    assert sparse_kendall_tau(scores, truth, 0.5) == pytest.approx(
        stats.kendalltau(scores, binned).statistic, abs=1e-12)


def test_random_data_with_ties_is_not_trivially_perfect():
    scores, truth = _random_pair(0, ties=True)
    assert len(np.unique(truth)) < len(truth)
    assert 0 < kendall_tau(scores, truth) < 1


# --------------------------------------------------------------------------- hand-computed correlations
def test_identical_ranking_is_perfect_and_reversed_is_minus_one():
    truth = [60.0, 61.5, 70.2, 65.0, 68.0]
    scores = [0.1, 0.2, 0.9, 0.4, 0.5]  # same order, different scale
    assert kendall_tau(scores, truth) == pytest.approx(1.0)
    assert spearman(scores, truth) == pytest.approx(1.0)
    reversed_scores = [-s for s in scores]
    assert kendall_tau(reversed_scores, truth) == pytest.approx(-1.0)
    assert spearman(reversed_scores, truth) == pytest.approx(-1.0)


def test_tau_b_with_a_tie_in_truth_by_hand():
    scores = [2.0, 1.0, 3.0, 4.0]
    truth = [1.0, 2.0, 2.0, 3.0]
    # 6 pairs: (0,1) discordant; (1,2) tied in truth only; (0,2) (0,3) (1,3) (2,3) concordant.
    # C=4, D=1, n0=6, truth ties n2=1, score ties n1=0 -> (C-D)/sqrt((n0-n1)(n0-n2)) = 3/sqrt(30).
    assert kendall_tau(scores, truth) == pytest.approx(3 / math.sqrt(30))


def test_sparse_tau_turns_near_equal_truths_into_ties():
    scores = [2.0, 1.0, 3.0, 4.0]
    truth = [70.00, 70.04, 71.0, 72.0]  # the only discordant pair differs by 0.04 points
    # plain: C=5, D=1, no ties -> 4/6
    assert kendall_tau(scores, truth) == pytest.approx(2 / 3)
    # bin 0.1: 70.04 -> 70.0 ties with 70.00, so the discordant pair drops out: C=5, D=0 -> 5/sqrt(6*5)
    assert sparse_kendall_tau(scores, truth, bin_width=0.1) == pytest.approx(5 / math.sqrt(30))
    assert sparse_kendall_tau(scores, truth) == pytest.approx(5 / math.sqrt(30))  # 0.1 is the default
    # bin 0.01: still distinct, so sparse == plain
    assert sparse_kendall_tau(scores, truth, bin_width=0.01) == pytest.approx(2 / 3)


def test_constant_input_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (kendall_tau, spearman, pearson, sparse_kendall_tau):
            assert math.isnan(fn([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
            assert math.isnan(fn([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
        # binning can make truth constant too
        assert math.isnan(sparse_kendall_tau([1.0, 2.0, 3.0], [70.01, 70.02, 70.03], 0.1))


# --------------------------------------------------------------------------- top-K metrics
def test_precision_at_k_by_hand():
    truth = np.arange(10.0)  # true top-2 = {9, 8}
    scores = truth.copy()
    scores[0] = 100.0  # predicted top-2 = {0, 9}
    assert precision_at_k(scores, truth, 0.2) == pytest.approx(0.5)
    assert precision_at_k(truth, truth, 0.2) == pytest.approx(1.0)
    assert precision_at_k(-truth, truth, 0.2) == pytest.approx(0.0)


def test_ties_in_scores_go_to_the_lower_index():
    flat = np.zeros(10)  # predicted top-2 = indices {0, 1}
    assert precision_at_k(flat, [9, 8, 0, 0, 0, 0, 0, 0, 1, 2], 0.2) == pytest.approx(1.0)
    assert precision_at_k(flat, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2], 0.2) == pytest.approx(0.0)
    # large enough that an unstable sort would reorder ties: among the tied best scores, the
    # lowest indices are picked, and truth = -index makes exactly those the true top-K
    scores = np.random.default_rng(0).integers(0, 3, 200).astype(float)
    truth = np.where(scores == scores.max(), 1000.0, 0.0) - np.arange(200)
    assert precision_at_k(scores, truth, 0.1) == pytest.approx(1.0)


def test_k_floors_and_clamps_to_one():
    truth = np.arange(100.0)
    # perfect ranking: WR@K = K/N exposes K
    assert worst_rank_at_k(truth, truth, 0.29) == pytest.approx(0.29)  # 0.29*100 = 28.999..., still K=29
    assert worst_rank_at_k(truth, truth, 0.295) == pytest.approx(0.29)  # floor(29.5) = 29
    assert worst_rank_at_k(truth, truth, 0.001) == pytest.approx(0.01)  # floor(0.1) = 0 -> K=1
    assert worst_rank_at_k(truth, truth, 1.0) == pytest.approx(1.0)
    # N=10, ratio 0.25 -> K=2: predicted {0, 9} vs true {9, 8} gives 1/2 (K=3 would give 2/3)
    scores = np.arange(10.0)
    scores[0] = 100.0
    assert precision_at_k(scores, np.arange(10.0), 0.25) == pytest.approx(0.5)


def test_best_and_worst_rank_by_hand():
    truth = np.arange(10.0)
    # reversed: predicted top-1 is the truly worst of 10
    assert best_rank_at_k(-truth, truth, 0.1) == pytest.approx(1.0)
    assert worst_rank_at_k(-truth, truth, 0.1) == pytest.approx(1.0)
    # reversed, K=3: true ranks 10, 9, 8
    assert best_rank_at_k(-truth, truth, 0.3) == pytest.approx(0.8)
    assert worst_rank_at_k(-truth, truth, 0.3) == pytest.approx(1.0)
    # perfect: BR = 1/N, WR = K/N
    assert best_rank_at_k(truth, truth, 0.3) == pytest.approx(0.1)
    assert worst_rank_at_k(truth, truth, 0.3) == pytest.approx(0.3)


def test_tied_truths_share_the_best_rank():
    truth = [1.0, 3.0, 3.0, 0.0]  # min ranks: 3, 1, 1, 4
    scores = [0.0, 0.0, 1.0, 0.0]  # predicted top-1 = index 2, true rank 1 (not 2)
    assert best_rank_at_k(scores, truth, 0.25) == pytest.approx(0.25)
    assert worst_rank_at_k([1.0, 0.0, 0.0, 0.0], truth, 0.25) == pytest.approx(0.75)


def test_kendall_in_top_k():
    truth = np.arange(10.0)
    scores = np.array([0, 1, 2, 3, 4, 5, 6, 9, 8, 7], dtype=float)  # top-3 found, but in reverse order
    assert kendall_tau(scores, truth) > 0.5
    assert kendall_in_top_k(scores, truth, 0.3) == pytest.approx(-1.0)
    assert kendall_in_top_k(truth, truth, 0.3) == pytest.approx(1.0)
    # restricted to the predicted top-5 = indices 7, 8, 9, 6, 5: truth 7, 8, 9, 6, 5
    idx = [7, 8, 9, 6, 5]
    assert kendall_in_top_k(scores, truth, 0.5) == pytest.approx(
        stats.kendalltau(scores[idx], truth[idx]).statistic)
    assert math.isnan(kendall_in_top_k(scores, truth, 0.1))  # K = 1


# --------------------------------------------------------------------------- reports
@pytest.mark.parametrize("ratio, text", [(0.1, "10%"), (0.05, "5%"), (0.001, "0.1%"), (0.005, "0.5%"),
                                         (0.01, "1%"), (1.0, "100%"), (0.07, "7%")])
def test_format_ratio(ratio, text):
    assert format_ratio(ratio) == text


def test_rank_metrics_keys_and_values():
    scores, truth = _random_pair(3, n=40)
    report = rank_metrics(scores, truth)
    assert list(report) == [
        "kendall_tau", "sparse_kendall_tau", "spearman", "pearson",
        "precision@1%", "br@1%", "wr@1%", "precision@5%", "br@5%", "wr@5%",
        "precision@10%", "br@10%", "wr@10%", "kendall_top@5%", "kendall_top@10%", "n",
    ]
    assert report["n"] == 40
    assert report["kendall_tau"] == pytest.approx(kendall_tau(scores, truth))
    assert report["sparse_kendall_tau"] == pytest.approx(sparse_kendall_tau(scores, truth, 0.1))
    assert report["precision@10%"] == pytest.approx(precision_at_k(scores, truth, 0.1))
    assert report["br@5%"] == pytest.approx(best_rank_at_k(scores, truth, 0.05))
    assert report["kendall_top@10%"] == pytest.approx(kendall_in_top_k(scores, truth, 0.1))
    assert report["kendall_top@5%"] in (-1.0, 1.0)  # K = floor(0.05 * 40) = 2: one pair
    custom = rank_metrics(scores, truth, ratios=(0.25,), top_k_ratios=(0.01,), bin_width=1.0)
    assert math.isnan(custom["kendall_top@1%"])  # K = 1
    assert set(custom) == {"kendall_top@1%", "kendall_tau", "sparse_kendall_tau", "spearman", "pearson",
                           "precision@25%", "br@25%", "wr@25%", "n"}
    assert custom["sparse_kendall_tau"] == pytest.approx(sparse_kendall_tau(scores, truth, 1.0))


def test_aggregate_mean_std_and_nan():
    reports = [
        {"a": 1.0, "b": float("nan"), "c": float("nan"), "only_here": 5.0},
        {"a": 3.0, "b": 2.0, "c": float("nan")},
        {"a": 5.0, "b": 4.0, "c": float("nan")},
    ]
    out = aggregate(reports)
    assert set(out) == {"a", "b", "c"}  # only keys every report has
    assert out["a"]["mean"] == pytest.approx(3.0)
    assert out["a"]["std"] == pytest.approx(math.sqrt(8 / 3))  # population std of 1, 3, 5
    assert out["a"]["n"] == 3
    assert out["b"] == {"mean": pytest.approx(3.0), "std": pytest.approx(1.0), "n": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = aggregate(reports)["c"]
    assert math.isnan(c["mean"]) and math.isnan(c["std"]) and c["n"] == 0
    single = aggregate([{"a": 2.5}])["a"]
    assert single == {"mean": 2.5, "std": 0.0, "n": 1}


# --------------------------------------------------------------------------- random baseline
def _brute_force_best_of(population, k):
    draws = list(itertools.product(population, repeat=k))
    return sum(max(d) for d in draws) / len(draws)


def test_expected_best_of_random_is_exact():
    # [1, 2, 3], k=2, all 9 ordered pairs: maxima 1,2,3, 2,2,3, 3,3,3 -> 22/9
    out = random_baseline([3.0, 1.0, 2.0], [], top=(1, 2))
    assert out["expected_best_of_random"]["top2"] == pytest.approx(22 / 9)
    assert out["expected_best_of_random"]["top1"] == pytest.approx(2.0)
    assert _brute_force_best_of([1, 2, 3], 2) == pytest.approx(22 / 9)
    population = [5.0, 2.0, 2.0, 1.0, 7.5]  # with a tie
    out = random_baseline(population, [], top=(1, 3, 4))
    for k in (1, 3, 4):
        assert out["expected_best_of_random"][f"top{k}"] == pytest.approx(_brute_force_best_of(population, k))
    assert out["picks"] == {}


def test_random_baseline_picks_and_population():
    population = [1.0, 2.0, 3.0, 4.0]
    picked = [3.0, 1.0, 4.0, 2.0, 2.5, 0.0]
    out = random_baseline(population, picked)
    assert out["population"] == {
        "n": 4, "mean": pytest.approx(2.5), "std": pytest.approx(math.sqrt(1.25)), "min": 1.0,
        "q25": pytest.approx(1.75), "median": pytest.approx(2.5), "q75": pytest.approx(3.25), "max": 4.0,
    }
    assert out["picks"]["top1"] == {"truth": 3.0, "percentile": pytest.approx(75.0)}
    assert out["picks"]["top5"] == {"best_truth": 4.0, "mean_truth": pytest.approx(12.5 / 5),
                                    "percentile_of_best": pytest.approx(100.0)}
    assert set(out["expected_best_of_random"]) == {"top1", "top5"}
    # too few picks for top5: the entry is left out, the random expectation is not
    short = random_baseline(population, [0.5, 9.0])
    assert short["picks"] == {"top1": {"truth": 0.5, "percentile": 0.0}}
    assert set(short["expected_best_of_random"]) == {"top1", "top5"}


# --------------------------------------------------------------------------- errors
def test_rejects_bad_input():
    good = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="length"):
        kendall_tau(good, [1.0, 2.0])
    with pytest.raises(ValueError, match="N=1"):
        spearman([1.0], [2.0])
    with pytest.raises(ValueError, match=r"scores has 2 non-finite"):
        pearson([np.nan, 1.0, np.inf], good)
    with pytest.raises(ValueError, match=r"truth has 1 non-finite"):
        rank_metrics(good, [1.0, np.nan, 3.0])
    for ratio in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            precision_at_k(good, good, ratio)
    with pytest.raises(ValueError, match="ratio"):
        rank_metrics(good, good, top_k_ratios=(2.0,))
    for bad_bin in (0.0, -0.1, float("inf")):
        with pytest.raises(ValueError, match="bin_width"):
            sparse_kendall_tau(good, good, bin_width=bad_bin)
    with pytest.raises(ValueError, match="empty"):
        random_baseline([], [1.0])
    with pytest.raises(ValueError, match="population has 1 non-finite"):
        random_baseline([1.0, np.nan], [1.0])
