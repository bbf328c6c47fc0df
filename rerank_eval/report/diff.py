"""Per-query inspection of two runs over the same queries: the queries that gained and lost most, each with its
text and the documents that moved into or out of the top k, with their judgements and a snippet. As Markdown and
as one self-contained HTML page (what a job logs to MLflow as ``diff.html``: its first stage against its reranked
list)."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..types import Doc, Qrels

SNIPPET = 220


def read_trec(path: Path) -> dict[str, list[str]]:
    """A TREC run file as query_id -> document ids in rank order."""
    rows: dict[str, list[tuple[int, str]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            q, _, d, rank, *_ = line.split()
            rows.setdefault(q, []).append((int(rank), d))
    return {q: [d for _, d in sorted(v)] for q, v in rows.items()}


def changes(
    a: Mapping[str, Sequence[str]],
    b: Mapping[str, Sequence[str]],
    values_a: pd.Series,
    values_b: pd.Series,
    qrels: Qrels,
    k: int = 10,
    n: int = 10,
) -> dict[str, list[dict]]:
    """The ``n`` queries that gained most from a to b and the ``n`` that lost most (by the per-query values),
    each with b's top ``k`` and the documents that entered and left it: rank in a and b (None: not in that
    list), judgement (None: unjudged)."""
    delta = (values_b - values_a).dropna()
    order = delta.sort_values(kind="stable")
    picks = {
        "gained": [q for q in order.index[::-1] if delta[q] > 0][:n],
        "lost": [q for q in order.index if delta[q] < 0][:n],
    }
    out: dict[str, list[dict]] = {}
    for kind, queries in picks.items():
        out[kind] = []
        for q in queries:
            la, lb = list(a.get(q, [])), list(b.get(q, []))
            ra, rb = {d: i + 1 for i, d in enumerate(la)}, {d: i + 1 for i, d in enumerate(lb)}
            top_a, top_b = set(la[:k]), set(lb[:k])
            grades = qrels.get(q, {})

            def moved(ids, grades=grades, ra=ra, rb=rb):
                return [
                    {"doc_id": d, "rank_a": ra.get(d), "rank_b": rb.get(d), "grade": grades.get(d)}
                    for d in ids
                ]

            out[kind].append(
                {
                    "query_id": q,
                    "a": float(values_a[q]),
                    "b": float(values_b[q]),
                    "delta": float(delta[q]),
                    "top": moved(lb[:k]),  # b's top k, each with its rank in a
                    "entered": moved([d for d in lb[:k] if d not in top_a]),
                    "left": moved([d for d in la[:k] if d not in top_b]),
                }
            )
    return out


def overview(values_a: pd.Series, values_b: pd.Series, metric: str, scope: str) -> str:
    """The line a diff opens with: what was compared, the means over every query and wins/ties/losses."""
    delta = (values_b - values_a).dropna()
    wins, losses = int((delta > 1e-9).sum()), int((delta < -1e-9).sum())  # as the report's table counts them
    return (
        f"{scope}: {metric} {values_a.mean():.4f} → {values_b.mean():.4f} ({delta.mean():+.4f}) over "
        f"{len(delta)} queries; wins/ties/losses {wins}/{len(delta) - wins - losses}/{losses}."
    )


def _docs_of(found: dict[str, list[dict]]) -> list[str]:
    return sorted({m["doc_id"] for items in found.values() for i in items for m in i["top"] + i["left"]})


def _rows(item: dict) -> list[tuple[str, dict]]:
    """B's top k (each marked new, up, down or same against A), then the documents that left it."""
    out = []
    for m in item["top"]:
        a, b = m["rank_a"], m["rank_b"]
        what = "new in top" if m in item["entered"] else ("up" if a > b else "down" if a < b else "same")
        out.append((what, m))
    return out + [("left top", m) for m in item["left"]]


def _grade(g) -> str:
    return "unjudged" if g is None else str(g)


def _snippet(doc: Doc | None) -> str:
    text = doc.full_text if doc is not None else ""
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def markdown(
    found,
    queries: Mapping[str, str],
    docs: Mapping[str, Doc],
    label_a: str,
    label_b: str,
    metric: str,
    summary: str = "",
) -> str:
    lines = [f"# {label_b} against {label_a}, per query ({metric})", "", *([summary, ""] if summary else [])]
    for kind, items in found.items():
        lines += [f"## Queries that {kind} most", ""]
        if not items:
            lines += ["(none)", ""]
        for i in items:
            lines += [
                f"### {i['query_id']}: {queries.get(i['query_id'], '')}",
                "",
                f"{metric}: {i['a']:.4f} → {i['b']:.4f} ({i['delta']:+.4f})",
                "",
                "| change | doc | rank before → after | judgement | snippet |",
                "|---|---|---|---|---|",
            ]
            for what, m in _rows(i):
                snippet = _snippet(docs.get(m["doc_id"])).replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| {what} | {m['doc_id']} | {m['rank_a'] or '—'} → {m['rank_b'] or '—'} | "
                    f"{_grade(m['grade'])} | {snippet} |"
                )
            lines.append("")
    return "\n".join(lines)


def page(
    found,
    queries: Mapping[str, str],
    docs: Mapping[str, Doc],
    label_a: str,
    label_b: str,
    metric: str,
    summary: str = "",
) -> str:
    """The same as one HTML page, no scripts or outside resources (it opens in MLflow's artifact view)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(label_b)} vs {e(label_a)}</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;width:100%}",
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}.rel{background:#e6f4ea}",
        ".non{background:#fce8e6}.unj{color:#777}h3{margin-bottom:.2em}",
        "</style></head><body>",
        f"<h1>{e(label_b)} against {e(label_a)}, per query ({e(metric)})</h1>",
        *([f"<p class='summary'>{e(summary)}</p>"] if summary else []),
    ]
    for kind, items in found.items():
        parts.append(f"<h2>Queries that {kind} most</h2>")
        if not items:
            parts.append("<p>(none)</p>")
        for i in items:
            q = i["query_id"]
            parts += [
                f"<section class='query' data-query-id='{e(q)}'><h3>{e(q)}: {e(queries.get(q, ''))}</h3>",
                f"<p>{e(metric)}: {i['a']:.4f} → {i['b']:.4f} (<b>{i['delta']:+.4f}</b>)</p>",
                "<table><tr><th>change</th><th>doc</th><th>rank before → after</th><th>judgement</th>"
                "<th>snippet</th></tr>",
            ]
            for what, m in _rows(i):
                g = m["grade"]
                cls = "unj" if g is None else ("rel" if g > 0 else "non")
                parts.append(
                    f"<tr class='{cls}'><td>{what}</td><td>{e(m['doc_id'])}</td>"
                    f"<td>{m['rank_a'] or '—'} → {m['rank_b'] or '—'}</td><td>{_grade(g)}</td>"
                    f"<td>{e(_snippet(docs.get(m['doc_id'])))}</td></tr>"
                )
            parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(
    out_dir: Path,
    found: dict[str, list[dict]],
    queries: Mapping[str, str],
    fetch: Callable[[Sequence[str]], Mapping[str, Doc]],
    label_a: str,
    label_b: str,
    metric: str = "ndcg@10",
    stem: str = "diff",
    summary: str = "",
) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.html``, opening with ``summary`` (``overview``); ``fetch`` looks up the
    documents shown."""
    from ..files import write_atomic

    docs = fetch(_docs_of(found))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.html"]
    write_atomic(paths[0], markdown(found, queries, docs, label_a, label_b, metric, summary))
    write_atomic(paths[1], page(found, queries, docs, label_a, label_b, metric, summary))
    return paths
