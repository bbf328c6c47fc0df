"""The MLflow UI, seen as users see it (slow: needs Debian's chromium; `make test-all` runs it)."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium package")
def test_mlflow_compare_view_shows_the_sweep_runs():
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
