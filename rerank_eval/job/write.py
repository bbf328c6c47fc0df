"""Stage 6, write: the job folder. Run files that re-score under trec_eval, the raw scores, per-query figures,
the diff page, and the summary (``metrics.json``, written last: a folder without it is an unfinished job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import analysis as an
from ..files import atomic_writer, write_atomic
from ..report.diff import changes, overview
from ..report.diff import write as write_diff
from ..types import NO_RESULT, Ranking
from .analyse import Analysis
from .evaluate import Evaluation
from .identify import Identity
from .rank import Ranked
from .spec import JobSpec

RUN_FILES = ("run.trec", "run.scores.tsv", "first_stage.trec", "first_stage.scores.tsv", "per_query.csv")


def write_trec(ranking: Ranking, path: Path, tag: str, raw_scores: bool = False) -> None:
    """Write a TREC run file atomically, with scores that strictly decrease in rank order (``n - rank + 1``), so
    that trec_eval, ir_measures and ranx, which re-sort by score and break ties their own way, read exactly the
    order the harness evaluated; a query whose list is empty gets one line naming ``NO_RESULT``, a document no
    qrels holds, so it scores 0 there as in the harness's mean (``retriever=run`` skips it). The raw scores go
    beside it (``write_scores``). ``raw_scores``: the ranking's own scores instead (``%.9g``: fp32 reads back
    exactly), for a first stage that ``retriever=run`` replays (it orders ties by the rank column)."""
    with atomic_writer(path) as f:
        for q in sorted(ranking):
            if not ranking[q]:  # an empty list still counts in the mean: trec_eval averages the run's queries
                f.write(f"{q} Q0 {NO_RESULT} 1 0 {tag}\n")
            n = len(ranking[q])
            for rank, d in enumerate(ranking[q], 1):
                score = f"{d.score:.9g}" if raw_scores else n - rank + 1
                f.write(f"{q} Q0 {d.doc_id} {rank} {score} {tag}\n")


def write_scores(ranking: Ranking, path: Path) -> None:
    """The raw model or first-stage scores of a run, in rank order, as TSV (query_id, doc_id, rank, score): fp32
    values written so that they read back exactly."""
    with atomic_writer(path) as f:
        f.write("query_id\tdoc_id\trank\tscore\n")
        for q in sorted(ranking):
            for rank, d in enumerate(ranking[q], 1):
                f.write(f"{q}\t{d.doc_id}\t{rank}\t{d.score:.9g}\n")


def write_files(spec: JobSpec, out: Path, ranked: Ranked, ev: Evaluation, found: Analysis) -> None:
    """Everything but ``metrics.json``: the run files, ``per_query.csv`` and the diff page."""
    res = ranked.result
    write_trec(res.reranked, out / "run.trec", tag=spec.reranker_name)
    write_scores(res.reranked, out / "run.scores.tsv")
    write_trec(res.first_stage, out / "first_stage.trec", tag=spec.retriever.name)
    write_scores(res.first_stage, out / "first_stage.scores.tsv")
    table = ev.per_query.add_prefix("reranked.").join(ev.first.add_prefix("first_stage."))
    for frame in found.columns:
        table = table.join(frame)
    write_atomic(out / "per_query.csv", table.to_csv())
    h = an.HEADLINE.name
    if spec.reranker is not None and h in ev.per_query:  # the queries it helped and hurt most, for a look
        found_changes = changes(
            _ids(res.first_stage), _ids(res.reranked), ev.first[h], ev.per_query[h], ev.qrels
        )
        texts = {q.query_id: q.text for q in spec.dataset.queries()}
        title = f"first stage {spec.retriever.name}"
        scope = f"{spec.dataset.name}, {spec.retriever.name} reranked at depth {spec.candidates}"
        line = overview(ev.first[h], ev.per_query[h], h, scope)
        write_diff(out, found_changes, texts, spec.dataset.docs, title, spec.reranker_name, h, summary=line)


def summary(spec: JobSpec, identity: Identity, ev: Evaluation, found: Analysis) -> dict[str, Any]:
    """The job's ``metrics.json``: every figure, its origin and the config."""
    return {
        "name": spec.label,
        "dataset": spec.dataset.name,
        "retriever": spec.retriever.name,
        "reranker": spec.reranker_name,
        "candidates": spec.candidates,
        "top_k": spec.top_k,
        "metrics": ev.means,
        "first_stage": ev.first_means,
        "pvalues": ev.pvalues,
        "significance": spec.significance,
        "final_metrics": [m.name for m in identity.finals],
        "latency": found.latency,
        "counts": found.counts,
        "analysis": found.figures,
        "cost": found.ledger,
        "origin": found.origin,
        "absent": {**ev.absent, **found.absent},
        "queries_without_relevant": ev.empty,
        "recall_curve": ev.recall_curve,
        "fingerprint": identity.fingerprint,
        "comparison": identity.comparison,
        "config": dict(spec.config),
    }


def _ids(ranking: Ranking) -> dict[str, list[str]]:
    return {q: [d.doc_id for d in hits] for q, hits in ranking.items()}
