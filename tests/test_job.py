"""A job as a spec and a few stages: built in Python without Hydra, the shipped defaults in one place, and no
function in the package too long to read at once."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import TINY
from hydra import compose, initialize_config_module

from rerank_eval.config import CONF_MODULE, job_options, job_spec, resolved_config, shipped_options
from rerank_eval.job.spec import CONFIG_KEYS, JobSpec

PACKAGE = Path(__file__).resolve().parent.parent / "rerank_eval"

IN_PYTHON = """
import json, sys
from pathlib import Path
from rerank_eval.datasets import BeirDirDataset
from rerank_eval.job import JobSpec, run_job
from rerank_eval.retrievers.run_file import RunFileRetriever

tiny = Path(sys.argv[1])
spec = JobSpec(
    BeirDirDataset(tiny, name="tiny"), RunFileRetriever(path=str(tiny / "runs" / "demo.top100.trec")), None,
    candidates=3, top_k=2, metrics=("ndcg@10",), final_measures=("precision",), context_tokenizer=None,
    significance="student", no_relevant="keep", allow_pool=False, latency_probe=0, latency_probe_api=0,
    bootstrap=1000, seed=1, query_batch=1, on_failure="fail", resume=True, progress=False,
)
res = run_job(spec, sys.argv[2])
print(json.dumps({"metrics": res.metrics, "hydra": any(m.split(".")[0] in ("hydra", "omegaconf") for m in sys.modules)}))
"""


def test_a_job_spec_built_in_python_runs_the_tiny_fixture_without_hydra(tmp_path):
    """The saved run replayed (no reranker): nDCG@10 by hand with trec_eval's linear gains. q1 ranks d1 (1), d4
    (2), d2 (0); q2 ranks d5 (unjudged), d3 (1); q3 has no judgements and is not evaluated."""
    proc = subprocess.run(
        [sys.executable, "-c", IN_PYTHON, str(TINY), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    d = 1 / math.log2(3)
    q1, q2 = (1 + 2 * d) / (2 + d), d / 1
    assert math.isclose(got["metrics"]["ndcg@10"], (q1 + q2) / 2, rel_tol=1e-12)
    assert math.isclose(got["metrics"]["precision@2"], (1.0 + 0.5) / 2, rel_tol=1e-12)
    assert not got["hydra"]  # nothing below the CLI imports Hydra
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"] == got["metrics"]


def test_the_defaults_live_in_the_shipped_config_only():
    """A spec built in Python gets the options Hydra composes from the shipped config: the same values, read from
    the same file (JobSpec itself has no defaults for them)."""
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        plain = resolved_config(compose("config"))
    assert job_options(plain) == {**shipped_options(), "metrics": job_options(plain)["metrics"]}
    assert [m.name for m in job_options(plain)["metrics"]] == plain["metrics"]
    assert set(CONFIG_KEYS) == {
        f
        for f in JobSpec.__dataclass_fields__
        if f not in ("dataset", "retriever", "reranker", "name", "config")
    }
    assert all(
        JobSpec.__dataclass_fields__[f].default is JobSpec.__dataclass_fields__["dataset"].default
        for f in CONFIG_KEYS
    )
    spec = job_spec(None, None, None, top_k=5)
    assert (
        spec.top_k == 5
        and spec.candidates == plain["candidates"]
        and spec.latency_probe == plain["latency"]["probe"]
    )


def test_no_function_in_the_package_is_too_long_to_read_at_once():
    long = []
    for path in PACKAGE.rglob("*.py"):
        limit = 80 if path.parent.name == "job" else 100  # a stage: ~80 lines at most
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name} {lines}")
    assert not long, long
