"""Scale's building blocks on small corpora: the on-disk document store against the records it replaces, and the
persisted, memory-mapped BM25 index against a fresh one (the large sizes are `make scale`'s)."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest import TINY

from rerank_eval.datasets import BeirDirDataset
from rerank_eval.docstore import DocStore
from rerank_eval.errors import ConfigError, DataError
from rerank_eval.retrievers.bm25 import BM25Retriever
from rerank_eval.types import Doc


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(tmp_path / "cache"))


def records(folder):
    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    return [Doc(str(r["_id"]), str(r["text"] or ""), str(r.get("title") or "")) for r in rows]


def copy_of(tmp_path, extra=""):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    if extra:
        with (folder / "corpus.jsonl").open("a") as f:
            f.write(extra)
    return folder


def test_the_store_holds_the_same_records_in_the_files_order(tmp_path):
    ds = BeirDirDataset(copy_of(tmp_path), name="tiny")
    want = records(ds.path)
    assert list(ds.corpus()) == want and len(ds.corpus()) == len(want)
    assert ds.docs([want[2].doc_id, want[0].doc_id]) == {d.doc_id: d for d in (want[2], want[0])}
    with pytest.raises(DataError, match=r"1 document id\(s\) are not in the tiny corpus, e.g. \['nope'\]"):
        ds.docs([want[0].doc_id, "nope"])
    stores = list((tmp_path / "cache" / "docstore").glob("*.sqlite"))
    assert len(stores) == 1 and stores[0].name.startswith(ds.corpus_fingerprint)


def test_a_second_process_opens_the_store_without_reading_the_corpus(tmp_path):
    folder = copy_of(tmp_path)
    ds = BeirDirDataset(folder, name="tiny")
    root, fingerprint = tmp_path / "cache" / "docstore", ds.corpus_fingerprint
    first = DocStore.open_or_build(
        ds._corpus_file,
        fingerprint,
        root,
        iter(json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()),
    )

    def unread():
        raise AssertionError("the corpus was read again")
        yield

    again = DocStore.open_or_build(ds._corpus_file, fingerprint, root, unread())
    assert list(again) == list(first) == records(folder)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no completion record"])
def test_a_damaged_store_is_rebuilt(tmp_path, damage):
    import sqlite3

    folder = copy_of(tmp_path)
    BeirDirDataset(folder, name="tiny").docs([records(folder)[0].doc_id])
    path = next((tmp_path / "cache" / "docstore").glob("*.sqlite"))
    if damage == "garbage":
        path.write_bytes(b"not a database" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1024])
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM meta")
    import rerank_eval.datasets as datasets

    datasets._STORES.clear()  # a new process
    assert list(BeirDirDataset(folder, name="tiny").corpus()) == records(folder)


def test_duplicate_ids_and_an_empty_corpus_are_refused_and_leave_no_store(tmp_path):
    first = records(TINY)[0]
    folder = copy_of(tmp_path, json.dumps({"_id": first.doc_id, "text": "again"}) + "\n")
    with pytest.raises(DataError, match=f"document id '{first.doc_id}' appears twice"):
        BeirDirDataset(folder, name="tiny").corpus()
    assert not list((tmp_path / "cache" / "docstore").glob("*"))  # nothing half-written that looks complete


def bm25_run(dataset, **kwargs):
    r = BM25Retriever(**kwargs)
    r.index(dataset)
    return r, r.retrieve(dataset.queries(), 100)


def test_a_persisted_bm25_index_ranks_as_a_fresh_one_and_is_rebuilt_when_anything_changes(
    scifact, tmp_path, monkeypatch
):
    import bm25s

    import rerank_eval.retrievers.bm25 as bm25

    monkeypatch.setattr(bm25, "_CHUNK", 1000)  # built from six chunks of tokens
    built, fresh = bm25_run(scifact)
    loaded, again = bm25_run(scifact)  # another job: the saved index, memory-mapped
    assert isinstance(loaded._index.scores["data"], np.memmap) and not isinstance(
        built._index.scores["data"], np.memmap
    )
    assert again == fresh
    # the index as the seed built it (string tokens, in memory) ranks the same
    tok = built._tokenizer()
    reference = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    reference.index(
        tok.tokenize([d.full_text for d in scifact.corpus()], return_as="string", show_progress=False),
        show_progress=False,
    )
    q = scifact.queries()[0]
    want = reference.get_scores(built.query_tokens([q])[0])
    np.testing.assert_array_equal(loaded._index.get_scores(built.query_tokens([q])[0]), want)
    folders = lambda: sorted(p.name for p in (tmp_path / "cache" / "bm25").iterdir())  # noqa: E731
    assert len(folders()) == 1
    bm25_run(scifact, k1=1.2)  # a setting
    tiny = BeirDirDataset(copy_of(tmp_path), name="tiny")
    bm25_run(tiny)
    grown = BeirDirDataset(
        copy_of(tmp_path / "g", json.dumps({"_id": "new", "text": "cats"}) + "\n"), name="tiny"
    )
    bm25_run(grown)  # the corpus
    monkeypatch.setattr(bm25, "scoring_code", lambda *modules: "edited")
    bm25_run(tiny)  # the retriever's code
    assert len(folders()) == 5


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_the_bounded_memory_build_scores_exactly_as_bm25s_own_index(scifact, tmp_path, monkeypatch, method):
    """Chunked term counts scored with bm25s's functions give bm25s.BM25.index's scores, bit for bit, for every
    scoring variant; an empty document and a stop-words-only one are in the corpus, a stop-words-only query among
    the queries."""
    import bm25s

    import rerank_eval.retrievers.bm25 as bm25
    from rerank_eval.types import Query

    monkeypatch.setattr(bm25, "_CHUNK", 700)  # chunks whose vocabularies grow as they come
    folder = copy_of(tmp_path)
    docs = records(folder) + list(scifact.corpus())[:2000] + [Doc("empty", ""), Doc("stop", "the and of it")]
    with (folder / "corpus.jsonl").open("w") as f:
        for d in docs:
            f.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
    ds = BeirDirDataset(folder, name="sample")
    ours = BM25Retriever(method=method)
    ours.index(ds)
    tok = ours._tokenizer()
    reference = bm25s.BM25(k1=0.9, b=0.4, method=method)
    reference.index(
        tok.tokenize([d.full_text for d in ds.corpus()], return_as="string", show_progress=False),
        show_progress=False,
    )
    queries = list(scifact.queries())[:60] + [Query("stop", "it is the")]
    for q, toks in zip(queries, ours.query_tokens(queries), strict=True):
        np.testing.assert_array_equal(
            ours._index.get_scores(toks), reference.get_scores(toks), err_msg=q.text
        )
    assert [d.doc_id for d in ours.retrieve([queries[-1]], 3)["stop"]] == ours._ids[
        :3
    ]  # no term: corpus order


def test_reranking_batched_across_queries_equals_reranking_query_by_query(scifact):
    """query_batch puts several queries' pairs in one call: the same scores and lists as one call a query (the
    engine is batch invariant), no latency claimed from the batched calls (the probe times them), the rate kept."""
    from conftest import CE_MODEL

    from rerank_eval.pipeline import run_pipeline
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    ce = CrossEncoderReranker(str(CE_MODEL), max_length=128)
    bm25 = BM25Retriever()
    queries = scifact.queries()[:9]
    one = run_pipeline(scifact, bm25, ce, 12, 5, queries=queries, progress=False)
    four = run_pipeline(
        scifact, bm25, ce, 12, 5, queries=queries, progress=False, query_batch=4, latency_probe=2
    )
    assert four.reranked == one.reranked and four.pairs_scored == one.pairs_scored == 9 * 12
    assert one.latency_source == "measured" and len(one.rerank_ms) == 9
    assert (
        four.latency_source == "probe" and len(four.rerank_ms) == 2 and four.probe["probe_max_abs_diff"] == 0
    )
    assert four.rerank_s > 0


def test_a_failed_batched_call_fails_every_query_in_it(scifact):
    from rerank_eval.pipeline import run_pipeline
    from rerank_eval.rerankers.api import RerankerCallError

    class Flaky:  # scores by text length; its second batch fails
        name, identity, pointwise, calls = "flaky", "flaky", True, 0

        def score(self, query, docs):
            return [float(len(d.full_text)) for d in docs]

        def score_many(self, items):
            self.calls += 1
            if self.calls == 2:
                raise RerankerCallError("flaky: 503 after retries")
            return [self.score(q, docs) for q, docs in items]

    queries = scifact.queries()[:6]
    res = run_pipeline(
        scifact,
        BM25Retriever(),
        Flaky(),
        3,
        2,
        queries=queries,
        progress=False,
        on_failure="zero",
        query_batch=2,
    )
    lost = {q.query_id for q in queries[2:4]}
    assert set(res.failed) == lost and all(res.reranked[q] == [] for q in lost)
    assert all(res.reranked[q.query_id] for q in queries if q.query_id not in lost)


def dense_corpus(tmp_path, copies=3):
    """tiny's documents, then the same texts again under new ids: equal vectors, so ties across search chunks."""
    folder = copy_of(tmp_path)
    docs = records(folder)
    with (folder / "corpus.jsonl").open("a") as f:
        for c in range(1, copies):
            for d in docs:
                f.write(json.dumps({"_id": f"{d.doc_id}-{c}", "title": d.title, "text": d.text}) + "\n")
    return BeirDirDataset(folder, name="tiny")


def test_dense_search_in_chunks_is_the_exact_search_and_the_vectors_are_memory_mapped(tmp_path, monkeypatch):
    import rerank_eval.retrievers.dense as dense
    from rerank_eval.types import Query

    ds = dense_corpus(tmp_path)
    r = dense.DenseRetriever()
    r.index(ds)
    assert isinstance(r._emb, np.memmap) and r._emb.dtype == np.float32
    queries = [Query("a", "cats"), Query("b", "will it rain tomorrow"), Query("c", "stock market")]
    emb = np.array(r._emb, dtype=np.float64)
    q = r.encoder.encode([x.text for x in queries]).astype(np.float64)
    # the expectation, independent of any product the code makes: exactly rounded sums, corpus order for ties
    exact = {x.query_id: [math.fsum(v * row) for row in emb] for x, v in zip(queries, q, strict=True)}
    monkeypatch.setattr(dense, "SEARCH_ROWS", 4)  # chunk edges fall between equal vectors
    got = r.retrieve(queries, 7)
    for x in queries:
        want = sorted(range(len(emb)), key=lambda i: (-exact[x.query_id][i], i))[:7]
        assert [d.doc_id for d in got[x.query_id]] == [r._ids[i] for i in want]
        np.testing.assert_allclose(
            [d.score for d in got[x.query_id]], [exact[x.query_id][i] for i in want], atol=1e-6
        )
    scores = {d.doc_id: d.score for d in got["a"]}
    assert scores["d1"] == scores["d1-1"] == scores["d1-2"]  # equal vectors score equal, bit for bit
    ids = [d.doc_id for d in got["a"]]
    assert ids.index("d1") < ids.index("d1-1") < ids.index("d1-2")  # ties in corpus order, across chunks
    monkeypatch.setattr(dense, "SEARCH_ROWS", 262_144)
    assert {x.query_id: r.retrieve([x], 7)[x.query_id] for x in queries} == got  # one a call = all at once


def test_an_interrupted_dense_build_resumes_from_its_saved_chunks(tmp_path, monkeypatch):
    import rerank_eval.retrievers.dense as dense

    ds = dense_corpus(tmp_path)
    monkeypatch.setattr(dense, "ENCODE_CHUNK", 4)
    r = dense.DenseRetriever()
    real, calls = r.encoder.encode, []

    def dies_on_the_third_chunk(texts, progress=False):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(texts, progress)

    monkeypatch.setattr(r.encoder, "encode", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        r.index(ds)
    assert not list((tmp_path / "cache" / "dense").glob("*/ids.json"))  # nothing that looks complete
    calls.clear()
    monkeypatch.setattr(
        r.encoder, "encode", lambda texts, progress=False: calls.append(len(texts)) or real(texts)
    )
    r.index(ds)
    n = len(r._ids)
    assert calls == [4] * (n // 4 - 2) + (
        [n % 4] if n % 4 else []
    )  # the two saved chunks were not encoded again
    monkeypatch.setattr(r.encoder, "encode", real)
    fresh = dense.DenseRetriever(storage="fp32")
    shutil.rmtree(tmp_path / "cache" / "dense")
    fresh.index(ds)
    np.testing.assert_array_equal(np.array(fresh._emb), np.array(r._emb))
    half = dense.DenseRetriever(storage="fp16")
    half.index(ds)
    assert half._emb.dtype == np.float16 and half.name.endswith("-fp16store")
    assert (
        half.identity(ds) != fresh.identity(ds) and len(list((tmp_path / "cache" / "dense").iterdir())) == 2
    )
    np.testing.assert_allclose(np.array(half._emb, dtype=np.float32), np.array(fresh._emb), atol=1e-3)


def test_dense_encoding_in_shards_joins_into_the_one_pass_vectors(tmp_path, monkeypatch):
    import rerank_eval.retrievers.dense as dense
    from rerank_eval.shard import run_shard

    ds = dense_corpus(tmp_path)
    monkeypatch.setattr(dense, "ENCODE_CHUNK", 4)
    r = dense.DenseRetriever()
    saved = [run_shard(ds, r, "encode", i, 3, 10, tmp_path) for i in range(3)]
    n_chunks = -(-len(list(ds.corpus())) // 4)
    assert sum(saved) == n_chunks and min(saved) >= 1
    real, calls = r.encoder.encode, []
    monkeypatch.setattr(
        r.encoder, "encode", lambda texts, progress=False: calls.append(len(texts)) or real(texts)
    )
    r.index(ds)
    assert calls == []  # every chunk came from a shard: only joined
    monkeypatch.setattr(r.encoder, "encode", real)
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(tmp_path / "other"))
    one = dense.DenseRetriever()
    one.index(ds)
    np.testing.assert_array_equal(np.array(one._emb), np.array(r._emb))
    assert one._ids == r._ids
    with pytest.raises(ConfigError, match="builds its index in one process"):
        run_shard(ds, BM25Retriever(), "encode", 0, 2, 10, tmp_path)


def test_retrieval_in_shards_merges_into_the_run_one_pass_writes(scifact, tmp_path):
    from rerank_eval.job import write_trec
    from rerank_eval.retrievers.run_file import RunFileRetriever
    from rerank_eval.shard import run_shard

    bm25 = BM25Retriever()
    out = tmp_path / "shards"
    run_shard(scifact, bm25, "retrieve", 0, 3, 20, out)
    with pytest.raises(
        DataError, match=r"shards \[1, 2\] of 3 have no run file .* in .*\(stage=retrieve shard=1 shards=3\)"
    ):
        run_shard(scifact, bm25, "merge", 0, 3, 20, out)
    for i in (1, 2):
        run_shard(scifact, bm25, "retrieve", i, 3, 20, out)
    merged = run_shard(scifact, bm25, "merge", 0, 3, 20, out)
    with pytest.raises(DataError, match=r"shards \[0, 1, 2\] of 3"):  # other settings: none of these shards
        run_shard(scifact, bm25, "merge", 0, 3, 10, out)
    one = bm25.retrieve(scifact.queries(), 20)
    write_trec(one, tmp_path / "one.trec", bm25.name, raw_scores=True)
    assert merged.read_bytes() == (tmp_path / "one.trec").read_bytes()
    replay = RunFileRetriever(path=str(merged))
    replay.index(scifact)
    assert replay.retrieve(scifact.queries(), 20) == one  # the same lists, the same fp32 scores


def test_bm25_scores_many_queries_on_threads_with_the_lists_each_gets_alone(tmp_path, monkeypatch):
    import threading

    import rerank_eval.retrievers.bm25 as bm25
    from rerank_eval.types import Query

    ds = dense_corpus(tmp_path)  # every text three times: ties
    r = BM25Retriever()
    r.index(ds)
    queries = [Query("a", "cats"), Query("b", "rain tomorrow"), Query("c", "the of and"), Query("d", "stock")]
    alone = {q.query_id: r.retrieve([q], 7)[q.query_id] for q in queries}
    threads, real = [], bm25.top_k
    monkeypatch.setattr(bm25, "top_k", lambda *a: threads.append(threading.get_ident()) or real(*a))
    monkeypatch.setattr(bm25.os, "cpu_count", lambda: 4)
    assert r.retrieve(queries, 7) == alone
    assert len(threads) == 4 and threading.get_ident() not in threads  # scored on the pool
    ids = [d.doc_id for d in alone["a"]]
    assert ids.index("d1") < ids.index("d1-1") < ids.index("d1-2")  # ties in corpus order
    assert [d.score for d in alone["c"]] == [0.0] * 7  # only stop words: nothing matches


def test_hnsw_search_is_named_built_once_and_scores_its_candidates_exactly(tmp_path, monkeypatch):
    import sys

    import faiss

    import rerank_eval.retrievers.dense as dense
    from rerank_eval.types import Query

    ds = dense_corpus(tmp_path)
    exact = dense.DenseRetriever()
    exact.index(ds)
    approx = dense.DenseRetriever(search="hnsw", hnsw_m=4, ef_search=64)
    approx.index(ds)
    assert approx.name.endswith("-hnsw4-efc200-ef64") and "hnsw=(4, 200, 64)" in approx.identity(ds)
    assert exact.identity(ds) == approx._vectors()  # the same saved vectors, one folder
    (folder,) = (tmp_path / "cache" / "dense").iterdir()
    (graph,) = folder.glob("*.faiss")
    assert graph.name == f"hnsw-m4-efc200-faiss{faiss.__version__}-1thread.faiss"
    first = graph.read_bytes()
    graph.unlink()  # built again: single-threaded, so the same graph, byte for byte
    dense.DenseRetriever(search="hnsw", hnsw_m=4, ef_search=64).index(ds)
    assert graph.read_bytes() == first
    queries = [Query("a", "cats"), Query("b", "will it rain tomorrow"), Query("c", "stock market")]
    want, got = exact.retrieve(queries, 7), approx.retrieve(queries, 7)
    for q in want:  # a tiny corpus: the graph finds every neighbour; scores the exact inner products
        assert [d.doc_id for d in got[q]] == [d.doc_id for d in want[q]]
        np.testing.assert_allclose([d.score for d in got[q]], [d.score for d in want[q]], rtol=1e-6)
    ids = [d.doc_id for d in got["a"]]
    assert ids.index("d1") < ids.index("d1-1") < ids.index("d1-2")  # ties in corpus order
    monkeypatch.setattr(faiss, "IndexHNSWFlat", None)  # a second job reads the saved graph
    again = dense.DenseRetriever(search="hnsw", hnsw_m=4, ef_search=64)
    again.index(ds)
    assert again.retrieve(queries, 7) == got
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"needs FAISS: pip install faiss-cpu .* or use search=exact"):
        dense.DenseRetriever(search="hnsw")
    with pytest.raises(ConfigError, match="retriever.search must be exact or hnsw"):
        dense.DenseRetriever(search="ivf")


def test_sharded_dense_and_hybrid_first_stages_equal_the_in_job_ones_byte_for_byte(tmp_path):
    """A shard retrieves all of its queries in one call; a job retrieves one query a call: the lists, scores and
    files are the same (dense scores are row-wise, never a BLAS product over a batch of queries). A hybrid's
    fusion settings are part of its identity, so two settings never share a shard file."""
    from rerank_eval.job import write_trec
    from rerank_eval.retrievers.dense import DenseRetriever
    from rerank_eval.retrievers.hybrid import HybridRetriever
    from rerank_eval.shard import run_name, run_shard

    ds = dense_corpus(tmp_path)
    queries = ds.queries()
    hybrid = HybridRetriever(
        BM25Retriever(), DenseRetriever(), method="wsum", norm="min-max", params={"weights": [0.3, 0.7]}
    )
    for stage in (DenseRetriever(), hybrid):
        out = tmp_path / stage.name
        for i in (0, 1):
            run_shard(ds, stage, "retrieve", i, 2, 7, out)
        merged = run_shard(ds, stage, "merge", 0, 2, 7, out)
        alone = {q.query_id: stage.retrieve([q], 7)[q.query_id] for q in queries}  # as a job asks: one a call
        write_trec(alone, tmp_path / "alone.trec", stage.name, raw_scores=True)
        assert merged.read_bytes() == (tmp_path / "alone.trec").read_bytes(), stage.name
    other = HybridRetriever(
        BM25Retriever(),
        DenseRetriever(),
        method="wsum",
        norm="zmuv",
        params={"weights": [0.9, 0.1]},
        depth=50,
    )
    for changed in (
        other,
        HybridRetriever(
            BM25Retriever(),
            DenseRetriever(),
            method="wsum",
            norm="min-max",
            params={"weights": [0.3, 0.7]},
            depth=50,
        ),
    ):
        assert changed.name == hybrid.name and changed.identity(ds) != hybrid.identity(ds)
        assert run_name(ds, changed, 7) != run_name(ds, hybrid, 7)


def test_a_bounded_build_that_differs_from_bm25s_falls_back_to_bm25s_own_index(tmp_path, monkeypatch, caplog):
    """The bounded build calls bm25s's private scoring helpers; where a bm25s release changes what they compute
    (here: the bounded build's scores moved by one part in 10^4) or their names, the sample check at build time
    sees it and the index is bm25s's own, scored as bm25s does."""
    import bm25s
    from bm25s import scoring

    import rerank_eval.retrievers.bm25 as bm25
    from rerank_eval.types import Query

    ds = dense_corpus(tmp_path)
    queries = [Query("a", "cats"), Query("b", "rain tomorrow")]
    real = BM25Retriever._bounded

    def moved(self, docs, tok):
        index, ids = real(self, docs, tok)
        index.scores["data"] = index.scores["data"] * np.float32(1.0001)
        return index, ids

    monkeypatch.setattr(BM25Retriever, "_bounded", moved)
    r = BM25Retriever()
    r.index(ds)
    assert "differs from bm25s.BM25.index on a sample" in caplog.text
    reference = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    reference.index(
        r._tokenizer().tokenize([d.full_text for d in ds.corpus()], return_as="string", show_progress=False),
        show_progress=False,
    )
    for toks in r.query_tokens(queries):
        np.testing.assert_array_equal(r._index.get_scores(toks), reference.get_scores(toks))
    monkeypatch.setattr(BM25Retriever, "_bounded", real)
    monkeypatch.delattr(scoring, "_build_idf_array")  # renamed by a release: refused too, not a crash
    monkeypatch.setattr(bm25, "cache_root", lambda: tmp_path / "renamed")
    caplog.clear()
    BM25Retriever().index(ds)
    assert "differs from bm25s.BM25.index on a sample" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(bm25, "cache_root", lambda: tmp_path / "fresh")
    caplog.clear()
    BM25Retriever().index(ds)  # the real helpers: the check passes, the bounded build is kept
    assert "differs" not in caplog.text
