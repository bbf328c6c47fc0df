"""Stage 5, analyse: what the figures rest on (headroom, judgements, ties, truncation), the cost ledger, the
job's counts and latencies, and where each came from."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import analysis as an
from ..evaluation import context_tokens, judges_nonrelevant
from ..provenance import code_version, device_name
from ..tracking import git_commit
from .evaluate import Evaluation
from .identify import Identity
from .rank import Ranked
from .spec import JobSpec


@dataclass
class Analysis:
    figures: dict[str, float]  # finite figures only: an absent one is left out, never NaN
    columns: list[pd.DataFrame]  # per-query columns for per_query.csv
    ledger: dict[str, float]  # the cost ledger (``an.cost``)
    counts: dict[str, float]
    latency: dict[str, float]
    origin: dict[str, str]  # where the figures came from: MLflow tags and metrics.json's origin
    absent: dict[str, str] = field(default_factory=dict)  # figures not reported, with why


def analyse(spec: JobSpec, identity: Identity, ranked: Ranked, ev: Evaluation, wall_s: float) -> Analysis:
    """Every figure beside the metrics, from the ranked lists and their evaluation."""
    res, rr, level = ranked.result, spec.reranker, spec.dataset.relevance_level
    figures, columns, absent = _lists(spec, ranked, ev)
    if rr is not None:
        figures |= an.uncertainty(
            ev.per_query, ev.first, ev.metrics, spec.significance, spec.bootstrap, spec.seed
        )
    usage = getattr(rr, "usage", None)  # API rerankers: requests, tokens or search units, and cost
    ledger: dict[str, float] = {}
    tags: dict[str, str] = {}
    if rr is not None:
        docs = spec.dataset.docs(sorted({d.doc_id for h in res.reranked.values() for d in h}))
        fallback = context_tokenizer(spec.context_tokenizer) if spec.context_tokenizer else None
        texts = {q.query_id: q.text for q in spec.dataset.queries()}
        found, frame = an.truncation(rr, fallback, texts, ev.qrels, res.reranked, docs, level)
        columns.append(frame)
        ledger, tags = an.cost(
            figures[f"delta_{an.HEADLINE.key}"],
            len(ev.per_query),
            res.rerank_ms,
            ranked.latency_source,
            usage.counts if usage is not None else None,
            found.pop("tokens_sent"),
        )
        figures |= found
        columns.append(pd.DataFrame({"latency.reranker_ms": pd.Series(res.rerank_ms, dtype=float)}))
    return Analysis(
        figures={k: v for k, v in figures.items() if np.isfinite(v)},
        columns=columns,
        ledger=ledger,
        counts=_counts(spec, ranked, ev, wall_s, usage),
        latency={**_latency("first_stage", res.first_stage_ms), **_latency("reranker", res.rerank_ms)},
        origin=_origin(spec, identity, ranked, {**ev.absent, **absent}, tags, usage),
        absent=absent,
    )


def _lists(spec: JobSpec, ranked: Ranked, ev: Evaluation) -> tuple[dict, list, dict]:
    """Headroom, judgements (where the qrels judge non-relevant documents) and ties of the lists."""
    res, level = ranked.result, spec.dataset.relevance_level
    figures, frame = an.ceiling(ev.qrels, res.reranked, res.first_stage, level)
    columns, absent = [frame], {}
    if judges_nonrelevant(ev.qrels, level):
        found, frame = an.judgements(ev.qrels, res.reranked, res.first_stage, level)
        figures |= found
        columns.append(frame)
    else:
        absent[an.CONDENSED] = (
            "the qrels list only relevant documents (BEIR-style): a list condensed to judged documents would "
            "hold only relevant ones"
        )
    figures |= an.ties(ev.qrels, res.reranked, "", level)
    if spec.reranker is not None:
        figures |= an.ties(ev.qrels, res.first_stage, "first_stage_", level)
    return figures, columns, absent


def _counts(spec: JobSpec, ranked: Ranked, ev: Evaluation, wall_s: float, usage) -> dict[str, float]:
    res, shared = ranked.result, ranked.shared_from is not None
    counts = {
        "queries": float(len(ev.per_query)),
        "queries_without_relevant": float(len(ev.empty)),
        "pairs_scored": 0.0 if shared else float(res.pairs_scored),
        "pairs_cached": float(res.pairs_cached + (res.pairs_scored if shared else 0)),
        "failed_queries": float(len(res.failed)),
        "latency_queries": float(len(res.rerank_ms)),
        "index_s": res.index_s,
        "retrieval_s": res.retrieval_s,
        "wall_s": wall_s,
        **res.probe,
    }
    if res.passage_docs:  # the documents the passages came from, counted at every depth of a shared pass
        counts["passages_per_doc"] = res.passages / res.passage_docs
    if spec.reranker is not None and not shared:
        counts["rerank_s"] = res.rerank_s
        if res.pairs_scored and res.rerank_s > 0:
            counts["rerank_pairs_per_s"] = res.pairs_scored / res.rerank_s  # the job's rate, scoring included
    if spec.context_tokenizer:
        docs = spec.dataset.docs(sorted({d.doc_id for h in ranked.final.values() for d in h}))
        counts["context_tokens"] = context_tokens(
            ranked.final, docs, context_tokenizer(spec.context_tokenizer)
        )
    if usage is not None:
        counts.update(usage.counts)
        counts["api_cost_usd_per_1k_queries"] = (
            1000 * usage.counts.get("api_cost_usd", 0.0) / max(len(ev.per_query), 1)
        )
    return counts


def _origin(
    spec: JobSpec, identity: Identity, ranked: Ranked, absent: dict, tags: dict, usage
) -> dict[str, str]:
    rr, ds = spec.reranker, spec.dataset
    pool = bool(getattr(ds, "pool", False))
    return {
        "latency_source": ranked.latency_source,  # measured, probe, none, or replayed:<run> (a sibling's timings)
        "latency_device": device_name(getattr(rr, "device", "cpu")) if rr is not None else "",
        "code_version": code_version(),
        "git_commit": git_commit(),
        "comparison": identity.comparison,
        "dataset_source": getattr(ds, "source", ""),
        "dataset_pool": str(pool).lower(),
        **({"pool_override": "true"} if pool and getattr(spec.retriever, "full_corpus", False) else {}),
        **({"absent": json.dumps(absent)} if absent else {}),
        **{f"reranker.{k}": str(v) for k, v in (getattr(rr, "settings", None) or {}).items()},
        **({"context_tokenizer": spec.context_tokenizer} if spec.context_tokenizer else {}),
        **tags,
        **(usage.tags if usage is not None else {}),  # an API's model as it answered, the prices' date
    }


def _latency(prefix: str, ms: dict[str, float]) -> dict[str, float]:
    """Mean, p50 and p95 of per-query latencies; empty when nothing was measured."""
    if not ms:
        return {}
    values = np.fromiter(ms.values(), dtype=float)
    return {
        f"{prefix}_ms_mean": float(values.mean()),
        f"{prefix}_ms_p50": float(np.percentile(values, 50)),
        f"{prefix}_ms_p95": float(np.percentile(values, 95)),
    }


@functools.cache
def context_tokenizer(name: str):
    """The context tokenizer. A model folder's ``tokenizer.json`` loads with ``tokenizers`` alone: no torch or
    transformers import, so a job without a local model starts seconds sooner, and it counts as transformers'
    tokenizer does (tests/test_trust.py). Other names go through ``AutoTokenizer``."""
    from ..scoring.models import load_error, resolve_model

    resolved = resolve_model(name)
    path = Path(resolved) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        tok.no_truncation()  # it only counts tokens: the whole document, unpadded
        tok.no_padding()
        return tok
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise load_error(name, e) from e
    tok.model_max_length = 1 << 40  # it only counts tokens: no model-length warning for long documents
    return tok
