"""Tables and plots of finished jobs: Markdown and CSV tables, PNG plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class Row:
    """One pipeline of a study, as shown in its table."""

    dataset: str
    first_stage: str
    reranker: str
    metrics: dict[str, float]
    first_stage_metrics: dict[str, float]
    pvalues: dict[str, float]
    reranker_ms: float
    run_id: str | None = None


def study_frame(rows: Sequence[Row], metrics: Sequence[str]) -> pd.DataFrame:
    """One line per pipeline: each metric, reranker ms/query, and the nDCG@10 change against the first stage."""
    records = []
    for r in rows:
        rec = {"dataset": r.dataset, "first stage": r.first_stage, "reranker": r.reranker}
        rec.update({m: r.metrics.get(m, float("nan")) for m in metrics})
        rec["reranker ms/query"] = r.reranker_ms
        main = metrics[0]
        rec[f"delta {main}"] = r.metrics.get(main, float("nan")) - r.first_stage_metrics.get(main, float("nan"))
        rec[f"p ({main})"] = r.pvalues.get(main, float("nan")) if r.reranker != "none" else float("nan")
        rec["mlflow run"] = r.run_id or ""
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _fmt_p(p: float) -> str:
    if p != p:  # nan
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(frame: pd.DataFrame, metrics: Sequence[str], alpha: float = 0.05) -> str:
    """A Markdown table; a change significant at ``alpha`` is marked with a dagger."""
    main = metrics[0]
    head = ["dataset", "first stage", "reranker", *metrics, "reranker ms/query", f"Δ {main} vs first stage (p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for _, r in frame.iterrows():
        p = r[f"p ({main})"]
        delta = "" if r["reranker"] == "none" else (
            f"{r[f'delta {main}']:+.4f} ({_fmt_p(p)}){' †' if p == p and p < alpha else ''}")
        ms = "" if r["reranker"] == "none" else f"{r['reranker ms/query']:.1f}"
        cells = [r["dataset"], r["first stage"], r["reranker"], *(f"{r[m]:.4f}" for m in metrics), ms, delta]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(frame: pd.DataFrame, metric: str, path: Path, title: str) -> None:
    """Grouped horizontal bars: one panel per dataset, one group per first stage, one bar per reranker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(frame["dataset"]))
    rerankers = list(dict.fromkeys(frame["reranker"]))
    colors = dict(zip(rerankers, plt.get_cmap("tab10").colors, strict=False))
    heights = [len(set(frame[frame.dataset == d]["first stage"])) for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8, 1.2 + 0.9 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    width = 0.8 / max(len(rerankers), 1)
    for ax, d in zip(axes[:, 0], datasets, strict=True):
        sub = frame[frame.dataset == d]
        stages = list(dict.fromkeys(sub["first stage"]))
        for j, rr in enumerate(rerankers):
            vals = [sub[(sub["first stage"] == s) & (sub.reranker == rr)][metric] for s in stages]
            ys = [i + (j - (len(rerankers) - 1) / 2) * width for i in range(len(stages))]
            xs = [v.iloc[0] if len(v) else 0.0 for v in vals]
            bars = ax.barh(ys, xs, height=width, color=colors[rr], label=rr)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.set_yticks(range(len(stages)), stages)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(d, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(metric)
    axes[0, 0].legend(loc="lower right", fontsize=8, title="reranker", title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)
