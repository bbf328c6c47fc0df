"""A named study's own files (``report.results`` set, as ``conf/experiment/bench.yaml`` does): ``<study>.md``,
``<study>.csv`` and ``<study>.png`` (the headline table and plot), and the full report in ``<study>-report/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..files import write_atomic
from .page import write_report
from .plots import plot_bars
from .records import JobRecord
from .tables import HEADLINE, comparison_frame, markdown_table


def write_study(
    records: Sequence[JobRecord],
    out: Path,
    study: str,
    intro: str,
    test: str = "student",
    knee_tolerance: float = 0.01,
) -> list[Path]:
    """Write the study's table, plot and full report into ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    frame = comparison_frame(records, test=test)
    depths = sorted({int(c) for c in frame["candidates"]})
    depth = f"depth {depths[0]}" if len(depths) == 1 else f"depths {', '.join(map(str, depths))}"
    md = [
        f"# rerank-eval {study}",
        "",
        intro,
        "",
        f"Significance: paired {'t-test' if test == 'student' else 'randomization test'} of {HEADLINE} against "
        "each job's own first stage, Holm-adjusted across the distinct comparisons; † marks p < 0.05. Reranker "
        "ms/query: measured on the job's own fresh calls, or on a fresh probe sample of 10 queries (ᵖ) where its "
        "scores came from the cache. The names say what ran: the run file, the model, its dtype and the length "
        "where it is not the model's own.",
        "",
        markdown_table(frame),
    ]
    paths = [out / f"{study}.md", out / f"{study}.csv", out / f"{study}.png"]
    write_atomic(paths[0], "\n".join(md))
    write_atomic(paths[1], frame.to_csv(index=False))
    plot_bars(frame, HEADLINE, paths[2], f"nDCG@10 by pipeline (rerank {depth})")
    report = write_report(
        records,
        out / f"{study}-report",
        f"rerank-eval {study}: the full report",
        test,
        intro=intro,
        knee_tolerance=knee_tolerance,
    )
    return [*paths, *report]
