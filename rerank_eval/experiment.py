"""One job, from built objects to written and tracked results. No Hydra here: usable from Python and notebooks."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import ScoreCache
from .datasets import Dataset
from .evaluation import Metric, evaluate, paired_test, parse_metrics
from .files import atomic_writer, write_atomic
from .pipeline import PipelineResult, run_pipeline
from .rerankers import Reranker
from .retrievers import Retriever
from .tracking import Tracker
from .types import Ranking

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


VOLATILE = ("progress", "mlflow", "cache", "resume")  # config keys that do not change a job's results
CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def fingerprint(config: Mapping, *identities: str) -> str:
    """A stable hash of what makes two jobs the same job: the resolved config (less the keys that cannot change
    results) and the identities of the data and models (corpus hash, model weights hash)."""
    core = {k: v for k, v in config.items() if k not in VOLATILE}
    blob = json.dumps([core, identities], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_trec(ranking: Ranking, path: Path, tag: str) -> None:
    """Write a TREC run file atomically (a temporary file renamed into place)."""
    with atomic_writer(path) as f:
        for q in sorted(ranking):
            for rank, d in enumerate(ranking[q], 1):
                f.write(f"{q} Q0 {d.doc_id} {rank} {d.score:.6f} {tag}\n")


def latency_stats(prefix: str, ms: Mapping[str, float]) -> dict[str, float]:
    values = np.fromiter(ms.values(), dtype=float) if ms else np.zeros(1)
    return {
        f"{prefix}_ms_mean": float(values.mean()),
        f"{prefix}_ms_p50": float(np.percentile(values, 50)),
        f"{prefix}_ms_p95": float(np.percentile(values, 95)),
    }


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
) -> JobResult:
    """Run, evaluate, write and track one pipeline.

    Writes into ``output_dir``: ``run.trec`` (the reranked candidates), ``first_stage.trec``, ``per_query.csv``
    and, last, ``metrics.json``: a folder without ``metrics.json`` is an unfinished job. With a tracker and
    ``resume``, a job whose fingerprint matches a finished MLflow run is not run again: that run's files are
    fetched into ``output_dir`` and its results returned.

    Returns:
        JobResult with mean metrics, first-stage metrics, p-values, latencies and the MLflow run id.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rr_name = reranker.name if reranker is not None else "none"
    name = name or f"{dataset.name}/{retriever.name}/{rr_name}@{candidates}/top{top_k}"
    fp = fingerprint(config or {}, dataset.fingerprint, getattr(reranker, "identity", "none"))
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
            return _reuse(tracker, previous, name, metrics, out, parent_run_id)
    if tracker is not None and tracker.close_stale(fp):
        log.info("%s: the run an earlier, killed attempt left RUNNING in MLflow is marked KILLED", name)
    started, t0 = time.time(), time.perf_counter()
    res: PipelineResult = run_pipeline(
        dataset, retriever, reranker, candidates, top_k, cache=cache, progress=progress, on_failure=on_failure
    )
    wall = time.perf_counter() - t0

    qrels = dataset.qrels()
    per_query = evaluate(qrels, res.reranked, metrics, dataset.relevance_level)
    first = evaluate(qrels, res.first_stage, metrics, dataset.relevance_level)
    means = per_query.mean().to_dict()
    first_means = first.mean().to_dict()
    ks = [k for k in CURVE_KS if k <= candidates]
    curve = evaluate(
        qrels, res.reranked, parse_metrics([f"recall@{k}" for k in ks]), dataset.relevance_level
    ).mean()
    recall_curve = {k: float(curve[f"recall@{k}"]) for k in ks}
    pvalues = {m.name: paired_test(per_query[m.name], first[m.name], significance) for m in metrics}

    latency = {**latency_stats("first_stage", res.first_stage_ms), **latency_stats("reranker", res.rerank_ms)}
    counts = {
        "queries": float(len(per_query)),
        "pairs_scored": float(res.pairs_scored),
        "pairs_cached": float(res.pairs_cached),
        "failed_queries": float(len(res.failed)),
        "index_s": res.index_s,
        "wall_s": wall,
    }
    usage = getattr(reranker, "usage", None)  # API rerankers: requests, tokens or search units, and cost
    if usage is not None:
        counts.update(usage.counts)
        counts["api_cost_usd_per_1k_queries"] = (
            1000 * usage.counts.get("api_cost_usd", 0.0) / max(len(per_query), 1)
        )

    write_trec(res.reranked, out / "run.trec", tag=rr_name)
    write_trec(res.first_stage, out / "first_stage.trec", tag=retriever.name)
    table = per_query.add_prefix("reranked.").join(first.add_prefix("first_stage."))
    write_atomic(out / "per_query.csv", table.to_csv())
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
        "latency": latency,
        "counts": counts,
        "recall_curve": recall_curve,
        "fingerprint": fp,
        "config": config or {},
    }

    run_id = None
    if tracker is not None:
        mlflow_metrics = {}
        for m in metrics:
            mlflow_metrics[m.key] = means[m.name]
            mlflow_metrics[f"first_stage_{m.key}"] = first_means[m.name]
            mlflow_metrics[f"delta_{m.key}"] = means[m.name] - first_means[m.name]
            mlflow_metrics[f"pvalue_{m.key}"] = pvalues[m.name]
        mlflow_metrics.update(latency)
        mlflow_metrics.update(counts)
        tags = {
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "retriever": retriever.name,
            "reranker": rr_name,
            "reranker_identity": getattr(reranker, "identity", "none"),
            "fingerprint": fp,
            "significance_test": significance,
            **(usage.tags if usage is not None else {}),
        }
        pending = out / ".pending"  # metrics.json travels to MLflow from here; the job's own copy comes last
        pending.mkdir(exist_ok=True)
        write_atomic(pending / "metrics.json", json.dumps(summary, indent=2, default=str))
        artifacts = [
            out / "run.trec",
            out / "first_stage.trec",
            out / "per_query.csv",
            pending / "metrics.json",
            out / "config.yaml",
            out / ".hydra",
        ]
        run_id = tracker.log_job(
            name,
            params or {},
            mlflow_metrics,
            tags,
            artifacts,
            parent_run_id=parent_run_id,
            steps={"recall_curve": recall_curve},
            start_time=started,
        )
        summary["mlflow_run_id"] = run_id
        shutil.rmtree(pending, ignore_errors=True)
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    log.info("%s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
    return JobResult(name, means, first_means, pvalues, latency, per_query, out, run_id, counts)


def _reuse(
    tracker: Tracker, run_id: str, name: str, metrics: Sequence[Metric], out: Path, parent_run_id: str | None
) -> JobResult:
    """Results of a finished run, with its files fetched into ``out`` (metrics.json last)."""
    tracker.download(run_id, ["run.trec", "first_stage.trec", "per_query.csv", "metrics.json"], out)
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    summary.update(mlflow_run_id=run_id, reused=True)
    if parent_run_id:
        tracker.log(parent_run_id, tags={f"reused.{run_id}": name})
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
    )
