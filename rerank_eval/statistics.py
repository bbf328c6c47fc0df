"""What a comparison can and cannot say: uncertainty of paired differences, the candidates' ceiling, condensed
lists, ties, and the depth knee. Plain functions over per-query values and rankings; no I/O.

Paired statistics take two arrays of per-query values over the same queries, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .evaluation import Metric, evaluate, paired_test
from .types import Qrels, Ranking, ScoredDoc

BOOTSTRAP_RESAMPLES = 10000
SEED = 42


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in input order."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired statistics need values over the same queries, got {x.shape} and {y.shape}")
    return x - y


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval of a mean (queries resampled with replacement, fixed seed). A 2-D
    array (queries x columns) gives one interval per column, every column resampled with the same queries."""
    v = np.asarray(values, dtype=float)
    flat = v.ndim == 1
    v = v.reshape(len(v), -1)
    if len(v) == 0:
        nan = np.full(v.shape[1], np.nan)
        return (float("nan"), float("nan")) if flat else (nan, nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, v.shape[1]))
    for start in range(0, n_resamples, 1000):  # bounded memory for large query sets
        stop = min(start + 1000, n_resamples)
        idx = rng.integers(0, len(v), size=(stop - start, len(v)))
        for c in range(v.shape[1]):  # column by column: each column's means are the same as on its own
            means[start:stop, c] = v[:, c][idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    return (float(low[0]), float(high[0])) if flat else (low, high)


def effect_size(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean paired difference over the standard deviation of the differences (Cohen's d_z); 0 when every
    difference is 0, NaN when they are all equal but not 0 or there are fewer than two."""
    d = _diffs(a, b)
    if len(d) < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if np.all(d == 0) else float("nan")
    return float(d.mean() / sd)


def mde(a: Sequence[float], b: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean difference a two-sided paired t-test at ``alpha`` detects with probability ``power``
    over this many queries, given the observed spread of the differences: ``(t(1-alpha/2) + t(power)) * sd /
    sqrt(n)`` with n - 1 degrees of freedom."""
    from scipy import stats

    d = _diffs(a, b)
    n = len(d)
    if n < 2:
        return float("nan")
    t = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(t * d.std(ddof=1) / np.sqrt(n))


def paired_summary(
    a: Sequence[float],
    b: Sequence[float],
    test: str = "student",
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """Everything a paired comparison of a against b reports: the mean difference, its bootstrap 95% interval,
    the paired test's p-value, the effect size and the minimum detectable difference."""
    d = _diffs(a, b)
    low, high = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    return {
        "delta": float(d.mean()) if len(d) else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "p": paired_test(a, b, test, seed=seed),
        "effect": effect_size(a, b),
        "mde": mde(a, b),
    }


# -- what the candidates allow ---------------------------------------------------------------------------------
def oracle(ranking: Ranking, qrels: Qrels) -> Ranking:
    """Each query's candidates sorted by their judgement (best grade first, unjudged as 0; ties keep the
    ranking's order): the best list any reranker of these candidates could return."""
    out = {}
    for q, hits in ranking.items():
        grades = qrels.get(q, {})
        order = sorted(range(len(hits)), key=lambda i: (-max(grades.get(hits[i].doc_id, 0), 0), i))
        out[q] = [ScoredDoc(hits[i].doc_id, float(len(hits) - r)) for r, i in enumerate(order)]
    return out


def condensed(ranking: Ranking, qrels: Qrels) -> Ranking:
    """The ranking with its unjudged documents dropped (Sakai's condensed lists; trec_eval -J, ir_measures'
    ``judged_only``)."""
    return {q: [h for h in hits if h.doc_id in qrels.get(q, {})] for q, hits in ranking.items()}


def headroom_captured(reranked: float, first_stage: float, ceiling: float) -> float:
    """The share of the gap between the first stage and the candidates' ceiling that the reranker closed (NaN
    when there was no gap)."""
    gap = ceiling - first_stage
    return float((reranked - first_stage) / gap) if gap > 1e-12 else float("nan")


# -- ties -------------------------------------------------------------------------------------------------------
def tie_rate(ranking: Ranking) -> float:
    """The share of adjacent candidates (rank i, rank i+1) whose scores are equal, over all queries."""
    pairs = ties = 0
    for hits in ranking.values():
        s = np.fromiter((h.score for h in hits), dtype=np.float32, count=len(hits))
        pairs += max(len(s) - 1, 0)
        ties += int((s[1:] == s[:-1]).sum())
    return ties / pairs if pairs else 0.0


def tie_orders(ranking: Ranking, qrels: Qrels) -> tuple[Ranking, Ranking]:
    """The ranking with each run of equal scores put in its worst order (lowest judgement first) and in its best:
    between them lies every order of the ties (unjudged counts as 0)."""
    worst, best = {}, {}
    for q, hits in ranking.items():
        grades = qrels.get(q, {})
        g = np.fromiter((max(grades.get(h.doc_id, 0), 0) for h in hits), dtype=float, count=len(hits))
        s = np.fromiter((h.score for h in hits), dtype=np.float32, count=len(hits))
        idx = np.arange(len(hits))
        worst[q] = [hits[i] for i in np.lexsort((idx, g, -s))]
        best[q] = [hits[i] for i in np.lexsort((idx, -g, -s))]
    return worst, best


def tie_spread(
    ranking: Ranking, qrels: Qrels, metric: Metric, relevance_level: int = 1
) -> tuple[float, float]:
    """The lowest and highest mean ``metric`` any order of the tied scores gives: exact, not sampled (each
    query's worst and best orders are independent of the others')."""
    worst, best = tie_orders(ranking, qrels)
    low = evaluate(qrels, worst, [metric], relevance_level)[metric.name].mean()
    high = evaluate(qrels, best, [metric], relevance_level)[metric.name].mean()
    return float(low), float(high)


# -- depth ------------------------------------------------------------------------------------------------------
def knee(
    per_depth: Mapping[int, Sequence[float]],
    tolerance: float,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
    test: str = "student",
) -> tuple[int, list[dict[str, float]]]:
    """The smallest depth no worse than the best depth by more than ``tolerance``, with confidence: the lower
    end of the bootstrap 95% interval of its paired difference to the best depth is at least ``-tolerance``.

    Args:
        per_depth: depth -> per-query values, the same queries in the same order at every depth.

    Returns:
        The knee depth, and per depth (ascending): depth, mean, delta to the best, ci_low, ci_high, p (paired
        test against the best depth) and within (1.0 when within tolerance).
    """
    depths = sorted(per_depth)
    if not depths:
        raise ValueError("knee needs at least one depth")
    means = {d: float(np.mean(per_depth[d])) for d in depths}
    best = max(depths, key=lambda d: (means[d], -d))
    rows, found = [], None
    for d in depths:
        s = paired_summary(per_depth[d], per_depth[best], test, n_resamples, seed)
        within = d == best or s["ci_low"] >= -tolerance
        rows.append(
            {
                "depth": d,
                "mean": means[d],
                "delta": s["delta"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "p": s["p"],
                "within": float(within),
            }
        )
        if within and found is None:
            found = d
    return int(found if found is not None else best), rows
