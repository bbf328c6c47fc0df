import math

import pytest
from conftest import TINY

from rerank_eval.errors import ConfigError, DataError
from rerank_eval.evaluation import evaluate, parse_metrics
from rerank_eval.retrievers.bm25 import BM25Retriever
from rerank_eval.retrievers.hybrid import HybridRetriever
from rerank_eval.retrievers.run_file import RunFileRetriever
from rerank_eval.types import Query, ScoredDoc


def lucene_bm25(corpus_tokens, query_tokens, k1, b):
    n = len(corpus_tokens)
    avgdl = sum(map(len, corpus_tokens)) / n
    out = []
    for doc in corpus_tokens:
        s = 0.0
        for t in set(query_tokens):
            df = sum(t in d for d in corpus_tokens)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = doc.count(t)
            s += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(s)
    return out


def test_bm25_scores_equal_the_lucene_formula(tiny):
    r = BM25Retriever(k1=1.2, b=0.75)
    r.index(tiny)
    docs = list(tiny.corpus())
    corpus_tokens = r._tok.tokenize(
        [d.full_text for d in docs], return_as="string", show_progress=False, update_vocab=False
    )
    q = Query("q1", "what do cats eat")
    expected = lucene_bm25(corpus_tokens, r.query_tokens([q])[0], 1.2, 0.75)
    got = {h.doc_id: h.score for h in r.retrieve([q], 5)["q1"]}
    for d, e in zip(docs, expected, strict=True):
        assert got[d.doc_id] == pytest.approx(e, rel=1e-5)
    assert [h.doc_id for h in r.retrieve([q], 2)["q1"]] == ["d4", "d1"]
    # unknown words score nothing; ties keep corpus order
    assert [h.doc_id for h in r.retrieve([Query("x", "zebra xylophone")], 3)["x"]] == ["d1", "d2", "d3"]


def test_rank_bm25_backend_agrees_on_order(tiny):
    a, b = BM25Retriever(backend="bm25s"), BM25Retriever(backend="rank_bm25")
    a.index(tiny)
    b.index(tiny)
    qs = tiny.queries()
    assert [h.doc_id for h in a.retrieve(qs, 2)["q1"]] == [h.doc_id for h in b.retrieve(qs, 2)["q1"]]
    with pytest.raises(ConfigError, match="backend must be bm25s or rank_bm25"):
        BM25Retriever(backend="lucene")


def test_bm25_on_scifact_lands_in_the_published_range(scifact):
    metrics = parse_metrics(["ndcg@10"])
    scores = {}
    for backend in ("bm25s", "rank_bm25"):
        r = BM25Retriever(backend=backend)
        r.index(scifact)
        scores[backend] = evaluate(scifact.qrels(), r.retrieve(scifact.queries(), 100), metrics)[
            "ndcg@10"
        ].mean()
    assert 0.665 <= scores["bm25s"] <= 0.679  # BEIR's published BM25 range on SciFact
    assert abs(scores["bm25s"] - scores["rank_bm25"]) <= 0.005


def test_run_replay_orders_by_score_then_rank(tiny):
    r = RunFileRetriever(path=str(TINY / "runs" / "demo.top100.trec"))
    r.index(tiny)
    got = r.retrieve(tiny.queries(), 2)
    assert got == {
        "q1": [ScoredDoc("d1", 3.0), ScoredDoc("d4", 2.0)],
        "q2": [ScoredDoc("d5", 1.5), ScoredDoc("d3", 1.0)],
    }
    shipped = RunFileRetriever(name="demo")
    shipped.index(tiny)
    assert shipped.retrieve(tiny.queries(), 5) == r.retrieve(tiny.queries(), 5)


def test_dl19_shipped_runs_reproduce_published_figures(dl19):
    metrics = parse_metrics(["ndcg@10"])
    for name, published in [("bm25", 0.5058), ("splade-pp-ed", 0.7308), ("distilbert-kd-tasb", 0.7210)]:
        r = RunFileRetriever(name=name)
        r.index(dl19)
        ndcg = evaluate(dl19.qrels(), r.retrieve(dl19.queries(), 100), metrics, 2)["ndcg@10"].mean()
        assert round(ndcg, 4) == published


@pytest.mark.parametrize(
    "lines, message",
    [
        ("q1 Q0 d1 1 3.0\n", r"expected 6 columns"),
        ("q1 Q0 d1 one 3.0 t\n", r"rank 'one' or score '3.0' is not a number"),
        ("q1 Q0 d1 1 3.0 t\nq1 Q0 d1 2 2.0 t\n", r"document d1 is listed twice for query q1"),
        ("q7 Q0 d1 1 3.0 t\n", r"names 1 queries that tiny lacks, e.g. \['q7'\]"),
        ("q1 Q0 d99 1 3.0 t\n", r"not in the tiny corpus, e.g. \['d99'\]"),
        ("", r"is empty"),
    ],
)
def test_bad_run_files(tiny, tmp_path, lines, message):
    path = tmp_path / "run.trec"
    path.write_text(lines)
    with pytest.raises(DataError, match=message):
        RunFileRetriever(path=str(path)).index(tiny)


def test_run_file_config_errors(tiny, tmp_path):
    with pytest.raises(ConfigError, match="needs retriever.name"):
        RunFileRetriever()
    with pytest.raises(ConfigError, match=r"choose retriever.name from \['demo'\]"):
        RunFileRetriever(name="bm42").index(tiny)
    with pytest.raises(DataError, match="does not exist; pass retriever.path"):
        RunFileRetriever(path=str(tmp_path / "nope.trec")).index(tiny)


class Fixed:
    """A first stage with a fixed ranking (a test double for the two inputs of the fusion under test)."""

    def __init__(self, name, ranking):
        self.name, self.ranking = name, ranking

    def index(self, dataset):
        pass

    def retrieve(self, queries, k):
        return {q.query_id: self.ranking[:k] for q in queries}


def test_hybrid_rrf_exact_scores():
    a = Fixed("a", [ScoredDoc("x", 9.0), ScoredDoc("y", 5.0), ScoredDoc("z", 1.0)])
    b = Fixed("b", [ScoredDoc("z", 0.9), ScoredDoc("x", 0.8)])
    h = HybridRetriever(a, b, method="rrf", params={"k": 60})
    got = h.retrieve([Query("q", "")], 3)["q"]
    expected = {"x": 1 / 61 + 1 / 62, "z": 1 / 63 + 1 / 61, "y": 1 / 62}
    assert [d.doc_id for d in got] == ["x", "z", "y"]
    for d in got:
        assert d.score == pytest.approx(expected[d.doc_id], rel=1e-6)
    with pytest.raises(ConfigError, match="unknown ranx fusion method 'borda2'"):
        HybridRetriever(a, b, method="borda2")


def test_dense_retriever_finds_the_matching_document(tiny):
    from rerank_eval.retrievers.dense import DenseRetriever

    r = DenseRetriever()
    r.index(tiny)
    got = r.retrieve([Query("q", "the stock market fell"), Query("w", "will it rain tomorrow")], 1)
    assert got["q"][0].doc_id == "d3" and got["w"][0].doc_id == "d5"
    # the corpus embeddings were cached: a second index reads them back
    r2 = DenseRetriever()
    r2.index(tiny)
    assert (r2._emb == r._emb).all()
