"""Rank disorder: how well a supernet's proxy scores order architectures by their true accuracy.

Every metric compares ``scores`` (the supernet's proxy, e.g. inherited-weight validation
accuracy) with ``truth`` (stand-alone accuracies of the same N architectures). Both are 1-D,
equally long, and *higher is better* (callers negate losses).

Sources:

* Kendall tau-b: ``scipy.stats.kendalltau`` with its default ``variant="b"``, which corrects
  for ties on either side.
* Sparse Kendall tau: Yu, Ranftl & Salzmann, "How to Train Your Super-Net: An Analysis of
  Training Heuristics in Weight-Sharing NAS", arXiv 2003.04276. Ground truth is rounded to a
  bin before tau-b, so architectures whose accuracies differ by less than run-to-run noise
  count as ties instead of as (dis)agreements; eval-nas and the NAS-Bench-301 "sKT" use a bin
  of 0.1% (accuracy in percent, ``bin_width=0.1``).
* Spearman rho and Pearson r: ``scipy.stats.spearmanr`` / ``pearsonr``.
* P@K and Kendall tau within the predicted top-K: aw_nas "surgery" evaluation of one-shot
  evaluators; only the top of the ranking matters to a search that keeps the best.
* BR@K / WR@K: Ning et al., "Evaluating Efficient Performance Estimators of Neural
  Architectures", NeurIPS 2021: the best / worst true rank among the predicted top-K,
  as a fraction of N (lower is better).

Top-K conventions: ``K = max(1, floor(ratio * N + 1e-9))`` for a ratio in (0, 1]; the
predicted top-K are the indices of the K highest scores, ties going to the lower index (a
stable sort of ``-scores``); the true top-K likewise on ``truth``.

Pure numpy/scipy, so that it can run on benchmark tables without torch.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

ArrayLike = Sequence[float] | np.ndarray


# --------------------------------------------------------------------------- validation
def _finite_1d(values: ArrayLike, name: str) -> np.ndarray:
    """A float 1-D copy of ``values``; NaN/inf would silently corrupt every rank metric."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN/inf)")
    return arr


def _pair(scores: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated (scores, truth): same length N >= 2, all finite."""
    s, t = _finite_1d(scores, "scores"), _finite_1d(truth, "truth")
    if len(s) != len(t):
        raise ValueError(f"scores and truth differ in length: {len(s)} != {len(t)}")
    if len(s) < 2:
        raise ValueError(f"need at least 2 architectures to rank, got N={len(s)}")
    return s, t


def top_k_size(n: int, ratio: float) -> int:
    """K for a ratio of N; the 1e-9 keeps 0.29 * 100 = 28.999... from flooring to 28."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, math.floor(ratio * n + 1e-9))


def top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest values, ties to the lower index."""
    return np.argsort(-values, kind="stable")[:k]


def _constant(*arrays: np.ndarray) -> bool:
    """Correlations are undefined on a constant input (scipy would warn)."""
    return any(np.ptp(a) == 0 for a in arrays)


# --------------------------------------------------------------------------- correlations
def _tau_b(x: np.ndarray, y: np.ndarray) -> float:
    if _constant(x, y):
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def kendall_tau(scores: ArrayLike, truth: ArrayLike) -> float:
    """Kendall tau-b between scores and truth; nan when either is constant."""
    return _tau_b(*_pair(scores, truth))


def sparse_kendall_tau(scores: ArrayLike, truth: ArrayLike, bin_width: float = 0.1) -> float:
    """Kendall tau-b after rounding truth to multiples of ``bin_width`` (in truth's own units).

    Near-equal accuracies are noise, not a ranking to be rewarded or punished for.
    """
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a positive finite number, got {bin_width}")
    s, t = _pair(scores, truth)
    return _tau_b(s, np.round(t / bin_width) * bin_width)


def spearman(scores: ArrayLike, truth: ArrayLike) -> float:
    """Spearman rho; nan when either input is constant."""
    s, t = _pair(scores, truth)
    return float("nan") if _constant(s, t) else float(stats.spearmanr(s, t).statistic)


def pearson(scores: ArrayLike, truth: ArrayLike) -> float:
    """Pearson r; nan when either input is constant."""
    s, t = _pair(scores, truth)
    return float("nan") if _constant(s, t) else float(stats.pearsonr(s, t).statistic)


# --------------------------------------------------------------------------- top-K metrics
def precision_at_k(scores: ArrayLike, truth: ArrayLike, ratio: float) -> float:
    """|predicted top-K ∩ true top-K| / K: does the supernet find the truly best ones?"""
    s, t = _pair(scores, truth)
    k = top_k_size(len(s), ratio)
    return len(set(top_k_indices(s, k).tolist()) & set(top_k_indices(t, k).tolist())) / k


def kendall_in_top_k(scores: ArrayLike, truth: ArrayLike, ratio: float) -> float:
    """Kendall tau-b among the predicted top-K only; nan when K < 2 or a side is constant."""
    s, t = _pair(scores, truth)
    k = top_k_size(len(s), ratio)
    if k < 2:
        return float("nan")
    idx = top_k_indices(s, k)
    return _tau_b(s[idx], t[idx])


def _true_ranks_of_top_k(s: np.ndarray, t: np.ndarray, ratio: float) -> np.ndarray:
    """1-based true ranks (1 = best, ties share the best rank) of the predicted top-K."""
    ranks = stats.rankdata(-t, method="min")
    return ranks[top_k_indices(s, top_k_size(len(s), ratio))]


def best_rank_at_k(scores: ArrayLike, truth: ArrayLike, ratio: float) -> float:
    """BR@K: best true rank among the predicted top-K, / N (lower is better)."""
    s, t = _pair(scores, truth)
    return float(_true_ranks_of_top_k(s, t, ratio).min()) / len(s)


def worst_rank_at_k(scores: ArrayLike, truth: ArrayLike, ratio: float) -> float:
    """WR@K: worst true rank among the predicted top-K, / N (lower is better)."""
    s, t = _pair(scores, truth)
    return float(_true_ranks_of_top_k(s, t, ratio).max()) / len(s)


# --------------------------------------------------------------------------- reports
def format_ratio(ratio: float) -> str:
    """0.1 -> "10%", 0.005 -> "0.5%"; rounding to 10 digits hides float noise (10.000000000000002)."""
    return f"{float(f'{ratio * 100:.10g}'):g}%"


def rank_metrics(
    scores: ArrayLike,
    truth: ArrayLike,
    *,
    ratios: Sequence[float] = (0.01, 0.05, 0.10),
    top_k_ratios: Sequence[float] = (0.05, 0.10),
    bin_width: float = 0.1,
) -> dict[str, float]:
    """All metrics in one flat dict (keys like "precision@5%"), plus "n"."""
    s, t = _pair(scores, truth)
    report: dict[str, float] = {
        "kendall_tau": kendall_tau(s, t),
        "sparse_kendall_tau": sparse_kendall_tau(s, t, bin_width),
        "spearman": spearman(s, t),
        "pearson": pearson(s, t),
    }
    for r in ratios:
        pct = format_ratio(r)
        report[f"precision@{pct}"] = precision_at_k(s, t, r)
        report[f"br@{pct}"] = best_rank_at_k(s, t, r)
        report[f"wr@{pct}"] = worst_rank_at_k(s, t, r)
    for r in top_k_ratios:
        report[f"kendall_top@{format_ratio(r)}"] = kendall_in_top_k(s, t, r)
    report["n"] = float(len(s))
    return report


def aggregate(reports: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean / population std / count over seeds for the keys every report has; nan is skipped."""
    if not reports:
        return {}
    common = [key for key in reports[0] if all(key in r for r in reports[1:])]
    out: dict[str, dict[str, float]] = {}
    for key in common:
        values = np.array([float(r[key]) for r in reports])
        values = values[~np.isnan(values)]
        if len(values) == 0:  # nanmean would warn on an empty slice
            out[key] = {"mean": float("nan"), "std": float("nan"), "n": 0}
        else:
            out[key] = {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)}
    return out


# --------------------------------------------------------------------------- random baseline
def _expected_best_of(sorted_pop: np.ndarray, k: int) -> float:
    """E[max of k uniform draws with replacement]: P(max is the i-th smallest) = (i/M)^k - ((i-1)/M)^k."""
    m = len(sorted_pop)
    cdf = (np.arange(1, m + 1) / m) ** k
    return float(np.dot(sorted_pop, np.diff(cdf, prepend=0.0)))


def random_baseline(population: ArrayLike, picked: ArrayLike, *, top: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Put the supernet's picks next to what random search would draw from the same space.

    ``population``: true accuracies of uniformly sampled (or all) architectures. ``picked``: true
    accuracies of the supernet's top-ranked architectures, in its order (``picked[0]`` = top-1).
    A pick is only worth its cost if it beats the expected best of as many random draws.
    """
    pop = np.sort(_finite_1d(population, "population"))
    if len(pop) == 0:
        raise ValueError("population is empty")
    picks = _finite_1d(picked, "picked")
    if any(k < 1 for k in top):
        raise ValueError(f"top sizes must be >= 1, got {tuple(top)}")

    def percentile(v: float) -> float:
        return 100.0 * float(np.count_nonzero(pop <= v)) / len(pop)

    q25, median, q75 = np.percentile(pop, [25, 50, 75])
    summary = {
        "n": len(pop), "mean": float(pop.mean()), "std": float(pop.std()), "min": float(pop[0]),
        "q25": float(q25), "median": float(median), "q75": float(q75), "max": float(pop[-1]),
    }
    chosen: dict[str, dict[str, float]] = {}
    for k in top:
        if len(picks) < k:
            continue
        if k == 1:
            chosen["top1"] = {"truth": float(picks[0]), "percentile": percentile(picks[0])}
        else:
            best = float(picks[:k].max())
            chosen[f"top{k}"] = {"best_truth": best, "mean_truth": float(picks[:k].mean()),
                                 "percentile_of_best": percentile(best)}
    return {
        "population": summary,
        "picks": chosen,
        "expected_best_of_random": {f"top{k}": _expected_best_of(pop, k) for k in top},
    }
