"""A named study's own files (``report.results`` set, as ``conf/experiment/bench.yaml`` does): ``<study>.md``,
``<study>.csv`` and ``<study>.png`` (the headline table and plot), and a copy of the sweep's full report in
``<study>-report/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..files import copy_atomic, write_atomic
from .plots import plot_bars
from .records import JobRecord
from .tables import HEADLINE, comparison_frame, markdown_table


def write_study(
    records: Sequence[JobRecord],
    out: Path,
    study: str,
    intro: str,
    report: Path,
    test: str = "student",
) -> list[Path]:
    """Write the study's table and plot into ``out`` and copy the full report the sweep wrote (``report``, a
    folder) beside them; return the paths written, the table, CSV and plot first."""
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
    copies = out / f"{study}-report"
    copies.mkdir(exist_ok=True)
    for stale in [p for p in copies.iterdir() if p.is_file() and not (report / p.name).is_file()]:
        stale.unlink()  # the copy is the new report's alone
    for f in sorted(p for p in report.iterdir() if p.is_file() and not p.name.startswith(".")):
        copy_atomic(f, copies / f.name)
        paths.append(copies / f.name)
    return paths
