"""Stage 7, track: the job as an MLflow run (params, metrics, tags, artifacts), under a sweep's parent run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..tracking import Tracker
from .evaluate import Evaluation
from .identify import Identity
from .spec import JobSpec
from .write import RUN_FILES


def track(
    tracker: Tracker,
    spec: JobSpec,
    identity: Identity,
    ev: Evaluation,
    summary: dict[str, Any],
    out: Path,
    *,
    started: float,
    params: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Log the finished job; returns its run id. ``metrics.json`` travels from a ``.pending`` folder, so the
    job's own copy is still written last."""
    pending = out / ".pending"
    pending.mkdir(exist_ok=True)
    write_atomic(pending / "metrics.json", json.dumps(summary, indent=2, default=str))
    artifacts = [
        *(out / f for f in RUN_FILES),
        out / "diff.md",
        out / "diff.html",
        pending / "metrics.json",
        out / "config.yaml",
        out / ".hydra",
    ]
    run_id = tracker.log_job(
        spec.label,
        {
            **(params or {}),  # then the pipeline in its own words, the columns a comparison needs first
            "dataset": spec.dataset.name,
            "first_stage": spec.retriever.name,
            "reranker": spec.reranker_name,
            "dtype": getattr(spec.reranker, "dtype", None) or "n/a",
        },
        _metrics(identity, ev, summary),
        _tags(spec, identity, summary),
        artifacts,
        parent_run_id=parent_run_id,
        steps={"recall_curve": ev.recall_curve},
        start_time=started,
        dataset={
            "name": spec.dataset.name,
            "digest": spec.dataset.fingerprint,
            "source": spec.dataset.source,
            "context": getattr(spec.dataset, "split", "eval"),
        },
    )
    shutil.rmtree(pending, ignore_errors=True)
    return run_id


def _metrics(identity: Identity, ev: Evaluation, summary: dict[str, Any]) -> dict[str, float]:
    means, first = summary["metrics"], summary["first_stage"]
    out = {}
    for m in ev.metrics:
        out[m.key] = means[m.name]
        out[f"first_stage_{m.key}"] = first[m.name]
        out[f"delta_{m.key}"] = means[m.name] - first[m.name]
        out[f"pvalue_{m.key}"] = ev.pvalues[m.name]
    for (
        m
    ) in identity.finals:  # the same under keys that do not name k, so a top_k sweep compares in one column
        out[f"context_{m.measure}"] = means[m.name]
    for part in ("latency", "counts", "analysis", "cost"):
        out.update(summary[part])
    return out


def _tags(spec: JobSpec, identity: Identity, summary: dict[str, Any]) -> dict[str, str]:
    return {
        "dataset": spec.dataset.name,
        "dataset_fingerprint": spec.dataset.fingerprint,
        "retriever": spec.retriever.name,
        "retriever_identity": identity.retriever[:5000],
        "reranker": spec.reranker_name,
        "reranker_identity": identity.reranker,
        "fingerprint": identity.fingerprint,
        "significance_test": spec.significance,
        **summary["origin"],
    }
