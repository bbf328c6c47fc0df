"""``python -m rerank_eval.report``: the comparison report of finished jobs, or the per-query diff of two.

``--experiment bench`` (with ``--parent RUN_ID``, ``--latest-parent``, ``--latest-parents N`` or ``--runs ID,ID``) writes
``results/<experiment>/report.md`` and its plots; ``make report`` does so for the latest bench. ``--diff A B``
(each a job's output folder or its MLflow run id) writes ``diff.md`` and ``diff.html``: the queries where B
gained and lost most against A, with the documents that moved.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..paths import results_dir
from .page import KNEE_TOLERANCE, write_report
from .records import download_job, latest_parents, records_from_mlflow


def _job_folder(ref: str, experiment: str, tmp: Path) -> Path:
    """A job's folder: the path itself, or its files fetched from MLflow by run id."""
    p = Path(ref)
    if p.is_dir():
        if not (p / "metrics.json").is_file() or not (p / "run.trec").is_file():
            raise ConfigError(f"{ref} is not a finished job's folder (no metrics.json or run.trec)")
        return p
    if p.exists() or "/" in ref:
        raise ConfigError(f"{ref} is neither a job's output folder nor an MLflow run id")
    try:
        return download_job(experiment, ref, tmp / ref, ["metrics.json", "per_query.csv", "run.trec"])
    except Exception as e:
        raise ConfigError(f"could not fetch run {ref} from MLflow experiment {experiment}: {e}") from None


def diff(
    a_ref: str, b_ref: str, out: Path, experiment: str, metric: str = "ndcg@10", n: int = 10
) -> list[Path]:
    """Write the per-query diff of job B against job A (same dataset) into ``out``."""
    import pandas as pd

    from ..config import build
    from .diff import changes, overview, read_trec, write

    with tempfile.TemporaryDirectory() as tmp:
        a, b = (_job_folder(r, experiment, Path(tmp)) for r in (a_ref, b_ref))
        sa, sb = (json.loads((f / "metrics.json").read_text(encoding="utf-8")) for f in (a, b))
        if sa["dataset"] != sb["dataset"]:
            raise ConfigError(f"--diff compares jobs on one dataset, got {sa['dataset']} and {sb['dataset']}")
        if not sa.get("config", {}).get("dataset"):
            raise ConfigError(f"{a_ref}: its metrics.json holds no dataset config to read the texts from")
        dataset = build(sa["config"]["dataset"], "dataset")
        pa, pb = (
            pd.read_csv(f / "per_query.csv", index_col="query_id", dtype={"query_id": str}) for f in (a, b)
        )
        col = f"reranked.{metric}"
        if col not in pa or col not in pb:
            raise ConfigError(
                f"--diff: {metric} is not in both jobs' per_query.csv; pick a metric they evaluated"
            )
        found = changes(
            read_trec(a / "run.trec"), read_trec(b / "run.trec"), pa[col], pb[col], dataset.qrels(), n=n
        )
    queries = {q.query_id: q.text for q in dataset.queries()}
    line = overview(pa[col], pb[col], metric, f"{sa['dataset']}, {sb['name']} against {sa['name']}")
    return write(out, found, queries, dataset.docs, sa["name"], sb["name"], metric, summary=line)


def main(argv: list[str] | None = None) -> None:
    from ..console import friendly_errors

    @friendly_errors
    def _main():
        ap = argparse.ArgumentParser(
            prog="rerank-eval-report",
            description=__doc__.replace("``", "").replace(
                "python -m rerank_eval.report", "rerank-eval-report"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        ap.add_argument("--experiment", default="rerank-eval", help="the MLflow experiment")
        ap.add_argument(
            "--parent", default=None, help="only the children of this parent run (a sweep, a bench)"
        )
        ap.add_argument("--latest-parent", action="store_true", help="the experiment's newest parent run")
        ap.add_argument("--latest-parents", type=int, default=0, metavar="N", help="its N newest parent runs")
        ap.add_argument(
            "--include-failed", action="store_true", help="let --latest-parent(s) take parents that FAILED"
        )
        ap.add_argument("--runs", default=None, help="comma-separated run ids")
        ap.add_argument("--test", default="student", choices=["student", "fisher"])
        ap.add_argument("--between", action="store_true", help="also compare rerankers with each other")
        ap.add_argument("--knee-tolerance", type=float, default=KNEE_TOLERANCE, help="nDCG@10 (default 0.01)")
        ap.add_argument("--diff", nargs=2, metavar=("A", "B"), help="per-query diff of job B against job A")
        ap.add_argument("--metric", default="ndcg@10", help="the metric --diff orders queries by")
        ap.add_argument("--out", default=None, help="folder (default results/<experiment>, or results/diff)")
        args = ap.parse_args(argv)
        if args.diff:
            out = Path(args.out) if args.out else results_dir() / "diff"
            paths = diff(*args.diff, out, args.experiment, args.metric)
            print(f"diff: wrote {', '.join(str(p) for p in paths)}")
            return
        n = args.latest_parents or (1 if args.latest_parent else 0)
        parents = (
            latest_parents(args.experiment, n, include_failed=args.include_failed) if n else [args.parent]
        )
        records = [
            r
            for p in parents
            for r in records_from_mlflow(args.experiment, p, args.runs.split(",") if args.runs else None)
        ]
        parent = ", ".join(p for p in parents if p) or None
        if not records:
            raise ConfigError(
                f"no finished jobs in experiment {args.experiment}{' under parent ' + parent if parent else ''}"
            )
        out = Path(args.out) if args.out else results_dir() / args.experiment
        paths = write_report(
            records,
            out,
            f"rerank-eval report: {args.experiment}",
            args.test,
            knee_tolerance=args.knee_tolerance,
            between=args.between,
        )
        print(f"report: {len(records)} jobs; wrote {', '.join(str(p) for p in paths)}")

    _main()
