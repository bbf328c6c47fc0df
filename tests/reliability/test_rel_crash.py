"""Crash anywhere, lose nothing: SIGKILL a job and a sweep at seeded random moments, rerun, and compare with an
uninterrupted run. `make reliability` tries 25 kill points; `make test` leaves them to tests/test_sweeps.py's one."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from relhelp import DL19_CE, FIGURES, spawn, store_env

QUERIES = 43  # judged DL19 queries
JOB = DL19_CE
SCENARIOS = {
    # a long run: 43 queries x 30 candidates, one scoring call (30 pairs) per query
    "job": [*JOB, "candidates=30", "top_k=10"],
    # a sweep of 6 jobs over depths; shallower jobs are served from the deepest one's cache entries
    "sweep": ["-m", *JOB, "candidates=30,10,20", "top_k=5,10"],
}
DEPTHS = {"job": [30], "sweep": [30, 30, 10, 10, 20, 20]}


def argv(scenario: str, base: Path) -> list[str]:
    return [*SCENARIOS[scenario], f"hydra.run.dir={base / 'out'}", f"hydra.sweep.dir={base / 'multi'}"]


def job_dirs(scenario: str, base: Path) -> list[Path]:
    if scenario == "job":
        return [base / "out"]
    return [base / "multi" / str(i) for i in range(len(DEPTHS["sweep"]))]


def run_to_end(scenario: str, base: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = spawn(argv(scenario, base), store_env(base))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return time.perf_counter() - t0, out + err


def results(scenario: str, base: Path) -> dict:
    """What must come out identical: every job's reranked run file and its metrics and p-values."""
    got = {}
    for d in job_dirs(scenario, base):
        m = json.loads((d / "metrics.json").read_text())
        got[d.name] = {
            "run": (d / "run.trec").read_text(),
            "metrics": m["metrics"],
            "first_stage": m["first_stage"],
            "pvalues": m["pvalues"],
        }
    return got


def cached_pairs(base: Path) -> int:
    db = base / "cache" / "scores.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT COUNT(*) FROM pair_scores").fetchone()[0]


def check_no_false_complete(scenario: str, base: Path) -> int:
    """Every result file present is whole; returns how many were present."""
    present = 0
    for d, depth in zip(job_dirs(scenario, base), DEPTHS[scenario], strict=True):
        for name in ("run.trec", "first_stage.trec"):
            if (d / name).exists():
                present += 1
                lines = (d / name).read_text().splitlines()
                assert len(lines) == QUERIES * depth and all(len(x.split()) == 6 for x in lines), d / name
        if (d / "per_query.csv").exists():
            present += 1
            assert len(pd.read_csv(d / "per_query.csv")) == QUERIES
        if (d / "metrics.json").exists():
            present += 1
            summary = json.loads((d / "metrics.json").read_text())
            assert summary["metrics"] and (d / "run.trec").exists() and (d / "per_query.csv").exists()
    return present


def finished_runs_are_whole(base: Path) -> int:
    """Every MLflow run marked FINISHED holds its job's files; returns how many there are."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_env(base)["MLFLOW_TRACKING_URI"])
    n = 0
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'"):
            if run.data.tags.get("parent") == "true":
                continue
            n += 1
            arts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"run.trec", "per_query.csv", "metrics.json"} <= arts, arts
    return n


def phase(scenario: str, base: Path, cached: int) -> str:
    done = sum((d / "metrics.json").exists() for d in job_dirs(scenario, base))
    if done == len(job_dirs(scenario, base)):
        return "after the last result was written"
    if cached == 0:
        return "before any score was cached"
    if done == 0 and cached < QUERIES * max(DEPTHS[scenario]):
        return "while scoring"
    return "between scoring and the last result" if scenario == "job" else "part-way through the sweep"


def kill_points(scenario: str, n: int, seed: int, tmp_path: Path) -> dict:
    clean = tmp_path / "clean"
    wall, _ = run_to_end(scenario, clean)
    reference = results(scenario, clean)
    total = cached_pairs(clean)
    rng = random.Random(seed)
    points = []
    for i in range(n):
        base = tmp_path / f"kill{i}"
        delay = rng.uniform(0.5, wall)
        proc = spawn(argv(scenario, base), store_env(base))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        cached = cached_pairs(base)  # also: the cache passes SQLite's integrity check
        present = check_no_false_complete(scenario, base)
        finished_runs_are_whole(base)
        where = phase(scenario, base, cached)
        _, log = run_to_end(scenario, base)
        assert results(scenario, base) == reference, f"kill {i} at {delay:.1f}s changed the results"
        jobs = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(scenario, base)]
        rescored = sum(j["counts"]["pairs_scored"] for j in jobs if not j.get("reused"))
        reused = sum(bool(j.get("reused")) for j in jobs)
        # nothing the cache held was scored again; each cached call is whole (one query's 30 candidates)
        assert cached + rescored == total or reused == len(jobs), (cached, rescored, total)
        assert cached % 30 == 0
        assert finished_runs_are_whole(base) == len(jobs)  # one finished run per job: no duplicates
        stale = "marked KILLED" in log
        points.append(
            {
                "delay_s": round(delay, 2),
                "phase": where,
                "cached_at_kill": cached,
                "rescored": rescored,
                "jobs_reused": reused,
                "files_present_at_kill": present,
                "stale_run_closed": stale,
            }
        )
    return {"wall_s": round(wall, 1), "total_pairs": total, "seed": seed, "points": points}


@pytest.mark.parametrize(
    "scenario, n",
    [
        pytest.param("job", 1, marks=pytest.mark.slow),  # with tests/test_sweeps.py's killed sweep: make test-all
        pytest.param("job", 14, marks=pytest.mark.slow),
        pytest.param("sweep", 10, marks=pytest.mark.slow),
    ],
    ids=["job-1", "job-14", "sweep-10"],
)
def test_kill_anywhere_lose_nothing(scenario, n, tmp_path):
    figures = kill_points(scenario, n, seed=20261126 + n, tmp_path=tmp_path)
    assert len(figures["points"]) == n
    FIGURES.setdefault("kills", {})[f"{scenario}-{n}"] = figures
