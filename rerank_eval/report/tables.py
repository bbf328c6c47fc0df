"""The report's tables, as data frames and Markdown: the comparison with the first stage (mean change, bootstrap
interval, Holm-adjusted p, effect size, minimum detectable difference), headroom, what the judgements can say,
ties and truncation, cost, the depth knee, and comparisons between rerankers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import statistics as st
from .records import JobRecord

TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@100")
HEADLINE = "ndcg@10"


def _holm_by_comparison(frame: pd.DataFrame) -> pd.Series:
    """Holm-adjusted p-values, each distinct comparison counted once."""
    tested = frame["p"].notna()
    out = pd.Series(np.nan, index=frame.index)
    if tested.any():
        distinct = frame[tested].drop_duplicates("comparison")
        adjusted = dict(zip(distinct["comparison"], st.holm(distinct["p"].tolist()), strict=True))
        out[tested] = frame.loc[tested, "comparison"].map(adjusted)
    return out


def comparison_frame(
    records: Sequence[JobRecord],
    metric: str = HEADLINE,
    test: str = "student",
    metrics: Sequence[str] = TABLE_METRICS,
) -> pd.DataFrame:
    """One line per job: metrics, reranker latency (only where it was measured or probed), the change in
    ``metric`` against the first stage with its paired bootstrap 95% interval, the paired test's p-value,
    Holm-adjusted across the distinct comparisons (jobs that differ only in top_k compare the same candidate
    lists: one comparison), the effect size, the minimum detectable difference, and per-query wins/ties/losses."""
    rows = []
    for r in records:
        timed = r.latency_source in ("measured", "probe")
        a, b = r.per_query[f"reranked.{metric}"], r.per_query[f"first_stage.{metric}"]
        reranked = r.reranker != "none"
        diff = (a - b).to_numpy()
        n, seed = r.stats
        s = st.paired_summary(a, b, test, n, seed) if reranked else {}
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
                "latency device": r.origin.get("latency_device", "") if reranked and timed else "",
                "delta": r.metrics[metric] - r.first_stage[metric],
                "ci low": s.get("ci_low", np.nan),
                "ci high": s.get("ci_high", np.nan),
                "p": s.get("p", np.nan),
                "effect": s.get("effect", np.nan),
                "mde": s.get("mde", np.nan),
                "wins": int((diff > 1e-9).sum()),
                "ties": int((np.abs(diff) <= 1e-9).sum()),
                "losses": int((diff < -1e-9).sum()),
                "queries": len(diff),
                "run": r.run_id or "",
                "comparison": f"{r.comparison or r.name}|{metric}",
            }
        )
    frame = pd.DataFrame(rows)
    frame["p (Holm)"] = _holm_by_comparison(frame)
    return frame


def distinct_comparisons(frame: pd.DataFrame) -> int:
    """How many distinct comparisons the Holm correction of ``comparison_frame`` counted."""
    return int(frame.loc[frame["p"].notna(), "comparison"].nunique())


def fmt_ms(ms: float, source: str) -> str:
    """A latency with its origin: probe figures are marked ᵖ; none is shown where nothing was timed."""
    if ms != ms:
        return "n/a"
    return f"{ms:.1f}{' ᵖ' if source == 'probe' else ''}"


def fmt_p(p: float) -> str:
    if p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _num(x: float, fmt: str = ".4f", signed: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:+{fmt}}" if signed else f"{x:{fmt}}"


def _md(head: Sequence[str], rows: Sequence[Sequence[object]], left: int = 3) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_table(
    frame: pd.DataFrame,
    metric: str = HEADLINE,
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
        "95% CI",
        "p (Holm)",
        "effect",
        "MDE",
        "win/tie/loss",
    ]
    devices = sorted({d for d in frame.get("latency device", []) if d})
    rows = []
    for _, r in frame.iterrows():
        none = r["reranker"] == "none"
        mark = " †" if not none and r["p (Holm)"] < alpha else ""
        ms = fmt_ms(r["reranker ms/query"], r["latency source"]) if not none else ""
        if len(devices) > 1 and r.get("latency device"):  # two devices in one column: each figure says which
            ms += f" ({r['latency device']})"
        rows.append(
            [
                r["dataset"],
                r["first stage"],
                r["reranker"],
                *([str(r["candidates"]), str(r["top_k"])] if depth_columns else []),
                *(f"{r[m]:.4f}" for m in metrics),
                ms,
                "" if none else f"{r['delta']:+.4f}{mark}",
                "" if none else f"[{r['ci low']:+.4f}, {r['ci high']:+.4f}]",
                "" if none else fmt_p(r["p (Holm)"]),
                "" if none else _num(r["effect"], ".2f", signed=True),
                "" if none else _num(r["mde"], ".4f"),
                "" if none else f"{r['wins']}/{r['ties']}/{r['losses']}",
            ]
        )
    where = f"\nReranker latency measured on {devices[0]}.\n" if len(devices) == 1 else ""
    if len(devices) > 1:
        where = f"\nReranker latency comes from {len(devices)} devices (named beside each figure): compare within one.\n"
    return _md(head, rows) + where


def best_per_metric(
    records: Sequence[JobRecord], metrics: Sequence[str]
) -> dict[str, dict[str, tuple[str, float]]]:
    """Per dataset (figures on two datasets are not comparable), for each metric, the job (by name) that scored
    highest: ``{dataset: {metric: (name, value)}}``."""
    out: dict[str, dict[str, tuple[str, float]]] = {}
    for dataset in dict.fromkeys(r.dataset for r in records):
        for m in metrics:
            scored = [r for r in records if r.dataset == dataset and m in r.metrics]
            if scored:
                best = max(scored, key=lambda r: r.metrics[m])
                out.setdefault(dataset, {})[m] = (best.name, best.metrics[m])
    return out


def distinct_jobs(records: Sequence[JobRecord]) -> list[JobRecord]:
    """One record per comparison (top_k siblings rerank the same candidates: their analysis is the same)."""
    seen, out = set(), []
    for r in records:
        if r.comparison not in seen:
            seen.add(r.comparison)
            out.append(r)
    return out


def _label(r: JobRecord) -> list[str]:
    return [r.dataset, r.first_stage_name, r.reranker, str(r.candidates)]


def headroom_table(records: Sequence[JobRecord]) -> str:
    """Per reranked job: the candidates' ceiling and how much of the gap to it the reranker closed, and the loss
    against an ideal list split into never retrieved and misordered."""
    rows = []
    for r in distinct_jobs(records):
        a = r.analysis
        if r.reranker == "none" or "oracle_ndcg_at_10" not in a:
            continue
        rows.append(
            [
                *_label(r),
                _num(r.first_stage.get(HEADLINE, np.nan)),
                _num(r.metrics.get(HEADLINE, np.nan)),
                _num(a["oracle_ndcg_at_10"]),
                _num(a.get("headroom_captured", np.nan), ".0%"),
                _num(a["loss_never_retrieved"]),
                _num(a["first_stage_loss_misordered"]),
                _num(a["loss_misordered"]),
            ]
        )
    if not rows:
        return ""
    head = [
        "dataset",
        "first stage",
        "reranker",
        "candidates",
        "first stage nDCG@10",
        "reranked",
        "oracle (ceiling)",
        "headroom captured",
        "loss: never retrieved",
        "loss: misordered before",
        "after",
    ]
    return _md(head, rows)


def _unjudged_flag(analysis: dict, delta: float) -> str:
    if not analysis.get("gain_in_unjudged"):
        return ""
    return "**gain may sit in unjudged documents**" if delta > 0 else "**loss may be unjudged documents**"


def judgement_table(records: Sequence[JobRecord]) -> tuple[str, list[str]]:
    """Where the qrels judge non-relevant documents: judged@10 of both lists, the condensed-list change next to
    the reported one, and a flag where the gain may sit in unjudged documents. Also the datasets whose qrels hold
    only positives (nothing to say there)."""
    rows, positives_only = [], []
    for r in distinct_jobs(records):
        a = r.analysis
        if "condensed_ndcg_at_10" not in a:
            if r.dataset not in positives_only and any("condensed" in k for k in r.absent):
                positives_only.append(r.dataset)
            continue
        if r.reranker == "none":
            continue
        pq = r.per_query
        judged = [c.removeprefix("reranked.") for c in pq if c.startswith("reranked.judged@")]
        j = judged[0] if judged else None
        rows.append(
            [
                *_label(r),
                _num(pq[f"first_stage.{j}"].mean(), ".3f") if j else "n/a",
                _num(pq[f"reranked.{j}"].mean(), ".3f") if j else "n/a",
                _num(r.metrics[HEADLINE] - r.first_stage[HEADLINE], ".4f", signed=True),
                _num(a["delta_condensed_ndcg_at_10"], ".4f", signed=True),
                _unjudged_flag(a, r.metrics[HEADLINE] - r.first_stage[HEADLINE]),
            ]
        )
    head = ["dataset", "first stage", "reranker", "candidates", "judged@10 before", "after", "Δ nDCG@10",
            "Δ condensed nDCG@10", "flag"]  # fmt: skip
    return (_md(head, rows) if rows else ""), positives_only


def tie_table(records: Sequence[JobRecord]) -> str:
    """Tie rates of both runs, the spread of nDCG@10 under random tie orders, and the truncated token share."""
    rows = []
    for r in distinct_jobs(records):
        a = r.analysis
        if "tie_rate" not in a:
            continue
        spread = (
            f"{a['tie_ndcg_at_10_min']:.4f}–{a['tie_ndcg_at_10_max']:.4f}"
            if "tie_ndcg_at_10_min" in a
            else "no ties"
        )
        rows.append(
            [
                *_label(r),
                _num(a.get("first_stage_tie_rate", a["tie_rate"]), ".2%"),
                _num(a["tie_rate"], ".2%"),
                _num(r.metrics.get(HEADLINE, np.nan)),
                spread,
                _num(a.get("truncated_token_share", np.nan), ".1%"),
            ]
        )
    head = ["dataset", "first stage", "reranker", "candidates", "first stage tie rate", "tie rate", "nDCG@10",
            "nDCG@10 over all tie orders", "tokens truncated"]  # fmt: skip
    return _md(head, rows) if rows else ""


def length_buckets(record: JobRecord, buckets: int = 4, truncated: JobRecord | None = None) -> pd.DataFrame:
    """The reranker's change in nDCG@10 by the length of each query's relevant candidates (quantile buckets of
    ``doc_tokens``): queries, token range, mean change, share of relevant candidates truncated; and, given the
    same reranker's job under truncation (``truncated``, for a job that scores passages), the mean change against
    it (``vs_truncated``)."""
    pq = record.per_query
    if "doc_tokens" not in pq or pq["doc_tokens"].notna().sum() < buckets:
        return pd.DataFrame()
    sub = pq[pq["doc_tokens"].notna()]
    delta = sub[f"reranked.{HEADLINE}"] - sub[f"first_stage.{HEADLINE}"]
    against = np.nan * delta
    if truncated is not None:
        against = sub[f"reranked.{HEADLINE}"] - truncated.per_query[f"reranked.{HEADLINE}"].reindex(sub.index)
    cut = pd.qcut(sub["doc_tokens"].rank(method="first"), buckets, labels=False)
    rows = []
    for b in range(buckets):
        m = cut == b
        rows.append(
            {
                "bucket": b + 1,
                "tokens": f"{sub['doc_tokens'][m].min():.0f}–{sub['doc_tokens'][m].max():.0f}",
                "queries": int(m.sum()),
                "delta": float(delta[m].mean()),
                "truncated": float(sub["relevant_truncated"][m].mean()),
                "vs_truncated": float(against[m].mean()),
            }
        )
    return pd.DataFrame(rows)


PASSAGES = re.compile(r"-p\d+s\d+-(max|first|sum|mean)$")  # a reranker's name when it scores passages


def truncated_sibling(record: JobRecord, records: Sequence[JobRecord]) -> JobRecord | None:
    """For a job that scores passages, the same reranker's job under truncation on the same candidates."""
    base = PASSAGES.sub("", record.reranker)
    if base == record.reranker:
        return None
    key = (record.dataset, record.first_stage_name, record.candidates)
    return next(
        (r for r in records if r.reranker == base and (r.dataset, r.first_stage_name, r.candidates) == key),
        None,
    )


def length_table(records: Sequence[JobRecord]) -> str:
    rows = []
    jobs = distinct_jobs(records)
    passages = any(truncated_sibling(r, jobs) is not None for r in jobs)
    for r in jobs:
        if r.reranker == "none":
            continue
        for _, b in length_buckets(r, truncated=truncated_sibling(r, jobs)).iterrows():
            rows.append(
                [
                    *_label(r),
                    b["tokens"],
                    b["queries"],
                    _num(b["delta"], ".4f", True),
                    _num(b["truncated"], ".0%"),
                    *([_num(b["vs_truncated"], ".4f", True)] if passages else []),
                ]
            )
    head = ["dataset", "first stage", "reranker", "candidates", "relevant docs' tokens (quartile)", "queries",
            "Δ nDCG@10", "relevant docs truncated"]  # fmt: skip
    if passages:
        head.append("Δ nDCG@10 vs truncation")
    return _md(head, rows) if rows else ""


def cost_table(records: Sequence[JobRecord]) -> str:
    """The cost ledger: latency, pairs, tokens, device time or dollars, per 1,000 queries and per nDCG@10 gained."""
    rows = []
    for r in distinct_jobs(records):
        if r.reranker == "none":
            continue
        c, lat, timed = r.cost, r.latency, r.latency_source in ("measured", "probe")
        mark = " ᵖ" if r.latency_source == "probe" else ""
        usd = r.counts.get("api_cost_usd_per_1k_queries")
        pairs = f"{r.counts.get('pairs_scored', 0) + r.counts.get('pairs_cached', 0):,.0f}"
        if "passages_per_doc" in r.counts:  # (query, passage) pairs
            pairs += f" ({r.counts['passages_per_doc']:.2f} passages/doc)"
        rows.append(
            [
                *_label(r),
                f"{lat['reranker_ms_p50']:.1f}{mark}" if timed and "reranker_ms_p50" in lat else "n/a",
                f"{lat['reranker_ms_p95']:.1f}{mark}" if timed and "reranker_ms_p95" in lat else "n/a",
                pairs,
                f"{c['tokens_sent']:,.0f}" if "tokens_sent" in c else "n/a",
                _num(c.get("device_s_per_1k_queries", np.nan), ".1f"),
                f"{usd:.2f}" if usd else "n/a",
                _num(c.get("ndcg_at_10_gain_per_device_s", np.nan), ".4f", True),
                _num(c.get("ndcg_at_10_gain_per_usd", np.nan), ".2f", True),
            ]
        )
    head = ["dataset", "first stage", "reranker", "candidates", "ms p50", "ms p95", "pairs", "tokens sent",
            "device s / 1k queries", "$ / 1k queries", "Δ nDCG@10 per device s", "Δ nDCG@10 per $"]  # fmt: skip
    return _md(head, rows) if rows else ""


def depth_groups(records: Sequence[JobRecord]) -> dict[tuple[str, str, str], dict[int, JobRecord]]:
    """Jobs by (dataset, first stage, reranker), each with its depths (top_k siblings counted once)."""
    groups: dict[tuple[str, str, str], dict[int, JobRecord]] = {}
    for r in records:
        groups.setdefault((r.dataset, r.first_stage_name, r.reranker), {}).setdefault(r.candidates, r)
    return {k: v for k, v in groups.items() if len(v) > 1}


def knees(records: Sequence[JobRecord], tolerance: float, test: str = "student") -> list[dict]:
    """Per depth sweep of a reranker: the knee (``statistics.knee``) and each depth's comparison with the best."""
    out = []
    for (ds, stage, rr), by_depth in depth_groups(records).items():
        queries = sorted(set.intersection(*(set(r.per_query.index) for r in by_depth.values())))
        values = {d: r.per_query.loc[queries, f"reranked.{HEADLINE}"].to_numpy() for d, r in by_depth.items()}
        n, seed = next(iter(by_depth.values())).stats
        depth, rows = st.knee(values, tolerance, n, seed, test)
        out.append({"dataset": ds, "first stage": stage, "reranker": rr, "knee": depth, "rows": rows})
    return out


def knee_table(found: Sequence[dict], tolerance: float) -> str:
    rows = []
    for k in found:
        best = max(k["rows"], key=lambda x: x["mean"])["depth"]
        for x in k["rows"]:
            mark = " **knee**" if x["depth"] == k["knee"] else (" (best)" if x["depth"] == best else "")
            rows.append(
                [
                    k["dataset"],
                    k["first stage"],
                    k["reranker"],
                    f"{x['depth']}{mark}",
                    _num(x["mean"]),
                    _num(x["delta"], ".4f", True),
                    f"[{x['ci_low']:+.4f}, {x['ci_high']:+.4f}]",
                    fmt_p(x["p"]),
                    "yes" if x["within"] else "no",
                ]
            )
    head = ["dataset", "first stage", "reranker", "depth", "nDCG@10", "Δ vs best depth", "95% CI", "p",
            f"within {tolerance:g}"]  # fmt: skip
    return _md(head, rows) if rows else ""


def between_frame(
    records: Sequence[JobRecord], metric: str = HEADLINE, test: str = "student"
) -> pd.DataFrame:
    """Paired comparisons between rerankers over the same candidates (same dataset, first stage and depth),
    Holm-adjusted across them."""
    rows = []
    groups: dict[tuple, list[JobRecord]] = {}
    for r in distinct_jobs(records):
        if r.reranker != "none":
            groups.setdefault((r.dataset, r.first_stage_name, r.candidates), []).append(r)
    for (ds, stage, depth), jobs in groups.items():
        for a, b in itertools.combinations(jobs, 2):
            queries = sorted(set(a.per_query.index) & set(b.per_query.index))
            x = a.per_query.loc[queries, f"reranked.{metric}"]
            y = b.per_query.loc[queries, f"reranked.{metric}"]
            n, seed = a.stats
            s = st.paired_summary(x, y, test, n, seed)
            rows.append(
                {
                    "dataset": ds,
                    "first stage": stage,
                    "candidates": depth,
                    "a": a.reranker,
                    "b": b.reranker,
                    **s,
                    "comparison": f"{a.comparison}|{b.comparison}",
                }  # fmt: skip
            )
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p (Holm)"] = _holm_by_comparison(frame)
    return frame


def between_table(frame: pd.DataFrame, metric: str = HEADLINE, alpha: float = 0.05) -> str:
    rows = [
        [
            r["dataset"],
            r["first stage"],
            str(r["candidates"]),
            f"{r['a']} − {r['b']}",
            f"{r['delta']:+.4f}{' †' if r['p (Holm)'] < alpha else ''}",
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
            fmt_p(r["p (Holm)"]),
            _num(r["effect"], ".2f", True),
            _num(r["mde"]),
        ]  # fmt: skip
        for _, r in frame.iterrows()
    ]
    head = [
        "dataset",
        "first stage",
        "candidates",
        "a − b",
        f"Δ {metric}",
        "95% CI",
        "p (Holm)",
        "effect",
        "MDE",
    ]
    return _md(head, rows, left=4) if rows else ""
