"""End to end through the command line, against a temporary MLflow store read back through the MLflow API."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CE_MODEL, ROOT, TINY

TINY_DS = ["dataset=beir_dir", f"dataset.path={TINY}", "dataset.name=tiny"]


def cli(tmp_path, *args, module="rerank_eval", check=True):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "RERANK_EVAL_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            *args,
            f"hydra.run.dir={tmp_path / 'out'}",
            f"hydra.sweep.dir={tmp_path / 'multi'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def runs(tmp_path, experiment="rerank-eval"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_job_end_to_end_is_tracked_in_mlflow(tmp_path):
    proc = cli(
        tmp_path,
        *TINY_DS,
        "retriever=bm25",
        "reranker=cross_encoder",
        f"reranker.model={CE_MODEL}",
        "reranker.max_length=128",
        "candidates=4",
        "top_k=2",
        "threads=1",
    )
    assert "tiny/bm25-bm25s/ce-scifact-minilm-l6-ce-fp32-len128@4/top2: ndcg@10=" in proc.stdout
    client, found = runs(tmp_path)
    assert len(found) == 1
    run = found[0]
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["candidates"] == "4" and p["top_k"] == "2" and p["reranker.model"] == str(CE_MODEL)
    assert p["metrics"].startswith("['ndcg@1'") and p["final_metrics"] == "['ndcg', 'precision', 'recall']"
    for key in (
        "ndcg_at_10",
        "mrr_at_10",
        "recall_at_2",
        "precision_at_2",
        "context_precision",
        "context_tokens",
        "recall_at_100",
        "map_at_100",
        "judged_at_10",
        "first_stage_ndcg_at_10",
        "delta_ndcg_at_10",
        "pvalue_ndcg_at_10",
        "reranker_ms_p50",
        "reranker_ms_p95",
        "reranker_ms_mean",
        "first_stage_ms_p50",
        "pairs_scored",
    ):
        assert key in m, key
    assert m["pairs_scored"] == 8  # 2 judged queries x 4 candidates
    assert (
        t["dataset"] == "tiny" and t["reranker"] == "ce-scifact-minilm-l6-ce-fp32-len128" and t["git_commit"]
    )
    assert t["reranker_identity"].startswith("cross-encoder|") and "version.ranx" in t
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "run.trec",
        "run.scores.tsv",
        "first_stage.trec",
        "per_query.csv",
        "config.yaml",
        ".hydra",
    } <= arts
    assert t["latency_source"] == "measured" and t["code_version"]
    assert p["threads"] == "1" and t["latency_device"].endswith(
        "(1 threads)"
    )  # the job ran on the threads asked
    assert {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")} >= {".hydra/config.yaml"}
    out = tmp_path / "out"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["ndcg@10"] == pytest.approx(m["ndcg_at_10"])
    lines = (out / "run.trec").read_text().splitlines()
    assert len(lines) == 8 and lines[0].split()[:4] == ["q1", "Q0", lines[0].split()[2], "1"]
    # the reranker put the cat-food abstract first for "what do cats eat"
    assert lines[0].split()[2] == "d4"


def test_replayed_runs_and_bm25_settings_are_named_after_what_ran(tmp_path):
    from rerank_eval.retrievers.bm25 import BM25Retriever
    from rerank_eval.retrievers.run_file import RunFileRetriever

    assert RunFileRetriever(name="bm25", path="/x/bm25-rm3.top100.trec").name == "run-bm25-rm3"
    assert RunFileRetriever(name="splade-pp-ed").name == "run-splade-pp-ed"
    assert BM25Retriever().name == "bm25-bm25s"
    assert BM25Retriever(k1=1.2, b=0.75).name == "bm25-bm25s-k1=1.2-b=0.75"
    assert BM25Retriever(stemmer=None).name == "bm25-bm25s-stemmer=None"


def test_a_new_store_clears_what_killed_creations_left(tmp_path):
    """A process killed while it built a new SQLite store leaves its temporary file; the next creation removes
    the ones whose process is gone and keeps those of a process still at work."""
    from rerank_eval.tracking import _create_sqlite_store

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    left = tmp_path / f".mlruns.db.{int(dead.stdout)}.init"
    busy = tmp_path / f".mlruns.db.{os.getppid()}.init"  # a live process (this one's parent)
    left.write_bytes(b"half a schema")
    busy.write_bytes(b"")
    _create_sqlite_store(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert (tmp_path / "mlruns.db").is_file()
    assert not left.exists() and busy.exists()


def test_shards_run_as_a_joblib_multirun_and_merge_into_one_run_file(tmp_path):
    from pathlib import Path

    out = tmp_path / "shards"
    args = [*TINY_DS, "retriever=bm25", "candidates=5", f"out={out}"]
    cli(
        tmp_path,
        "-m",
        *args,
        "stage=retrieve",
        "shard=0,1",
        "shards=2",
        "hydra/launcher=joblib",
        module="rerank_eval.shard",
    )
    parts = sorted(out.glob("*-of-2.trec"))
    assert [p.name.split(".")[-2] for p in parts] == ["0-of-2", "1-of-2"]
    merged = cli(tmp_path, *args, "stage=merge", "shards=2", module="rerank_eval.shard")
    path = Path(merged.stdout.strip().split("wrote ")[-1])
    lines = path.read_text().splitlines()
    qids = ["q1", "q2"]  # the judged queries (q3 has no judgements)
    assert sorted({x.split()[0] for x in lines}) == sorted(qids)
    assert sorted(lines) == sorted(x for p in parts for x in p.read_text().splitlines())
    missing = cli(tmp_path, *args, "stage=merge", "shards=3", module="rerank_eval.shard", check=False)
    assert missing.returncode != 0 and "(stage=retrieve shard=0 shards=3)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_sweep_checks_every_job_before_the_first_runs(tmp_path):
    """One bad value in a sweep stops it before any work, naming the job's overrides: job 0 (valid) never runs."""
    proc = cli(tmp_path, "-m", *TINY_DS, "reranker=none", "candidates=4,-5", "top_k=2", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("rerank-eval: error: sweep job #1 (")
    assert "candidates=-5" in lines[-1]
    assert lines[-1].endswith("candidates must be a positive integer, got -5; nothing was run")
    assert not (tmp_path / "multi" / "0").exists()
    client, found = runs(tmp_path)
    assert not [r for r in found if r.data.tags.get("mlflow.parentRunId")]  # no job was tracked


def test_a_jobs_threads_are_set_for_the_job_and_given_back_after_it(monkeypatch):
    """In one process (a sweep, a notebook, this suite) a job's `threads` does not outlive the job."""
    import torch

    from rerank_eval.cli import job_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with job_threads(1):
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before
    assert os.environ["OMP_NUM_THREADS"] == "2" and "MKL_NUM_THREADS" not in os.environ
    with job_threads(None):  # null: the process's own settings, untouched
        assert torch.get_num_threads() == before


def test_auto_threads_leave_other_processes_their_cores():
    from rerank_eval.threads import auto_threads

    assert [auto_threads(2, b) for b in (0.0, 0.4, 0.6, 1.0, 1.9, 2.0, 5.0)] == [2, 2, 1, 1, 1, 1, 1]
    assert auto_threads(16, 2.4) == 14
    from test_trust import TINY_CE, compose

    from rerank_eval.config import check_config
    from rerank_eval.errors import ConfigError

    assert check_config(compose(*TINY_CE))["threads"] == "auto"  # the default
    with pytest.raises(ConfigError, match="threads must be auto, null or a whole number >= 1, got 'some'"):
        check_config(compose(*TINY_CE, "threads=some"))


def test_auto_threads_measure_a_competing_process(monkeypatch):
    """Two busy processes beside the job: ``threads=auto`` gives the job what they leave, at least one core."""
    import torch

    from rerank_eval.cli import job_threads
    from rerank_eval.threads import busy_cores, resolve_threads

    cores = len(os.sched_getaffinity(0))
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        import time

        time.sleep(0.3)  # both running
        found = busy_cores(0.2)
        assert found is not None and found[0] == cores and found[1] >= 1.5
        before = torch.get_num_threads()
        with job_threads("auto"):
            assert 1 <= torch.get_num_threads() <= max(1, cores - 1)  # on this 2-core CPU: one
        assert torch.get_num_threads() == before
    finally:
        for p in spin:
            p.kill()
            p.wait()
    # nothing else busy: torch's own default (None leaves it); all but one core busy: one thread
    monkeypatch.setattr("rerank_eval.threads.busy_cores", lambda window_s=0.1: (2, 0.2))
    assert resolve_threads("auto") is None
    monkeypatch.setattr("rerank_eval.threads.busy_cores", lambda window_s=0.1: (2, 1.8))
    assert resolve_threads("auto") == 1
    assert resolve_threads(3) == 3 and resolve_threads(None) is None
