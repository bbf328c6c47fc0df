"""Finished jobs as a report sees them, read from their output folders or from MLflow: the one place that reads
tracked runs (MLflow is imported only here, and only when asked to)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError

JOB_FILES = ("metrics.json", "per_query.csv")
log = logging.getLogger("rerank_eval")


@dataclass
class JobRecord:
    """One finished job."""

    name: str
    dataset: str
    first_stage_name: str
    reranker: str
    candidates: int
    top_k: int
    metrics: dict[str, float]
    first_stage: dict[str, float]
    latency: dict[str, float]
    # columns reranked.<metric> and first_stage.<metric>, one row per query; oracle.ndcg@10, the condensed
    # lists' nDCG@10, doc_tokens, relevant_truncated and latency.reranker_ms where the job wrote them
    per_query: pd.DataFrame
    recall_curve: dict[int, float] = field(default_factory=dict)
    run_id: str | None = None
    comparison: str = ""  # jobs that differ only in top_k share it: one comparison, counted once by Holm
    latency_source: str = "none"  # measured, probe, none, or replayed:<run> (timings of another run)
    analysis: dict[str, float] = field(default_factory=dict)  # see rerank_eval.analysis
    cost: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # figures not reported, and why
    config: dict = field(default_factory=dict)

    @property
    def stats(self) -> tuple[int, int]:
        """(bootstrap resamples, seed) the job used, so the report's intervals equal the job's."""
        s = self.config.get("stats") or {}
        return int(s.get("bootstrap", 10000)), int(s.get("seed", 42))

    @classmethod
    def from_files(cls, summary_path: Path, per_query_path: Path, run_id: str | None = None) -> JobRecord:
        s = json.loads(summary_path.read_text(encoding="utf-8"))
        table = pd.read_csv(per_query_path, index_col="query_id", dtype={"query_id": str})
        return cls(
            s["name"],
            s["dataset"],
            s["retriever"],
            s["reranker"],
            int(s["candidates"]),
            int(s["top_k"]),
            s["metrics"],
            s["first_stage"],
            s["latency"],
            table,
            {int(k): v for k, v in s.get("recall_curve", {}).items()},
            run_id or s.get("mlflow_run_id"),
            s.get("comparison") or s["name"],
            (s.get("origin") or {}).get("latency_source", "none"),
            s.get("analysis") or {},
            s.get("cost") or {},
            s.get("counts") or {},
            s.get("origin") or {},
            s.get("absent") or {},
            s.get("config") or {},
        )


def records_from_dirs(dirs: Sequence[Path]) -> list[JobRecord]:
    """Finished jobs in these output folders (folders without metrics.json are skipped: unfinished)."""
    return [
        JobRecord.from_files(d / "metrics.json", d / "per_query.csv")
        for d in dirs
        if (d / "metrics.json").is_file()
    ]


def latest_parents(
    experiment: str, n: int = 1, uri: str | None = None, include_failed: bool = False
) -> list[str]:
    """The ``n`` newest parent runs (sweeps' or the bench's) of an MLflow experiment, oldest first; a parent run
    closed as FAILED (a sweep that stopped early) is skipped, and named in the log, unless ``include_failed``."""
    from ..tracking import tracker_for

    t = tracker_for(experiment, uri)
    found = t.client.search_runs(
        [t.experiment_id],
        filter_string="tags.parent = 'true'",
        order_by=["attributes.start_time DESC"],
    )
    kept = []
    for r in found:
        if len(kept) == n:
            break
        if include_failed or r.info.status != "FAILED":
            kept.append(r)
        else:
            log.warning(
                "skipped the FAILED parent run %s (%s): --include-failed reports it",
                r.info.run_name,
                r.info.run_id,
            )
    if len(kept) < n:
        raise ConfigError(
            f"experiment {experiment} has {len(kept)} parent runs that did not fail, not {n}; run the sweeps or "
            "make bench first (--include-failed counts failed ones)"
        )
    return [r.info.run_id for r in reversed(kept)]


def download_job(
    experiment: str, run_id: str, dest: Path, files: Sequence[str] = JOB_FILES, uri: str | None = None
) -> Path:
    """Fetch a finished job's files from MLflow into ``dest``."""
    from ..tracking import tracker_for

    dest.mkdir(parents=True, exist_ok=True)
    tracker_for(experiment, uri).download(run_id, list(files), dest)
    return dest


def records_from_mlflow(
    experiment: str, parent: str | None = None, run_ids: Sequence[str] | None = None, uri: str | None = None
) -> list[JobRecord]:
    """Finished job runs of an MLflow experiment: all, a parent's children, or the given ids."""
    import tempfile

    from ..tracking import tracker_for

    tracker = tracker_for(experiment, uri)
    if run_ids:
        runs = [tracker.client.get_run(r) for r in run_ids]
    else:
        flt = "attributes.status = 'FINISHED'"
        flt += f" and tags.mlflow.parentRunId = '{parent}'" if parent else " and tags.fingerprint != ''"
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=flt,
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
        # a job a resumed sweep reused is its parent's child pointing to the run that holds its files
        runs = [
            tracker.client.get_run(r.data.tags["reused_from"]) if "reused_from" in r.data.tags else r
            for r in runs
        ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            dest = Path(tmp) / run.info.run_id
            dest.mkdir()
            tracker.download(run.info.run_id, list(JOB_FILES), dest)
            out.append(JobRecord.from_files(dest / "metrics.json", dest / "per_query.csv", run.info.run_id))
    return out
