"""Stage 4, evaluate: per-query metrics of the reranked and first-stage lists, the final list at ``top_k``, the
paired tests, and the metrics left out with their reasons."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from ..evaluation import Metric, evaluate, judges_nonrelevant, paired_test, parse_metrics, without_relevant
from .identify import Identity
from .rank import Ranked
from .spec import JobSpec

log = logging.getLogger("rerank_eval")

CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class Evaluation:
    qrels: dict[
        str, dict[str, int]
    ]  # as evaluated (``no_relevant=drop`` leaves out queries without a relevant one)
    empty: list[str]  # queries without a relevant document
    metrics: list[Metric]  # every metric evaluated: the standard cutoffs, then the final list's
    per_query: pd.DataFrame  # reranked, one column per metric
    first: pd.DataFrame  # first stage, the same columns
    pvalues: dict[str, float]
    recall_curve: dict[int, float]
    absent: dict[str, str] = field(default_factory=dict)  # metric or figure -> why it is not reported

    @property
    def means(self) -> dict[str, float]:
        return self.per_query.mean().to_dict()

    @property
    def first_means(self) -> dict[str, float]:
        return self.first.mean().to_dict()


def evaluate_job(spec: JobSpec, identity: Identity, ranked: Ranked) -> Evaluation:
    """Evaluate the reranked candidates at the standard cutoffs and the final list at ``top_k``, both against the
    first stage's, with a paired test per metric."""
    level, res = spec.dataset.relevance_level, ranked.result
    qrels = spec.dataset.qrels()
    empty = without_relevant(qrels, level)
    if spec.no_relevant == "drop":
        qrels = {q: r for q, r in qrels.items() if q not in set(empty)}
    absent = _absent(spec, qrels)
    metrics = [m for m in spec.metrics if m.name not in absent]
    per_query = _joined(
        evaluate(qrels, res.reranked, metrics, level), evaluate(qrels, ranked.final, identity.finals, level)
    )
    first = _joined(
        evaluate(qrels, res.first_stage, metrics, level),
        evaluate(qrels, ranked.first_final, identity.finals, level),
    )
    evaluated = [*metrics, *(m for m in identity.finals if m.name not in {x.name for x in metrics})]
    ks = [k for k in CURVE_KS if k <= spec.candidates]
    curve = evaluate(qrels, res.reranked, parse_metrics([f"recall@{k}" for k in ks]), level).mean()
    return Evaluation(
        qrels=qrels,
        empty=empty,
        metrics=evaluated,
        per_query=per_query,
        first=first,
        pvalues={m.name: paired_test(per_query[m.name], first[m.name], spec.significance) for m in evaluated},
        recall_curve={k: float(curve[f"recall@{k}"]) for k in ks},
        absent=absent,
    )


def _joined(candidates: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    return candidates.join(final.drop(columns=[c for c in final if c in candidates]))


def _absent(spec: JobSpec, qrels: dict[str, dict[str, int]]) -> dict[str, str]:
    """judged@k where the qrels list only relevant documents (it would equal precision@k there)."""
    if judges_nonrelevant(qrels, spec.dataset.relevance_level):
        return {}
    why = "the qrels list only relevant documents (BEIR-style), so judged@k would equal precision@k"
    absent = {m.name: why for m in spec.metrics if m.measure == "judged"}
    if absent:
        log.info("%s: %s not reported: %s", spec.label, ", ".join(absent), why)
    return absent
