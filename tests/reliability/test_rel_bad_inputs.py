"""The bad-input catalogue: each mistake a user can make, answered by one line (exit 2) or, where the input is
legitimate but odd, by a documented behaviour (exit 0). No traceback reaches the user for an input mistake; a
bug keeps its traceback (exit 1). Each case runs the real CLI in this process."""

from __future__ import annotations

import errno
import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from relhelp import CE_MODEL, FIGURES, ROOT, TINY, run_cli, store_env

COHERE_KEY, ANTHROPIC_KEY = "co-rel-5c1e0b9a77f2", "sk-ant-rel-2d7f93c0aa41"
CATALOGUE: list[dict] = []


def beir(
    tmp: Path,
    corpus: bytes | None = None,
    queries: str | None = None,
    qrels: str | None = None,
    gz: bool = False,
) -> Path:
    """A BEIR folder under ``tmp``: the tiny collection, with any of its three files replaced."""
    folder = tmp / "data"
    (folder / "qrels").mkdir(parents=True)
    corpus = corpus if corpus is not None else (TINY / "corpus.jsonl").read_bytes()
    (folder / ("corpus.jsonl.gz" if gz else "corpus.jsonl")).write_bytes(corpus)
    (folder / "queries.jsonl").write_text(
        queries if queries is not None else (TINY / "queries.jsonl").read_text(), encoding="utf-8"
    )
    (folder / "qrels" / "test.tsv").write_text(
        qrels if qrels is not None else (TINY / "qrels" / "test.tsv").read_text(), encoding="utf-8"
    )
    return folder


def ds(path: Path | str, *more: str) -> list[str]:
    return ["dataset=beir_dir", f"dataset.path={path}", "dataset.name=tiny", *more]


TINY_NONE = ds(TINY, "reranker=none")
TINY_CE = ds(TINY, "reranker=cross_encoder", f"reranker.model={CE_MODEL}", "candidates=4", "top_k=2")


def with_run(tmp: Path, lines: str, *more: str) -> list[str]:
    path = tmp / "run.trec"
    path.write_text(lines, encoding="utf-8")
    return ds(
        TINY, "retriever=run", f"retriever.path={path}", "reranker=none", "candidates=3", "top_k=3", *more
    )


def conf_dir(tmp: Path, name: str, text: str) -> list[str]:
    folder = tmp / "conf" / "reranker"
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return ["--config-dir", str(tmp / "conf"), *ds(TINY), f"reranker={name}"]


def corpus_lines(*docs: dict) -> bytes:
    return "".join(json.dumps(d) + "\n" for d in docs).encode()


@dataclass
class Case:
    kind: str
    argv: Callable[[Path], list[str]]
    code: int
    message: str  # a substring of the last stderr line (exit 2) or of stdout/stderr (exit 0)
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Path], None] | None = None  # more to assert on the output folder
    api: str | None = None  # "cohere" or "llm": the run talks to a loopback emulator
    faults: list[str] = field(default_factory=list)
    api_down: bool = False


def run_order(out: Path) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for line in (out / "run.trec").read_text().splitlines():
        q, _, d, *_ = line.split()
        order.setdefault(q, []).append(d)
    return order


CASES = [
    # -- configs ---------------------------------------------------------------------------------------------
    Case(
        "malformed override",
        lambda t: [*TINY_NONE, "candidates=[1,"],
        2,
        "bad override: no viable alternative",
    ),
    Case(
        "unknown config key",
        lambda t: [*TINY_NONE, "candidatez=5"],
        2,
        "unknown config key 'candidatez' (did you mean candidates?)",
    ),
    Case(
        "misspelt key of a group",
        lambda t: [*ds(TINY), "reranker=cross_encoder", "reranker.maxlength=256"],
        2,
        "unknown config key 'reranker.maxlength' (did you mean reranker.max_length?)",
    ),
    Case(
        "misspelt key added to a constructor",
        lambda t: [
            *ds(TINY),
            "reranker=cross_encoder",
            f"reranker.model={CE_MODEL}",
            "+reranker.maxlength=256",
        ],
        2,
        "reranker.maxlength is not an option of CrossEncoderReranker (did you mean reranker.max_length?); "
        "its options: model, max_length,",
    ),
    Case(
        "an error inside a constructor keeps its cause",
        lambda t: [*TINY_NONE, "retriever=hybrid", "retriever.params=5"],
        2,
        "retriever: rerank_eval.retrievers.hybrid.HybridRetriever could not be built: TypeError: 'int' object is "
        "not iterable",
    ),
    Case(
        "config group given twice",
        lambda t: [*TINY_NONE, "+reranker=bi_encoder"],
        2,
        "reranker appears more than once",
    ),
    Case(
        "unknown dataset",
        lambda t: ["dataset=scifactt"],
        2,
        "Could not find 'dataset/scifactt' (did you mean scifact?); choose dataset= one of",
    ),
    Case(
        "unknown retriever",
        lambda t: [*TINY_NONE, "retriever=bm42"],
        2,
        "Could not find 'retriever/bm42' (did you mean bm25?); choose retriever= one of",
    ),
    Case(
        "unknown reranker",
        lambda t: [*ds(TINY), "reranker=colbertt"],
        2,
        "Could not find 'reranker/colbertt' (did you mean colbert?); choose reranker= one of",
    ),
    Case(
        "missing mandatory value",
        lambda t: ["dataset=beir_dir"],
        2,
        "dataset.path is required; pass dataset.path=",
    ),
    Case(
        "contradictory depths (top_k > candidates)",
        lambda t: [*TINY_NONE, "candidates=5", "top_k=10"],
        2,
        "top_k (10) is larger than candidates (5)",
    ),
    Case(
        "depth out of range",
        lambda t: [*TINY_NONE, "candidates=-3"],
        2,
        "candidates must be a positive integer, got -3",
    ),
    Case(
        "depth of the wrong type",
        lambda t: [*TINY_NONE, "top_k=ten"],
        2,
        "top_k must be a positive integer, got 'ten'",
    ),
    Case(
        "threads out of range", lambda t: [*TINY_NONE, "threads=0"], 2, "threads must be auto, null or a whole number >= 1"
    ),
    Case(
        "flag of the wrong type",
        lambda t: [*TINY_NONE, "cache.enabled=maybe"],
        2,
        "cache.enabled must be true or false",
    ),
    Case("unknown metric", lambda t: [*TINY_NONE, "metrics=[ndcg@10,ndgc@5]"], 2, "unknown metric 'ndgc@5'"),
    Case(
        "unknown significance test",
        lambda t: [*TINY_NONE, "significance=wilcoxon"],
        2,
        "significance must be student or fisher",
    ),
    Case(
        "unknown failure policy",
        lambda t: [*TINY_NONE, "on_failure=retry"],
        2,
        "on_failure must be fail or zero",
    ),
    Case(
        "contradictory LLM window and step",
        lambda t: [*ds(TINY), "reranker=llm", "reranker.window=10", "reranker.step=20"],
        2,
        "needs window >= 2 and 1 <= step < window, got 10/20",
        env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY},
    ),
    Case(
        "unknown fusion method",
        lambda t: [*TINY_NONE, "retriever=hybrid", "retriever.method=borda2"],
        2,
        "unknown ranx fusion method 'borda2'",
    ),
    Case(
        "reranker model path missing",
        lambda t: [*ds(TINY), "reranker=cross_encoder", "reranker.model=./models/nope"],
        2,
        "model path ./models/nope does not exist",
    ),
    Case(
        "API key on the command line",
        lambda t: [*ds(TINY), "reranker=cohere", f"+reranker.api_key={COHERE_KEY}"],
        2,
        "reranker.api_key holds a secret on the command line; put it in an environment variable",
    ),
    Case(
        "API key in a config file",
        lambda t: conf_dir(
            t, "mine", f"_target_: rerank_eval.rerankers.cohere.CohereReranker\napi_key: {COHERE_KEY}\n"
        ),
        2,
        "mine.yaml.api_key holds a secret in the config; put it in an environment variable",
    ),
    Case(
        "config file that is not YAML",
        lambda t: conf_dir(t, "broken", "model: [unclosed\n"),
        2,
        "broken.yaml is not valid YAML",
    ),
    Case(
        "config naming code outside the package",
        lambda t: conf_dir(t, "evil", "_target_: os.system\ncommand: echo hi\n"),
        2,
        "_target_=os.system is outside the rerank_eval package",
    ),
    Case(
        "API key variable unset",
        lambda t: [*ds(TINY), "reranker=cohere"],
        2,
        "set the environment variable COHERE_API_KEY",
        env={"COHERE_API_KEY": ""},
    ),
    # -- data ------------------------------------------------------------------------------------------------
    Case(
        "dataset folder missing",
        lambda t: ds("/no/such/folder", "reranker=none"),
        2,
        "dataset folder /no/such/folder does not exist",
    ),
    Case(
        "split without qrels",
        lambda t: [*TINY_NONE, "dataset.split=dev"],
        2,
        "has no qrels for split 'dev'; available splits: ['test']",
    ),
    Case(
        "malformed corpus line",
        lambda t: ds(beir(t, b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n'), "reranker=none"),
        2,
        "corpus.jsonl:2: not a JSON object",
    ),
    Case(
        "corpus with duplicate ids",
        lambda t: ds(
            beir(t, corpus_lines({"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"})), "reranker=none"
        ),
        2,
        "document id 'd1' appears twice; ids must be unique",
    ),
    Case(
        "non-UTF-8 bytes",
        lambda t: ds(beir(t, b'{"_id": "d1", "text": "caf\xe9"}\n'), "reranker=none"),
        2,
        "corpus.jsonl:1: not valid UTF-8",
    ),
    Case(
        "truncated gzip",
        lambda t: ds(
            beir(
                t,
                gzip.compress(corpus_lines(*({"_id": f"d{i}", "text": f"text {i}"} for i in range(500))))[
                    :300
                ],
                gz=True,
            ),
            "reranker=none",
        ),
        2,
        "truncated or corrupt gzip",
    ),
    Case("empty corpus", lambda t: ds(beir(t, b""), "reranker=none"), 2, "holds no documents"),
    Case(
        "empty query text",
        lambda t: ds(
            beir(t, queries='{"_id": "q1", "text": "  "}\n{"_id": "q2", "text": "stock market news"}\n'),
            "reranker=none",
        ),
        2,
        "1 queries have no text, e.g. ['q1']",
    ),
    Case(
        "no judged queries (empty qrels)",
        lambda t: ds(beir(t, qrels="query-id\tcorpus-id\tscore\n"), "reranker=none"),
        2,
        "holds no judgements",
    ),
    Case(
        "qrels naming unknown queries",
        lambda t: ds(beir(t, qrels="query-id\tcorpus-id\tscore\nq9\td1\t1\n"), "reranker=none"),
        2,
        "judges queries that queries.jsonl lacks: ['q9']",
    ),
    Case(
        "qrels naming no document of the corpus",
        lambda t: ds(beir(t, qrels="query-id\tcorpus-id\tscore\nq1\tx1\t1\nq2\tx2\t1\n"), "reranker=none"),
        2,
        "judges none of the documents in corpus.jsonl",
    ),
    Case(
        "qrels line malformed",
        lambda t: ds(beir(t, qrels="query-id\tcorpus-id\tscore\nq1 d1 1\n"), "reranker=none"),
        2,
        "expected 'query-id<TAB>corpus-id<TAB>score'",
    ),
    Case(
        "run file naming unknown queries",
        lambda t: with_run(t, "q7 Q0 d1 1 3.0 t\n"),
        2,
        "names 1 queries that tiny lacks, e.g. ['q7']",
    ),
    Case(
        "run file naming unknown documents",
        lambda t: with_run(t, "q1 Q0 d99 1 3.0 t\n"),
        2,
        "not in the tiny corpus, e.g. ['d99']",
    ),
    Case("run file with a short line", lambda t: with_run(t, "q1 Q0 d1 1 3.0\n"), 2, "expected 6 columns"),
    Case(
        "run file listing a document twice",
        lambda t: with_run(t, "q1 Q0 d1 1 3.0 t\nq1 Q0 d1 2 2.0 t\n"),
        2,
        "document d1 is listed twice",
    ),
    Case("empty run file", lambda t: with_run(t, ""), 2, "is empty"),
    Case(
        "run file with tied scores (accepted)",
        lambda t: with_run(t, "q1 Q0 d2 1 5.0 t\nq1 Q0 d1 2 5.0 t\nq1 Q0 d4 3 5.0 t\nq2 Q0 d3 1 1.0 t\n"),
        0,
        "ndcg@10=",
        check=lambda out: _equal(run_order(out)["q1"], ["d2", "d1", "d4"]),  # ties keep the file's ranks
    ),
    Case(
        "run file with unsorted ranks (accepted)",
        lambda t: with_run(t, "q1 Q0 d2 1 1.0 t\nq1 Q0 d4 2 9.0 t\nq1 Q0 d1 3 5.0 t\nq2 Q0 d3 1 1.0 t\n"),
        0,
        "ndcg@10=",
        check=lambda out: _equal(run_order(out)["q1"], ["d4", "d1", "d2"]),  # ordered by score
    ),
    Case(
        "document with no text (accepted, warned)",
        lambda t: ds(
            beir(t, (TINY / "corpus.jsonl").read_bytes() + b'{"_id": "d9", "title": "", "text": ""}\n'),
            "reranker=none",
        ),
        0,
        "1 documents have no title and no text; kept",
    ),
    Case(
        "qrels judging documents the corpus lacks (accepted, warned)",
        lambda t: ds(
            beir(t, qrels=(TINY / "qrels" / "test.tsv").read_text() + "q1\tgone\t1\n"), "reranker=none"
        ),
        0,
        "the qrels judge 1 documents the corpus lacks",
    ),
    Case(
        "huge document (4 MB, accepted: truncated to max_length)",
        lambda t: ds(
            beir(
                t,
                (TINY / "corpus.jsonl").read_bytes()
                + corpus_lines({"_id": "big", "text": "cats eat " * 500_000}),
            ),
            "reranker=cross_encoder",
            f"reranker.model={CE_MODEL}",
            "reranker.max_length=128",
        ),
        0,
        "ndcg@10=",
        check=lambda out: _equal(len(run_order(out)["q1"]), 6),  # the 6 documents, the huge one among them
    ),
    # -- API answers -----------------------------------------------------------------------------------------
    Case(
        "LLM answer with no permutation (accepted: that window keeps its order)",
        lambda t: [*ds(TINY), "reranker=llm", "reranker.cache_enabled=false", "candidates=5", "top_k=5"],
        0,
        "ndcg@10=",
        api="llm",
        faults=["garbage", "garbage"],
        check=lambda out: _equal(
            json.loads((out / "metrics.json").read_text())["counts"]["unparsed_answers"], 2.0
        ),
    ),
    Case(
        "Cohere response missing indices",
        lambda t: [*ds(TINY), "reranker=cohere", "candidates=5", "top_k=5"],
        2,
        "cohere rerank answered for 4 of 5 documents (query q1); the response is incomplete; stopped after 0 of 2",
        api="cohere",
        faults=["missing"],
    ),
    Case(
        "API key refused (401)",
        lambda t: [*ds(TINY), "reranker=cohere", "candidates=5", "top_k=5"],
        2,
        "cohere rerank refused the key in COHERE_API_KEY (HTTP 401)",
        api="cohere",
        env={"COHERE_API_KEY": "co-wrong-key"},
    ),
    Case(
        "API down past the retries",
        lambda t: [*ds(TINY), "reranker=cohere", "reranker.max_retries=1", "candidates=5", "top_k=5"],
        2,
        "cohere rerank failed for query q1",
        api="cohere",
        api_down=True,
    ),
    # -- stores and disks ------------------------------------------------------------------------------------
    Case(
        "MLflow server unreachable",
        lambda t: TINY_NONE,
        2,
        "the MLflow tracking server http://127.0.0.1:9 does not answer",
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    ),
    Case(
        "MLflow store read-only",
        lambda t: TINY_NONE,
        2,
        "attempt to write a readonly database); set MLFLOW_TRACKING_URI to a reachable, writable store",
        env={"MLFLOW_TRACKING_URI": "READONLY"},
    ),
    Case(
        "score cache unwritable",
        lambda t: [*TINY_NONE, f"cache.path={ROOT / 'pyproject.toml'}/scores.sqlite"],
        2,
        "cannot open the score cache",
    ),
    Case(
        "score cache damaged",
        lambda t: [*TINY_NONE, f"cache.path={_garbage(t)}"],
        2,
        "is damaged (file is not a database); move it away",
    ),
    Case(
        "disk full while writing results (simulated)",
        lambda t: TINY_CE,
        2,
        "run.trec (No space left on device); free space or fix permissions and rerun: scores are cached",
    ),
]


def _equal(a, b):
    assert a == b, (a, b)


def _garbage(tmp: Path) -> Path:
    path = tmp / "scores.sqlite"
    path.write_bytes(b"this is not a database\n" * 200)
    return path


def _readonly_store(tmp: Path) -> str:
    """An MLflow SQLite store opened read-only (the way a read-only mount behaves; root ignores file modes)."""
    import mlflow

    db = tmp / "ro.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("rerank-eval")
    return f"sqlite:///file:{db}?mode=ro&uri=true"


def _full_disk(monkeypatch):
    """Writing the run file (the first result written after the scoring) fails with ENOSPC after its first bytes,
    as on a disk that filled up during the run."""
    import builtins

    from rerank_eval import files

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, *a, **k):
        f = real_open(path, *a, **k)
        return Full(f) if str(path).endswith("run.trec.tmp") else f

    monkeypatch.setattr(files, "open", full_open, raising=False)


SLOW_CASES = {"huge document (4 MB, accepted: truncated to max_length)"}  # ~22 s: make test-all


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.kind, marks=[pytest.mark.slow] if c.kind in SLOW_CASES else []) for c in CASES]
)
def test_bad_input(case, tmp_path, monkeypatch):
    from emulators import AnthropicEmulator, CohereEmulator

    env = {
        **store_env(tmp_path),
        "COHERE_API_KEY": COHERE_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        **case.env,
    }
    if env["MLFLOW_TRACKING_URI"] == "READONLY":
        env["MLFLOW_TRACKING_URI"] = _readonly_store(tmp_path)
        monkeypatch.chdir(tmp_path)  # MLflow makes an empty "file:" folder in the cwd for this URI form
    if case.kind.startswith("disk full"):
        _full_disk(monkeypatch)
    argv = case.argv(tmp_path)
    out = tmp_path / "out"
    if case.api:
        emu_cls = CohereEmulator if case.api == "cohere" else AnthropicEmulator
        with emu_cls(key=COHERE_KEY if case.api == "cohere" else ANTHROPIC_KEY, faults=case.faults) as emu:
            emu.down = case.api_down
            res = run_cli([*argv, f"reranker.base_url={emu.url}"], out, monkeypatch, env)
    else:
        res = run_cli(argv, out, monkeypatch, env)
    answer = res.last_error_line if case.code == 2 else "exit 0"
    CATALOGUE.append({"kind": case.kind, "code": res.code, "answer": answer})
    assert res.code == case.code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    if case.code == 2:
        assert res.last_error_line.startswith("rerank-eval: error: "), res.stderr[-2000:]
        assert case.message in res.last_error_line, res.last_error_line
        assert not out.exists(), "a refused job left its folder behind"
    else:
        assert case.message in res.stdout + res.stderr, res.stderr[-2000:]
        assert (out / "metrics.json").is_file()
        if case.check:
            case.check(out)
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"


DATASETS = sorted(p.stem for p in (ROOT / "rerank_eval" / "conf" / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_offline_from_an_empty_folder_is_one_line(name, tmp_path, monkeypatch):
    """No local copy and no network: one line naming the folders searched and the fix, exit 2, no traceback, no
    library noise on the terminal, no job folder left."""
    monkeypatch.delenv("RERANK_EVAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    env = {
        **store_env(tmp_path),
        "RERANK_EVAL_HOME": str(tmp_path),
        "IR_DATASETS_HOME": str(tmp_path / "irds"),
    }
    out = tmp_path / "out"
    res = run_cli([f"dataset={name}", "reranker=none", "mlflow.enabled=false"], out, monkeypatch, env)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.code == 2 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("rerank-eval: error: ") and "dataset.path" in lines[0]
    assert len(lines[0]) < 300, lines[0]
    if name != "beir_dir":  # the one without an ir_datasets id: its path is required
        assert "no local copy in data/" in lines[0] and "could not download" in lines[0]
    assert not out.exists()


def test_a_full_disk_loses_no_scores(tmp_path, monkeypatch):
    env = store_env(tmp_path)
    with monkeypatch.context() as m:
        _full_disk(m)
        res = run_cli(TINY_CE, tmp_path / "out", m, env)
    assert res.code == 2 and "No space left on device" in res.last_error_line
    assert not (tmp_path / "out" / "run.trec").exists() and not list(tmp_path.rglob(".*.tmp"))
    again = run_cli(TINY_CE, tmp_path / "out", monkeypatch, env)  # space freed: the rerun only writes
    assert again.code == 0, again.stderr[-2000:]
    counts = json.loads((tmp_path / "out" / "metrics.json").read_text())["counts"]
    assert counts["pairs_scored"] == 0 and counts["pairs_cached"] == 2 * 4


def test_catalogue_size():
    assert len(CASES) >= 30 and len({c.kind for c in CASES}) == len(CASES)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from rerank_eval.job import evaluate

    def broken(*a, **k):
        return 1 / 0

    monkeypatch.setattr(evaluate, "paired_test", broken)
    res = run_cli(TINY_NONE, tmp_path / "out", monkeypatch, store_env(tmp_path))
    assert res.code == 1 and "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_an_input_mistake_exits_2_from_a_real_process(tmp_path):
    """The in-process runs above stand for the process: one real child process confirms the exit status."""
    proc = subprocess.run(
        [sys.executable, "-m", "rerank_eval", *TINY_NONE, "candidatez=5", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env={**__import__("os").environ, **store_env(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "rerank-eval: error: bad override: unknown config key 'candidatez' (did you mean candidates?); check "
        "the spelling (rerank-eval --cfg job prints the keys)"
    ]


@pytest.fixture(scope="module", autouse=True)
def _record():
    yield
    if CATALOGUE:
        FIGURES["bad_inputs"] = sorted(CATALOGUE, key=lambda c: [k.kind for k in CASES].index(c["kind"]))
