"""One job, from built objects to written and tracked results. No Hydra here: usable from Python and notebooks."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis as an
from .cache import ScoreCache
from .datasets import Dataset
from .engine import MINILM_ID
from .errors import ConfigError
from .evaluation import (
    Metric,
    context_tokens,
    evaluate,
    judges_nonrelevant,
    paired_test,
    parse_metrics,
    without_relevant,
)
from .files import atomic_writer, write_atomic
from .pipeline import run_pipeline
from .provenance import ENVIRONMENT_LIBRARIES, code_version, device_name, fingerprint, library_versions
from .report.diff import changes
from .report.diff import write as write_diff
from .rerankers import Reranker
from .retrievers import Retriever
from .tracking import Tracker, git_commit
from .types import NO_RESULT, Ranking

log = logging.getLogger("rerank_eval")


@dataclass
class JobResult:
    name: str
    metrics: dict[str, float]  # reranked pipeline, by metric name
    first_stage: dict[str, float]
    pvalues: dict[str, float]  # paired test of reranked vs first stage, by metric name
    latency: dict[str, float]
    per_query: pd.DataFrame
    output_dir: Path
    run_id: str | None = None
    counts: dict[str, float] = field(default_factory=dict)
    latency_source: str = "none"  # measured, probe, none, or replayed:<run> (timings of another run)


CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
# evaluated at top_k on the final list (a RAG prompt's context)
FINAL_MEASURES = ("ndcg", "precision", "recall")
TOP_K_KEYS = ("top_k", "final_metrics", "context_tokenizer")  # config keys that only change the final cut
REPORT_KEYS = ("report",)  # what a sweep's report concludes: no job result depends on it
# the last job's pipeline result by comparison id: a job that differs from it only in top_k shares its scoring
_CANDIDATE_RUNS: dict[str, list] = {}  # comparison -> [fingerprint, PipelineResult, the job's run id or name]


def write_trec(ranking: Ranking, path: Path, tag: str, raw_scores: bool = False) -> None:
    """Write a TREC run file atomically, with scores that strictly decrease in rank order (``n - rank + 1``), so
    that trec_eval, ir_measures and ranx, which re-sort by score and break ties their own way, read exactly the
    order the harness evaluated; a query whose list is empty gets one line naming ``NO_RESULT``, a document no qrels
    holds, so it scores 0 there as in the harness's mean (``retriever=run`` skips it). The raw scores go beside it (``write_scores``). ``raw_scores``: the ranking's
    own scores instead (``%.9g``: fp32 reads back exactly), for a first stage that ``retriever=run`` replays
    (it orders ties by the rank column)."""
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


def latency_stats(prefix: str, ms: Mapping[str, float]) -> dict[str, float]:
    """Mean, p50 and p95 of per-query latencies; empty when nothing was measured."""
    if not ms:
        return {}
    values = np.fromiter(ms.values(), dtype=float)
    return {
        f"{prefix}_ms_mean": float(values.mean()),
        f"{prefix}_ms_p50": float(np.percentile(values, 50)),
        f"{prefix}_ms_p95": float(np.percentile(values, 95)),
    }


def final_metrics(measures: Sequence[str], top_k: int) -> list[Metric]:
    """The final list's metrics: each measure at ``top_k``."""
    return parse_metrics([f"{m}@{top_k}" for m in measures])


def run_experiment(
    dataset: Dataset,
    retriever: Retriever,
    reranker: Reranker | None,
    *,
    candidates: int,
    top_k: int,
    metrics: Sequence[Metric],
    output_dir: str | Path,
    cache: ScoreCache | None = None,
    tracker: Tracker | None = None,
    config: Mapping | None = None,
    significance: str = "student",
    name: str | None = None,
    params: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
    resume: bool = True,
    on_failure: str = "fail",
    final_measures: Sequence[str] = FINAL_MEASURES,
    no_relevant: str = "keep",
    allow_pool: bool = False,
    latency_probe: int = 10,
    latency_probe_api: int = 0,
    query_batch: int = 1,
    context_tokenizer: str | None = MINILM_ID,
    bootstrap: int = 10000,
    seed: int = 42,
) -> JobResult:
    """Run, evaluate, write and track one pipeline.

    The reranked candidates are evaluated at the standard cutoffs (``metrics``); the final list a consumer
    receives (the candidates cut to ``top_k``) at ``top_k`` (``final_measures``: nDCG, context precision and
    recall), with ``context_tokens``. Writes into ``output_dir``: ``run.trec`` (the reranked candidates, scores
    strictly decreasing so any evaluator re-scores the same figures), ``run.scores.tsv`` (the raw scores),
    ``first_stage.trec`` / ``first_stage.scores.tsv``, ``per_query.csv`` and, last, ``metrics.json``: a folder
    without ``metrics.json`` is an unfinished job. With a tracker and ``resume``, a job whose fingerprint (config,
    data and run file contents, model identity, endpoint, code version) matches a finished MLflow run is not run
    again: that run's files are fetched into ``output_dir`` and its results returned.

    Args:
        no_relevant: ``keep`` (trec_eval's default: queries without a relevant document score 0 and stay in the
            mean) or ``drop`` (left out of every mean and test).
        allow_pool: run a full-corpus first stage over a dataset whose corpus is only a pool (recorded).
        latency_probe: queries timed afresh when some scores came from a cache (0: report no latency then).
        latency_probe_api: the same for API rerankers (their probe requests are paid for; default 0).
        query_batch: queries whose candidates are scored in one call by rerankers that can (``run_pipeline``).
        context_tokenizer: the tokenizer ``context_tokens`` counts with (None: not counted), and the documents
            of rerankers without a tokenizer of their own.
        bootstrap, seed: resamples and seed of the paired bootstrap intervals (``analysis``).

    Raises:
        ConfigError: ``resume`` with a tracker but no ``config`` to fingerprint; a pool corpus under a
            full-corpus first stage; bad options.

    Returns:
        JobResult with mean metrics, first-stage metrics, p-values, latencies and the MLflow run id.
    """
    if bootstrap < 100:
        raise ConfigError(f"stats.bootstrap must be at least 100 resamples, got {bootstrap}")
    if no_relevant not in ("keep", "drop"):
        raise ConfigError(f"no_relevant must be keep or drop, got {no_relevant!r}")
    if tracker is not None and resume and config is None:
        raise ConfigError(
            "resume needs the job's config to fingerprint (run_experiment(..., config=...)); without it two "
            "different jobs on one dataset would look the same: pass config, or resume=False"
        )
    full_corpus = getattr(retriever, "full_corpus", False)
    if getattr(dataset, "pool", False) and full_corpus and not allow_pool:
        raise ConfigError(
            f"{dataset.name}'s corpus here is only a pool of judged and retrieved passages, so {retriever.name} "
            "over it gives figures no published run can be compared with; rerank a saved run instead "
            "(retriever=run retriever.name=bm25), or pass allow_pool=true to run it anyway (recorded on the run)"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rr_name = reranker.name if reranker is not None else "none"
    name = name or f"{dataset.name}/{retriever.name}/{rr_name}@{candidates}/top{top_k}"
    finals = final_metrics(final_measures, top_k)
    settings = {
        "candidates": candidates,
        "metrics": [m.name for m in metrics],
        "significance": significance,
        "on_failure": on_failure,
        "no_relevant": no_relevant,
        "allow_pool": allow_pool,
        "latency_probe": latency_probe,
        "latency_probe_api": latency_probe_api,
        "query_batch": query_batch,
        "bootstrap": bootstrap,
        "seed": seed,
    }
    ingredients = {
        "dataset": dataset.fingerprint,
        "retriever": retriever.identity(dataset),
        "reranker": getattr(reranker, "identity", "none"),
        "code": code_version(),
        "settings": json.dumps(settings, sort_keys=True),
        "environment": json.dumps(library_versions(ENVIRONMENT_LIBRARIES), sort_keys=True),
    }
    job = {k: v for k, v in (config or {}).items() if k not in REPORT_KEYS}
    base = {k: v for k, v in job.items() if k not in TOP_K_KEYS}
    comparison = fingerprint(base, ingredients)  # the same for jobs that differ only in top_k
    top = {"top_k": top_k, "final": [m.name for m in finals], "tokenizer": context_tokenizer}
    fp = fingerprint(job, {**ingredients, "top": json.dumps(top, sort_keys=True)})
    if tracker is not None and resume:
        previous = tracker.find_finished(fp)
        if previous is not None:
            log.info(
                "%s: finished before as MLflow run %s (fingerprint %s): reused, not run again "
                "(resume=false runs it again)",
                name,
                previous,
                fp,
            )
            return _reuse(tracker, previous, name, [*metrics, *finals], out, parent_run_id)
    if tracker is not None and tracker.close_stale(fp):
        log.info("%s: the run an earlier, killed attempt left RUNNING in MLflow is marked KILLED", name)
    started, t0 = time.time(), time.perf_counter()
    last_fp, res, origin_run = _CANDIDATE_RUNS.get(comparison, (None, None, None))
    shared = res is not None and last_fp != fp  # a top_k sibling; the very same job asked again runs again
    if not shared:
        res = run_pipeline(
            dataset,
            retriever,
            reranker,
            candidates,
            top_k,
            cache=cache,
            progress=progress,
            on_failure=on_failure,
            latency_probe=latency_probe,
            latency_probe_api=latency_probe_api,
            query_batch=query_batch,
        )
        _CANDIDATE_RUNS.clear()  # one is enough: sweeps list top_k innermost
        _CANDIDATE_RUNS[comparison] = [fp, res, name]
    else:
        log.info(
            "%s: same candidates as the job just run (only top_k differs): its scoring and timing reused",
            name,
        )
    final = {q: hits[:top_k] for q, hits in res.reranked.items()}
    first_final = {q: hits[:top_k] for q, hits in res.first_stage.items()}
    wall = time.perf_counter() - t0

    qrels = dataset.qrels()
    empty = without_relevant(qrels, dataset.relevance_level)
    if no_relevant == "drop":
        qrels = {q: r for q, r in qrels.items() if q not in set(empty)}
    absent: dict[str, str] = {}
    if not judges_nonrelevant(qrels, dataset.relevance_level):
        for m in metrics:
            if m.measure == "judged":
                absent[m.name] = (
                    "the qrels list only relevant documents (BEIR-style), so judged@k would equal precision@k"
                )
        if absent:
            log.info("%s: %s not reported: %s", name, ", ".join(absent), next(iter(absent.values())))
    metrics = [m for m in metrics if m.name not in absent]
    per_query = evaluate(qrels, res.reranked, metrics, dataset.relevance_level)
    first = evaluate(qrels, res.first_stage, metrics, dataset.relevance_level)
    final_pq = evaluate(qrels, final, finals, dataset.relevance_level)
    first_final_pq = evaluate(qrels, first_final, finals, dataset.relevance_level)
    per_query = per_query.join(final_pq.drop(columns=[c for c in final_pq if c in per_query]))
    first = first.join(first_final_pq.drop(columns=[c for c in first_final_pq if c in first]))
    evaluated = [*metrics, *(m for m in finals if m.name not in {x.name for x in metrics})]
    means = per_query.mean().to_dict()
    first_means = first.mean().to_dict()
    ks = [k for k in CURVE_KS if k <= candidates]
    curve = evaluate(
        qrels, res.reranked, parse_metrics([f"recall@{k}" for k in ks]), dataset.relevance_level
    ).mean()
    recall_curve = {k: float(curve[f"recall@{k}"]) for k in ks}
    pvalues = {m.name: paired_test(per_query[m.name], first[m.name], significance) for m in evaluated}

    latency = {**latency_stats("first_stage", res.first_stage_ms), **latency_stats("reranker", res.rerank_ms)}
    latency_source = res.latency_source if reranker is not None else "none"
    if shared and latency_source != "none":  # the sibling's timings: not measured by this job
        latency_source = f"replayed:{origin_run}"
    rl = dataset.relevance_level
    analysis, extra_tags, columns = {}, {}, []
    figures, frame = an.ceiling(qrels, res.reranked, res.first_stage, rl)
    analysis |= figures
    columns.append(frame)
    if reranker is not None:
        analysis |= an.uncertainty(per_query, first, evaluated, significance, bootstrap, seed)
    if judges_nonrelevant(qrels, rl):
        figures, frame = an.judgements(qrels, res.reranked, res.first_stage, rl)
        analysis |= figures
        columns.append(frame)
    else:
        absent[an.CONDENSED] = (
            "the qrels list only relevant documents (BEIR-style): a list condensed to judged documents would "
            "hold only relevant ones"
        )
    analysis |= an.ties(qrels, res.reranked, "", rl)
    if reranker is not None:
        analysis |= an.ties(qrels, res.first_stage, "first_stage_", rl)
    usage = getattr(reranker, "usage", None)  # API rerankers: requests, tokens or search units, and cost
    ledger: dict[str, float] = {}
    texts = {q.query_id: q.text for q in dataset.queries()}
    if reranker is not None:
        docs = dataset.docs(sorted({d.doc_id for h in res.reranked.values() for d in h}))
        fallback = _tokenizer(context_tokenizer) if context_tokenizer else None
        figures, frame = an.truncation(reranker, fallback, texts, qrels, res.reranked, docs, rl)
        columns.append(frame)
        ledger, extra_tags = an.cost(
            analysis[f"delta_{an.HEADLINE.key}"],
            len(per_query),
            res.rerank_ms,
            latency_source,
            usage.counts if usage is not None else None,
            figures.pop("tokens_sent"),
        )
        analysis |= figures
        columns.append(pd.DataFrame({"latency.reranker_ms": pd.Series(res.rerank_ms, dtype=float)}))
    analysis = {k: v for k, v in analysis.items() if np.isfinite(v)}  # absent, never NaN
    counts = {
        "queries": float(len(per_query)),
        "queries_without_relevant": float(len(empty)),
        "pairs_scored": 0.0 if shared else float(res.pairs_scored),
        "pairs_cached": float(res.pairs_cached + (res.pairs_scored if shared else 0)),
        "failed_queries": float(len(res.failed)),
        "latency_queries": float(len(res.rerank_ms)),
        "index_s": res.index_s,
        "retrieval_s": res.retrieval_s,
        "wall_s": wall,
        **res.probe,
    }
    if reranker is not None and not shared:
        counts["rerank_s"] = res.rerank_s
        if res.pairs_scored and res.rerank_s > 0:
            counts["rerank_pairs_per_s"] = res.pairs_scored / res.rerank_s  # the job's rate, scoring included
    if context_tokenizer:
        counts["context_tokens"] = context_tokens(
            final,
            dataset.docs(sorted({d.doc_id for h in final.values() for d in h})),
            _tokenizer(context_tokenizer),
        )
    if usage is not None:
        counts.update(usage.counts)
        counts["api_cost_usd_per_1k_queries"] = (
            1000 * usage.counts.get("api_cost_usd", 0.0) / max(len(per_query), 1)
        )
    origin = {
        "latency_source": latency_source,  # measured, probe, none, or replayed:<run> (a top_k sibling's timings)
        "latency_device": device_name(getattr(reranker, "device", "cpu")) if reranker is not None else "",
        "code_version": code_version(),
        "git_commit": git_commit(),
        "comparison": comparison,
        "dataset_source": getattr(dataset, "source", ""),
        "dataset_pool": str(bool(getattr(dataset, "pool", False))).lower(),
        **({"pool_override": "true"} if getattr(dataset, "pool", False) and full_corpus else {}),
        **({"absent": json.dumps(absent)} if absent else {}),
        **{f"reranker.{k}": str(v) for k, v in (getattr(reranker, "settings", None) or {}).items()},
        **({"context_tokenizer": context_tokenizer} if context_tokenizer else {}),
        **extra_tags,
        **(usage.tags if usage is not None else {}),  # an API's model as it answered, the prices' date
    }

    write_trec(res.reranked, out / "run.trec", tag=rr_name)
    write_scores(res.reranked, out / "run.scores.tsv")
    write_trec(res.first_stage, out / "first_stage.trec", tag=retriever.name)
    write_scores(res.first_stage, out / "first_stage.scores.tsv")
    table = per_query.add_prefix("reranked.").join(first.add_prefix("first_stage."))
    for frame in columns:
        table = table.join(frame)
    write_atomic(out / "per_query.csv", table.to_csv())
    h = an.HEADLINE.name
    if reranker is not None and h in per_query:  # the queries it helped and hurt most, for a look
        found = changes(_ids(res.first_stage), _ids(res.reranked), first[h], per_query[h], qrels)
        write_diff(out, found, texts, dataset.docs, f"first stage {retriever.name}", rr_name, h)
    summary = {
        "name": name,
        "dataset": dataset.name,
        "retriever": retriever.name,
        "reranker": rr_name,
        "candidates": candidates,
        "top_k": top_k,
        "metrics": means,
        "first_stage": first_means,
        "pvalues": pvalues,
        "significance": significance,
        "final_metrics": [m.name for m in finals],
        "latency": latency,
        "counts": counts,
        "analysis": analysis,
        "cost": ledger,
        "origin": origin,
        "absent": absent,
        "queries_without_relevant": empty,
        "recall_curve": recall_curve,
        "fingerprint": fp,
        "comparison": comparison,
        "config": config or {},
    }

    run_id = None
    if tracker is not None:
        mlflow_metrics = {}
        for m in evaluated:
            mlflow_metrics[m.key] = means[m.name]
            mlflow_metrics[f"first_stage_{m.key}"] = first_means[m.name]
            mlflow_metrics[f"delta_{m.key}"] = means[m.name] - first_means[m.name]
            mlflow_metrics[f"pvalue_{m.key}"] = pvalues[m.name]
        for m in finals:  # the same under keys that do not name k, so a top_k sweep compares in one column
            mlflow_metrics[f"context_{m.measure}"] = means[m.name]
        mlflow_metrics.update(latency)
        mlflow_metrics.update(counts)
        mlflow_metrics.update(analysis)
        mlflow_metrics.update(ledger)
        tags = {
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "retriever": retriever.name,
            "retriever_identity": ingredients["retriever"][:5000],
            "reranker": rr_name,
            "reranker_identity": ingredients["reranker"],
            "fingerprint": fp,
            "significance_test": significance,
            **origin,
        }
        pending = out / ".pending"  # metrics.json travels to MLflow from here; the job's own copy comes last
        pending.mkdir(exist_ok=True)
        write_atomic(pending / "metrics.json", json.dumps(summary, indent=2, default=str))
        artifacts = [
            out / "run.trec",
            out / "run.scores.tsv",
            out / "first_stage.trec",
            out / "first_stage.scores.tsv",
            out / "per_query.csv",
            out / "diff.md",
            out / "diff.html",
            pending / "metrics.json",
            out / "config.yaml",
            out / ".hydra",
        ]
        run_id = tracker.log_job(
            name,
            {
                **(params or {}),  # then the pipeline in its own words, the columns a comparison needs first
                "dataset": dataset.name,
                "first_stage": retriever.name,
                "reranker": rr_name,
                "dtype": getattr(reranker, "dtype", None) or "n/a",
            },
            mlflow_metrics,
            tags,
            artifacts,
            parent_run_id=parent_run_id,
            steps={"recall_curve": recall_curve},
            start_time=started,
            dataset={
                "name": dataset.name,
                "digest": dataset.fingerprint,
                "source": dataset.source,
                "context": getattr(dataset, "split", "eval"),
            },
        )
        summary["mlflow_run_id"] = run_id
        if not shared and comparison in _CANDIDATE_RUNS:
            _CANDIDATE_RUNS[comparison][2] = run_id  # top_k siblings name the run their latency comes from
        shutil.rmtree(pending, ignore_errors=True)
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    log.info("%s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
    return JobResult(
        name, means, first_means, pvalues, latency, per_query, out, run_id, counts, latency_source
    )


def _ids(ranking: Ranking) -> dict[str, list[str]]:
    return {q: [d.doc_id for d in hits] for q, hits in ranking.items()}


@functools.cache
def _tokenizer(name: str):
    """The context tokenizer. A model folder's ``tokenizer.json`` loads with ``tokenizers`` alone: no torch or
    transformers import, so a job without a local model starts seconds sooner, and it counts as transformers'
    tokenizer does (tests/test_trust.py). Other names go through ``AutoTokenizer``."""
    from .engine import load_error, resolve_model

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


def _reuse(
    tracker: Tracker, run_id: str, name: str, metrics: Sequence[Metric], out: Path, parent_run_id: str | None
) -> JobResult:
    """Results of a finished run, with its files fetched into ``out`` (metrics.json last)."""
    files = ["run.trec", "run.scores.tsv", "first_stage.trec", "first_stage.scores.tsv", "per_query.csv"]
    tracker.download(run_id, [*files, "metrics.json"], out)
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    summary.update(mlflow_run_id=run_id, reused=True)
    if summary["origin"]["latency_source"] != "none":  # the finished run's timings, not measured now
        summary["origin"]["latency_source"] = f"replayed:{run_id}"
    if parent_run_id:  # the sweep's parent lists it too, as a child pointing to the original
        tracker.log_reused(run_id, parent_run_id)
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    table = pd.read_csv(out / "per_query.csv", index_col="query_id", dtype={"query_id": str})
    per_query = table[[f"reranked.{m.name}" for m in metrics]].rename(
        columns=lambda c: c.removeprefix("reranked.")
    )
    return JobResult(
        name,
        summary["metrics"],
        summary["first_stage"],
        summary["pvalues"],
        summary["latency"],
        per_query,
        out,
        run_id,
        summary["counts"],
        summary["origin"]["latency_source"],
    )
