"""Hydra callback for multiruns: one MLflow parent run per sweep, its jobs as children, and the sweep's report.

On start it opens the parent run and hands its id to the jobs (``RERANK_EVAL_PARENT_RUN``, inherited by the
joblib launcher's workers). On end it reads the jobs' folders, writes ``report.md`` and the plots into the sweep
folder, and logs them, with the best configuration per metric, to the parent run.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from .cli import PARENT_ENV

log = logging.getLogger("rerank_eval")


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: str | None = None
        self.tracker = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not config.get("mlflow", {}).get("enabled", True):
            return
        from .tracking import Tracker

        self.tracker = Tracker(config.mlflow.experiment)
        overrides = " ".join(config.hydra.overrides.task)
        self.parent = self.tracker.start_run(
            f"sweep-{datetime.now():%Y-%m-%d_%H-%M-%S}",
            {"parent": "true", "sweep_overrides": overrides[:5000], "sweep_dir": str(config.hydra.sweep.dir)},
        )
        os.environ[PARENT_ENV] = self.parent
        log.info("sweep: MLflow parent run %s in experiment %s", self.parent, config.mlflow.experiment)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.parent is None:
            return
        from .evaluation import metric_key
        from .report import (
            best_per_metric,
            comparison_frame,
            distinct_comparisons,
            knees,
            records_from_dirs,
            write_report,
        )

        os.environ.pop(PARENT_ENV, None)
        sweep_dir = Path(config.hydra.sweep.dir)
        ok = False
        try:
            jobs = sorted(
                (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
            )
            records = records_from_dirs(jobs)
            if records:
                test = config.get("significance", "student")
                tolerance = float((config.get("report") or {}).get("knee_tolerance", 0.01))
                paths = write_report(
                    records, sweep_dir / "report", f"sweep {sweep_dir}", test, knee_tolerance=tolerance
                )
                found = knees(records, tolerance, test)
                best = best_per_metric(records, ["ndcg@10", "mrr@10", "recall@100"])
                self.tracker.log(
                    self.parent,
                    artifacts=paths,
                    metrics={
                        "jobs": len(records),
                        "distinct_comparisons": distinct_comparisons(comparison_frame(records, test=test)),
                        **{f"best_{metric_key(m)}": v for m, (_, v) in best.items()},
                        **knee_metrics(found),
                    },
                    tags={
                        **{f"best_{metric_key(m)}": n for m, (n, _) in best.items()},
                        **({"knee_tolerance": str(tolerance)} if found else {}),
                    },
                )
                log.info("sweep: %d jobs; report in %s", len(records), sweep_dir / "report")
            ok = len(records) == len(jobs)
        finally:
            self.tracker.finish(self.parent, ok=ok)


def knee_metrics(found: list[dict]) -> dict[str, float]:
    """The depth knees as parent-run metrics: ``knee_depth`` for a sweep of one reranker, and
    ``knee_depth/<dataset>/<first stage>/<reranker>`` for each (MLflow keys allow those characters)."""
    import re

    out = {}
    for k in found:
        label = "/".join(re.sub(r"[^\w.\- ]", "_", k[f]) for f in ("dataset", "first stage", "reranker"))
        out[f"knee_depth/{label}"] = float(k["knee"])
    if len(found) == 1:
        out["knee_depth"] = float(found[0]["knee"])
    return out
