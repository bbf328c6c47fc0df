"""Numbers you can trust: the final list is evaluated, latency is measured or probed (never replayed), every
ingredient of a figure is fingerprinted, run files re-score to the reported figures under an independent
evaluator, a pair's score does not depend on its batch, and the judgements' limits are stated."""

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pandas as pd
import pytest
import pytrec_eval
from conftest import CE_MODEL, DL19_CE, TINY

from rerank_eval.cli import run_from_config
from rerank_eval.config import CONF_MODULE, job_spec
from rerank_eval.datasets import BeirDirDataset
from rerank_eval.errors import ConfigError, RerankEvalError
from rerank_eval.evaluation import parse_metrics
from rerank_eval.job import CandidateShare, run_job
from rerank_eval.retrievers.bm25 import BM25Retriever
from rerank_eval.retrievers.run_file import RunFileRetriever

# the tiny collection reranked by the shared cross-encoder in the evaluation default (fp32, one pair a forward)
TINY_CE = [
    "dataset=beir_dir",
    f"dataset.path={TINY}",
    "dataset.name=tiny",
    "retriever=bm25",
    "reranker=cross_encoder",
    f"reranker.model={CE_MODEL}",
    "reranker.max_length=128",
    "mlflow.enabled=false",
    "resume=false",
]
DL19_RUNS = ["bm25", "bm25-rm3", "distilbert-kd-tasb", "openai-ada2", "splade-pp-ed"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(version_base="1.3", config_module=CONF_MODULE):
        return hydra_compose("config", overrides=list(overrides))


def job(out: Path, *overrides: str):
    return run_from_config(compose("progress=false", *overrides), out)


def tiny_copy(tmp_path: Path, name: str = "tinycopy") -> Path:
    dest = tmp_path / name
    shutil.copytree(TINY, dest)
    return dest


class GradeReranker:
    """Scores like an LLM's 0-3 grades: many ties, which the harness breaks by first-stage rank."""

    pointwise = True
    identity = "grades-by-length"
    name = "grades"

    def score(self, query, docs):
        return [float(len(d.full_text) % 4) for d in docs]


def ir_measure(metric, level):
    m = metric.measure
    name = {"ndcg": "nDCG", "mrr": "RR", "recall": "R", "map": "AP", "precision": "P", "judged": "Judged"}[m]
    rel = f"(rel={level})" if m in ("mrr", "recall", "map", "precision") and level > 1 else ""
    return ir_measures.parse_measure(f"{name}{rel}@{metric.k}")


def rescore(run_file: Path, qrels, metrics, level):
    """Per-query values of the metrics, computed by ir_measures (trec_eval's code) from the run file alone."""
    run = ir_measures.read_trec_run(str(run_file))
    measures = [ir_measure(m, level) for m in metrics]
    out: dict[str, dict[str, float]] = {}
    for row in ir_measures.iter_calc(measures, qrels, run):
        out.setdefault(str(row.measure), {})[row.query_id] = row.value
    return {m.name: out[str(ir_measure(m, level))] for m in metrics}


def bm25_job(dataset, out, metrics, **kw):
    """BM25's top 5 with no reranker, cut to 2, no context tokens: the plain job of the judgement tests."""
    return run_job(
        job_spec(
            dataset,
            BM25Retriever(),
            None,
            candidates=5,
            top_k=2,
            metrics=metrics,
            context_tokenizer=None,
            **kw,
        ),
        out,
    )


# -- 1. the final list -----------------------------------------------------------------------------------------


def test_the_final_list_is_evaluated_at_top_k_and_top_k_siblings_share_one_comparison(tmp_path):
    ds = BeirDirDataset(TINY, name="tiny")
    kw = dict(
        candidates=5,
        metrics=parse_metrics(["ndcg@10"]),
        config={"candidates": 5},
        latency_probe=0,
        context_tokenizer="sentence-transformers/all-MiniLM-L6-v2",
    )
    share = CandidateShare()  # what a sweep hands its jobs
    one = run_job(job_spec(ds, BM25Retriever(), GradeReranker(), top_k=1, **kw), tmp_path / "a", share=share)
    two = run_job(job_spec(ds, BM25Retriever(), GradeReranker(), top_k=2, **kw), tmp_path / "b", share=share)
    run = {}
    for line in (tmp_path / "a" / "run.trec").read_text().splitlines():
        q, _, d, rank, _, _ = line.split()
        run.setdefault(q, []).append(d)
    qrels = ds.qrels()
    # by hand from the written order: precision@1 and recall@1 of the first document of each query
    p1 = np.mean([qrels[q].get(run[q][0], 0) >= 1 for q in sorted(qrels)])
    r1 = np.mean(
        [(qrels[q].get(run[q][0], 0) >= 1) / sum(g >= 1 for g in qrels[q].values()) for q in sorted(qrels)]
    )
    assert one.metrics["precision@1"] == pytest.approx(p1) and one.metrics["recall@1"] == pytest.approx(r1)
    assert {"ndcg@2", "precision@2", "recall@2"} <= two.metrics.keys() and "precision@1" not in two.metrics
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert a["comparison"] == b["comparison"] and a["fingerprint"] != b["fingerprint"]
    assert two.counts["pairs_scored"] == 0  # the candidates were scored once, for both
    # and timed once: the sibling's latency is the first job's, and says so
    assert a["origin"]["latency_source"] == one.latency_source == "measured"
    assert b["origin"]["latency_source"] == two.latency_source == f"replayed:{a['name']}"
    # context tokens: what the top-1 and top-2 documents would put into a prompt, counted with the named tokenizer
    from transformers import AutoTokenizer

    from rerank_eval.scoring.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    docs = ds.docs([d for q in run for d in run[q]])
    want = np.mean(
        [
            sum(len(tok(docs[d].full_text, add_special_tokens=False)["input_ids"]) for d in run[q][:2])
            for q in sorted(run)
        ]
    )
    assert two.counts["context_tokens"] == pytest.approx(want)
    assert a["origin"]["context_tokenizer"] == "sentence-transformers/all-MiniLM-L6-v2"
    # no hidden state: the same sibling without the share ranks (and times) its own candidates
    alone = run_job(job_spec(ds, BM25Retriever(), GradeReranker(), top_k=2, **kw), tmp_path / "c")
    assert alone.counts["pairs_scored"] > 0 and alone.latency_source == "measured"
    assert alone.metrics == two.metrics


def test_the_context_tokenizer_counts_as_transformers_does_on_real_collections(scifact, dl19):
    # loaded from tokenizer.json alone (no torch import); 2,000 documents of each of two real collections, plus
    # Unicode and a long run of one letter, counted as transformers' own tokenizer of the same model counts them
    from transformers import AutoTokenizer

    from rerank_eval.job.analyse import context_tokenizer as _tokenizer
    from rerank_eval.lengths import count_tokens
    from rerank_eval.scoring.models import resolve_model

    name = "sentence-transformers/all-MiniLM-L6-v2"
    texts = [d.full_text for ds in (scifact, dl19) for d in itertools.islice(ds.corpus(), 2000)]
    texts += ["", "café naïve 東京 \u200b x", "a" * 5000]
    hf = AutoTokenizer.from_pretrained(resolve_model(name))
    hf.model_max_length = 1 << 40
    ours = count_tokens(_tokenizer(name), texts)
    assert type(_tokenizer(name)).__module__.startswith("tokenizers")
    assert ours.tolist() == count_tokens(hf, texts).tolist()
    assert ours.sum() > 10 * len(texts)  # counted, not empty


def test_a_job_without_a_local_model_never_imports_torch(tmp_path):
    # torch and transformers cost a BM25 job seconds of start-up (a warm job of make scale is mostly start-up)
    args = [
        "dataset=beir_dir",
        f"dataset.path={TINY}",
        "retriever=bm25",
        "reranker=none",
        "mlflow.enabled=false",
    ]
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if m in sys.modules)))\n"
        f"sys.argv = ['rerank-eval', *{args!r}, 'progress=false', 'hydra.run.dir={tmp_path}']\n"
        "runpy.run_module('rerank_eval', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "metrics.json").read_text())["counts"]["context_tokens"] > 0


def test_holm_counts_each_distinct_comparison_once():
    from rerank_eval.evaluation import paired_test
    from rerank_eval.report import JobRecord, comparison_frame, distinct_comparisons, holm, markdown_table

    rng = np.random.default_rng(0)
    first = rng.uniform(0, 1, 30)
    gains = {"x": first + rng.normal(0.05, 0.1, 30), "y": first + rng.normal(0.02, 0.1, 30)}

    def rec(comparison, top_k, reranked):
        pq = pd.DataFrame(
            {"reranked.ndcg@10": reranked, "first_stage.ndcg@10": first},
            index=pd.Index([f"q{i}" for i in range(30)], name="query_id"),
        )
        return JobRecord(
            f"{comparison}/top{top_k}",
            "d",
            "bm25",
            "ce",
            100,
            top_k,
            {"ndcg@10": reranked.mean()},
            {"ndcg@10": first.mean()},
            {},
            pq,
            comparison=comparison,
            latency_source="measured",
        )

    records = [
        rec("x", 1, gains["x"]),
        rec("x", 5, gains["x"]),
        rec("x", 10, gains["x"]),
        rec("y", 5, gains["y"]),
    ]
    records[0].latency, records[1].latency = {"reranker_ms_mean": 12.0}, {"reranker_ms_mean": 14.0}
    records[1].latency_source, records[2].latency_source = "probe", "none"
    frame = comparison_frame(records)
    rows = markdown_table(frame, metrics=["ndcg@10"]).splitlines()[2:]
    assert (
        "| 12.0 |" in rows[0] and "| 14.0 ᵖ |" in rows[1] and "| n/a |" in rows[2]
    )  # never a replayed latency
    assert distinct_comparisons(frame) == 2
    want = holm([paired_test(gains["x"], first), paired_test(gains["y"], first)])
    assert frame["p (Holm)"].tolist() == pytest.approx([want[0]] * 3 + [want[1]])


# -- 2. latency is measured or probed, never replayed ------------------------------------------------------------


def test_latency_is_measured_fresh_probed_from_the_cache_or_absent(tmp_path):
    base = TINY_CE
    fresh = job(tmp_path / "a", *base, "candidates=3", "top_k=2")
    assert fresh.latency_source == "measured" and fresh.counts["latency_queries"] == 2
    # deeper: 3 of each query's 5 candidates are cached, so no call scored a whole list at this depth: probed
    deeper = job(tmp_path / "d", *base, "candidates=5", "top_k=2")
    assert deeper.counts["pairs_scored"] == 4 and deeper.latency_source == "probe"
    assert deeper.counts["probe_pairs"] == 10
    shallow = job(tmp_path / "b", *base, "candidates=4", "top_k=2")  # every score from the cache
    assert shallow.counts["pairs_scored"] == 0 and shallow.latency_source == "probe"
    assert shallow.counts["probe_queries"] == 2 and shallow.counts["probe_max_abs_diff"] == 0.0
    assert shallow.latency["reranker_ms_mean"] > 0
    origin = json.loads((tmp_path / "b" / "metrics.json").read_text())["origin"]
    assert origin["latency_source"] == "probe" and origin["latency_device"] and origin["code_version"]
    silent = job(tmp_path / "c", *base, "candidates=3", "top_k=1", "latency.probe=0")
    assert silent.latency_source == "none" and "reranker_ms_mean" not in silent.latency


def test_a_call_served_by_a_rerankers_own_cache_is_not_timed(tmp_path):
    """The bi-encoder keeps document embeddings for the process: a second job, with the score cache off, scores
    every pair again but encodes no document, so its calls are not fresh; it probes with the memo bypassed."""
    bi = [*TINY_CE[:4], "reranker=bi_encoder", "mlflow.enabled=false", "resume=false", "cache.enabled=false"]
    job(tmp_path / "a", *bi, "candidates=3", "top_k=1")
    again = job(tmp_path / "b", *bi, "candidates=3", "top_k=1")
    assert again.counts["pairs_scored"] == 6 and again.latency_source == "probe"
    assert again.counts["probe_pairs"] == 6


def test_a_probe_finds_a_stale_cache(tmp_path):
    base = [*TINY_CE, "candidates=3", "top_k=1"]
    job(tmp_path / "a", *base)
    with sqlite3.connect(Path(os.environ["RERANK_EVAL_CACHE"]) / "scores.sqlite") as conn:
        conn.execute("UPDATE pair_scores SET score = score + 1")
    with pytest.raises(RerankEvalError, match="score cache is stale or damaged"):
        job(tmp_path / "b", *base)


# -- 3. provenance ---------------------------------------------------------------------------------------------


def test_every_ingredient_of_a_figure_is_fingerprinted(tmp_path, monkeypatch):
    """A mutation table: each ingredient changed in turn makes the job run again; unchanged, it is reused."""
    import rerank_eval.job.identify as identify
    import rerank_eval.provenance as provenance

    data = tiny_copy(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(CE_MODEL, model)
    run_file = data / "runs" / "demo.top100.trec"
    common = [
        "dataset=beir_dir",
        f"dataset.path={data}",
        "dataset.name=tiny",
        "retriever=run",
        f"retriever.path={run_file}",
        "reranker=cross_encoder",
        f"reranker.model={model}",
        "reranker.max_length=128",
        "candidates=3",
        "top_k=2",
        "latency.probe=0",
    ]

    def reused(*extra) -> bool:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        res = job(out, *common, *extra)
        summary = json.loads((out / "metrics.json").read_text())
        if summary.get(
            "reused"
        ):  # the finished run's timings: labelled as replayed from it, never as measured
            assert (
                res.latency_source
                == summary["origin"]["latency_source"]
                in ("none", f"replayed:{res.run_id}")
            )
            replayed.append(res.latency_source)
        return bool(summary.get("reused"))

    replayed = []

    def append(path: Path, text: str):
        path.write_text(path.read_text() + text)

    assert not reused()
    assert reused()  # nothing changed
    mutations = {
        "config": lambda: common.__setitem__(-2, "top_k=1"),
        "corpus": lambda: append(data / "corpus.jsonl", '{"_id": "d9", "title": "", "text": "new"}\n'),
        "queries": lambda: append(data / "queries.jsonl", '{"_id": "q9", "text": "unjudged"}\n'),
        "qrels": lambda: (data / "qrels" / "test.tsv").write_text(
            (data / "qrels" / "test.tsv").read_text().replace("q1\td1\t1", "q1\td1\t2")
        ),
        "run file": lambda: run_file.write_text(run_file.read_text().replace(" 1 ", " 1 ", 1) + "\n"),
        "model files": lambda: (model / "extra_config.json").write_text("{}"),
        "code version": lambda: monkeypatch.setattr(identify, "code_version", lambda: "9.9.9+other"),
        "a library's version": lambda: monkeypatch.setattr(
            provenance,
            "installed_version",
            lambda name, real=provenance.installed_version: "9.9" if name == "tokenizers" else real(name),
        ),
        "device": lambda: monkeypatch.setattr(provenance, "device_kind", lambda device: "cuda:Other card"),
    }
    for what, mutate in mutations.items():
        mutate()
        assert not reused(), f"a changed {what} was served the old result"
        assert reused(), f"after the {what} change, an unchanged rerun was not reused"
    assert any(s.startswith("replayed:") for s in replayed)  # a measured latency came back, labelled replayed


def test_resume_without_a_config_is_refused(tmp_path):
    from rerank_eval.tracking import Tracker

    with pytest.raises(ConfigError, match="resume needs the job's config"):
        run_job(
            job_spec(
                BeirDirDataset(TINY),
                BM25Retriever(),
                None,
                candidates=3,
                top_k=1,
                metrics=parse_metrics(["ndcg@10"]),
            ),
            tmp_path,
            tracker=Tracker("t"),
        )


def test_endpoints_and_generation_settings_are_in_the_api_identities(monkeypatch):
    pytest.importorskip("cohere")
    pytest.importorskip("anthropic")
    from rerank_eval.rerankers.cohere import CohereReranker
    from rerank_eval.rerankers.llm import LLMReranker

    monkeypatch.setenv("COHERE_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert CohereReranker().identity != CohereReranker(base_url="http://127.0.0.1:9").identity
    base = LLMReranker(cache_enabled=False).identity
    for other in ({"base_url": "http://127.0.0.1:9"}, {"max_tokens": 64}, {"batch_size": 5}):
        assert LLMReranker(cache_enabled=False, **other).identity != base, other


def test_a_hub_model_is_identified_by_its_snapshot_commit_and_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from rerank_eval.provenance import model_identity

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--reranker"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"x": 1}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    first = model_identity("org/reranker")
    assert first.startswith(f"org/reranker@{'a' * 40}#")
    (snap / "config.json").write_text('{"x": 2}')
    assert model_identity("org/reranker") != first
    assert model_identity("org/not-cached") == "org/not-cached@main"


# -- 4. run files re-score to the reported figures -------------------------------------------------------------


@pytest.mark.parametrize("name", DL19_RUNS)
def test_every_shipped_dl19_run_rescores_under_trec_eval(dl19, tmp_path, name):
    metrics = parse_metrics(
        ["ndcg@10", "ndcg@1", "mrr@10", "recall@100", "map@100", "judged@10", "precision@5"]
    )
    res = run_job(
        job_spec(
            dl19,
            RunFileRetriever(name=name),
            None,
            candidates=100,
            top_k=5,
            metrics=metrics,
            context_tokenizer=None,
        ),
        tmp_path,
    )
    per_query = pd.read_csv(tmp_path / "per_query.csv", index_col="query_id", dtype={"query_id": str})
    got = rescore(tmp_path / "run.trec", dl19.qrels(), metrics, 2)
    for m in metrics:
        theirs = pd.Series(got[m.name]).reindex(per_query.index).fillna(0.0)
        np.testing.assert_allclose(per_query[f"reranked.{m.name}"], theirs, atol=1e-4, err_msg=m.name)
        assert res.metrics[m.name] == pytest.approx(theirs.mean(), abs=1e-4)


def test_a_heavily_tied_reranked_run_rescores_under_trec_eval(dl19, tmp_path):
    metrics = parse_metrics(["ndcg@10", "mrr@10", "map@100", "precision@5"])
    res = run_job(
        job_spec(
            dl19,
            RunFileRetriever(name="bm25"),
            GradeReranker(),
            candidates=30,
            top_k=5,
            metrics=metrics,
            context_tokenizer=None,
        ),
        tmp_path,
    )
    raw = pd.read_csv(tmp_path / "run.scores.tsv", sep="\t", dtype={"query_id": str, "doc_id": str})
    assert raw.groupby("query_id")["score"].apply(lambda s: s.duplicated().mean()).mean() > 0.8  # ties
    # pytrec_eval re-sorts by score, so only strictly decreasing scores give back the harness's order
    run = {}
    for line in (tmp_path / "run.trec").read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    ev = pytrec_eval.RelevanceEvaluator(dl19.qrels(), {"ndcg_cut_10", "P_5"}, relevance_level=2)
    ours = ev.evaluate(run)
    assert res.metrics["ndcg@10"] == pytest.approx(
        np.mean([v["ndcg_cut_10"] for v in ours.values()]), abs=1e-4
    )
    assert res.metrics["precision@5"] == pytest.approx(np.mean([v["P_5"] for v in ours.values()]), abs=1e-4)
    # the raw grades, as the run file used to hold them, give trec_eval another order and another figure
    graded = {q: dict(zip(g["doc_id"], g["score"], strict=True)) for q, g in raw.groupby("query_id")}
    theirs = np.mean([v["ndcg_cut_10"] for v in ev.evaluate(graded).values()])
    assert abs(theirs - res.metrics["ndcg@10"]) > 1e-3


class FailingOnSome:
    """Fails on every other query, as an API that stays down for them would; scores by length elsewhere."""

    pointwise = True
    identity = "fails-on-some"
    name = "fails"

    def score(self, query, docs):
        from rerank_eval.rerankers.api import RerankerCallError

        if int(query.query_id) % 2:
            raise RerankerCallError(f"down for {query.query_id}")
        return [float(len(d.full_text)) for d in docs]


def test_empty_lists_and_short_lists_rescore_under_trec_eval_and_ir_measures(dl19, tmp_path):
    """A failed query (on_failure=zero) has an empty list and counts 0 in the mean: its run file line makes
    trec_eval (which averages the queries in the run) count it too. judged@10 of a 3-document list divides by 3,
    as ir_measures does."""
    metrics = parse_metrics(["ndcg@10", "judged@10"])
    res = run_job(
        job_spec(
            dl19,
            RunFileRetriever(name="bm25"),
            FailingOnSome(),
            candidates=3,
            top_k=3,
            metrics=metrics,
            context_tokenizer=None,
            on_failure="zero",
            latency_probe=0,
        ),
        tmp_path,
    )
    per_query = pd.read_csv(tmp_path / "per_query.csv", index_col="query_id", dtype={"query_id": str})
    failed = [q for q in per_query.index if int(q) % 2]
    assert failed and (per_query.loc[failed, "reranked.ndcg@10"] == 0).all()
    run = {}
    for line in (tmp_path / "run.trec").read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    assert sorted(run) == sorted(per_query.index)  # every judged query is in the run file, failed ones too
    ev = pytrec_eval.RelevanceEvaluator(dl19.qrels(), {"ndcg_cut_10"}, relevance_level=2)
    assert res.metrics["ndcg@10"] == pytest.approx(
        np.mean([v["ndcg_cut_10"] for v in ev.evaluate(run).values()])
    )
    theirs = rescore(tmp_path / "run.trec", dl19.qrels(), metrics, 2)
    for m in metrics:  # per query, no query filled in
        assert set(theirs[m.name]) == set(per_query.index), m.name
        np.testing.assert_allclose(
            per_query[f"reranked.{m.name}"], pd.Series(theirs[m.name]).reindex(per_query.index), atol=1e-6
        )
    assert per_query["reranked.judged@10"].max() == 1.0  # three judged of three, not 0.3


def test_nan_scores_are_an_error_naming_the_reranker_and_the_query(tmp_path):
    class NanReranker(GradeReranker):
        name, identity = "broken", "nan"

        def score(self, query, docs):
            return [float("nan")] + [1.0] * (len(docs) - 1)

    with pytest.raises(RerankEvalError, match=r"broken gave 1 non-finite score\(s\) \(nan\) for query q1"):
        run_job(
            job_spec(
                BeirDirDataset(TINY),
                BM25Retriever(),
                NanReranker(),
                candidates=3,
                top_k=1,
                metrics=parse_metrics(["ndcg@10"]),
                context_tokenizer=None,
            ),
            tmp_path,
        )
    assert not (tmp_path / "metrics.json").exists()


# -- 5. a pair's score does not depend on its batch --------------------------------------------------------------


def test_a_job_scored_fresh_equals_the_same_job_served_from_a_deeper_jobs_cache(tmp_path, monkeypatch):
    # the suite's DL19 workload in the evaluation default (conftest's runs the throughput mode)
    ce = [*(a for a in DL19_CE if not a.startswith(("reranker.dtype", "reranker.batch_invariant")))]
    ce += ["mlflow.enabled=false", "latency.probe=0"]
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(tmp_path / "fresh"))
    fresh = job(tmp_path / "fresh-10", *ce, "candidates=10", "top_k=10")
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(tmp_path / "deep"))
    job(tmp_path / "deep-20", *ce, "candidates=20", "top_k=10")
    served = job(tmp_path / "served-10", *ce, "candidates=10", "top_k=10")
    assert fresh.counts["pairs_scored"] == 430 and served.counts["pairs_scored"] == 0
    assert served.metrics == fresh.metrics and served.pvalues == fresh.pvalues
    assert (tmp_path / "served-10" / "run.scores.tsv").read_text() == (
        tmp_path / "fresh-10" / "run.scores.tsv"
    ).read_text()


def test_a_bi_encoder_score_does_not_depend_on_the_other_candidates(dl19):
    from rerank_eval.rerankers.bi_encoder import BiEncoderReranker

    rr = BiEncoderReranker()
    query = dl19.queries()[0]
    docs = list(dl19.docs(sorted(dl19.qrels()[query.query_id])[:60]).values())
    alone = [rr.score(query, [d])[0] for d in docs[:7]]
    assert rr.score(query, docs)[:7] == alone and rr.score(query, docs[:3]) == alone[:3]


def test_engine_equals_predict_when_both_texts_exceed_max_length():
    from sentence_transformers import CrossEncoder

    from rerank_eval.scoring.cross_encoder import CrossEncoderEngine

    query = " ".join(f"word{i}" for i in range(300))  # ~600 tokens
    doc = " ".join(f"term {i}" for i in range(150))  # ~300 tokens
    pairs = [(query, doc), (doc, query), (query, query + " more")]
    eng = CrossEncoderEngine(str(CE_MODEL), max_length=256)
    tok = eng.tokenizer
    ids, _, cu = eng.pack(pairs)
    for i, (a, b) in enumerate(pairs):
        assert ids[cu[i] : cu[i + 1]].tolist() == tok(a, b, truncation=True, max_length=256)["input_ids"]
    ref = CrossEncoder(str(CE_MODEL), max_length=256, activation_fn=__import__("torch").nn.Identity())
    np.testing.assert_allclose(eng.score_pairs(pairs), ref.predict(pairs), atol=1e-4)


def test_where_the_token_cache_would_cut_pairs_wrong_the_tokenizer_builds_them(monkeypatch, caplog):
    """The load-time check is real: with a cache whose truncation differs from this tokenizers version's (as
    tokenizers 0.23.0-0.23.2 differ from the rule the cache follows), the engine is not refused: every pair goes
    through the tokenizer's own pair encoding, and the scores are predict's."""
    from sentence_transformers import CrossEncoder

    import rerank_eval.scoring.cross_encoder as engine

    assert engine.CrossEncoderEngine(str(CE_MODEL), max_length=64).tokenization == "cached"
    real = engine.truncate_pairs
    monkeypatch.setattr(engine, "truncate_pairs", lambda n1, n2, budget: real(np.minimum(n1, 1), n2, budget))
    eng = engine.CrossEncoderEngine(str(CE_MODEL), max_length=64)
    assert eng.tokenization == "library" and "every pair goes through the tokenizer" in caplog.text
    pairs = [(" ".join(["cat"] * 50), " ".join(["dog"] * 51)), ("a cat", "a dog"), ("x " * 90, "y")]
    ce = CrossEncoder(str(CE_MODEL), max_length=64, activation_fn=__import__("torch").nn.Identity())
    np.testing.assert_allclose(eng.score_pairs(pairs), ce.predict(pairs), atol=1e-5)
    doc, whole = eng.kept_tokens(pairs)  # the truncation figures count what the tokenizer kept
    assert whole.tolist() == [
        len(ce.tokenizer(a, b, truncation=True, max_length=64)["input_ids"]) for a, b in pairs
    ]
    assert doc.tolist() == [31, 2, 1]


def test_dtype_and_length_are_in_the_name_and_identity():
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    own = CrossEncoderReranker(str(CE_MODEL))
    assert own.max_length == 512 and own.name == "ce-scifact-minilm-l6-ce-fp32"  # its tokenizer's 512
    cut = CrossEncoderReranker(str(CE_MODEL), max_length=256, dtype="bf16")
    assert cut.name == "ce-scifact-minilm-l6-ce-bf16-len256" and "bf16" in cut.identity
    batched = CrossEncoderReranker(str(CE_MODEL), max_length=256, batch_invariant=False)
    assert (
        batched.name.endswith("-batched")
        and batched.identity != CrossEncoderReranker(str(CE_MODEL), max_length=256).identity
    )


def test_max_length_comes_from_the_models_own_config(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from rerank_eval.scoring.models import declared_max_length

    cfg = AutoConfig.from_pretrained(CE_MODEL)
    tok = AutoTokenizer.from_pretrained(CE_MODEL)
    assert declared_max_length(str(CE_MODEL), tok, cfg) == 512
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    assert declared_max_length(str(tmp_path), tok, cfg) == 256
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 4096}')
    assert declared_max_length(str(tmp_path), tok, cfg) == 512  # capped by the position embeddings


# -- 6. LLM pointwise ------------------------------------------------------------------------------------------


def test_llm_grades_are_pointwise_only_one_document_a_request(monkeypatch):
    pytest.importorskip("anthropic")
    from rerank_eval.rerankers.llm import LLMReranker

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    one = LLMReranker(mode="pointwise", batch_size=1, cache_enabled=False)
    ten = LLMReranker(mode="pointwise", batch_size=10, cache_enabled=False)
    assert one.pointwise and not ten.pointwise and not LLMReranker(cache_enabled=False).pointwise
    assert one.name != ten.name and "-b10-" in ten.name


# -- 7. what the judgements can say ----------------------------------------------------------------------------


def test_judged_at_k_is_absent_where_qrels_hold_only_positives(tmp_path):
    data = tiny_copy(tmp_path)
    lines = (data / "qrels" / "test.tsv").read_text().splitlines()
    (data / "qrels" / "test.tsv").write_text("\n".join(x for x in lines if not x.endswith("\t0")) + "\n")
    metrics = parse_metrics(["ndcg@10", "judged@10"])
    res = bm25_job(BeirDirDataset(data), tmp_path / "o", metrics)
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "judged@10" not in res.metrics and "only relevant documents" in summary["absent"]["judged@10"]
    res = bm25_job(BeirDirDataset(TINY), tmp_path / "p", metrics)
    assert "judged@10" in res.metrics  # tiny's qrels judge d2 non-relevant


def test_queries_without_relevant_documents_are_counted_and_kept_as_trec_eval_keeps_them(tmp_path):
    ds = BeirDirDataset(
        TINY, relevance_level=2
    )  # q2's only judgement is grade 1: nothing relevant at level 2
    metrics = parse_metrics(["ndcg@10", "mrr@10", "map@100"])
    keep = bm25_job(ds, tmp_path / "k", metrics)
    assert keep.counts["queries_without_relevant"] == 1 and keep.counts["queries"] == 2
    got = rescore(tmp_path / "k" / "run.trec", ds.qrels(), metrics, 2)
    for m in metrics:
        assert keep.metrics[m.name] == pytest.approx(np.mean(list(got[m.name].values())), abs=1e-9), m.name
    drop = bm25_job(ds, tmp_path / "d", metrics, no_relevant="drop")
    assert drop.counts["queries"] == 1 and drop.metrics["mrr@10"] == pytest.approx(got["mrr@10"]["q1"])


# -- 8. pool corpora -------------------------------------------------------------------------------------------


def test_full_corpus_first_stages_over_a_pool_are_refused_unless_asked(tmp_path):
    with pytest.raises(ConfigError, match="only a pool.*retriever=run"):
        job(tmp_path / "a", "dataset=msmarco-dl19", "retriever=bm25", "reranker=none", "mlflow.enabled=false")
    pool = [
        "dataset=beir_dir",
        f"dataset.path={TINY}",
        "dataset.pool=true",
        "reranker=none",
        "mlflow.enabled=false",
    ]
    with pytest.raises(ConfigError, match="only a pool"):
        job(tmp_path / "b", *pool, "retriever=bm25", "candidates=3", "top_k=1")
    job(tmp_path / "c", *pool, "retriever=bm25", "candidates=3", "top_k=1", "allow_pool=true")
    origin = json.loads((tmp_path / "c" / "metrics.json").read_text())["origin"]
    assert origin["pool_override"] == "true" and origin["dataset_pool"] == "true"
    job(
        tmp_path / "d",
        *pool,
        "retriever=run",
        f"retriever.path={TINY / 'runs' / 'demo.top100.trec'}",
        "candidates=3",
        "top_k=1",
    )  # a saved run over a pool is what the pool is for
    assert (tmp_path / "d" / "metrics.json").is_file()
