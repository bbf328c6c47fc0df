import gzip
import json

import pytest
from conftest import DATA, TINY

from rerank_eval.datasets import BeirDirDataset, IrDatasetsDataset, load_dataset
from rerank_eval.errors import ConfigError, DataError
from rerank_eval.types import Doc, Query


def test_tiny_records(tiny):
    assert tiny.queries() == [
        Query("q1", "what do cats eat"),
        Query("q2", "stock market news"),
    ]  # q3 is unjudged
    assert tiny.qrels() == {"q1": {"d4": 2, "d1": 1, "d2": 0}, "q2": {"d3": 1}}
    assert tiny.docs(["d4"]) == {"d4": Doc("d4", "what cats eat: fish and meat", "Cat food")}
    assert tiny.docs(["d4"])["d4"].full_text == "Cat food what cats eat: fish and meat"
    assert tiny.docs(["d3"])["d3"].full_text == "the stock market fell today"
    assert len(list(tiny.corpus())) == 5


def test_unknown_doc_ids_name_the_problem(tiny):
    with pytest.raises(DataError, match=r"1 document id\(s\) are not in the tiny corpus, e.g. \['nope'\]"):
        tiny.docs(["d1", "nope"])


@pytest.mark.parametrize(
    "folder, split, n_docs, n_queries, n_qrels, query, doc",
    [
        (
            "scifact",
            "test",
            5183,
            300,
            339,
            ("1", "0-dimensional biomaterials show inductive properties."),
            ("4983", "Microstructural development of human new", "Alterations of the architecture of cereb"),
        ),
        (
            "scifact",
            "train",
            5183,
            809,
            919,
            ("0", "0-dimensional biomaterials lack inductive properties."),
            None,
        ),
        (
            "msmarco-dl19-passage",
            "test",
            16157,
            43,
            9260,
            ("19335", "anthropological definition of environment"),
            ("350", "", "The melting point of a substance is the "),
        ),
        (
            "vaswani",
            "test",
            11429,
            93,
            2083,
            ("1", "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES"),
            ("1", "", "compact memories have flexible capacitie"),
        ),
        (
            "cranfield",
            "test",
            1400,
            225,
            1837,
            (
                "1",
                "what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft .",
            ),
            ("1", "experimental investigation of the aerody", "experimental investigation of the aerody"),
        ),
    ],
)
def test_real_collections(folder, split, n_docs, n_queries, n_qrels, query, doc):
    ds = BeirDirDataset(DATA / folder, split=split)
    assert sum(1 for _ in ds.corpus()) == n_docs
    queries = ds.queries()
    assert len(queries) == n_queries
    assert sum(len(v) for v in ds.qrels().values()) == n_qrels
    assert queries[0] == Query(*query)
    if doc:
        d = ds.docs([doc[0]])[doc[0]]
        assert (d.title[:40], d.text[:40]) == doc[1:]


def test_dl19_grades():
    ds = load_dataset("msmarco-dl19", folder="msmarco-dl19-passage", relevance_level=2)
    grades = [g for rel in ds.qrels().values() for g in rel.values()]
    assert {g: grades.count(g) for g in range(4)} == {0: 5158, 1: 1601, 2: 1804, 3: 697}
    assert ds.relevance_level == 2


def test_local_folder_resolution(monkeypatch, tmp_path):
    # default: ../shared/data/<folder>
    ds = load_dataset("scifact", irds_id="beir/scifact/test", folder="scifact")
    assert isinstance(ds, BeirDirDataset) and ds.path == DATA / "scifact"
    # RERANK_EVAL_DATA wins over the default
    (tmp_path / "scifact").symlink_to(TINY)
    monkeypatch.setenv("RERANK_EVAL_DATA", str(tmp_path))
    assert load_dataset("scifact", folder="scifact").path == tmp_path / "scifact"
    # an explicit path wins over both
    assert load_dataset("x", folder="scifact", path=str(DATA / "vaswani")).path == DATA / "vaswani"


def test_no_local_copy_falls_back_to_ir_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("RERANK_EVAL_DATA", str(tmp_path))
    ds = load_dataset("nfcorpus", irds_id="beir/nfcorpus/test", folder="nfcorpus-not-here")
    assert isinstance(ds, IrDatasetsDataset) and ds.irds_id == "beir/nfcorpus/test"
    with pytest.raises(DataError, match="no local copy of nfcorpus: set dataset.path"):
        load_dataset("nfcorpus", irds_id="beir/nfcorpus/test", folder="nfcorpus-not-here", source="local")
    with pytest.raises(ConfigError, match="unknown ir_datasets id 'beir/nope'"):
        load_dataset("x", irds_id="beir/nope", source="irds")


def test_ir_datasets_path_gives_the_same_records(tmp_path, tiny):
    """The ir_datasets adapter, on a collection registered from local files, yields the records the BEIR
    folder reader does."""
    import ir_datasets

    docs = tmp_path / "docs.tsv"
    docs.write_text("".join(f"{d.doc_id}\t{d.text}\n" for d in tiny.corpus()), encoding="utf-8")
    queries = tmp_path / "queries.tsv"
    queries.write_text(
        "q1\twhat do cats eat\nq2\tstock market news\nq3\tan unjudged query\n", encoding="utf-8"
    )
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, rel in tiny.qrels().items() for d, g in rel.items()))
    if "rerank-eval-test/tiny" not in ir_datasets.registry:
        ir_datasets.registry.register(
            "rerank-eval-test/tiny",
            ir_datasets.create_dataset(docs_tsv=str(docs), queries_tsv=str(queries), qrels_trec=str(qrels)),
        )
    ds = load_dataset("tiny", irds_id="rerank-eval-test/tiny", source="irds")
    assert ds.queries() == tiny.queries()
    assert ds.qrels() == tiny.qrels()
    assert ds.docs(["d2"])["d2"].text == tiny.docs(["d2"])["d2"].text
    with pytest.raises(DataError, match="not in the tiny corpus"):
        ds.docs(["zzz"])


def _folder(tmp_path, corpus_bytes: bytes, gz: bool = False):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    name = "corpus.jsonl.gz" if gz else "corpus.jsonl"
    (tmp_path / name).write_bytes(corpus_bytes)
    return BeirDirDataset(tmp_path)


@pytest.mark.parametrize(
    "content, gz, message",
    [
        (
            b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n',
            False,
            r"corpus.jsonl:2: not a JSON object",
        ),
        (
            b'{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
            False,
            r"document id 'd1' appears twice",
        ),
        (b'{"_id": "d1", "text": "caf\xe9"}\n', False, r"corpus.jsonl:1: not valid UTF-8"),
        (b'{"_id": "d1"}\n', False, r"corpus.jsonl:1: expected a JSON object with keys \['_id', 'text'\]"),
        (
            gzip.compress(json.dumps({"_id": "d1", "text": "a" * 5000}).encode())[:60],
            True,
            r"truncated or corrupt gzip",
        ),
        (b"", False, r"holds no documents"),
    ],
)
def test_bad_corpus(tmp_path, content, gz, message):
    ds = _folder(tmp_path, content, gz)
    with pytest.raises(DataError, match=message):
        list(ds.corpus())


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; pass dataset.path=<BEIR folder>"):
        BeirDirDataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no qrels for split 'dev'; available splits: \['test'\]"):
        BeirDirDataset(TINY, split="dev")


IRDS_CHECK = """
import json, sys
from rerank_eval.datasets import load_dataset
from rerank_eval.config import job_spec
from rerank_eval.job import run_job
from rerank_eval.evaluation import parse_metrics
from rerank_eval.retrievers.bm25 import BM25Retriever

irds = load_dataset("scifact", irds_id="beir/scifact/test", source="irds")
local = load_dataset("scifact", folder="scifact", source="local")
ids = [d.doc_id for d in local.corpus()]
out = {
    "kind": type(irds).__name__,
    "queries": irds.queries() == local.queries(),
    "qrels": irds.qrels() == local.qrels(),
    "docs": irds.docs(ids) == local.docs(ids),
    "count": len(ids),
}
spec = job_spec(irds, BM25Retriever(), None, candidates=100, top_k=10, metrics=["ndcg@10"], progress=False)
out["ndcg@10"] = run_job(spec, sys.argv[1] + "/irds").metrics["ndcg@10"]
print(json.dumps(out))
"""


def test_the_ir_datasets_id_loads_offline_from_a_prepared_home_and_scores_as_the_local_folder(tmp_path):
    """ir_datasets fed the file its download step writes (``<IR_DATASETS_HOME>/beir/scifact/source.zip``, here
    built from ../shared/data/scifact) loads ``beir/scifact/test`` without the network, through its own code:
    the same queries, qrels and documents as the BEIR folder, and the BM25 nDCG@10 the folder gives."""
    import os
    import subprocess
    import sys
    import zipfile

    src = DATA / "scifact"
    home = tmp_path / "irds"
    (home / "beir" / "scifact").mkdir(parents=True)
    with zipfile.ZipFile(home / "beir" / "scifact" / "source.zip", "w") as z:
        z.writestr("scifact/corpus.jsonl", gzip.decompress((src / "corpus.jsonl.gz").read_bytes()))
        z.write(src / "queries.jsonl", "scifact/queries.jsonl")
        z.write(src / "qrels" / "test.tsv", "scifact/qrels/test.tsv")
    env = {**os.environ, "IR_DATASETS_HOME": str(home), "RERANK_EVAL_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", IRDS_CHECK, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["kind"] == "IrDatasetsDataset" and got["count"] == 5183
    assert got["queries"] and got["qrels"] and got["docs"]
    # the same data, so BM25 gives the local folder's figure (the bench's, and test_retrievers' own job)
    assert got["ndcg@10"] == pytest.approx(0.6762, abs=5e-5)
    assert (home / "beir" / "scifact" / "docs.pklz4").is_dir()  # ir_datasets built its own docstore
