"""Scale's building blocks on small corpora: the on-disk document store against the records it replaces, and the
persisted, memory-mapped BM25 index against a fresh one (the large sizes are `make scale`'s)."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY

from rerank_eval.datasets import BeirDirDataset
from rerank_eval.docstore import DocStore
from rerank_eval.errors import DataError
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
