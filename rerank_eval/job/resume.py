"""Stage 2, resume: a finished MLflow run with the job's fingerprint is the job's result; its files are fetched
instead of running it again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..files import write_atomic
from ..tracking import Tracker
from .identify import Identity
from .spec import JobResult, JobSpec
from .write import RUN_FILES

log = logging.getLogger("rerank_eval")


def resume(
    spec: JobSpec, identity: Identity, tracker: Tracker, out: Path, parent_run_id: str | None
) -> JobResult | None:
    """The finished run's results with its files fetched into ``out`` (``metrics.json`` last), or None. Its
    latency is labelled ``replayed:<run>``: the finished run's timings, not measured now."""
    run_id = tracker.find_finished(identity.fingerprint)
    if run_id is None:
        return None
    log.info(
        "%s: finished before as MLflow run %s (fingerprint %s): reused, not run again (resume=false runs it again)",
        spec.label,
        run_id,
        identity.fingerprint,
    )
    tracker.download(run_id, [*RUN_FILES, "metrics.json"], out)
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    summary.update(mlflow_run_id=run_id, reused=True)
    if summary["origin"]["latency_source"] != "none":
        summary["origin"]["latency_source"] = f"replayed:{run_id}"
    if parent_run_id:  # the sweep's parent lists it too, as a child pointing to the original
        tracker.log_reused(run_id, parent_run_id)
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    table = pd.read_csv(out / "per_query.csv", index_col="query_id", dtype={"query_id": str})
    names = dict.fromkeys(f"reranked.{m.name}" for m in [*spec.metrics, *identity.finals])
    per_query = table[[n for n in names if n in table]].rename(columns=lambda c: c.removeprefix("reranked."))
    return JobResult(
        spec.label,
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
