"""A job's figures beyond its metrics: how sure each difference is, what its candidates allowed, what the
judgements can say, ties, truncation and cost. Computed from the run and the qrels; ``experiment`` logs them.

Keys (MLflow metrics, ``metrics.json`` under ``analysis`` and ``cost``):

- ``delta_<metric>_ci_low`` / ``_ci_high`` (paired bootstrap 95% interval of the mean change against the first
  stage), ``effect_<metric>`` (mean change over the standard deviation of the per-query changes) and
  ``mde_<metric>`` (the smallest mean change a paired t-test at 0.05 finds with 80% power over these queries);
- ``oracle_ndcg_at_10`` (the candidates sorted by their judgement), ``headroom_captured``, and the loss against
  an ideal list split into ``loss_never_retrieved`` (1 - oracle: relevant documents not among the candidates) and
  ``loss_misordered`` (oracle - reranked: present but ranked too low);
- where the qrels judge non-relevant documents: ``condensed_ndcg_at_10`` (unjudged documents dropped first) for
  both runs, and ``gain_in_unjudged`` (1: the reranked list is less judged than the first stage's and its
  condensed change has the other sign or under half the size: a gain may sit in unjudged documents, or a loss
  be partly unjudged documents counted as non-relevant);
- ``tie_rate`` (adjacent candidates with equal scores), and where there are ties the lowest and highest nDCG@10
  any order of the tied documents gives (``tie_ndcg_at_10_min`` / ``_max``: exact, each tied run sorted by
  judgement both ways);
- ``truncated_token_share`` (the share of candidate tokens a local model's ``max_length`` cut off);
- cost: ``tokens_sent``, ``device_s`` (local models: the reranker's compute time for every query, measured or
  extrapolated from the latency probe, as ``device_s_source`` says), per 1,000 queries, and nDCG@10 gained per
  device second or per dollar (the mean gain over the cost of one query).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import statistics as st
from .evaluation import Metric, evaluate, judged_at, parse_metrics
from .lengths import candidate_lengths
from .types import Qrels, Ranking

HEADLINE = parse_metrics(["ndcg@10"])[0]
CONDENSED = f"condensed_{HEADLINE.name}"


def uncertainty(
    per_query: pd.DataFrame,
    first: pd.DataFrame,
    metrics: Sequence[Metric],
    test: str = "student",
    n_resamples: int = st.BOOTSTRAP_RESAMPLES,
    seed: int = st.SEED,
) -> dict[str, float]:
    """Bootstrap interval, effect size and minimum detectable difference of each metric's change (one set of
    resampled queries for all metrics: the intervals equal ``statistics.paired_summary``'s one metric at a time)."""
    names = [m.name for m in metrics]
    diffs = per_query[names].to_numpy(float) - first[names].to_numpy(float)
    low, high = st.bootstrap_ci(diffs, n_resamples=n_resamples, seed=seed)
    out = {}
    for j, m in enumerate(metrics):
        a, b = per_query[m.name], first[m.name]
        out |= {
            f"delta_{m.key}_ci_low": float(low[j]),
            f"delta_{m.key}_ci_high": float(high[j]),
            f"effect_{m.key}": st.effect_size(a, b),
            f"mde_{m.key}": st.mde(a, b),
        }
    return out


def ceiling(
    qrels: Qrels, reranked: Ranking, first: Ranking, relevance_level: int = 1
) -> tuple[dict[str, float], pd.DataFrame]:
    """The candidates' nDCG@10 ceiling, the headroom captured and the loss decomposition (means, and per query
    the column ``oracle.ndcg@10``)."""
    name = HEADLINE.name
    best = evaluate(qrels, st.oracle(reranked, qrels), [HEADLINE], relevance_level)[name]
    got = evaluate(qrels, reranked, [HEADLINE], relevance_level)[name]
    base = evaluate(qrels, first, [HEADLINE], relevance_level)[name]
    ideal = pd.Series({q: float(any(g > 0 for g in qrels[q].values())) for q in best.index})
    figures = {
        f"delta_{HEADLINE.key}": float(got.mean() - base.mean()),
        f"oracle_{HEADLINE.key}": float(best.mean()),
        "headroom_captured": st.headroom_captured(got.mean(), base.mean(), best.mean()),
        "loss_never_retrieved": float((ideal - best).mean()),
        "loss_misordered": float((best - got).mean()),
        "first_stage_loss_misordered": float((best - base).mean()),
    }
    return figures, pd.DataFrame({f"oracle.{name}": best})


def judgements(
    qrels: Qrels,
    reranked: Ranking,
    first: Ranking,
    relevance_level: int = 1,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Condensed nDCG@10 of both runs and the unjudged-gain flag (only meaningful where the qrels judge
    non-relevant documents; the caller checks)."""
    name = HEADLINE.name
    a = evaluate(qrels, st.condensed(reranked, qrels), [HEADLINE], relevance_level)[name]
    b = evaluate(qrels, st.condensed(first, qrels), [HEADLINE], relevance_level)[name]
    full = [evaluate(qrels, r, [HEADLINE], relevance_level)[name].mean() for r in (reranked, first)]
    delta, condensed_delta = float(full[0] - full[1]), float(a.mean() - b.mean())
    k = HEADLINE.k
    less_judged = np.mean(list(judged_at(qrels, reranked, k).values())) < np.mean(
        list(judged_at(qrels, first, k).values())
    )
    flag = less_judged and (
        np.sign(condensed_delta) != np.sign(delta) or abs(condensed_delta) < 0.5 * abs(delta)
    )
    figures = {
        f"condensed_{HEADLINE.key}": float(a.mean()),
        f"first_stage_condensed_{HEADLINE.key}": float(b.mean()),
        f"delta_condensed_{HEADLINE.key}": condensed_delta,
        "gain_in_unjudged": float(flag),
    }
    return figures, pd.DataFrame({f"reranked.{CONDENSED}": a, f"first_stage.{CONDENSED}": b})


def ties(qrels: Qrels, ranking: Ranking, prefix: str, relevance_level: int = 1) -> dict[str, float]:
    """Tie rate of a run, and where it has ties the lowest and highest nDCG@10 any order of them gives."""
    rate = st.tie_rate(ranking)
    out = {f"{prefix}tie_rate": rate}
    if rate > 0:
        low, high = st.tie_spread(ranking, qrels, HEADLINE, relevance_level)
        out |= {f"{prefix}tie_{HEADLINE.key}_min": low, f"{prefix}tie_{HEADLINE.key}_max": high}
    return out


def truncation(
    reranker,
    fallback_tokenizer,
    queries: Mapping[str, str],
    qrels: Qrels,
    reranked: Ranking,
    docs: Mapping,
    relevance_level: int = 1,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Truncated token share, tokens sent, and per query the mean length of its relevant candidates
    (``doc_tokens``) and the share of them the model cut (``relevant_truncated``)."""
    lengths = candidate_lengths(reranker, fallback_tokenizer, dict(queries), reranked, dict(docs))
    full = sum(int(x.full.sum()) for x in lengths.values())
    cut = sum(int((x.full - x.kept).sum()) for x in lengths.values())
    rows = {}
    for q, x in lengths.items():
        rel = np.array(
            [qrels.get(q, {}).get(h.doc_id, 0) >= relevance_level for h in reranked[q]], dtype=bool
        )
        rows[q] = {
            "doc_tokens": float(x.full[rel].mean()) if rel.any() else np.nan,
            "relevant_truncated": float((x.kept[rel] < x.full[rel]).mean()) if rel.any() else np.nan,
        }
    figures = {"tokens_sent": float(sum(x.sent for x in lengths.values()))}
    if reranker is not None and any(x.sent for x in lengths.values()):
        figures["truncated_token_share"] = cut / full if full else 0.0
    return figures, pd.DataFrame.from_dict(rows, orient="index")


def cost(
    delta: float,
    queries: int,
    rerank_ms: Mapping[str, float],
    latency_source: str,
    api_counts: Mapping[str, float] | None,
    tokens_sent: float,
) -> tuple[dict[str, float], dict[str, str]]:
    """The cost ledger of a reranked job: tokens, device seconds or dollars, per 1,000 queries and per nDCG@10
    gained; and where the device time came from."""
    out: dict[str, float] = {}
    tags: dict[str, str] = {}
    gain = f"{HEADLINE.key}_gain"
    if api_counts is not None:
        usd = float(api_counts.get("api_cost_usd", 0.0))
        tokens = api_counts.get("input_tokens", 0.0) + api_counts.get("output_tokens", 0.0)
        if tokens:  # an LLM bills tokens; a rerank API search units (counted beside)
            out["tokens_sent"] = float(tokens)
        if usd > 0:
            out[f"{gain}_per_usd"] = delta / (usd / max(queries, 1))
        tags["cost_source"] = "fresh calls only" if api_counts.get("api_cached", 0) else "every call"
        return out, tags
    out["tokens_sent"] = tokens_sent
    if rerank_ms and latency_source in ("measured", "probe"):
        per_query = float(np.mean(list(rerank_ms.values()))) / 1e3
        out["device_s"] = per_query * queries
        out["device_s_per_1k_queries"] = per_query * 1000
        if per_query > 0:
            out[f"{gain}_per_device_s"] = delta / per_query
        tags["device_s_source"] = (
            "measured on every query" if latency_source == "measured" else "probe mean x queries"
        )
    return out, tags
