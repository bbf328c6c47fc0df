"""``report.md`` with its tables and plots, for a set of finished jobs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..files import write_atomic
from . import plots
from . import tables as tb
from .records import JobRecord

KNEE_TOLERANCE = 0.01


def write_report(
    records: Sequence[JobRecord],
    out_dir: Path,
    title: str,
    test: str = "student",
    metric: str = tb.HEADLINE,
    intro: str = "",
    knee_tolerance: float = KNEE_TOLERANCE,
    between: bool = False,
) -> list[Path]:
    """Write report.md, report.csv and the plots into ``out_dir``; return their paths.

    Args:
        knee_tolerance: the depth knee is the smallest depth whose nDCG@10 is, with 95% confidence, at most this
            much below the best depth's.
        between: also compare rerankers with each other over the same candidates (Holm across those).
    """
    if not records:
        raise ValueError("no finished jobs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("report.*"), *out_dir.glob("*.png")]:  # the folder is the new report's alone
        stale.unlink()
    frame = tb.comparison_frame(records, metric, test)
    depth = frame["candidates"].nunique() > 1 or frame["top_k"].nunique() > 1
    knees = tb.knees(records, knee_tolerance, test) if depth else []
    lines = [
        *_summary(records, frame, title, intro, test, metric, depth),
        *_headroom(records),
        *_judgements(records),
        *_ties(records),
        *_cost(records),
        *_knees(knees, knee_tolerance),
        *(_between(records, metric, test) if between else []),
    ]
    paths = [out_dir / "report.md", out_dir / "report.csv"]
    shown = _plots(records, frame, knees, metric, depth, out_dir)
    paths += [out_dir / n for n in shown]
    lines += ["", *[f"![{n}]({n})" for n in shown]]
    write_atomic(paths[0], "\n".join(lines) + "\n")
    write_atomic(paths[1], frame.to_csv(index=False))
    write_atomic(out_dir / "report.html", html_page(title, "\n".join(lines)))
    return [*paths[:2], out_dir / "report.html", *paths[2:]]


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
    "table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}th,td{border:1px solid #ccc;padding:.2rem .45rem}"
    "th{background:#f3f3f3}td{text-align:right}td:nth-child(-n+3){text-align:left}img{max-width:100%}"
    "code{background:#f5f5f5;padding:0 .2rem}"
)


def html_page(title: str, markdown_text: str) -> str:
    """One HTML page with the same content as the markdown (tables and plots inline), rendered by markdown-it."""
    from html import escape

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def _summary(records, frame, title: str, intro: str, test: str, metric: str, depth: bool) -> list[str]:
    distinct = tb.distinct_comparisons(frame)
    best = tb.best_per_metric(records, [metric, *tb.TABLE_METRICS[1:]])
    test_name = "paired t-test" if test == "student" else "Fisher's randomization test"
    return [
        f"# {title}",
        "",
        _scope(frame),
        "",
        *([intro, ""] if intro else []),
        f"{len(records)} jobs. Each reranked job is compared with its own first stage on {metric}: the mean "
        f"change with its paired bootstrap 95% interval, the {test_name} Holm-adjusted across the {distinct} "
        f"distinct comparisons ({int(frame['p'].notna().sum())} reranked jobs; jobs that differ only in top_k "
        "compare the same candidates and count once; † marks p < 0.05), the effect size (mean change over the "
        "standard deviation of the per-query changes) and the MDE: the smallest mean change a paired t-test at "
        "0.05 would find with 80% power over these queries, so a change smaller than it that is not significant "
        "says 'too few queries', not 'no difference'. Reranker latency is measured on the job's own fresh calls, "
        "or on a fresh probe sample of its queries (ᵖ) where its scores came from the cache; n/a: not timed.",
        "",
        tb.markdown_table(frame, metric, depth_columns=depth),
        "Best configuration per metric, by dataset:",
        "",
        *[
            f"- {dataset}: " + "; ".join(f"{m} `{name}` ({value:.4f})" for m, (name, value) in per.items())
            for dataset, per in best.items()
        ],
        "",
    ]


def _scope(frame) -> str:
    """What the report compares, in one line: datasets, first stages, rerankers, depths."""

    def listed(column: str) -> str:
        return ", ".join(str(v) for v in dict.fromkeys(frame[column]))

    return (
        f"Datasets: {listed('dataset')}. First stages: {listed('first stage')}. Rerankers: {listed('reranker')}. "
        f"Depths: {listed('candidates')}; top_k: {listed('top_k')}."
    )


def _headroom(records) -> list[str]:
    headroom = tb.headroom_table(records)
    if not headroom:
        return []
    return [
        "## Where the headroom is",
        "",
        "The oracle reorders each job's candidates by their judgements: the best nDCG@10 any reranker of those "
        "candidates could reach. Headroom captured = (reranked − first stage) / (oracle − first stage). The "
        "loss against an ideal list (nDCG@10 = 1) splits into documents never retrieved (1 − oracle: no "
        "reranker can fix it, only a deeper or better first stage) and documents misordered (oracle − "
        "nDCG@10: the reranker's part), before and after reranking.",
        "",
        headroom,
    ]


def _judgements(records) -> list[str]:
    judged, positives_only = tb.judgement_table(records)
    lines = ["## What the judgements can say", ""]
    if judged:
        lines += [
            "Judged@10 of the first stage's and the reranked top 10, and the change in nDCG@10 on condensed lists "
            "(unjudged documents dropped before cutting at 10, as trec_eval -J or ir_measures' judged_only do) "
            "beside the reported change. Flagged: the reranked list is less judged and its condensed change has "
            "the other sign or under half the size, so the reported gain may sit in unjudged documents (or a "
            "reported loss be partly documents nobody judged: unjudged counts as non-relevant).",
            "",
            judged,
        ]
    for ds in positives_only:
        lines += [
            f"- {ds}: the qrels list only relevant documents (BEIR-style), so unjudged and non-relevant cannot be "
            "told apart: judged@k and condensed lists are not reported.",
        ]
    return [*lines, ""]


def _ties(records) -> list[str]:
    lines = []
    ties = tb.tie_table(records)
    if ties:
        lines += [
            "## Ties and truncation",
            "",
            "Tie rate: the share of adjacent candidates with equal scores (the harness breaks them by first-stage "
            "rank and writes strictly decreasing scores, so any evaluator reads its order). Where a run has ties, "
            "the lowest and highest nDCG@10 any order of the tied documents gives (exact: each tied run sorted by "
            "judgement both ways) shows how much the figure depends on that choice. Tokens truncated: the share of the candidates' tokens the model's max_length cut off.",
            "",
            ties,
        ]
    lengths = tb.length_table(records)
    if lengths:
        lines += [
            "Change by document length: queries in quartiles of the mean token length of their relevant "
            "candidates; a reranker that truncates long documents loses on the long ones. A reranker that scores "
            "passages (reranker.long_docs=passages) sees every token; its last column is its change against the same "
            "reranker under truncation, query by query.",
            "",
            lengths,
        ]
    return lines


def _cost(records) -> list[str]:
    cost = tb.cost_table(records)
    if not cost:
        return []
    return [
        "## Cost",
        "",
        "Per job: reranker latency p50/p95 (measured or probed ᵖ), candidate pairs, tokens the model read (a "
        "local model: query, document and special tokens after truncation; an API: the tokens it billed), "
        "device seconds per 1,000 queries (a local model's reranking time: measured on every query, or the "
        "probe's mean times the queries), dollars per 1,000 queries (API list prices in the reranker's config, "
        "dated there), and nDCG@10 gained per device second or per dollar (the mean gain over one query's "
        "cost).",
        "",
        cost,
    ]


def _knees(knees: list, knee_tolerance: float) -> list[str]:
    if not knees:
        return []
    return [
        "## Depth knee",
        "",
        f"Per reranker, each depth against the best depth: the knee is the smallest depth whose nDCG@10 is, "
        f"with 95% confidence (the lower end of the paired bootstrap interval), at most {knee_tolerance:g} "
        "below the best depth's.",
        "",
        *[
            f"- {k['dataset']}: {k['first stage']} + {k['reranker']}: knee at depth **{k['knee']}**"
            for k in knees
        ],
        "",
        tb.knee_table(knees, knee_tolerance),
    ]


def _between(records, metric: str, test: str) -> list[str]:
    pairs = tb.between_frame(records, metric, test)
    if not len(pairs):
        return ["## Rerankers against each other", "", "(no two rerankers over the same candidates)", ""]
    return [
        "## Rerankers against each other",
        "",
        "Paired over the same candidates (dataset, first stage, depth); Holm-adjusted across these "
        f"{len(pairs)} comparisons; † marks p < 0.05.",
        "",
        tb.between_table(pairs, metric),
    ]


def _plots(records, frame, knees: list, metric: str, depth: bool, out_dir: Path) -> list[str]:
    """Draw the plots; the names of those drawn (a plot with nothing to show is left out)."""
    drawn = {}
    if depth:
        drawn["depth.png"] = lambda p: plots.plot_depth(records, knees, p, metric)
    else:
        drawn["bars.png"] = lambda p: plots.plot_bars(frame, metric, p, f"{metric} by pipeline")
    drawn["latency.png"] = lambda p: plots.plot_latency(records, p, metric)
    drawn["recall.png"] = lambda p: plots.plot_recall(records, p)
    drawn["lengths.png"] = lambda p: plots.plot_lengths(records, p)
    return [name for name, draw in drawn.items() if draw(out_dir / name) is not False]
