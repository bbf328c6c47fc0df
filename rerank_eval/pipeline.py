"""Retrieve, cut to the candidate depth, fetch texts, rerank (through the cache), cut to top_k.

The one place that sorts and cuts. Reranker ties break by first-stage rank; scores stay fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .cache import ScoreCache, text_key
from .datasets import Dataset
from .errors import ConfigError, DataError, RerankEvalError, check_whole
from .ranking import top_k as cut
from .rerankers import Reranker
from .rerankers.api import RerankerCallError
from .retrievers import Retriever
from .types import Query, Ranking

log = logging.getLogger("rerank_eval")


@dataclass
class PipelineResult:
    first_stage: Ranking  # first-stage lists cut to the candidate depth
    reranked: Ranking  # the same candidates in the reranker's order (== first_stage without a reranker)
    final: Ranking  # reranked cut to top_k: what a consumer (a RAG prompt) receives
    first_stage_ms: dict[str, float] = field(default_factory=dict)
    # per query: measured (the whole list fresh in one call) or probed, never replayed
    rerank_ms: dict[str, float] = field(default_factory=dict)
    latency_source: str = "none"  # measured, probe or none: a latency is never replayed from a cache
    probe: dict[str, float] = field(default_factory=dict)
    index_s: float = 0.0
    retrieval_s: float = 0.0  # the first stage's wall time over all queries
    rerank_s: float = 0.0  # the reranking loop's wall time (cache lookups included)
    pairs_scored: int = 0  # (query, passage) pairs for a reranker that scores passages
    pairs_cached: int = 0
    passages: int = 0  # passages cut from the reranked documents (reranker.long_docs=passages), all queries
    passage_docs: int = 0  # the documents they were cut from
    failed: dict[str, str] = field(default_factory=dict)  # query_id -> why its reranking failed


def check_depths(candidates: int, top_k: int) -> None:
    """Raises ConfigError unless 0 < top_k <= candidates."""
    for name, v in (("candidates", candidates), ("top_k", top_k)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if top_k > candidates:
        raise ConfigError(
            f"top_k ({top_k}) is larger than candidates ({candidates}); the final list is cut from "
            f"the reranked candidates, so set candidates>={top_k} or top_k<={candidates}"
        )


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="q",
        leave=False,
        disable=not enabled or bool(os.environ.get("RERANK_EVAL_NO_PROGRESS")),
    )


def run_pipeline(
    dataset: Dataset,
    retriever: Retriever,
    reranker: Reranker | None,
    candidates: int,
    top_k: int,
    cache: ScoreCache | None = None,
    queries: Sequence[Query] | None = None,
    progress: bool = True,
    on_failure: str = "fail",
    latency_probe: int = 10,
    latency_probe_api: int = 0,
    query_batch: int = 1,
) -> PipelineResult:
    """Run one pipeline over the dataset's queries.

    Args:
        dataset: where queries, documents and qrels come from.
        retriever: the first stage.
        reranker: None keeps the first-stage order.
        candidates: how many first-stage documents are reranked.
        top_k: how many the final list keeps.
        cache: the score cache (None: no cache).
        queries: a subset of the dataset's queries (default: all judged queries).
        on_failure: a query whose reranking still fails after the API's retries either stops the run (``fail``:
            what was scored is in the cache, so a rerun resumes) or gets an empty list that scores 0 (``zero``).
        latency_probe: when some queries' scores came from a cache, how many queries to time afresh at this depth
            (``probe_latency``); 0 reports no reranker latency for such a job.
        latency_probe_api: the same for API rerankers (those with ``usage``), whose probe requests cost money:
            0 by default, so a rerun served from the caches sends nothing.
        query_batch: queries whose candidates a reranker with ``score_many`` scores in one call (throughput on a
            GPU); above 1 no call is a single query's, so latency comes from the probe.

    Returns:
        PipelineResult with the three rankings, per-query latencies and cache counts.
    """
    check_depths(candidates, top_k)
    check_whole("rerank.query_batch", query_batch, 1)
    if on_failure not in ("fail", "zero"):
        raise ConfigError(f"on_failure must be fail or zero, got {on_failure!r}")
    queries = list(queries if queries is not None else dataset.queries())
    if not queries:
        raise ConfigError(f"{dataset.name} has no queries to run")
    empty = [q.query_id for q in queries if not q.text.strip()]
    if empty:
        raise DataError(
            f"{dataset.name}: {len(empty)} queries have no text, e.g. {empty[:3]}; give them text or remove "
            "their judgements"
        )
    # a reranker that scores passages refuses, before any work, a query that leaves a pair no room for one
    check = getattr(reranker, "check_queries", None)
    if check is not None:
        check(queries)
    t0 = time.perf_counter()
    retriever.index(dataset)
    result = PipelineResult({}, {}, {}, index_s=time.perf_counter() - t0)

    t0 = time.perf_counter()
    with _bar(len(queries), f"{retriever.name}", progress) as bar:
        for q in queries:
            t = time.perf_counter()
            hits = retriever.retrieve([q], candidates)[q.query_id]
            result.first_stage_ms[q.query_id] = (time.perf_counter() - t) * 1e3
            result.first_stage[q.query_id] = hits[:candidates]
            bar.update()
    result.retrieval_s = time.perf_counter() - t0

    if reranker is None:
        result.reranked = dict(result.first_stage)
    else:
        _rerank(dataset, reranker, queries, cache, progress, result, on_failure, query_batch)
        if len(result.rerank_ms) == len(queries):
            result.latency_source = "measured"
        else:
            api = getattr(reranker, "usage", None) is not None
            probe_latency(dataset, reranker, queries, result, latency_probe_api if api else latency_probe)
    result.final = {q: hits[:top_k] for q, hits in result.reranked.items()}
    return result


def _rerank(
    dataset: Dataset,
    reranker: Reranker,
    queries: Sequence[Query],
    cache: ScoreCache | None,
    progress: bool,
    result: PipelineResult,
    on_failure: str,
    query_batch: int = 1,
) -> None:
    """Score every query's candidates (cached scores reused), and time the calls that scored a query's whole
    candidate list fresh: the only latency a job can claim as measured at its own depth. With ``query_batch`` > 1
    and a reranker that has ``score_many``, that many queries' pairs go in one call (full batches for a GPU);
    such calls are not timed, so the job's latency comes from the probe. A reranker that scores passages has them
    scored (and cached) by its base reranker, and each document's score aggregated from them."""
    texts = dataset.docs(sorted({d.doc_id for hits in result.first_stage.values() for d in hits}))
    if not reranker.pointwise:
        cache = None  # a listwise score depends on the other documents: never reuse it across lists
    many = getattr(_units_of(reranker)[1], "score_many", None) if query_batch > 1 else None
    step = query_batch if many is not None else 1
    t0 = time.perf_counter()
    with _bar(len(queries), f"rerank {reranker.name}", progress) as bar:
        for g in range(0, len(queries), step):
            jobs = [
                _Job(q, result.first_stage[q.query_id], texts, reranker, cache) for q in queries[g : g + step]
            ]
            todo = [j for j in jobs if j.todo]
            try:
                if many is not None:
                    outs = many([(j.query, [j.units[i] for i in j.todo]) for j in todo]) if todo else []
                else:
                    outs = []
                    for j in todo:
                        hits_before = _internal_hits(j.scorer)
                        t = time.perf_counter()
                        outs.append(j.scorer.score(j.query, [j.units[i] for i in j.todo]))
                        ms = (time.perf_counter() - t) * 1e3
                        if len(j.todo) == len(j.units) and _internal_hits(j.scorer) == hits_before:
                            # the whole list, fresh, one call (and its passages' cut): measured
                            result.rerank_ms[j.query.query_id] = ms + j.cut_ms
            except RerankerCallError as e:
                for j in jobs:
                    result.failed[j.query.query_id] = str(e)
                if on_failure == "fail":
                    done = len(result.reranked)
                    raise RerankEvalError(
                        f"{e}; stopped after {done} of {len(queries)} queries (what was scored is cached: rerun "
                        "to resume, or set on_failure=zero to score failed queries 0)"
                    ) from None
                for j in jobs:
                    result.reranked[j.query.query_id] = []  # scores 0 for every metric, and stays in the mean
                bar.update(len(jobs))
                continue
            for j, fresh in zip(todo, outs, strict=True):
                j.fill(fresh, cache)
            for j in jobs:
                result.pairs_scored += len(j.todo)
                result.pairs_cached += len(j.units) - len(j.todo)
                if j.owner is not None:
                    result.passages += len(j.units)
                    result.passage_docs += len(j.docs)
                result.reranked[j.query.query_id] = cut([h.doc_id for h in j.hits], j.doc_scores())
            bar.update(len(jobs))
    result.rerank_s = time.perf_counter() - t0


class _Job:
    """One query's candidates as the reranker scores them (the documents, or their passages: ``units``), the
    units' cached scores, and which are still to score. Passage scores are cached under the base reranker's
    identity, keyed by the passage's text."""

    def __init__(self, query: Query, hits, texts, reranker: Reranker, cache: ScoreCache | None):
        self.query, self.hits, self.reranker = query, hits, reranker
        self.docs = [texts[h.doc_id] for h in hits]
        split, self.scorer = _units_of(reranker)
        t = time.perf_counter()
        self.units, self.owner = split(self.docs) if split is not None else (self.docs, None)
        self.cut_ms = (time.perf_counter() - t) * 1e3
        self.full = [d.full_text for d in self.units]
        cached = cache.get(self.scorer.identity, query.text, self.full) if cache is not None else {}
        keys = [text_key(t) for t in self.full]
        self.todo = [i for i, k in enumerate(keys) if k not in cached]
        self.scores = np.array([cached.get(k, 0.0) for k in keys], dtype=np.float32)

    def fill(self, fresh, cache: ScoreCache | None) -> None:
        if len(fresh) != len(self.todo):
            raise RuntimeError(f"{self.scorer.name} returned {len(fresh)} scores for {len(self.todo)} inputs")
        fresh = np.asarray(fresh, dtype=np.float32)
        _check_finite(self.scorer, self.query, fresh, [self.units[i].doc_id for i in self.todo])
        self.scores[self.todo] = fresh
        if cache is not None:
            cache.put(
                self.scorer.identity, self.query.text, [self.full[i] for i in self.todo], fresh.tolist()
            )

    def doc_scores(self) -> np.ndarray:
        """One score per candidate: its own, or its passages' aggregate."""
        if self.owner is None:
            return self.scores
        return self.reranker.combine(self.scores, self.owner, len(self.docs))


def _units_of(reranker: Reranker):
    """(what cuts a document into the units the reranker scores, what scores each unit): a passage reranker's
    ``passages`` and its base, else (None, the reranker itself: its units are the documents)."""
    split = getattr(reranker, "passages", None)
    return (split, reranker.base) if split is not None else (None, reranker)


def _internal_hits(reranker: Reranker) -> float:
    """What a reranker served from its own caches (an LLM's responses, a bi-encoder's document embeddings, a
    cross-encoder's token ids): a call that used any is not a fresh call, and is not timed."""
    return getattr(reranker, "internal_hits", 0)


def _check_finite(reranker: Reranker, query: Query, scores: np.ndarray, doc_ids: Sequence[str]) -> None:
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise RerankEvalError(
            f"{reranker.name} gave {len(bad)} non-finite score(s) ({scores[bad[0]]}) for query {query.query_id}, "
            f"e.g. document {doc_ids[bad[0]]}; a NaN or infinite score has no rank: check the model's weights "
            "and dtype (fp16 overflows), or the API's answer"
        )


def probe_latency(
    dataset: Dataset,
    reranker: Reranker,
    queries: Sequence[Query],
    result: PipelineResult,
    size: int,
    seed: int = 0,
) -> None:
    """Time fresh calls on a seeded sample of ``size`` queries at the job's own depth (caches bypassed), and check
    that their scores equal the ones the job used (which came, at least in part, from a cache).

    Sets ``result.rerank_ms`` to the probe's timings and ``result.latency_source`` to ``probe``, and records in
    ``result.probe`` how many queries were probed and the largest score difference seen. API usage the probe
    causes is counted apart (``probe_api_requests``, ``probe_api_cost_usd``), not in the job's cost.

    Raises:
        RerankEvalError: a batch-invariant local model whose fresh scores differ from the cached ones (a stale
            or damaged score cache).
    """
    import random

    pool = [q for q in queries if result.reranked.get(q.query_id) and q.query_id not in result.failed]
    if size <= 0 or not pool:
        result.rerank_ms, result.latency_source = {}, "none"
        return
    sample = sorted(
        random.Random(seed).sample(sorted(pool, key=lambda q: q.query_id), min(size, len(pool))),
        key=lambda q: q.query_id,
    )
    texts = dataset.docs(sorted({d.doc_id for q in sample for d in result.first_stage[q.query_id]}))
    usage = getattr(reranker, "usage", None)
    before = dict(usage.counts) if usage is not None else {}
    timings, worst, pairs = {}, 0.0, 0
    split = _units_of(reranker)[0]
    fresh_calls = getattr(reranker, "uncached", contextlib.nullcontext)  # the reranker's own caches bypassed
    for q in sample:
        hits = result.first_stage[q.query_id]
        pairs += len(split([texts[h.doc_id] for h in hits])[0]) if split is not None else len(hits)
        used = {d.doc_id: d.score for d in result.reranked[q.query_id]}
        with fresh_calls():  # each call computes everything itself, as the first call of a process would
            t = time.perf_counter()
            try:
                fresh = np.asarray(reranker.score(q, [texts[h.doc_id] for h in hits]), dtype=np.float32)
            except RerankerCallError as e:  # the results stand; only the timing is lost
                log.warning("latency probe of %s failed (%s): no latency reported", reranker.name, e)
                timings = {}
                break
            timings[q.query_id] = (time.perf_counter() - t) * 1e3
        if reranker.pointwise:
            diff = np.abs(fresh - np.array([used[h.doc_id] for h in hits], dtype=np.float32))
            worst = max(worst, float(diff.max(initial=0.0)))
    if usage is not None:
        spent = {k: usage.counts.get(k, 0.0) - before.get(k, 0.0) for k in ("api_requests", "api_cost_usd")}
        usage.counts.clear()
        usage.counts.update(before)
        result.probe.update({f"probe_{k}": v for k, v in spent.items()})
    result.rerank_ms, result.latency_source = timings, "probe" if timings else "none"
    result.probe.update(probe_queries=float(len(sample)), probe_pairs=float(pairs), probe_max_abs_diff=worst)
    if worst > 0 and getattr(reranker, "batch_invariant", False):
        raise RerankEvalError(
            f"{reranker.name}: scores computed now differ from the cached ones by up to {worst:.3g} for the same "
            "pairs; the score cache is stale or damaged: move it away (cache.path) and rerun"
        )
