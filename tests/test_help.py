"""Every console command's --help prints help for that command and exits 0 (no search, no job, no Hydra banner)."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            "rerank-eval",
            ["rerank-eval: does this reranker", "== Config groups", "reranker: bi_encoder", "top_k: 10"],
        ),
        ("rerank-eval-train", ["rerank-eval-train: fine-tune a cross-encoder", "train:"]),
        ("rerank-eval-shard", ["rerank-eval-shard: a large collection's first stage", "stage: encode"]),
        ("rerank-eval-ask", ['rerank-eval-ask [overrides] "a question"', "--no-answer"]),
        ("rerank-eval-report", ["usage: rerank-eval-report", "--latest-parent", "per-query diff"]),
    ],
)
def test_help_describes_the_command_and_exits_0(command, expected, tmp_path):
    proc = subprocess.run(
        [str(BIN / command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[:1500])
    assert "powered by Hydra" not in proc.stdout and "``" not in proc.stdout
    assert not (tmp_path / "outputs").exists()  # help runs no job
