import numpy as np
import pytest
from scipy import stats

from rerank_eval.errors import ConfigError
from rerank_eval.evaluation import evaluate, judged_at, metric_key, paired_test, parse_metrics
from rerank_eval.ranking import top_k
from rerank_eval.types import ScoredDoc


def ids(hits):
    return [h.doc_id for h in hits]


def test_top_k_breaks_ties_by_input_order():
    docs = ["a", "b", "c", "d", "e"]
    assert ids(top_k(docs, [1.0, 3.0, 3.0, 0.5, 3.0])) == ["b", "c", "e", "a", "d"]
    assert ids(top_k(docs, [1.0, 3.0, 3.0, 0.5, 3.0], 2)) == ["b", "c"]
    # a tie straddling the cut keeps the earlier document
    assert ids(top_k(docs, [2.0, 1.0, 1.0, 1.0, 0.0], 2)) == ["a", "b"]
    assert ids(top_k(docs, [0.0] * 5, 3)) == ["a", "b", "c"]
    assert top_k(docs, [1, 2, 3, 4, 5], 0) == []


def test_top_k_keeps_fp32_scores():
    hits = top_k(["a", "b"], np.array([0.1, 1 / 3], dtype=np.float64))
    assert hits == [ScoredDoc("b", float(np.float32(1 / 3))), ScoredDoc("a", float(np.float32(0.1)))]


def R(*doc_ids):
    return [ScoredDoc(d, float(len(doc_ids) - i)) for i, d in enumerate(doc_ids)]


QRELS = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"x": 1}}


def test_metrics_exact_values():
    ranking = {"q1": R("c", "b", "a", "z"), "q2": R("y", "x")}
    m = parse_metrics(["ndcg@3", "mrr@10", "recall@2", "map@10", "judged@2", "precision@2"])
    frame = evaluate(QRELS, ranking, m, relevance_level=1)
    # q1: gains 0,1,2 at ranks 1..3; DCG = 1/log2(3) + 2/log2(4); IDCG = 2 + 1/log2(3)
    dcg = 1 / np.log2(3) + 2 / 2
    idcg = 2 + 1 / np.log2(3)
    assert frame.loc["q1", "ndcg@3"] == pytest.approx(dcg / idcg)
    assert frame.loc["q1", "mrr@10"] == pytest.approx(1 / 2)
    assert frame.loc["q1", "recall@2"] == pytest.approx(1 / 2)
    assert frame.loc["q1", "map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert frame.loc["q1", "judged@2"] == pytest.approx(1.0)
    assert frame.loc["q2", "judged@2"] == pytest.approx(0.5)
    assert frame.loc["q2", "ndcg@3"] == pytest.approx(1 / np.log2(3))
    assert frame.loc["q2", "precision@2"] == pytest.approx(0.5)


def test_relevance_level_applies_to_binary_metrics_only():
    ranking = {"q1": R("b", "a"), "q2": R("x")}
    m = parse_metrics(["ndcg@2", "mrr@10", "recall@1"])
    lvl1 = evaluate(QRELS, ranking, m, relevance_level=1)
    lvl2 = evaluate(QRELS, ranking, m, relevance_level=2)
    assert lvl1.loc["q1", "mrr@10"] == 1.0 and lvl2.loc["q1", "mrr@10"] == 0.5  # b (grade 1) no longer counts
    assert lvl1.loc["q1", "recall@1"] == 0.5 and lvl2.loc["q1", "recall@1"] == 0.0
    assert lvl1.loc["q1", "ndcg@2"] == lvl2.loc["q1", "ndcg@2"]


def test_missing_and_unjudged_queries():
    # q2 missing from the run scores 0 and stays in the mean; q9 (unjudged) is ignored
    frame = evaluate(QRELS, {"q1": R("a"), "q9": R("a")}, parse_metrics(["mrr@10"]))
    assert list(frame.index) == ["q1", "q2"]
    assert frame["mrr@10"].tolist() == [1.0, 0.0]
    empty = evaluate(QRELS, {}, parse_metrics(["ndcg@10", "judged@5"]))
    assert empty.to_numpy().sum() == 0 and empty.shape == (2, 2)


def test_judged_at():
    assert judged_at(QRELS, {"q1": R("a", "z", "c", "y")}, 4) == {"q1": 0.5, "q2": 0.0}


def test_parse_metrics_and_keys():
    m = parse_metrics(["NDCG@10", "ndcg@10", "map"])
    assert [x.name for x in m] == ["ndcg@10", "map"]
    assert m[0].key == "ndcg_at_10" and metric_key("recall@100") == "recall_at_100"
    assert parse_metrics(["map@100"])[0].ranx(2) == "map@100-l2"
    assert parse_metrics(["ndcg@10"])[0].ranx(2) == "ndcg@10"
    for bad, msg in [
        ("ndgc@10", "unknown metric 'ndgc@10'"),
        ("ndcg@0", "cutoff must be positive"),
        ("judged", "judged needs a cutoff"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_metrics([bad])
    with pytest.raises(ConfigError, match="no metrics configured"):
        parse_metrics([])


def test_paired_tests_exact_values():
    a = [0.9, 0.5, 0.7, 0.3, 0.8, 0.6]
    b = [0.6, 0.5, 0.4, 0.2, 0.7, 0.1]
    # by hand: differences 0.3 0 0.3 0.1 0.1 0.5, mean 0.21667, sd 0.18348, t = 2.8925 on 5 degrees of freedom
    t = (1.3 / 6) / (
        np.sqrt(((np.array([0.3, 0, 0.3, 0.1, 0.1, 0.5]) - 1.3 / 6) ** 2).sum() / 5) / np.sqrt(6)
    )
    assert t == pytest.approx(2.8925, abs=1e-4)
    assert paired_test(a, b, "student") == pytest.approx(2 * stats.t.sf(t, 5))
    assert paired_test(a, b, "student") == pytest.approx(0.03401, abs=1e-4)
    # randomization test: with 5 non-zero differences all positive, exact two-sided p over 2^6 sign flips
    diffs = np.array(a) - np.array(b)
    flips = np.array(np.meshgrid(*[[1, -1]] * 6)).reshape(6, -1).T
    exact = np.mean(np.abs((flips * diffs).mean(1)) >= abs(diffs.mean()) - 1e-12)
    assert paired_test(a, b, "fisher", n_resamples=10**6) == pytest.approx(exact)
    assert paired_test(a, a) == 1.0
    with pytest.raises(ConfigError, match="unknown significance test"):
        paired_test(a, b, "wilcoxon")
