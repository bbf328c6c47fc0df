"""The engine against ``CrossEncoder.predict`` under another tokenizers release, in a subprocess with that release
first on the path (the same as ``make tokenizers-check``). Slow: it installs tokenizers 0.23.1 from the index."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_engine_equals_predict_under_tokenizers_0_23_1(tmp_path):
    target = tmp_path / "tokenizers-0.23.1"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            "tokenizers==0.23.1",
        ],
        check=True,
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "engine_equals_predict.py")],
        env={**__import__("os").environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("tokenizers ")]
    assert done.returncode == 0 and len(lines) == 3, done.stdout + done.stderr
    assert all(x.startswith("tokenizers 0.23.1 ") and x.endswith(" ok") for x in lines)
    assert any("tokenization=library" in x for x in lines)  # the cache's rule differs there: the library cuts
