"""The MLflow UI, seen as users see it (slow: needs Debian's chromium; `make test-all` runs it)."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_mlflow_compare_view_charts_ndcg_and_latency_against_candidates():
    if not shutil.which("chromium"):
        pytest.fail("needs Debian's chromium: apt-get install chromium (make test-all installs it)")
    proc = subprocess.run(
        [sys.executable, "scripts/mlflow_screenshot.py", "--dom", "--reranker", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    dom, _, names = proc.stdout.rpartition("RUN NAMES:")
    names = json.loads(names)
    assert len(names) == 4
    assert "Comparing 4 Runs" in dom
    for name in names:
        assert name in dom
    # the parallel-coordinates plot's axes: the swept parameter, the headline metric, the latency (not MLflow's
    # default pick, the alphabetically first metric); the assistant panel closed
    import re

    axes = re.findall(r'class="axis-title"[^>]*>([^<]+)<', dom)
    assert axes == ["candidates", "ndcg_at_10", "first_stage_ms_p50"], axes
    assert "Ask a question" not in dom
