"""One job as its stages: identify, resume, rank, evaluate, analyse, write, track. No Hydra here: usable from
Python and notebooks (``config.job_spec`` builds the spec with the shipped defaults)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from ..cache import ScoreCache
from ..errors import ConfigError
from ..files import write_atomic
from ..tracking import Tracker
from .analyse import analyse
from .evaluate import evaluate_job
from .identify import identify
from .rank import CandidateShare, rank
from .resume import resume
from .spec import JobResult, JobSpec
from .track import track
from .write import summary, write_files

log = logging.getLogger("rerank_eval")


def run_job(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    cache: ScoreCache | None = None,
    tracker: Tracker | None = None,
    share: CandidateShare | None = None,
    params: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> JobResult:
    """Run, evaluate, write and track one job.

    Writes into ``output_dir``: ``run.trec`` (the reranked candidates, scores strictly decreasing so any evaluator
    re-scores the same figures), ``run.scores.tsv`` (the raw scores), ``first_stage.trec`` /
    ``first_stage.scores.tsv``, ``per_query.csv``, the diff page and, last, ``metrics.json``: a folder without
    ``metrics.json`` is an unfinished job. With a tracker and ``spec.resume``, a job whose fingerprint matches a
    finished MLflow run is not run again: that run's files are fetched and its results returned.

    Args:
        cache: the score cache (None: none).
        tracker: MLflow (None: not tracked, nothing resumed).
        share: a sweep's ``CandidateShare``: jobs that differ only in ``top_k`` rank once.
        params: MLflow params (the flattened config).
        parent_run_id: the sweep's MLflow parent run.

    Raises:
        ConfigError: ``resume`` with a tracker but no ``spec.config``; a pool corpus under a full-corpus first
            stage without ``allow_pool``.
    """
    if tracker is not None and spec.resume and not spec.config:
        raise ConfigError(
            "resume needs the job's config to fingerprint (JobSpec(..., config=...)); without it two different "
            "jobs on one dataset would look the same: pass config, or resume=False"
        )
    identity = identify(spec)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tracker is not None and spec.resume:
        done = resume(spec, identity, tracker, out, parent_run_id)
        if done is not None:
            return done
    if tracker is not None and tracker.close_stale(identity.fingerprint):
        log.info("%s: the run an earlier, killed attempt left RUNNING in MLflow is marked KILLED", spec.label)
    started, t0 = time.time(), time.perf_counter()
    ranked = rank(spec, identity, cache, share)
    wall_s = time.perf_counter() - t0
    ev = evaluate_job(spec, identity, ranked)
    found = analyse(spec, identity, ranked, ev, wall_s)
    write_files(spec, out, ranked, ev, found)
    result = summary(spec, identity, ev, found)
    run_id = None
    if tracker is not None:
        run_id = track(
            tracker,
            spec,
            identity,
            ev,
            result,
            out,
            started=started,
            params=params,
            parent_run_id=parent_run_id,
        )
        result["mlflow_run_id"] = run_id
        if share is not None and ranked.shared_from is None:
            share.name_origin(identity, run_id)  # its siblings name this run as their latency's origin
    write_atomic(out / "metrics.json", json.dumps(result, indent=2, default=str))
    log.info("%s: %s", spec.label, ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
    return JobResult(
        spec.label,
        result["metrics"],
        result["first_stage"],
        result["pvalues"],
        found.latency,
        ev.per_query,
        out,
        run_id,
        found.counts,
        ranked.latency_source,
    )
