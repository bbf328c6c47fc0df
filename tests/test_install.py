"""The wheel, installed as a user installs it: configs found inside the package, every file written under the
working folder (never beside site-packages), a user's own config group, the console commands."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

USER_CONF = ROOT / "tests" / "data" / "user_conf"


@pytest.mark.slow
def test_the_wheel_runs_a_job_from_an_empty_folder_with_a_user_config_group(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("rerank_eval-*.whl")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, capture_output=True, timeout=1200)  # the CPU build
    subprocess.run([*pip, wheel], check=True, capture_output=True, timeout=1200)
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RERANK_EVAL_", "MLFLOW_", "VIRTUAL_ENV"))
    }
    env.update(MYTINY_PATH=str(TINY), RERANK_EVAL_NO_PROGRESS="1", HF_HUB_OFFLINE="1")

    def command(name: str, *args) -> str:
        """Run one of the wheel's console commands in the empty folder; its stdout."""
        proc = subprocess.run(
            [venv / "bin" / name, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = command(
        "rerank-eval", "--config-dir", USER_CONF, "dataset=mytiny", "reranker=none", "candidates=3", "top_k=2"
    )
    assert "mytiny/bm25-bm25s/none@3/top2: ndcg@10=" in out
    landed = sorted(p.name for p in work.iterdir())
    # outputs, caches and the MLflow store: all here
    assert landed == [".cache", "mlartifacts", "mlruns.db", "outputs"], landed
    (metrics,) = work.glob("outputs/*/*/metrics.json")
    assert (metrics.parent / "run.trec").is_file()
    site = next((venv / "lib").glob("python*/site-packages"))
    # the wheel carries the reusable groups, not the repository's own studies (conf/experiment/ in a checkout)
    assert (site / "rerank_eval" / "conf" / "reranker" / "cross_encoder.yaml").is_file()
    assert not (site / "rerank_eval" / "conf" / "experiment").exists()
    assert not [
        p for p in (site.parent, site, venv) for n in ("outputs", "mlruns.db", ".cache") if (p / n).exists()
    ]
    # a study through the shipped sweeper plugin, and the report command on it
    command(
        "rerank-eval",
        "-m",
        "--config-dir",
        USER_CONF,
        "+experiment=mystudy",
        "reranker=none",
        "candidates=2,3",
    )
    command("rerank-eval-report", "--experiment", "mystudy", "--latest-parent")
    assert (work / "results" / "mystudy" / "report.md").is_file()
