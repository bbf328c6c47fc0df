"""What a sweep costs against one job: `make sweep-cost` (writes results/sweep_cost.md).

1. the single job `candidates=100 top_k=10` (fresh score cache and MLflow store), timed end to end;
2. the 16-job sweep `-m candidates=10,20,50,100 top_k=1,3,5,10` (fresh cache and store), timed end to end;
3. the same sweep again with resume=false (every job runs, the cache answers): pairs sent to the model;
4. the same sweep again with resume=true (finished jobs are recognised by fingerprint and reused).
Both use the DL19 BM25 run and the cross-encoder (max length 256), the way a user would run them.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CE = os.environ.get("RERANK_EVAL_CE_MODEL", str(ROOT.parent / "shared" / "models" / "scifact-minilm-l6-ce"))
JOB = [
    "dataset=msmarco-dl19",
    "retriever=run",
    "retriever.name=bm25",
    "reranker=cross_encoder",
    f"reranker.model={CE}",
    "reranker.max_length=256",
    "progress=false",
]


def run(tmp: Path, *args: str) -> float:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}",
        "RERANK_EVAL_CACHE": str(tmp / "cache"),
        "RERANK_EVAL_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rerank_eval", *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def pairs_scored(sweep_dir: Path) -> tuple[int, int]:
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    return sum(int(j["counts"]["pairs_scored"]) for j in jobs if not j.get("reused")), len(jobs)


def main() -> None:
    sweep = ["-m", *JOB, "candidates=10,20,50,100", "top_k=1,3,5,10"]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        a, b = Path(a), Path(b)
        single = run(a, *JOB, "candidates=100", "top_k=10", f"hydra.run.dir={a / 'single'}")
        first = run(b, *sweep, f"hydra.sweep.dir={b / 's1'}")
        scored_first, n = pairs_scored(b / "s1")
        again = run(b, *sweep, "resume=false", f"hydra.sweep.dir={b / 's2'}")
        scored_again, _ = pairs_scored(b / "s2")
        reused = run(b, *sweep, f"hydra.sweep.dir={b / 's3'}")
        n_reused = sum(
            json.loads(p.read_text()).get("reused", False) for p in (b / "s3").glob("*/metrics.json")
        )
    ratio = first / single
    lines = [
        "# Sweep cost",
        "",
        f"Command: `make sweep-cost` (`python benchmarks/sweep_cost.py`); {time.strftime('%Y-%m-%d %H:%M')}, this "
        f"machine (CPU). DL19 BM25 run reranked by the cross-encoder `{Path(CE).name}` (max length 256); each number "
        "is one process run from the shell, start-up included.",
        "",
        "| run | wall time | pairs sent to the model |",
        "|---|---:|---:|",
        f"| single job `candidates=100 top_k=10` | {single:.1f} s | 4,300 |",
        f"| sweep `candidates=10,20,50,100 top_k=1,3,5,10` ({n} jobs), empty cache | {first:.1f} s | {scored_first:,} |",
        f"| the same sweep again, `resume=false` (every job runs, the cache answers) | {again:.1f} s | {scored_again:,} |",
        f"| the same sweep again, `resume=true` ({n_reused} jobs reused by fingerprint) | {reused:.1f} s | 0 |",
        "",
        f"**Sweep / single job: {ratio:.2f}x** (target: at most 1.25x). Repeating the sweep sent {scored_again} pairs to "
        "the model (target: 0).",
    ]
    out = ROOT / "results" / "sweep_cost.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
