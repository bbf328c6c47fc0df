"""Comparison reports of finished jobs: tables (Markdown, CSV) and plots (PNG).

Jobs are read from their output folders (``metrics.json`` + ``per_query.csv``) or from MLflow runs (the same two
files, as artifacts). Each reranked run is compared with its own first stage, per query: the mean change, a paired
test (Student's t or Fisher's randomization) with Holm's correction across every comparison in the report, and
win/tie/loss counts.

``python -m rerank_eval.report --experiment bench`` (or ``--parent RUN_ID``, ``--runs ID,ID``) writes
``results/<study>/report.md`` and its plots; ``make report`` does so for the latest bench.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluation import paired_test
from .files import write_atomic

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@100")


@dataclass
class JobRecord:
    """One finished job, as a report sees it."""

    name: str
    dataset: str
    first_stage_name: str
    reranker: str
    candidates: int
    top_k: int
    metrics: dict[str, float]
    first_stage: dict[str, float]
    latency: dict[str, float]
    per_query: pd.DataFrame  # columns reranked.<metric> and first_stage.<metric>, one row per query
    recall_curve: dict[int, float] = field(default_factory=dict)
    run_id: str | None = None
    comparison: str = ""  # jobs that differ only in top_k share it: one comparison, counted once by Holm
    latency_source: str = "none"  # measured, probe or none

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
        )


def records_from_dirs(dirs: Sequence[Path]) -> list[JobRecord]:
    """Finished jobs in these output folders (folders without metrics.json are skipped: unfinished)."""
    return [
        JobRecord.from_files(d / "metrics.json", d / "per_query.csv")
        for d in dirs
        if (d / "metrics.json").is_file()
    ]


def records_from_mlflow(
    experiment: str, parent: str | None = None, run_ids: Sequence[str] | None = None, uri: str | None = None
) -> list[JobRecord]:
    """Finished job runs of an MLflow experiment: all, a parent's children, or the given ids."""
    import tempfile

    from .tracking import tracker_for

    tracker = tracker_for(experiment, uri)
    if run_ids:
        runs = [tracker.client.get_run(r) for r in run_ids]
    else:
        flt = "attributes.status = 'FINISHED' and tags.fingerprint != ''"
        if parent:
            flt += f" and tags.mlflow.parentRunId = '{parent}'"
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=flt,
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
        if parent:  # jobs a resumed sweep reused belong to an earlier parent; this one lists them in its tags
            tags = tracker.client.get_run(parent).data.tags
            have = {r.info.run_id for r in runs}
            runs += [
                tracker.client.get_run(k.removeprefix("reused."))
                for k in sorted(tags)
                if k.startswith("reused.") and k.removeprefix("reused.") not in have
            ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            dest = Path(tmp) / run.info.run_id
            dest.mkdir()
            tracker.download(run.info.run_id, ["metrics.json", "per_query.csv"], dest)
            out.append(JobRecord.from_files(dest / "metrics.json", dest / "per_query.csv", run.info.run_id))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in input order."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def comparison_frame(
    records: Sequence[JobRecord],
    metric: str = "ndcg@10",
    test: str = "student",
    metrics: Sequence[str] = TABLE_METRICS,
) -> pd.DataFrame:
    """One line per job: metrics, reranker latency (only where it was measured or probed), change in ``metric``
    against the first stage, the paired test's p-value, Holm-adjusted across the distinct comparisons (jobs that
    differ only in top_k compare the same candidate lists: one comparison), and per-query wins/ties/losses."""
    rows = []
    for r in records:
        timed = r.latency_source in ("measured", "probe")
        a, b = r.per_query[f"reranked.{metric}"], r.per_query[f"first_stage.{metric}"]
        reranked = r.reranker != "none"
        diff = (a - b).to_numpy()
        rows.append(
            {
                "dataset": r.dataset,
                "first stage": r.first_stage_name,
                "reranker": r.reranker,
                "candidates": r.candidates,
                "top_k": r.top_k,
                **{m: r.metrics.get(m, np.nan) for m in metrics},
                "reranker ms/query": r.latency.get("reranker_ms_mean", np.nan)
                if reranked and timed
                else np.nan,
                "latency source": r.latency_source if reranked else "",
                "delta": r.metrics[metric] - r.first_stage[metric],
                "p": paired_test(a, b, test) if reranked else np.nan,
                "wins": int((diff > 1e-9).sum()),
                "ties": int((np.abs(diff) <= 1e-9).sum()),
                "losses": int((diff < -1e-9).sum()),
                "run": r.run_id or "",
                "comparison": f"{r.comparison or r.name}|{metric}",
            }
        )
    frame = pd.DataFrame(rows)
    tested = frame["p"].notna()
    frame["p (Holm)"] = np.nan
    if tested.any():
        distinct = frame[tested].drop_duplicates("comparison")
        adjusted = dict(zip(distinct["comparison"], holm(distinct["p"].tolist()), strict=True))
        frame.loc[tested, "p (Holm)"] = frame.loc[tested, "comparison"].map(adjusted)
    return frame


def distinct_comparisons(frame: pd.DataFrame) -> int:
    """How many distinct comparisons the Holm correction of ``comparison_frame`` counted."""
    return int(frame.loc[frame["p"].notna(), "comparison"].nunique())


def _fmt_ms(ms: float, source: str) -> str:
    """A latency with its origin: probe figures are marked ᵖ; none is shown where nothing was timed."""
    if ms != ms:
        return "n/a"
    return f"{ms:.1f}{' ᵖ' if source == 'probe' else ''}"


def _fmt_p(p: float) -> str:
    if p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(
    frame: pd.DataFrame,
    metric: str = "ndcg@10",
    metrics: Sequence[str] = TABLE_METRICS,
    alpha: float = 0.05,
    depth_columns: bool = False,
) -> str:
    """The comparison as Markdown; † marks a change significant at ``alpha`` after Holm's correction."""
    head = [
        "dataset",
        "first stage",
        "reranker",
        *(["candidates", "top_k"] if depth_columns else []),
        *metrics,
        "reranker ms/query",
        f"Δ {metric} vs first stage",
        "p (Holm)",
        "win/tie/loss",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for _, r in frame.iterrows():
        none = r["reranker"] == "none"
        mark = " †" if not none and r["p (Holm)"] < alpha else ""
        cells = [
            r["dataset"],
            r["first stage"],
            r["reranker"],
            *([str(r["candidates"]), str(r["top_k"])] if depth_columns else []),
            *(f"{r[m]:.4f}" for m in metrics),
            _fmt_ms(r["reranker ms/query"], r["latency source"]) if not none else "",
            "" if none else f"{r['delta']:+.4f}{mark}",
            "" if none else _fmt_p(r["p (Holm)"]),
            "" if none else f"{r['wins']}/{r['ties']}/{r['losses']}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def best_per_metric(records: Sequence[JobRecord], metrics: Sequence[str]) -> dict[str, tuple[str, float]]:
    """For each metric, the job (by name) that scored highest."""
    out = {}
    for m in metrics:
        scored = [r for r in records if m in r.metrics]
        if scored:
            best = max(scored, key=lambda r: r.metrics[m])
            out[m] = (best.name, best.metrics[m])
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130)
    _plt().close(fig)
    os.replace(tmp, path)


def plot_bars(frame: pd.DataFrame, metric: str, path: Path, title: str) -> None:
    """Grouped horizontal bars: one panel per dataset, one group per first stage, one bar per reranker."""
    plt = _plt()
    datasets = list(dict.fromkeys(frame["dataset"]))
    rerankers = list(dict.fromkeys(frame["reranker"]))
    colors = dict(zip(rerankers, plt.get_cmap("tab10").colors, strict=False))
    heights = [len(set(frame[frame.dataset == d]["first stage"])) for d in datasets]
    fig, axes = plt.subplots(
        len(datasets),
        1,
        figsize=(10, 1.2 + 0.9 * sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    width = 0.8 / max(len(rerankers), 1)
    for ax, d in zip(axes[:, 0], datasets, strict=True):
        sub = frame[frame.dataset == d]
        stages = list(dict.fromkeys(sub["first stage"]))
        for j, rr in enumerate(rerankers):
            vals = [sub[(sub["first stage"] == s) & (sub.reranker == rr)][metric] for s in stages]
            ys = [i + (j - (len(rerankers) - 1) / 2) * width for i in range(len(stages))]
            bars = ax.barh(
                ys, [v.iloc[0] if len(v) else 0.0 for v in vals], height=width, color=colors[rr], label=rr
            )
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.set_yticks(range(len(stages)), stages)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(d, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(metric)
    axes[0, 0].legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="reranker", title_fontsize=8
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _label(r) -> str:
    return f"{r['dataset']}: {r['first stage']} + {r['reranker']}"


def plot_depth(frame: pd.DataFrame, metric: str, path: Path) -> None:
    """``metric`` against candidate depth, one line per (dataset, first stage, reranker)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, sub in frame.groupby(frame.apply(_label, axis=1), sort=False):
        sub = sub.groupby("candidates")[metric].mean().sort_index()
        ax.plot(sub.index, sub.values, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("candidate depth (documents reranked)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{metric} against candidate depth")
    fig.tight_layout()
    _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_latency(frame: pd.DataFrame, metric: str, path: Path) -> None:
    """Quality against reranker latency, one panel per dataset, each with its Pareto front."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sub = frame[(frame["reranker"] != "none") & frame["reranker ms/query"].notna()].drop_duplicates(
        ["dataset", "first stage", "reranker", "candidates"]
    )
    datasets = list(dict.fromkeys(sub["dataset"])) or ["(no reranked jobs)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        part = sub[sub["dataset"] == d]
        pts = list(zip(part["reranker ms/query"], part[metric], strict=True))
        for source, marker in (("measured", "o"), ("probe", "^")):
            mine = [p for p, s in zip(pts, part["latency source"], strict=True) if s == source]
            if mine:
                ax.scatter(
                    [p[0] for p in mine],
                    [p[1] for p in mine],
                    c="tab:blue",
                    marker=marker,
                    zorder=2,
                    label=f"latency {source}" + (" (fresh sample)" if source == "probe" else ""),
                )
        for (_, r), (x, y) in zip(part.iterrows(), pts, strict=True):
            label = f"{_short(r['first stage'], 18)} + {_short(r['reranker'], 18)}@{r['candidates']}"
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(pts)
        if front:
            ax.step(
                [pts[i][0] for i in front],
                [pts[i][1] for i in front],
                where="post",
                c="tab:red",
                lw=1.5,
                label="Pareto front",
                zorder=1,
            )
            ax.legend(fontsize=8, loc="lower right")
        if pts and min(p[0] for p in pts) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("reranker latency (ms/query, mean; measured or probed, never replayed)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.set_title(d, fontsize=10, loc="left")
    fig.suptitle(f"{metric} against reranking cost", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_recall(records: Sequence[JobRecord], path: Path) -> None:
    """Recall@k against k, one panel per dataset: colour by first stage, line style by reranker."""
    plt = _plt()
    seen: dict[tuple, JobRecord] = {}
    for r in records:
        if r.recall_curve:
            seen.setdefault((r.dataset, r.first_stage_name, r.reranker, r.candidates), r)
    datasets = list(dict.fromkeys(k[0] for k in seen)) or ["(no recall curves)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets) + 2.5, 4.8), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, d in zip(axes[0], datasets, strict=True):
        keys = [k for k in seen if k[0] == d]
        stages = list(dict.fromkeys(k[1] for k in keys))
        rerankers = list(dict.fromkeys(k[2] for k in keys))
        colors = dict(zip(stages, plt.get_cmap("tab10").colors, strict=False))
        for key in keys:
            r = seen[key]
            ks = sorted(r.recall_curve)
            ax.plot(
                ks,
                [r.recall_curve[k] for k in ks],
                marker=".",
                color=colors[key[1]],
                linestyle=styles[rerankers.index(key[2]) % len(styles)],
                label=f"{_short(key[1], 22)} + {_short(key[2], 22)}@{key[3]}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(d, fontsize=10, loc="left")
        if keys:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("recall@k of the reranked lists", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def write_report(
    records: Sequence[JobRecord],
    out_dir: Path,
    title: str,
    test: str = "student",
    metric: str = "ndcg@10",
    intro: str = "",
) -> list[Path]:
    """Write report.md, report.csv and the plots into ``out_dir``; return their paths."""
    if not records:
        raise ValueError("no finished jobs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = comparison_frame(records, metric, test)
    depth = frame["candidates"].nunique() > 1 or frame["top_k"].nunique() > 1
    distinct = distinct_comparisons(frame)
    best = best_per_metric(records, [metric, *TABLE_METRICS[1:]])
    test_name = "paired t-test" if test == "student" else "Fisher's randomization test"
    lines = [
        f"# {title}",
        "",
        *([intro, ""] if intro else []),
        f"{len(records)} jobs. Each reranked job is compared with its own first stage on {metric}: {test_name}, "
        f"Holm-adjusted across the {distinct} distinct comparisons ({int(frame['p'].notna().sum())} reranked "
        "jobs; jobs that differ only in top_k compare the same candidates and count once); † marks p < 0.05; "
        "win/tie/loss counts queries. Reranker latency is measured on the job's own fresh calls, or on a "
        "fresh probe sample of its queries (ᵖ) where its scores came from the cache; n/a: not timed.",
        "",
        markdown_table(frame, metric, depth_columns=depth),
        "Best configuration per metric:",
        "",
    ]
    lines += [f"- {m}: `{name}` ({value:.4f})" for m, (name, value) in best.items()]
    paths = [out_dir / "report.md", out_dir / "report.csv"]
    plots = (
        {"depth.png": lambda p: plot_depth(frame, metric, p)}
        if depth
        else {"bars.png": lambda p: plot_bars(frame, metric, p, f"{metric} by pipeline")}
    )
    plots |= {
        "latency.png": lambda p: plot_latency(frame, metric, p),
        "recall.png": lambda p: plot_recall(records, p),
    }

    lines += ["", *[f"![{n}]({n})" for n in plots]]
    for name, draw in plots.items():
        draw(out_dir / name)
        paths.append(out_dir / name)
    write_atomic(paths[0], "\n".join(lines) + "\n")
    write_atomic(paths[1], frame.to_csv(index=False))
    return paths


def main(argv: list[str] | None = None) -> None:
    from .cli import friendly_errors

    @friendly_errors
    def _main():
        ap = argparse.ArgumentParser(
            prog="python -m rerank_eval.report",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        ap.add_argument("--experiment", default="rerank-eval", help="the MLflow experiment")
        ap.add_argument(
            "--parent", default=None, help="only the children of this parent run (a sweep, a bench)"
        )
        ap.add_argument("--latest-parent", action="store_true", help="the experiment's newest parent run")
        ap.add_argument("--runs", default=None, help="comma-separated run ids")
        ap.add_argument("--test", default="student", choices=["student", "fisher"])
        ap.add_argument("--out", default=None, help="folder (default results/<experiment>)")
        args = ap.parse_args(argv)
        parent = args.parent
        if args.latest_parent:
            from .tracking import tracker_for

            t = tracker_for(args.experiment)
            found = t.client.search_runs(
                [t.experiment_id],
                filter_string="tags.parent = 'true'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if not found:
                from .errors import ConfigError

                raise ConfigError(
                    f"no parent run in experiment {args.experiment}; run a sweep or make bench first"
                )
            parent = found[0].info.run_id
        records = records_from_mlflow(args.experiment, parent, args.runs.split(",") if args.runs else None)
        if not records:
            from .errors import ConfigError

            raise ConfigError(
                f"no finished jobs in experiment {args.experiment}"
                f"{' under parent ' + parent if parent else ''}"
            )
        out = Path(args.out) if args.out else PROJECT_ROOT / "results" / args.experiment
        paths = write_report(records, out, f"rerank-eval report: {args.experiment}", args.test)
        print(f"report: {len(records)} jobs; wrote {', '.join(str(p) for p in paths)}")

    _main()


if __name__ == "__main__":
    main()
