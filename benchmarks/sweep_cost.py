"""What a sweep costs against one job: `make sweep-cost` (writes results/sweep_cost.md).

1. the single job `candidates=100 top_k=10` (fresh score cache and MLflow store), timed end to end;
2. the 16-job sweep `-m candidates=10,20,50,100 top_k=1,3,5,10` (fresh cache and store), timed end to end;
3. the same sweep again with resume=false (every job runs, the cache answers): pairs sent to the model (the
   latency probes' fresh calls included);
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


REPEATS = int(os.environ.get("SWEEP_COST_REPEATS", "3"))


def _seconds(values: list[float]) -> str:
    parts = [f"{v:.1f}" for v in values]
    return ", ".join(parts[:-1]) + f" and {parts[-1]} s"


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


def pairs_scored(sweep_dir: Path) -> tuple[int, int, int]:
    """Pairs scored for the results, pairs scored by latency probes, and jobs."""
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    fresh = [j for j in jobs if not j.get("reused")]
    scored = sum(int(j["counts"]["pairs_scored"]) for j in fresh)
    return scored, sum(int(j["counts"].get("probe_pairs", 0)) for j in fresh), len(jobs)


def distinct(sweep_dir: Path) -> int:
    """Distinct comparisons among a sweep's jobs (jobs that differ only in top_k are one)."""
    return len({json.loads(p.read_text())["comparison"] for p in sweep_dir.glob("*/metrics.json")})


def main() -> None:
    sweep = ["-m", *JOB, "candidates=10,20,50,100", "top_k=1,3,5,10"]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        a, b = Path(a), Path(b)
        # single job and sweep three times each, alternating, each on an empty cache and store: timings here vary
        # by ~10% from one run to the next
        singles, sweeps = [], []
        for rep in range(REPEATS):
            singles.append(
                run(a / f"r{rep}", *JOB, "candidates=100", "top_k=10", f"hydra.run.dir={a / f'single{rep}'}")
            )
            sweeps.append(run(b / f"r{rep}", *sweep, f"hydra.sweep.dir={b / f'r{rep}' / 's1'}"))
        last = b / f"r{REPEATS - 1}"
        scored_first, probed_first, n = pairs_scored(last / "s1")
        comparisons = distinct(last / "s1")
        again = run(last, *sweep, "resume=false", f"hydra.sweep.dir={b / 's2'}")
        scored_again, probed_again, _ = pairs_scored(b / "s2")
        reused = run(last, *sweep, f"hydra.sweep.dir={b / 's3'}")
        n_reused = sum(
            json.loads(p.read_text()).get("reused", False) for p in (b / "s3").glob("*/metrics.json")
        )
        deepest = run(
            a / "deep",
            "-m",
            *JOB,
            "candidates=100,50,20,10",
            "top_k=1,3,5,10",
            f"hydra.sweep.dir={a / 'deep' / 's'}",
        )
        deep_probed = pairs_scored(a / "deep" / "s")[1]
    single, first = sum(singles) / REPEATS, sum(sweeps) / REPEATS
    ratio = first / single
    each = ", ".join(f"{b / a:.2f}x" for a, b in zip(singles, sweeps, strict=True))
    lines = [
        "# Sweep cost",
        "",
        f"Command: `make sweep-cost` (`python benchmarks/sweep_cost.py`); {time.strftime('%Y-%m-%d %H:%M')}, this "
        f"machine (CPU). DL19 BM25 run reranked by the cross-encoder `{Path(CE).name}` (max length 256); each number "
        "is one process run from the shell, start-up included.",
        "",
        "| run | wall time | pairs scored for results | pairs scored by latency probes |",
        "|---|---:|---:|---:|",
        f"| single job `candidates=100 top_k=10` (mean of {_seconds(singles)}) | {single:.1f} s | 4,300 | 0 |",
        f"| sweep `candidates=10,20,50,100 top_k=1,3,5,10` ({n} jobs, {comparisons} distinct comparisons), empty "
        f"cache (mean of {_seconds(sweeps)}) | {first:.1f} s | {scored_first:,} | {probed_first:,} |",
        f"| the same sweep again, `resume=false` (every job runs, the cache answers) | {again:.1f} s "
        f"| {scored_again:,} | {probed_again:,} |",
        f"| the same sweep again, `resume=true` ({n_reused} jobs reused by fingerprint) | {reused:.1f} s | 0 | 0 |",
        f"| the sweep listed deepest first, `candidates=100,50,20,10`, empty cache | {deepest:.1f} s | 4,300 "
        f"| {deep_probed:,} |",
        "",
        f"**Sweep / single job: {ratio:.2f}x** (the {REPEATS} alternating pairs: {each}); listed deepest first: "
        f"{deepest / single:.2f}x. Repeating the sweep sent {scored_again} pairs to the model for results.",
        "",
        "What a sweep does now: the four jobs of one depth differ only in top_k, so they share one scoring pass, "
        "one comparison and one timing (the first of them scores, the other three reuse it in the same process); "
        "a job whose scores came, even in part, from the cache does not replay old timings but times a fresh, "
        "seeded sample of 10 queries at its own depth (the latency probe), whose pairs are the last column. In "
        "the order given, depth 10 is scored fresh and measured, depths 20, 50 and 100 each find part of their "
        "candidates cached and probe; listed deepest first, depth 100 is measured and each shallower depth "
        "probes. Models run fp32, one pair a forward (scores independent of batching). Every job adds a fixed "
        "cost of its own (Hydra, first stage, evaluation, MLflow).",
    ]
    out = ROOT / "results" / "sweep_cost.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
