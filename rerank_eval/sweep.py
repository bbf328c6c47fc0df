"""Hydra callback for multiruns: one MLflow parent run per sweep, its jobs as children, and the sweep's report.

On start it opens the parent run (named after the study where one is named) and hands its id to the jobs
(``RERANK_EVAL_PARENT_RUN``, inherited by the joblib and submitit launchers' workers). On end it reads the jobs'
folders, writes ``report.md`` and the plots into the sweep folder (and a named study's table, plot and report
into ``report.results``), and logs them, with the best configuration per metric, to the parent run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

PARENT_ENV = (
    "RERANK_EVAL_PARENT_RUN"  # the sweep's MLflow parent run, handed to its jobs (and launchers' workers)
)
log = logging.getLogger("rerank_eval")


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: str | None = None
        self.tracker = None
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()
        if not config.get("mlflow", {}).get("enabled", True):
            return
        from .tracking import Tracker

        study = (config.get("report") or {}).get("study")
        self.tracker = Tracker(config.mlflow.experiment)
        overrides = " ".join(config.hydra.overrides.task)
        self.parent = self.tracker.start_run(
            f"{study or 'sweep'}-{datetime.now():%Y-%m-%d_%H-%M-%S}",
            {
                "parent": "true",
                "sweep_overrides": overrides[:5000],
                "sweep_dir": str(config.hydra.sweep.dir),
                **({"study": study} if study else {}),
            },
        )
        os.environ[PARENT_ENV] = self.parent
        atexit.register(self._abandoned)  # a sweep that stops before its end (a refused job, a failure)
        log.info("sweep: MLflow parent run %s in experiment %s", self.parent, config.mlflow.experiment)

    def _abandoned(self) -> None:
        """Close a parent run the sweep's end never reached as FAILED, rather than leave it RUNNING."""
        if self.parent is not None:
            with contextlib.suppress(Exception):
                self.tracker.finish(self.parent, ok=False)
            self.parent = None

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from .evaluation import metric_key
        from .report import best_per_metric, comparison_frame, distinct_comparisons, knees, records_from_dirs
        from .report.page import write_report
        from .report.study import write_study

        os.environ.pop(PARENT_ENV, None)
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(
            (p for p in sweep_dir.glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        if not jobs:  # a study whose every entry was skipped: no empty parent run left behind
            if self.parent is not None:
                self.tracker.client.delete_run(self.parent)
                self.parent = None
            log.info("sweep: no jobs ran")
            return
        ok = False
        try:
            records = records_from_dirs(jobs)
            test = config.get("significance", "student")
            rep = config.get("report") or {}
            tolerance = float(rep.get("knee_tolerance", 0.01))
            wall = time.time() - self.started
            pairs = int(sum(r.counts.get("pairs_scored", 0) for r in records))
            named = bool(rep.get("results") and rep.get("study"))
            intro, title = "", f"sweep {sweep_dir}"
            if named:
                overrides = " ".join(config.hydra.overrides.task)
                title = f"rerank-eval {rep['study']}: the full report"
                intro = (
                    f"Command: `rerank-eval -m {overrides}`: {len(records)} jobs, {wall / 60:.1f} min wall on "
                    f"this machine ({pairs:,} query-document pairs scored; the rest came from the score cache)."
                    + (
                        f" MLflow parent run `{self.parent}` in experiment `{config.mlflow.experiment}`."
                        if self.parent
                        else ""
                    )
                )
                skipped = _skipped(config)
                if skipped:
                    intro += "\n\nNot run here (each needs a checkpoint or a key):\n\n" + "\n".join(
                        f"- {line}" for line in skipped
                    )
            paths = write_report(
                records, sweep_dir / "report", title, test, intro=intro, knee_tolerance=tolerance
            )
            if named:  # the table, CSV and plot; the full report is the sweep's, copied, and logged once
                study = write_study(
                    records, Path(rep["results"]), rep["study"], intro, sweep_dir / "report", test
                )
                log.info(
                    "study %s: wrote %s and a copy of the full report",
                    rep["study"],
                    ", ".join(map(str, study[:3])),
                )
                paths += study[:3]
            log.info("sweep: %d jobs; report in %s", len(records), sweep_dir / "report")
            if self.parent is not None:
                found = knees(records, tolerance, test)
                by_dataset = best_per_metric(records, ["ndcg@10", "mrr@10", "recall@100"])
                one = len(by_dataset) == 1  # best_ndcg_at_10, else best_ndcg_at_10/<dataset> for each
                best = {
                    f"best_{metric_key(m)}" + ("" if one else f"/{ds}"): name_value
                    for ds, per in by_dataset.items()
                    for m, name_value in per.items()
                }
                self.tracker.log(
                    self.parent,
                    artifacts=paths,
                    metrics={
                        "jobs": len(records),
                        "wall_s": wall,
                        "pairs_scored": pairs,
                        "distinct_comparisons": distinct_comparisons(comparison_frame(records, test=test)),
                        **{key: v for key, (_, v) in best.items()},
                        **knee_metrics(found),
                    },
                    tags={
                        **{key: n for key, (n, _) in best.items()},
                        **({"knee_tolerance": str(tolerance)} if found else {}),
                    },
                )
            ok = len(records) == len(jobs)
        finally:
            if self.parent is not None:
                self.tracker.finish(self.parent, ok=ok)
                self.parent = None


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


def _skipped(config: Any) -> list[str]:
    """The study entries this sweep skipped, one line each (none for a sweep without a study's axes)."""
    axes = OmegaConf.select(config, "hydra.sweeper.axes")
    if not axes:
        return []
    from hydra_plugins.rerank_eval_study.study_sweeper import axis_entries

    return axis_entries(axes)[1]
