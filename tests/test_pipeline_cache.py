import multiprocessing as mp

import pytest

from rerank_eval.cache import ScoreCache
from rerank_eval.errors import ConfigError
from rerank_eval.pipeline import check_depths, run_pipeline
from rerank_eval.types import ScoredDoc


class Fixed:
    """First stage with a fixed ranking for every query."""

    name = "fixed"

    def __init__(self, doc_ids):
        self.doc_ids = doc_ids

    def index(self, dataset):
        pass

    def retrieve(self, queries, k):
        return {
            q.query_id: [ScoredDoc(d, float(10 - i)) for i, d in enumerate(self.doc_ids)][:k] for q in queries
        }


class Counting:
    """A reranker that scores by a table and counts the documents it was asked to score."""

    name = "counting"
    pointwise = True

    def __init__(self, table, identity="counting-v1"):
        self.table, self.identity, self.calls, self.scored = table, identity, 0, 0

    def score(self, query, docs):
        self.calls += 1
        self.scored += len(docs)
        return [self.table.get(d.doc_id, 0.0) for d in docs]


def test_rerank_sorts_ties_by_first_stage_rank_and_cuts(tiny):
    fs = Fixed(["d1", "d2", "d3", "d4", "d5"])
    rr = Counting({"d4": 5.0, "d2": 1.0, "d3": 1.0, "d5": 1.0})
    res = run_pipeline(tiny, fs, rr, candidates=4, top_k=2, progress=False)
    # d5 is beyond the candidate depth: never scored; d2/d3 tie and keep first-stage order
    assert [d.doc_id for d in res.reranked["q1"]] == ["d4", "d2", "d3", "d1"]
    assert [d.doc_id for d in res.final["q1"]] == ["d4", "d2"]
    assert [d.doc_id for d in res.first_stage["q1"]] == ["d1", "d2", "d3", "d4"]
    assert rr.scored == 8 and res.pairs_scored == 8 and res.pairs_cached == 0
    assert set(res.rerank_ms) == {"q1", "q2"} and all(v >= 0 for v in res.rerank_ms.values())


def test_no_reranker_keeps_the_first_stage(tiny):
    res = run_pipeline(tiny, Fixed(["d3", "d1"]), None, candidates=2, top_k=1, progress=False)
    assert res.reranked == res.first_stage and [d.doc_id for d in res.final["q2"]] == ["d3"]


def test_cache_serves_smaller_depths_and_reruns(tiny, tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    fs = Fixed(["d1", "d2", "d3", "d4", "d5"])
    rr = Counting({"d4": 5.0, "d1": 2.0})
    deep = run_pipeline(tiny, fs, rr, candidates=5, top_k=5, cache=cache, progress=False)
    assert rr.scored == 10 and deep.latency_source == "measured" and set(deep.rerank_ms) == {"q1", "q2"}
    for depth in (1, 2, 3, 4, 5):
        res = run_pipeline(
            tiny, fs, rr, candidates=depth, top_k=1, cache=cache, progress=False, latency_probe=0
        )
        assert res.pairs_scored == 0 and res.pairs_cached == 2 * depth
        assert res.reranked["q1"] == [d for d in deep.reranked["q1"] if d.doc_id in fs.doc_ids[:depth]]
        assert res.latency_source == "none" and res.rerank_ms == {}  # no cost replayed from the cache
    assert rr.scored == 10  # nothing scored twice
    # a cached job with a probe times fresh calls at its own depth: 2 queries x 3 documents, scores checked
    res = run_pipeline(tiny, fs, rr, candidates=3, top_k=1, cache=cache, progress=False, latency_probe=5)
    assert res.latency_source == "probe" and rr.scored == 16 and res.probe["probe_max_abs_diff"] == 0
    # another reranker identity misses
    other = Counting({"d4": 5.0}, identity="counting-v2")
    run_pipeline(tiny, fs, other, candidates=5, top_k=5, cache=cache, progress=False)
    assert other.scored == 10


def test_cache_keys_are_texts_not_ids(tmp_path):
    cache = ScoreCache(tmp_path / "c.sqlite")
    cache.put("m", "what do cats eat", ["cats eat fish", "dogs"], [0.5, 0.1])
    from rerank_eval.cache import text_key

    got = cache.get("m", "what do cats eat", ["cats eat fish", "unseen"])
    assert got == {text_key("cats eat fish"): 0.5}
    assert cache.get("m", "another query", ["cats eat fish"]) == {}
    assert cache.get("m2", "what do cats eat", ["cats eat fish"]) == {}
    off = ScoreCache(tmp_path / "off.sqlite", enabled=False)
    off.put("m", "q", ["d"], [1.0])
    assert off.get("m", "q", ["d"]) == {} and not (tmp_path / "off.sqlite").exists()


def _writer(path, worker, n):
    cache = ScoreCache(path)
    for i in range(n):
        cache.put("m", f"q{worker}", [f"doc {worker} {i} {j}" for j in range(20)], [float(i)] * 20)
    cache.close()


def test_parallel_writers(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 30)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = ScoreCache(path)
    assert cache.count("m") == 3 * 30 * 20
    assert cache._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(
    "candidates, top_k, message",
    [
        (5, 10, r"top_k \(10\) is larger than candidates \(5\)"),
        (0, 0, "candidates must be a positive integer, got 0"),
        (-3, 1, "candidates must be a positive integer, got -3"),
        (10, 2.5, "top_k must be a positive integer, got 2.5"),
    ],
)
def test_depth_checks(candidates, top_k, message):
    with pytest.raises(ConfigError, match=message):
        check_depths(candidates, top_k)


def test_a_failed_latency_probe_loses_only_the_timing(tiny, tmp_path):
    from rerank_eval.rerankers.api import RerankerCallError

    class Flaky(Counting):
        def score(self, query, docs):
            if self.calls >= 2:  # the two scoring calls work; the probe's calls fail
                raise RerankerCallError("service down")
            return super().score(query, docs)

    cache = ScoreCache(tmp_path / "scores.sqlite")
    fs = Fixed(["d1", "d2", "d3", "d4", "d5"])
    rr = Flaky({"d4": 5.0, "d1": 2.0})
    run_pipeline(tiny, fs, rr, candidates=3, top_k=1, cache=cache, progress=False)
    res = run_pipeline(tiny, fs, rr, candidates=2, top_k=1, cache=cache, progress=False, latency_probe=2)
    assert res.latency_source == "none" and res.rerank_ms == {} and not res.failed
    assert [d.doc_id for d in res.final["q1"]] == ["d1"]
