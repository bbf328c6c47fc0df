"""Metrics through ranx: metric strings parsed once, per-query values, paired significance tests.

Binary metrics (MAP, MRR, recall, precision, ...) count a document relevant when its grade reaches the
dataset's ``relevance_level`` (TREC DL: 2); nDCG uses the graded judgements with linear gain (trec_eval's).
``judged@k`` is the share of the top k (of the list, when shorter) that has any judgement: low values mean a run is under-rated. It means
something only where the qrels judge non-relevant documents (TREC DL); BEIR-style qrels list only relevant ones, so
there it would equal precision@k (``judges_nonrelevant``).

Queries whose qrels hold no document at the relevance level stay in the mean and score 0 on the binary metrics,
as trec_eval does by default (nDCG uses every positive grade, so it can be above 0 for them).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError
from .types import NO_RESULT, Qrels, Ranking

DEFAULT_METRICS = ("ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "mrr@10", "recall@100", "map@100", "judged@10")
GRADED = {"ndcg", "ndcg_burges", "dcg", "dcg_burges"}
BINARY = {"map", "mrr", "recall", "precision", "hit_rate", "hits", "f1", "r-precision", "bpref"}
_PATTERN = re.compile(r"^([a-z_\-]+?)(?:@(\d+))?$")


@dataclass(frozen=True)
class Metric:
    """One metric, parsed from its config string (``ndcg@10``)."""

    name: str  # the config string, normalised
    measure: str
    k: int | None

    def ranx(self, relevance_level: int) -> str:
        """The ranx metric string, with the dataset's relevance level for binary metrics (``map@100-l2``)."""
        if self.measure in BINARY and relevance_level > 1:
            return f"{self.name}-l{relevance_level}"
        return self.name

    @property
    def key(self) -> str:
        """The MLflow-safe key (MLflow refuses ``@``): ``ndcg@10`` -> ``ndcg_at_10``."""
        return metric_key(self.name)


def metric_key(name: str) -> str:
    """The one map from a metric name to an MLflow metric key."""
    return name.replace("@", "_at_").replace("-", "_")


def parse_metrics(names: Sequence[str]) -> list[Metric]:
    """Parse metric strings once; unknown measures and bad cutoffs raise ConfigError."""
    out, seen = [], set()
    for raw in names:
        s = str(raw).strip().lower()
        m = _PATTERN.match(s)
        if not m or (m.group(1) not in GRADED | BINARY | {"judged"}):
            known = ", ".join(sorted(GRADED | BINARY | {"judged"}))
            raise ConfigError(f"unknown metric {raw!r}; use measure@k with a measure from: {known}")
        k = int(m.group(2)) if m.group(2) else None
        if k is not None and k <= 0:
            raise ConfigError(f"metric {raw!r}: the cutoff must be positive")
        if m.group(1) == "judged" and k is None:
            raise ConfigError("judged needs a cutoff, e.g. judged@10")
        if s not in seen:
            seen.add(s)
            out.append(Metric(s, m.group(1), k))
    if not out:
        raise ConfigError("no metrics configured; set metrics=[ndcg@10, ...]")
    return out


def judges_nonrelevant(qrels: Qrels, relevance_level: int = 1) -> bool:
    """True when the qrels judge some document below the relevance level (so judged@k is not precision@k)."""
    return any(g < relevance_level for rel in qrels.values() for g in rel.values())


def without_relevant(qrels: Qrels, relevance_level: int = 1) -> list[str]:
    """Queries whose judgements hold no document at or above the relevance level."""
    return sorted(q for q, rel in qrels.items() if not any(g >= relevance_level for g in rel.values()))


def context_tokens(final: Ranking, docs: dict, tokenizer) -> float:
    """Mean tokens per query that the final lists' documents (title + text) would put into a prompt; each
    distinct document is tokenized once."""
    from .lengths import count_tokens

    ids = sorted({d.doc_id for hits in final.values() for d in hits})
    n = dict(zip(ids, count_tokens(tokenizer, [docs[d].full_text for d in ids]).tolist(), strict=True))
    per_query = [sum(n[d.doc_id] for d in hits) for hits in final.values()]
    return float(np.mean(per_query)) if per_query else 0.0


def judged_at(qrels: Qrels, ranking: Ranking, k: int) -> dict[str, float]:
    """Share of each query's top k that carries a judgement (any grade, 0 included), over the list's own length
    when it is shorter than k, as ir_measures computes it; an empty list scores 0 (its run file line is the
    unjudged ``NO_RESULT``)."""
    out = {}
    for q, judged in qrels.items():
        top = ranking.get(q, [])[:k]
        out[q] = sum(d.doc_id in judged for d in top) / len(top) if top else 0.0
    return out


def evaluate(
    qrels: Qrels, ranking: Ranking, metrics: Sequence[Metric], relevance_level: int = 1
) -> pd.DataFrame:
    """Per-query metric values: one row per judged query (those a run misses score 0), one column per metric.

    The order evaluated is the ranking's own order (rank-derived scores go to ranx), so ties are never re-broken.
    """
    from ranx import Qrels as RQrels
    from ranx import Run
    from ranx import evaluate as ranx_evaluate

    queries = sorted(qrels)
    # every judged query goes to ranx; one with no results gets a placeholder that no qrels name (scores 0)
    run = {
        q: {d.doc_id: float(len(ranking[q]) - i) for i, d in enumerate(ranking[q])}
        if ranking.get(q)
        else {NO_RESULT: 0.0}
        for q in queries
    }
    columns: dict[str, dict[str, float]] = {}
    ranx_metrics = [m for m in metrics if m.measure != "judged"]
    if ranx_metrics and any(NO_RESULT not in r for r in run.values()):
        r = Run(run)
        names = [m.ranx(relevance_level) for m in ranx_metrics]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranx_evaluate(RQrels(qrels), r, names)
        for m, name in zip(ranx_metrics, names, strict=True):
            columns[m.name] = r.scores[name]
    for m in metrics:
        if m.measure == "judged":
            columns[m.name] = judged_at(qrels, ranking, m.k)
    frame = pd.DataFrame(
        {m.name: [float(columns.get(m.name, {}).get(q, 0.0)) for q in queries] for m in metrics},
        index=pd.Index(queries, name="query_id"),
    )
    return frame


def paired_test(
    a: Sequence[float], b: Sequence[float], method: str = "student", n_resamples: int = 10000, seed: int = 42
) -> float:
    """Two-sided p-value of a paired test between per-query values of two runs over the same queries.

    Args:
        method: ``student`` (paired t-test) or ``fisher`` (randomization test, sign flips of the differences).
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired test needs runs over the same queries, got {x.shape} and {y.shape}")
    d = x - y
    if len(d) < 2 or np.allclose(d, 0):
        return 1.0
    if method == "student":
        return float(stats.ttest_rel(x, y).pvalue)
    if method == "fisher":
        res = stats.permutation_test(
            (x, y),
            lambda u, v: np.mean(u - v),
            permutation_type="samples",
            n_resamples=n_resamples,
            alternative="two-sided",
            random_state=seed,
        )
        return float(res.pvalue)
    raise ConfigError(f"unknown significance test {method!r}; use student or fisher")
