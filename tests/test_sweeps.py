"""Sweeps: parent and child runs, reports with significance, resume after a kill, a real MLflow server."""

import json
import os
import signal
import subprocess
import sys
import time

import conftest
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY
from scipy import stats

from rerank_eval.report import JobRecord, comparison_frame, holm, markdown_table, pareto_front, write_report

DL19_CE = [*conftest.DL19_CE, "progress=false"]


def env_for(tmp_path, uri=None):
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri or f"sqlite:///{tmp_path / 'mlruns.db'}",
        "RERANK_EVAL_CACHE": str(tmp_path / "cache"),
        "RERANK_EVAL_NO_PROGRESS": "1",
    }


def sweep_cmd(tmp_path, *args):
    return [sys.executable, "-m", "rerank_eval", "-m", *args, f"hydra.sweep.dir={tmp_path / 'multi'}"]


def record(name, reranker, reranked, first, ms=10.0):
    pq = pd.DataFrame(
        {"reranked.ndcg@10": reranked, "first_stage.ndcg@10": first},
        index=pd.Index([f"q{i}" for i in range(len(first))], name="query_id"),
    )
    return JobRecord(
        name,
        "d",
        "bm25",
        reranker,
        100,
        10,
        {"ndcg@10": float(np.mean(reranked))},
        {"ndcg@10": float(np.mean(first))},
        {"reranker_ms_mean": ms},
        pq,
        latency_source="measured",
    )


def test_report_table_on_fixed_runs(tmp_path):
    first = [0.2, 0.4, 0.5, 0.1, 0.3, 0.6]
    a = [0.5, 0.6, 0.5, 0.4, 0.5, 0.9]  # 5 wins, 1 tie
    b = [0.1, 0.5, 0.4, 0.2, 0.3, 0.5]  # 2 wins, 1 tie, 3 losses
    recs = [
        record("x/none", "none", first, first),
        record("x/ce", "ce", a, first, 120.0),
        record("x/bi", "bi", b, first, 8.0),
    ]
    frame = comparison_frame(recs, metrics=["ndcg@10"])
    pa, pb = stats.ttest_rel(a, first).pvalue, stats.ttest_rel(b, first).pvalue
    assert frame["p"].tolist()[1:] == pytest.approx([pa, pb])
    lo, hi = sorted([pa, pb])
    expect = {
        pa: min(1, 2 * lo) if pa == lo else max(min(1, 2 * lo), hi),
        pb: min(1, 2 * lo) if pb == lo else max(min(1, 2 * lo), hi),
    }
    assert frame["p (Holm)"].tolist()[1:] == pytest.approx([expect[pa], expect[pb]])
    assert frame[["wins", "ties", "losses"]].values.tolist() == [[0, 6, 0], [5, 1, 0], [2, 1, 3]]
    assert frame["delta"].tolist() == pytest.approx(
        [0.0, np.mean(a) - np.mean(first), np.mean(b) - np.mean(first)]
    )
    md = markdown_table(frame, metrics=["ndcg@10"])
    row = md.splitlines()[3]
    assert row.startswith(f"| d | bm25 | ce | {np.mean(a):.4f} | 120.0 | +{np.mean(a) - np.mean(first):.4f}")
    assert ("†" in row) == (expect[pa] < 0.05)
    paths = write_report(recs, tmp_path / "rep", "fixed")
    assert {p.name for p in paths} == {
        "report.md",
        "report.csv",
        "report.html",
        "bars.png",
        "latency.png",
        "recall.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)


def test_holm_and_pareto():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    # (cost, quality): the second point is dominated by the first
    assert pareto_front([(10, 0.5), (20, 0.4), (5, 0.3), (50, 0.7)]) == [2, 0, 3]


@pytest.mark.slow  # ~60 s, the suite's slowest; make test resumes a sweep in tests/test_hydra_use.py
def test_resume_after_sigkill_matches_an_uninterrupted_sweep(tmp_path):
    args = [*DL19_CE, "candidates=5,10", "top_k=5"]
    # the uninterrupted sweep, in its own store and cache
    clean = tmp_path / "clean"
    subprocess.run(
        sweep_cmd(clean, *args), cwd=ROOT, env=env_for(clean), check=True, capture_output=True, timeout=600
    )
    # the same sweep, killed once its first job has finished
    work = tmp_path / "work"
    proc = subprocess.Popen(
        sweep_cmd(work, *args),
        cwd=ROOT,
        env=env_for(work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (work / "multi" / "0" / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "multi" / "1" / "metrics.json").exists(), (
        "the sweep finished before it could be killed"
    )
    from rerank_eval.cache import ScoreCache

    scored_before = ScoreCache(work / "cache" / "scores.sqlite").count()
    rerun = subprocess.run(
        sweep_cmd(work, *args),
        cwd=ROOT,
        env=env_for(work),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "reused, not run again" in rerun.stdout + rerun.stderr
    jobs = [json.loads((work / "multi" / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert jobs[0].get("reused") is True
    scored_after = sum(j["counts"]["pairs_scored"] for j in jobs if not j.get("reused"))
    # nothing the cache held was scored again: 43 queries x 10 candidates pairs exist in all
    assert scored_before + scored_after == 43 * 10
    cols = ["candidates", "ndcg@10", "mrr@10", "recall@100", "delta", "p"]
    a = pd.read_csv(clean / "multi" / "report" / "report.csv")[cols]
    b = pd.read_csv(work / "multi" / "report" / "report.csv")[cols]
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow  # 20 s; the file store's path is every other sweep test's
def test_two_job_sweep_against_a_real_mlflow_server(tmp_path):
    from rerank_eval.tracking import local_server

    with local_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts") as uri:
        subprocess.run(
            sweep_cmd(
                tmp_path,
                "dataset=beir_dir",
                f"dataset.path={TINY}",
                "dataset.name=tiny",
                "reranker=none",
                "candidates=2,3",
                "top_k=1",
                "mlflow.experiment=remote",
            ),
            cwd=ROOT,
            env=env_for(tmp_path, uri),
            check=True,
            capture_output=True,
            timeout=600,
        )
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("remote")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("parent") == "true"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
        assert len(parents) == 1 and len(children) == 2
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
        assert sorted(r.data.params["candidates"] for r in children) == ["2", "3"]
        assert "run.trec" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
        assert "report.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        assert parents[0].data.metrics["knee_depth"] in (2.0, 3.0)  # a depth sweep of one pipeline: its knee
