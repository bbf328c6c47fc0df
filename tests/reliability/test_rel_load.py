"""Load: a 16-job sweep through the joblib launcher, two worker processes writing one score cache and one MLflow
store at once: no lost runs, no duplicate runs, a cache that passes SQLite's integrity check and holds each pair
once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter

import pytest
from relhelp import DL19_CE, FIGURES, spawn, store_env

SWEEP = [
    "-m",
    "hydra/launcher=parallel",
    *DL19_CE,
    "candidates=5,10,15,20",
    "top_k=1,2,3,5",
    "mlflow.experiment=load",
]


@pytest.mark.slow  # two fresh worker processes load torch and the model: about a minute here
def test_sixteen_jobs_two_workers_one_cache_one_store(tmp_path):
    import mlflow

    env = store_env(tmp_path)
    t0 = time.perf_counter()
    proc = spawn([*SWEEP, f"hydra.sweep.dir={tmp_path / 'multi'}"], env)
    out, err = proc.communicate(timeout=1200)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, err[-3000:]
    jobs = [json.loads((tmp_path / "multi" / str(i) / "metrics.json").read_text()) for i in range(16)]
    assert sorted((j["candidates"], j["top_k"]) for j in jobs) == [
        (c, k) for c in (5, 10, 15, 20) for k in (1, 2, 3, 5)
    ]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("load")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 16 and len(runs) == 17  # nothing lost, nothing doubled
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    fingerprints = Counter(r.data.tags["fingerprint"] for r in children)
    assert len(fingerprints) == 16 and set(fingerprints.values()) == {1}
    assert {r.info.run_id for r in children} == {j["mlflow_run_id"] for j in jobs}
    for j, r in ((j, next(r for r in children if r.info.run_id == j["mlflow_run_id"])) for j in jobs):
        assert r.data.metrics["ndcg_at_10"] == pytest.approx(j["metrics"]["ndcg@10"])
    with sqlite3.connect(tmp_path / "cache" / "scores.sqlite") as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM pair_scores").fetchone()[0]
    assert (
        integrity == "ok" and rows == 43 * 20
    )  # every pair of the deepest job: no pair lost by a parallel write
    scored = sum(j["counts"]["pairs_scored"] for j in jobs)
    assert scored >= rows  # two workers may score the same pair at the same moment; the cache keeps one row
    report = (tmp_path / "multi" / "report" / "report.csv").read_text().splitlines()
    assert len(report) == 1 + 16
    FIGURES["load"] = {
        "jobs": 16,
        "workers": 2,
        "wall_s": round(wall, 1),
        "mlflow_runs": len(runs),
        "duplicate_runs": sum(v - 1 for v in fingerprints.values()),
        "cache_integrity": integrity,
        "cache_rows": rows,
        "pairs_scored_by_jobs": int(scored),
    }


def _log_dataset_at_once(uri, barrier, results, worker):
    from rerank_eval.tracking import Tracker

    tracker = Tracker("race", uri)
    for round_ in range(3):
        run_id = tracker.start_run(f"w{worker}r{round_}")
        barrier.wait()
        try:
            tracker.log_dataset(run_id, "scifact", f"{round_}" * 36, "/data/scifact", "eval")
            results.put("ok")
        except Exception as e:  # the failure is the finding: report it to the test, not a traceback
            results.put(f"{type(e).__name__}: {str(e)[:120]}")


def test_parallel_jobs_logging_one_new_dataset_all_succeed(tmp_path):
    """MLflow looks a dataset up and then inserts it; four jobs logging the same new dataset at one moment (a
    parallel sweep's first jobs) all succeed, and the store holds it once per digest with every run's input."""
    import multiprocessing

    from rerank_eval.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    Tracker("race", uri)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_log_dataset_at_once, args=(uri, barrier, results, w)) for w in range(4)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(12)]
    for w in workers:
        w.join(timeout=60)
    assert outcomes == ["ok"] * 12
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        assert db.execute("select count(*) from datasets").fetchone()[0] == 3
        assert db.execute("select count(*) from inputs").fetchone()[0] == 12
