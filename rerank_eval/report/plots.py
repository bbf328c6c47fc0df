"""The report's plots (PNG): bars per pipeline, quality against depth with the candidates' ceiling and the knee,
quality against latency with 95% intervals on both axes and the Pareto front, recall curves, and the change by
document length."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import statistics as st
from .records import JobRecord
from .tables import HEADLINE, depth_groups, distinct_jobs, length_buckets


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


def plot_depth(
    records: Sequence[JobRecord], knees: Sequence[dict], path: Path, metric: str = HEADLINE
) -> None:
    """``metric`` against candidate depth, one line per (dataset, first stage, reranker), with the candidates'
    ceiling (the oracle reordering, dashed) and the knee (a star): how much deeper candidates could help and how
    much of it the reranker takes."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = iter(plt.get_cmap("tab10").colors * 4)
    knee_at = {(k["dataset"], k["first stage"], k["reranker"]): k["knee"] for k in knees}
    for key, by_depth in depth_groups(records).items():
        c = next(colors)
        ds = sorted(by_depth)
        ys = [by_depth[d].metrics[metric] for d in ds]
        ax.plot(ds, ys, marker="o", color=c, label=f"{key[0]}: {_short(key[1], 20)} + {_short(key[2], 40)}")
        ceiling = [by_depth[d].analysis.get("oracle_ndcg_at_10", np.nan) for d in ds]
        if metric == HEADLINE and not np.all(np.isnan(ceiling)):
            ax.plot(
                ds, ceiling, linestyle="--", color=c, alpha=0.7, label="  its candidates' ceiling (oracle)"
            )
        if key in knee_at:
            k = knee_at[key]
            ax.scatter(
                [k], [by_depth[k].metrics[metric]], marker="*", s=220, color=c, edgecolor="k", zorder=3
            )
            ax.annotate(f"knee {k}", (k, by_depth[k].metrics[metric]), xytext=(4, -12), textcoords="offset points",
                        fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    depths = sorted({d for by_depth in depth_groups(records).values() for d in by_depth})
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("candidate depth (documents reranked)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title(f"{metric} against candidate depth (★: the knee)")
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


def _ci(values: Sequence[float], seed: int) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return st.bootstrap_ci(v, n_resamples=2000, seed=seed) if len(v) > 1 else (np.nan, np.nan)


def plot_latency(records: Sequence[JobRecord], path: Path, metric: str = HEADLINE) -> None:
    """Quality against reranker latency, one panel per dataset, each point with bootstrap 95% intervals on both
    axes (per-query latencies and per-query metric values), and each panel's Pareto front. Only measured or
    probed latencies (triangles: a fresh probe sample)."""
    plt = _plt()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    jobs = [
        r
        for r in distinct_jobs(records)
        if r.reranker != "none"
        and r.latency_source in ("measured", "probe")
        and "reranker_ms_mean" in r.latency
    ]
    datasets = list(dict.fromkeys(r.dataset for r in jobs)) or ["(no timed reranked jobs)"]
    devices = sorted({r.origin.get("latency_device", "") for r in jobs} - {""})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        part = [r for r in jobs if r.dataset == d]
        pts = [(r.latency["reranker_ms_mean"], r.metrics[metric]) for r in part]
        for r, (x, y) in zip(part, pts, strict=True):
            ms = r.per_query.get("latency.reranker_ms", pd.Series(dtype=float))
            xl, xh = _ci(ms, r.stats[1])
            yl, yh = _ci(r.per_query[f"reranked.{metric}"], r.stats[1])
            ax.errorbar(
                [x],
                [y],
                xerr=[[x - xl], [xh - x]] if xl == xl else None,
                yerr=[[y - yl], [yh - y]] if yl == yl else None,
                fmt="o" if r.latency_source == "measured" else "^",
                color="tab:blue",
                ecolor="tab:gray",
                elinewidth=0.8,
                capsize=2,
                zorder=2,
            )
            label = f"{_short(r.first_stage_name, 18)} + {_short(r.reranker, 18)}@{r.candidates}"
            if len(devices) > 1:  # two devices on one axis: each point says which
                label += f" [{_short(r.origin.get('latency_device', '?'), 24)}]"
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(pts)
        if front:
            ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", c="tab:red", lw=1.5,
                    label="Pareto front", zorder=1)  # fmt: skip
            ax.legend(fontsize=8, loc="lower right")
        if pts and min(p[0] for p in pts) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        where = f" on {_short(devices[0], 40)}" if len(devices) == 1 else ""
        ax.set_xlabel(
            f"reranker latency{where} (ms/query, mean, 95% CI; measured ●, probed ▲, never replayed)"
        )
        ax.set_ylabel(f"{metric} (95% CI)")
        ax.grid(alpha=0.3)
        ax.set_title(d, fontsize=10, loc="left")
    fig.suptitle(f"{metric} against reranking cost", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_lengths(records: Sequence[JobRecord], path: Path) -> bool:
    """The change in nDCG@10 by the length of the queries' relevant candidates (quartiles), one group of bars
    per reranked job; hatched where the model truncated most of a bucket's relevant documents. False when no job
    has lengths."""
    plt = _plt()
    jobs = [(r, length_buckets(r)) for r in distinct_jobs(records) if r.reranker != "none"]
    jobs = [(r, b) for r, b in jobs if len(b)]
    if not jobs:
        return False
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(jobs) + 4), 4.5))
    width = 0.8 / 4
    for j, (_, b) in enumerate(jobs):
        for row in b.to_dict("records"):
            x = j + (row["bucket"] - 2.5) * width
            ax.bar(x, row["delta"], width=width * 0.95, color=plt.get_cmap("viridis")(row["bucket"] / 4.5),
                   hatch="//" if row["truncated"] > 0.5 else None, edgecolor="k", lw=0.3)  # fmt: skip
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=plt.get_cmap("viridis")(b / 4.5), label=f"Q{b} (shortest)" if b == 1 else
                       f"Q{b}" + (" (longest)" if b == 4 else "")) for b in range(1, 5)],
        fontsize=7, loc="best",
    )  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(jobs)), [f"{r.dataset}\n{_short(r.first_stage_name, 14)}\n{_short(r.reranker, 22)}@{r.candidates}"
                                    for r, _ in jobs], fontsize=6)  # fmt: skip
    ax.set_ylabel("Δ nDCG@10 vs first stage")
    ax.set_title("change by length of the relevant documents (quartiles, short → long; hatched: mostly truncated)",
                 fontsize=9)  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


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
