"""The comparison report: headroom, what the judgements can say, uncertainty, ties, truncation, cost, the depth
knee and per-query diffs. Exact values on tiny hand-made runs and qrels; the job-level figures re-computed from
the files a job wrote by an independent evaluator (ir_measures)."""

import json
import math
import shutil
import subprocess
import sys

import ir_measures
import numpy as np
import pandas as pd
import pytest
from conftest import CE_MODEL, ROOT, TINY

from rerank_eval import statistics as st
from rerank_eval.analysis import ceiling, judgements, ties, truncation
from rerank_eval.evaluation import parse_metrics
from rerank_eval.report import JobRecord, write_report
from rerank_eval.report.diff import changes, read_trec
from rerank_eval.report.tables import (
    between_frame,
    cost_table,
    knees,
    length_buckets,
    length_table,
    truncated_sibling,
)
from rerank_eval.types import Doc, ScoredDoc

NDCG10 = parse_metrics(["ndcg@10"])[0]
L3 = math.log2(3)
# q1 judges d4 (2), d1 (1), d2 (0); q2 judges d3 (1). d5, d6 are unjudged.
QRELS = {"q1": {"d4": 2, "d1": 1, "d2": 0}, "q2": {"d3": 1}}


def ranking(lists):
    return {q: [ScoredDoc(d, float(s)) for d, s in hits] for q, hits in lists.items()}


FIRST = ranking({"q1": [("d2", 3), ("d1", 2), ("d5", 1)], "q2": [("d6", 2), ("d3", 1)]})
RERANKED = ranking({"q1": [("d1", 3), ("d2", 2), ("d5", 1)], "q2": [("d6", 2), ("d3", 1)]})
IDEAL_Q1 = 2 + 1 / L3  # d4 (2) at rank 1, d1 (1) at rank 2: linear gain, as trec_eval


# -- statistics ---------------------------------------------------------------------------------------------------


def test_oracle_sorts_candidates_by_judgement_keeping_rank_order_among_equals():
    got = st.oracle(ranking({"q1": [("d2", 9), ("d1", 8), ("d5", 7), ("d4", 6)]}), QRELS)
    assert [h.doc_id for h in got["q1"]] == ["d4", "d1", "d2", "d5"]  # d2 (0) before d5 (unjudged)


def test_ceiling_headroom_and_loss_decomposition_by_hand():
    figures, frame = ceiling(QRELS, RERANKED, FIRST)
    # a query whose qrels hold no relevant document loses nothing to either cause (its ideal is 0, not 1)
    empty = ranking({"q3": [("d9", 1)]})
    with_empty, _ = ceiling({**QRELS, "q3": {"d9": 0}}, {**RERANKED, **empty}, {**FIRST, **empty})
    assert with_empty["loss_never_retrieved"] == pytest.approx(figures["loss_never_retrieved"] * 2 / 3)
    oracle = {"q1": 1 / IDEAL_Q1, "q2": 1.0}  # d4 never retrieved; d3 first
    first = {"q1": (1 / L3) / IDEAL_Q1, "q2": 1 / L3}
    reranked = {"q1": 1 / IDEAL_Q1, "q2": 1 / L3}
    mean = lambda d: (d["q1"] + d["q2"]) / 2  # noqa: E731
    assert frame["oracle.ndcg@10"].to_dict() == pytest.approx(oracle)
    assert figures["oracle_ndcg_at_10"] == pytest.approx(mean(oracle))
    assert figures["headroom_captured"] == pytest.approx(
        (mean(reranked) - mean(first)) / (mean(oracle) - mean(first))
    )
    assert figures["loss_never_retrieved"] == pytest.approx((1 - oracle["q1"]) / 2)
    assert figures["loss_misordered"] == pytest.approx((oracle["q2"] - reranked["q2"]) / 2)
    assert figures["first_stage_loss_misordered"] == pytest.approx(mean(oracle) - mean(first))
    # never retrieved + misordered + reranked = the ideal 1 for every query with a relevant document
    total = figures["loss_never_retrieved"] + figures["loss_misordered"] + mean(reranked)
    assert total == pytest.approx(1.0)


def test_condensed_ndcg_equals_ir_measures_judged_only_and_a_hand_value():
    run = ranking({"q1": [("d5", 3), ("d1", 2), ("d2", 1)], "q2": [("d6", 2), ("d3", 1)]})
    figures, frame = judgements(QRELS, run, FIRST)
    by_hand = {"q1": 1 / IDEAL_Q1, "q2": 1.0}  # d5 and d6 dropped: d1 and d3 move to rank 1
    assert frame["reranked.condensed_ndcg@10"].to_dict() == pytest.approx(by_hand)
    measure = ir_measures.parse_measure("nDCG(judged_only=True)@10")
    trec_run = {q: {h.doc_id: h.score for h in hits} for q, hits in run.items()}
    theirs = {m.query_id: m.value for m in ir_measures.iter_calc([measure], QRELS, trec_run)}
    assert frame["reranked.condensed_ndcg@10"].to_dict() == pytest.approx(theirs)
    assert figures["delta_condensed_ndcg_at_10"] == pytest.approx(
        np.mean(list(by_hand.values())) - figures["first_stage_condensed_ndcg_at_10"]
    )


def test_a_gain_that_sits_in_unjudged_documents_is_flagged():
    qrels = {"q": {"r": 1, "n1": 0, "n2": 0}}
    # a real gain among judged documents: r from rank 3 to 1, as many judged documents in both top 10s
    real, _ = judgements(qrels, ranking({"q": [("r", 3), ("n1", 2), ("n2", 1)]}),
                         ranking({"q": [("n1", 3), ("n2", 2), ("r", 1)]}))  # fmt: skip
    assert real["delta_condensed_ndcg_at_10"] == pytest.approx(1 - 0.5) and real["gain_in_unjudged"] == 0.0
    # the first stage had r under two unjudged documents; the reranked list puts r first but fills its top 10
    # with more unjudged ones: on full lists +0.5, on condensed lists (r first in both) 0, and judged@10 fell
    first = ranking({"q": [("u1", 4), ("u2", 3), ("r", 2), ("n1", 1)]})
    moved = ranking({"q": [("r", 4), ("u3", 3), ("u4", 2), ("u5", 1)]})
    f, frame = judgements(qrels, moved, first)
    assert frame.loc["q"].tolist() == pytest.approx([1.0, 1.0])
    assert f["delta_condensed_ndcg_at_10"] == pytest.approx(0.0) and f["gain_in_unjudged"] == 1.0
    # with a second query that gains for real, the condensed change has the same sign but under half the size
    qrels2 = {**qrels, "p": {"s": 1, "m1": 0, "m2": 0}}
    first_p = {**first, **ranking({"p": [("m1", 3), ("s", 2), ("m2", 1)]})}
    moved_p = {**moved, **ranking({"p": [("s", 3), ("m1", 2), ("m2", 1)]})}
    f, _ = judgements(qrels2, moved_p, first_p)
    full, condensed = (0.5 + 1 - 1 / L3) / 2, (0 + 1 - 1 / L3) / 2
    assert f["delta_condensed_ndcg_at_10"] == pytest.approx(condensed) and 0 < condensed < full / 2
    assert f["gain_in_unjudged"] == 1.0
    # the same lists without the drop in judged@10 (first stage as unjudged as the reranked list): no flag
    first2 = ranking({"q": [("u1", 5), ("u2", 4), ("r", 3), ("u6", 2), ("u7", 1)]})
    assert judgements(qrels, moved, first2)[0]["gain_in_unjudged"] == 0.0


def test_tie_rate_and_the_exact_range_of_ndcg_over_every_tie_order():
    run = ranking({"a": [("x", 3), ("y", 3), ("z", 2), ("w", 1)], "b": [("p", 5), ("q", 5), ("r", 5)]})
    assert st.tie_rate(run) == pytest.approx(3 / 5)  # 3 of 5 adjacent pairs tied
    tied = ranking({"q": [("b", 1.0), ("a", 1.0)]})
    low, high = st.tie_spread(tied, {"q": {"a": 1}}, NDCG10)
    assert (low, high) == pytest.approx((1 / L3, 1.0))  # a at rank 2 or at rank 1
    figures = ties({"q": {"a": 1}}, tied, "")
    assert figures["tie_rate"] == 1.0 and figures["tie_ndcg_at_10_max"] == pytest.approx(1.0)
    assert "tie_ndcg_at_10_min" not in ties(QRELS, FIRST, "")  # no ties, no spread
    # every order of a three-way tie among grades 2, 1, 0 (and an untied document above): brute force
    import itertools

    from rerank_eval.evaluation import evaluate

    qrels = {"q": {"a": 2, "b": 1, "c": 0, "top": 1}}
    three = ranking({"q": [("top", 9), ("c", 5), ("a", 5), ("b", 5)]})
    every = [
        evaluate(qrels, {"q": [three["q"][0], *order]}, [NDCG10])["ndcg@10"].mean()
        for order in itertools.permutations(three["q"][1:])
    ]
    assert st.tie_spread(three, qrels, NDCG10) == pytest.approx((min(every), max(every)))
    # a tie across the cutoff: rank 10 (not relevant) and rank 11 (relevant) share a score
    cut = ranking({"q": [(f"n{i}", 20 - i) for i in range(9)] + [("n9", 1.0), ("a", 1.0)]})
    low, high = st.tie_spread(cut, {"q": {"a": 1}}, NDCG10)
    assert (low, high) == pytest.approx((0.0, 1 / math.log2(11)))


def test_bootstrap_interval_effect_size_and_mde_exact_values():
    # means of 10 draws from five 0s and five 1s are Binomial(10, 1/2) / 10: P(<= 0.1) = 1.1%, P(<= 0.2) = 5.5%
    low, high = st.bootstrap_ci([0, 1] * 5, seed=7)
    assert (low, high) == (0.2, 0.8)
    assert st.bootstrap_ci([0.3] * 8) == pytest.approx((0.3, 0.3))
    assert st.effect_size([0.3, 0.5], [0.2, 0.2]) == pytest.approx(0.2 / math.sqrt(0.02))
    d = np.array([0.1, 0.2, 0.3, 0.4])
    # t quantiles with 3 degrees of freedom, from the tables: 3.18245 (0.975) and 0.97847 (0.80)
    want = (3.18245 + 0.97847) * d.std(ddof=1) / 2
    assert st.mde(d, np.zeros(4)) == pytest.approx(want, abs=1e-5)
    # the same seed gives the same interval, whatever else ran before; columns resampled together give each
    # column's own interval, bit for bit (a job's intervals equal the report's one metric at a time)
    assert st.bootstrap_ci(d, seed=3) == st.bootstrap_ci(d, seed=3)
    m = np.random.default_rng(5).normal(size=(30, 4))
    low, high = st.bootstrap_ci(m)
    assert [st.bootstrap_ci(m[:, j]) for j in range(4)] == list(zip(low, high, strict=True))


def test_mde_is_the_difference_found_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    sd, n = 0.2, 43
    x = rng.normal(size=n)
    m = st.mde((x - x.mean()) / x.std(ddof=1) * sd, np.zeros(n))  # differences whose spread is exactly sd
    from scipy import stats

    found = np.mean([stats.ttest_1samp(rng.normal(m, sd, n), 0).pvalue < 0.05 for _ in range(2000)])
    assert 0.75 < found < 0.85


def test_knee_is_the_smallest_depth_within_tolerance_with_confidence_not_by_its_mean():
    rng = np.random.default_rng(1)
    best = rng.uniform(0.3, 0.7, 40)
    depths = {10: best - 0.2, 20: best - 0.002, 50: best}
    k, rows = st.knee(depths, tolerance=0.01)
    assert k == 20 and [r["within"] for r in rows] == [0.0, 1.0, 1.0]
    assert rows[1]["ci_low"] == pytest.approx(-0.002) and rows[0]["delta"] == pytest.approx(-0.2)
    # a mean only 0.005 below, but so noisy that the interval reaches past -0.01: not a knee
    noisy = {10: best - 0.005 + rng.normal(0, 0.1, 40), 50: best}
    noisy[10] += -0.005 - (noisy[10] - best).mean()
    k, rows = st.knee(noisy, tolerance=0.01)
    assert rows[0]["delta"] == pytest.approx(-0.005) and rows[0]["ci_low"] < -0.01 and k == 50


# -- truncation ------------------------------------------------------------------------------------------------


def test_truncated_token_share_equals_the_tokenizers_own_longest_first_cut():
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    rr = CrossEncoderReranker(str(CE_MODEL), max_length=32)
    tok = rr.engine.tokenizer
    docs = {
        "short": Doc("short", "a cat sat"),
        "long": Doc("long", " ".join(f"word{i}" for i in range(60)), "Title"),
        "mid": Doc("mid", " ".join(["protein"] * 40)),
    }
    run = ranking({"q": [("long", 3), ("short", 2), ("mid", 1)], "p": [("mid", 2), ("short", 1)]})
    qrels = {"q": {"long": 1, "mid": 1}}
    # p's query is longer than half the budget: longest-first then cuts the query too, and the document less
    queries = {"q": "what do proteins do", "p": " ".join(f"term{i}" for i in range(14))}
    figures, frame = truncation(rr, None, queries, qrels, run, docs)
    full = kept = sent = 0
    for q, hits in run.items():
        for h in hits:
            enc = tok(queries[q], docs[h.doc_id].full_text, truncation="longest_first", max_length=32)
            second = sum(enc["token_type_ids"]) - 1  # the document's tokens, without its closing [SEP]
            n = len(tok(docs[h.doc_id].full_text, add_special_tokens=False)["input_ids"])
            full, kept, sent = full + n, kept + second, sent + len(enc["input_ids"])
    assert figures["truncated_token_share"] == pytest.approx((full - kept) / full)
    assert figures["truncated_token_share"] > 0.3
    assert frame.loc["q", "relevant_truncated"] == pytest.approx(1.0)  # long and mid are both cut at 32
    assert figures["tokens_sent"] == sent


# -- a job's figures, recomputed from its files -----------------------------------------------------------------


def test_a_jobs_figures_recompute_from_the_files_it_wrote(tmp_path):
    from test_trust import TINY_CE, job

    run = ["retriever=run", f"retriever.path={TINY / 'runs' / 'demo.top100.trec'}"]
    res = job(tmp_path / "j", *TINY_CE, *run, "candidates=3", "top_k=2")
    s = json.loads((tmp_path / "j" / "metrics.json").read_text())
    a = s["analysis"]
    tiny_qrels = {"q1": {"d4": 2, "d1": 1, "d2": 0}, "q2": {"d3": 1}}
    run = read_trec(tmp_path / "j" / "run.trec")
    trec = {q: {d: float(len(ids) - i) for i, d in enumerate(ids)} for q, ids in run.items()}
    condensed = ir_measures.calc_aggregate(
        [ir_measures.parse_measure("nDCG(judged_only=True)@10")], tiny_qrels, trec
    )
    assert a["condensed_ndcg_at_10"] == pytest.approx(next(iter(condensed.values())))
    oracle = {
        q: {d: float(max(tiny_qrels[q].get(d, 0), 0)) + 1e-3 * (len(ids) - i) for i, d in enumerate(ids)}
        for q, ids in run.items()
    }
    best = ir_measures.calc_aggregate([ir_measures.parse_measure("nDCG@10")], tiny_qrels, oracle)
    assert a["oracle_ndcg_at_10"] == pytest.approx(next(iter(best.values())))
    pq = pd.read_csv(tmp_path / "j" / "per_query.csv", index_col="query_id")
    low, high = st.bootstrap_ci(pq["reranked.ndcg@10"] - pq["first_stage.ndcg@10"])
    assert (a["delta_ndcg_at_10_ci_low"], a["delta_ndcg_at_10_ci_high"]) == pytest.approx((low, high))
    assert a["mde_ndcg_at_10"] == pytest.approx(st.mde(pq["reranked.ndcg@10"], pq["first_stage.ndcg@10"]))
    assert 0 <= a["truncated_token_share"] < 1 and "tie_rate" in a
    c = s["cost"]
    assert c["device_s"] == pytest.approx(pq["latency.reranker_ms"].sum() / 1e3)
    assert s["origin"]["device_s_source"] == "measured on every query"
    assert c["tokens_sent"] > 0 and res.counts["queries"] == 2
    # its diff page shows the query the reranker moved, with the query's text
    page = (tmp_path / "j" / "diff.html").read_text()
    pq_moved = (pq["reranked.ndcg@10"] - pq["first_stage.ndcg@10"]).abs()
    assert pq_moved.max() > 0 and f"data-query-id='{pq_moved.idxmax()}'" in page


def test_positives_only_qrels_report_no_condensed_figures(scifact, tmp_path):
    from test_trust import bm25_job

    res = bm25_job(scifact, tmp_path / "s", parse_metrics(["ndcg@10"]))
    s = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert "condensed_ndcg@10" in s["absent"] and "condensed_ndcg_at_10" not in s["analysis"]
    assert "oracle_ndcg_at_10" in s["analysis"] and res.metrics["ndcg@10"] > 0


# -- the report on fixed records ---------------------------------------------------------------------------------


def record(name, reranker, reranked, first, candidates=100, oracle=None, comparison=None, **kw):
    n = len(first)
    pq = pd.DataFrame(
        {"reranked.ndcg@10": reranked, "first_stage.ndcg@10": first},
        index=pd.Index([f"q{i}" for i in range(n)], name="query_id"),
    )
    if oracle is not None:
        pq["oracle.ndcg@10"] = oracle
    analysis = {}
    if oracle is not None:
        analysis = {
            "oracle_ndcg_at_10": float(np.mean(oracle)),
            "headroom_captured": st.headroom_captured(np.mean(reranked), np.mean(first), np.mean(oracle)),
            "loss_never_retrieved": float(1 - np.mean(oracle)),
            "loss_misordered": float(np.mean(oracle) - np.mean(reranked)),
            "first_stage_loss_misordered": float(np.mean(oracle) - np.mean(first)),
        }
    return JobRecord(
        name,
        "d",
        "bm25",
        reranker,
        candidates,
        10,
        {"ndcg@10": float(np.mean(reranked))},
        {"ndcg@10": float(np.mean(first))},
        {"reranker_ms_mean": 10.0},
        pq,
        comparison=comparison or name,
        latency_source="measured",
        analysis=analysis,
        **kw,
    )


def test_report_sections_on_fixed_records(tmp_path):
    rng = np.random.default_rng(2)
    first = rng.uniform(0.2, 0.6, 30)
    oracle = np.minimum(first + 0.3, 1.0)
    recs = []
    for depth, gain in ((10, 0.02), (20, 0.05), (50, 0.051)):
        recs.append(record(f"ce@{depth}", "ce", first + gain, first, depth, oracle, comparison=f"ce{depth}"))
    recs.append(record("bi@50", "bi", first + 0.01 + rng.normal(0, 0.01, 30), first, 50, oracle))
    paths = write_report(recs, tmp_path / "rep", "fixed", knee_tolerance=0.01, between=True)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert {p.name for p in paths} >= {"report.md", "depth.png", "latency.png"}
    # headroom: (0.05 - 0) / (mean oracle - mean first) at depth 20
    want = 0.05 / (oracle.mean() - first.mean())
    assert (
        f"| d | bm25 | ce | 20 | {first.mean():.4f} | {first.mean() + 0.05:.4f} | {oracle.mean():.4f} | {want:.0%}"
        in md
    )
    # the knee: 20 is 0.001 below the best (50) on every query, inside 0.01; 10 is 0.031 below
    assert "bm25 + ce: knee at depth **20**" in md
    found = knees(recs, 0.01)
    assert [k["knee"] for k in found if k["reranker"] == "ce"] == [20]
    # rerankers against each other: ce@50 and bi@50 share candidates; one comparison, Holm over one = raw p
    pairs = between_frame(recs)
    assert len(pairs) == 1 and pairs.iloc[0]["p (Holm)"] == pytest.approx(pairs.iloc[0]["p"])
    assert pairs.iloc[0]["delta"] == pytest.approx(
        0.051 - (recs[3].per_query["reranked.ndcg@10"] - first).mean()
    )
    assert "## Rerankers against each other" in md and "ce − bi" in md


def test_delta_by_document_length_buckets():
    first = np.array([0.5] * 8)
    reranked = first + np.array([0.1, 0.1, 0.0, 0.0, -0.1, -0.1, -0.2, -0.2])
    r = record("x", "ce", reranked, first)
    r.per_query["doc_tokens"] = [10, 20, 100, 110, 300, 310, 600, 620]
    r.per_query["relevant_truncated"] = [0, 0, 0, 0, 0, 0.5, 1, 1]
    b = length_buckets(r)
    assert b["queries"].tolist() == [2, 2, 2, 2]
    assert b["delta"].tolist() == pytest.approx([0.1, 0.0, -0.1, -0.2])
    assert b["tokens"].tolist() == ["10–20", "100–110", "300–310", "600–620"]
    assert b["truncated"].tolist() == pytest.approx([0, 0, 0.25, 1])


def test_passages_jobs_are_compared_with_the_same_reranker_under_truncation_by_length():
    first = np.array([0.5] * 8)
    truncate = record("t", "ce-len256", first + 0.1, first)
    gain = np.array([0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.4])
    maxp = record("p", "ce-len256-p128s32-max", first + 0.1 + gain, first)
    other = record("o", "bi", first, first, candidates=50)  # other candidates: no sibling
    for r in (truncate, maxp, other):
        r.per_query["doc_tokens"] = [10, 20, 100, 110, 300, 310, 600, 620]
        r.per_query["relevant_truncated"] = [0, 0, 0, 0, 0, 0.5, 1, 1]
    assert truncated_sibling(maxp, [truncate, maxp, other]) is truncate
    assert truncated_sibling(truncate, [truncate, maxp]) is None
    b = length_buckets(maxp, truncated=truncate)
    assert b["vs_truncated"].tolist() == pytest.approx([0.0, 0.05, 0.1, 0.3])
    table = length_table([truncate, maxp, other])
    assert table.splitlines()[0].endswith("| Δ nDCG@10 vs truncation |")
    assert "| d | bm25 | ce-len256-p128s32-max | 100 | 600–620 | 2 | +0.4000 | 100% | +0.3000 |" in table
    assert "| d | bm25 | ce-len256 | 100 | 600–620 | 2 | +0.1000 | 100% | n/a |" in table
    maxp.counts = {"pairs_scored": 2000.0, "pairs_cached": 500.0, "passages_per_doc": 3.125}
    assert "| d | bm25 | ce-len256-p128s32-max | 100 | n/a | n/a | 2,500 (3.12 passages/doc) |" in cost_table(
        [maxp]
    )


# -- per-query diffs -------------------------------------------------------------------------------------------


def test_changes_picks_the_queries_that_gained_and_lost_most_with_the_documents_that_moved():
    a = {"q1": ["d2", "d1", "d5"], "q2": ["d3", "d6"], "q3": ["d7"]}
    b = {"q1": ["d1", "d5", "d2"], "q2": ["d6", "d3"], "q3": ["d7"]}
    va = pd.Series({"q1": 0.2, "q2": 1.0, "q3": 0.5})
    vb = pd.Series({"q1": 0.4, "q2": 0.6, "q3": 0.5})
    found = changes(a, b, va, vb, QRELS, k=2)
    assert [i["query_id"] for i in found["gained"]] == ["q1"] and [i["query_id"] for i in found["lost"]] == [
        "q2"
    ]
    q1 = found["gained"][0]
    assert [m["doc_id"] for m in q1["entered"]] == ["d5"] and [m["doc_id"] for m in q1["left"]] == ["d2"]
    assert q1["entered"][0]["grade"] is None and q1["left"][0] == {"doc_id": "d2", "rank_a": 1, "rank_b": 3,
                                                                   "grade": 0}  # fmt: skip


def _two_jobs(tmp_path):
    from test_trust import TINY_CE, job

    run = ["retriever=run", f"retriever.path={TINY / 'runs' / 'demo.top100.trec'}", "candidates=3", "top_k=2"]
    job(tmp_path / "a", *TINY_CE[:3], *run, "reranker=none", "mlflow.enabled=false", "resume=false")
    job(tmp_path / "b", *TINY_CE, *run)
    return tmp_path / "a", tmp_path / "b"


def test_report_diff_command_writes_markdown_and_html(tmp_path):
    from rerank_eval.report import main

    a, b = _two_jobs(tmp_path)
    main(["--diff", str(a), str(b), "--out", str(tmp_path / "diff")])
    md = (tmp_path / "diff" / "diff.md").read_text()
    html = (tmp_path / "diff" / "diff.html").read_text()
    pa = pd.read_csv(a / "per_query.csv", index_col="query_id")["reranked.ndcg@10"]
    pb = pd.read_csv(b / "per_query.csv", index_col="query_id")["reranked.ndcg@10"]
    moved = (pb - pa).abs().idxmax()
    text = {"q1": "what do cats eat", "q2": "stock market news"}[moved]
    assert (pb - pa).abs().max() > 0 and text in md and text in html
    delta = (pb - pa).round(9)
    wtl = f"{(delta > 0).sum()}/{(delta == 0).sum()}/{(delta < 0).sum()}"
    opening = f"ndcg@10 {pa.mean():.4f} → {pb.mean():.4f} ({delta.mean():+.4f}) over {len(delta)} queries; "
    assert md.splitlines()[2].endswith(opening + f"wins/ties/losses {wtl}.")  # the summary opens the page
    assert "<p class='summary'>" in html and f"wins/ties/losses {wtl}" in html
    with pytest.raises(SystemExit) as e:
        main(["--diff", str(a), str(tmp_path / "nowhere/job")])
    assert e.value.code == 2


def test_a_tracked_job_holds_its_diff_page_and_figures_in_mlflow(tmp_path):
    import mlflow
    from test_trust import TINY_CE, job

    run = ["retriever=run", f"retriever.path={TINY / 'runs' / 'demo.top100.trec'}", "candidates=3", "top_k=2"]
    over = [o for o in TINY_CE if not o.startswith(("mlflow.enabled", "resume"))]
    res = job(tmp_path / "j", *over, *run, "mlflow.experiment=diffpage")
    client = mlflow.MlflowClient()
    assert {"diff.html", "diff.md", "per_query.csv"} <= {a.path for a in client.list_artifacts(res.run_id)}
    logged = client.get_run(res.run_id).data
    s = json.loads((tmp_path / "j" / "metrics.json").read_text())
    for key in ("oracle_ndcg_at_10", "mde_ndcg_at_10", "tie_rate", "truncated_token_share", "tokens_sent"):
        assert logged.metrics[key] == pytest.approx({**s["analysis"], **s["cost"]}[key])
    assert logged.tags["device_s_source"] == "measured on every query"


@pytest.mark.slow
def test_the_diff_page_opens_in_a_real_browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("needs Debian's chromium: apt-get install chromium (make test-all installs it)")
    a, b = _two_jobs(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "rerank_eval.report", "--diff", str(a), str(b), "--out", str(tmp_path / "d")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (tmp_path / "d" / "diff.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert '<section class="query" data-query-id=' in dom and (
        "what do cats eat" in dom or "stock market news" in dom
    )


def test_the_latency_column_names_its_device_and_never_mixes_two_silently():
    from rerank_eval.report.tables import comparison_frame, markdown_table

    first = np.array([0.4, 0.5, 0.6])
    cpu = {"latency_device": "AMD EPYC (2 threads)"}
    one = [record("a", "ce", first + 0.1, first, origin=cpu), record("b", "bi", first, first, origin=cpu)]
    table = markdown_table(comparison_frame(one))
    assert "Reranker latency measured on AMD EPYC (2 threads)." in table and "10.0 (" not in table
    gpu = record("c", "ce2", first + 0.2, first, origin={"latency_device": "cuda:NVIDIA H200"})
    table = markdown_table(comparison_frame([*one, gpu]))
    assert "| 10.0 (AMD EPYC (2 threads)) |" in table and "| 10.0 (cuda:NVIDIA H200) |" in table
    assert "comes from 2 devices" in table


def test_a_rewritten_report_is_whole_html_too_and_best_is_per_dataset(tmp_path):
    """report.html holds report.md's tables and plots; stale files of an earlier report are gone; the best
    configuration is named per dataset (figures on two datasets are not comparable)."""
    from dataclasses import replace

    first = [0.2, 0.4, 0.5, 0.1]
    recs = [
        record("d/ce", "ce", [0.5, 0.6, 0.5, 0.4], first),
        replace(record("e/bi", "bi", [0.9, 0.9, 0.9, 0.9], first), dataset="e"),
        replace(record("e/ce", "ce", [0.3, 0.4, 0.5, 0.2], first), dataset="e"),
    ]
    out = tmp_path / "rep"
    out.mkdir()
    (out / "depth.png").write_bytes(b"an earlier report's plot")
    (out / "notes.txt").write_text("not the report's")
    paths = write_report(recs, out, "two datasets")
    assert not (out / "depth.png").exists() and (out / "notes.txt").exists()
    md = (out / "report.md").read_text()
    assert "- d: ndcg@10 `d/ce` (0.5000)" in md and "- e: ndcg@10 `e/bi` (0.9000)" in md
    assert "Datasets: d, e. First stages: bm25. Rerankers: ce, bi." in md
    page = (out / "report.html").read_text()
    assert out / "report.html" in paths and page.startswith("<!doctype html>")
    assert (
        page.count("<table>") == sum(line.startswith("|---") for line in md.splitlines())
        and '<img src="bars.png"' in page
    )
    assert "<code>d/ce</code>" in page


def test_latest_parent_skips_a_failed_sweep_unless_asked(tmp_path):
    import mlflow

    from rerank_eval.report.records import latest_parents

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweeps")
    ok = client.create_run(exp, tags={"parent": "true"}, run_name="ok", start_time=1000)
    client.set_terminated(ok.info.run_id, "FINISHED")
    bad = client.create_run(exp, tags={"parent": "true"}, run_name="stopped", start_time=2000)
    client.set_terminated(bad.info.run_id, "FAILED")
    assert latest_parents("sweeps", 1, uri) == [ok.info.run_id]
    assert latest_parents("sweeps", 1, uri, include_failed=True) == [bad.info.run_id]


@pytest.mark.slow
def test_the_report_page_opens_in_a_real_browser_with_its_plots(tmp_path):
    """report.html, opened by headless Chromium from its folder: the tables render and every plot loads
    (a probe script added to a copy of the page counts the images the browser decoded)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("needs Debian's chromium: apt-get install chromium (make test-all installs it)")
    first = [0.2, 0.4, 0.5, 0.1]
    recs = [
        record("d/ce", "ce", [0.5, 0.6, 0.5, 0.4], first),
        record("d/bi", "bi", [0.3, 0.4, 0.6, 0.2], first),
    ]
    out = tmp_path / "rep"
    write_report(recs, out, "in a browser")
    page = (out / "report.html").read_text()
    images = page.count("<img ")
    probe = (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-decoded', "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length));</script>"
    )
    (out / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "probe.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert images >= 1 and f'data-decoded="{images}"' in dom
    assert dom.count("<table>") == page.count("<table>") >= 1 and "<code>d/ce</code>" in dom
