"""Comparison reports of finished jobs: tables (Markdown, CSV), plots (PNG) and per-query diffs (Markdown, HTML).

``records`` reads jobs (output folders, or MLflow: the only module here that touches it), ``tables`` and
``plots`` present them, ``diff`` shows two runs query by query, ``page`` writes ``report.md``, ``cli`` is
``python -m rerank_eval.report``. The statistics live in ``rerank_eval.statistics``.
"""

from ..statistics import holm
from .cli import main
from .page import write_report
from .plots import pareto_front, plot_bars
from .records import JobRecord, records_from_dirs, records_from_mlflow
from .tables import (
    TABLE_METRICS,
    best_per_metric,
    comparison_frame,
    distinct_comparisons,
    knees,
    markdown_table,
)

__all__ = [
    "TABLE_METRICS",
    "JobRecord",
    "best_per_metric",
    "comparison_frame",
    "distinct_comparisons",
    "holm",
    "knees",
    "main",
    "markdown_table",
    "pareto_front",
    "plot_bars",
    "records_from_dirs",
    "records_from_mlflow",
    "write_report",
]
