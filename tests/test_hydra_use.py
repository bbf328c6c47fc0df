"""Hydra as its users drive it: sweep functions, the joblib and submitit launchers, a config folder of one's own,
study overlays, a resumed sweep whose parent lists every job, and Hydra's own errors on one line."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

USER_CONF = ROOT / "tests" / "data" / "user_conf"


def env_for(tmp_path):
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "RERANK_EVAL_CACHE": str(tmp_path / "cache"),
        "RERANK_EVAL_NO_PROGRESS": "1",
        "MYTINY_PATH": str(TINY),
    }


def rerank_eval(tmp_path, *args, sweep_dir=None):
    cmd = [sys.executable, "-m", "rerank_eval", *args]
    if sweep_dir:
        cmd.append(f"hydra.sweep.dir={tmp_path / sweep_dir}")
    return subprocess.run(
        cmd, cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=600
    )


def runs(tmp_path, experiment):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_hydra_sweep_syntax_launchers_a_user_study_and_a_resumed_sweep(tmp_path):
    """A user's own dataset and study (``--config-dir``), swept with ``range`` through Hydra's submitit launcher
    (its local executor: each job its own process, the path SLURM takes), then again with ``choice`` and ``glob``
    through the basic launcher (the joblib one: tests/reliability/test_rel_load.py): the second sweep reuses two
    jobs and runs one, and its parent lists all three, so the report of the latest parent has every job."""
    common = ["-m", "--config-dir", str(USER_CONF), "+experiment=mystudy", "reranker=glob(no*)"]
    first = rerank_eval(
        tmp_path,
        *common,
        "candidates=range(2,4)",
        "hydra/launcher=submitit_local",
        "report.study=mine",
        "report.results=res",
        sweep_dir="a",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.isdigit()) == ["0", "1"]
    # a named study with report.results writes its table, plot and full report there
    assert {p.name for p in (tmp_path / "res").iterdir()} == {
        "mine.md",
        "mine.csv",
        "mine.png",
        "mine-report",
    }
    assert "| mytiny | bm25-bm25s | none |" in (tmp_path / "res" / "mine.md").read_text()
    report = (tmp_path / "a" / "report" / "report.md").read_text()
    assert report.startswith("# rerank-eval mine: the full report")  # written once, by the sweep, and copied
    assert (tmp_path / "res" / "mine-report" / "report.md").read_text() == report
    second = rerank_eval(tmp_path, *common, "candidates=choice(2,3,4)", sweep_dir="b")  # the basic launcher
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("reused, not run again") == 2
    found = runs(tmp_path, "mystudy")
    parents = [r for r in found if r.data.tags.get("parent") == "true"]
    assert len(parents) == 2
    kids = {
        p.info.run_id: [r for r in found if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        for p in parents
    }
    first_kids, second_kids = kids[parents[0].info.run_id], kids[parents[1].info.run_id]
    assert sorted(r.data.params["candidates"] for r in first_kids) == ["2", "3"]
    assert sorted(r.data.params["candidates"] for r in second_kids) == ["2", "3", "4"]
    reused = {r.data.tags["reused_from"] for r in second_kids if "reused_from" in r.data.tags}
    assert reused == {r.info.run_id for r in first_kids}
    assert all(r.info.run_name.startswith("mytiny/bm25-bm25s/none@") for r in second_kids)
    assert {
        (d.dataset.name, d.dataset.source_type) for r in second_kids for d in r.inputs.dataset_inputs
    } == {("mytiny", "local")}
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_eval.report",
            "--experiment",
            "mystudy",
            "--latest-parent",
            "--out",
            "rep",
        ],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert sorted(table["candidates"]) == [2, 3, 4]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["dataset=scifactt"],
            "Could not find 'dataset/scifactt' (did you mean scifact?); choose dataset= one of: arguana, beir_dir",
        ),
        (
            ["-m", "dataset=choice(cranfield,bogus)"],
            "Could not find 'dataset/bogus'; choose dataset= one of:",
        ),
        (["hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'; choose hydra/launcher= one of:"),
    ],
)
def test_an_unknown_choice_is_hydras_own_message_on_one_line(tmp_path, args, message):
    """Refused before any job runs (a sweep's every job is composed first); no parent run is left open."""
    proc = rerank_eval(tmp_path, *args, "reranker=none", sweep_dir="m")
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not [p for p in tmp_path.rglob("*") if p.name in ("metrics.json", "run.trec")]  # nothing ran
    if "-m" in args:  # the sweep's parent run is closed as failed, not left running
        assert [r.info.status for r in runs(tmp_path, "rerank-eval")] == ["FAILED"]
