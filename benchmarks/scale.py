"""How a BM25 job's cost grows with the corpus (`make scale`): synthetic corpora made from a shipped collection's
documents with their words shuffled (its queries and qrels, its own documents first under their own ids), one
cold job (a new cache: document store and BM25 index built) and one warm job (the same cache) per size, each its
own process under /usr/bin/time. Writes results/scale.md.

    python benchmarks/scale.py --sizes 50000,250000 [--source scifact] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"scifact": ("scifact", "test", 1), "msmarco": ("msmarco-dl19-passage", "test", 2)}


def make_corpus(source: Path, out: Path, size: int, seed: int = 0) -> None:
    """``size`` documents: the source's own, then copies of them with shuffled words and new ids."""
    if (out / "corpus.jsonl").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    import gzip

    corpus = next(p for p in (source / "corpus.jsonl", source / "corpus.jsonl.gz") if p.is_file())
    with gzip.open(corpus, "rt", encoding="utf-8") if corpus.suffix == ".gz" else corpus.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rng = random.Random(seed)
    tmp = out / "corpus.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(size):
            r = rows[i % len(rows)]
            if i >= len(rows):
                words = str(r.get("text") or "").split()
                rng.shuffle(words)
                r = {"_id": f"syn{i}", "title": r.get("title", ""), "text": " ".join(words)}
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out / "corpus.jsonl")
    shutil.copy(source / "queries.jsonl", out / "queries.jsonl")
    shutil.copytree(source / "qrels", out / "qrels", dirs_exist_ok=True)


def run_job(folder: Path, cache: Path, work: Path, level: int) -> dict:
    out = work / f"job-{time.time_ns()}"
    cmd = [
        "/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "rerank_eval",
        "dataset=beir_dir", f"dataset.path={folder}", f"dataset.relevance_level={level}", "retriever=bm25",
        "reranker=none", "mlflow.enabled=false", "cache.enabled=false", "progress=false", f"hydra.run.dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "RERANK_EVAL_CACHE": str(cache), "RERANK_EVAL_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"scale: the job on {folder} failed:\n{proc.stderr[-2000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    m = json.loads((out / "metrics.json").read_text())
    c, lat = m["counts"], m["latency"]
    return {
        "wall_s": float(wall),
        "rss_gb": int(rss_kb) / 2**20,
        "index_s": c["index_s"],
        "retrieval_s": lat["first_stage_ms_mean"] * c["queries"] / 1e3,
        "ndcg@10": m["first_stage"]["ndcg@10"],
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares exponent of y ~ x^e on a log-log scale."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,250000,1000000")
    ap.add_argument("--source", choices=sorted(SOURCES), default="scifact")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / ".scale"))
    ap.add_argument("--out", default=str(ROOT / "results" / "scale.md"))
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora and caches")
    args = ap.parse_args(argv)
    name, _, level = SOURCES[args.source]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = work / f"{args.source}-{size}"
        make_corpus(Path(args.data) / name, folder, size)
        cache = work / f"cache-{args.source}-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = run_job(folder, cache, work, level)
        warm = run_job(folder, cache, work, level)
        disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**30
        corpus_gb = (folder / "corpus.jsonl").stat().st_size / 2**30
        rows.append((size, corpus_gb, cold, warm, disk))
        print(f"scale: {size:,} documents: cold {cold['wall_s']:.0f} s / {cold['rss_gb']:.2f} GB, "
              f"warm {warm['wall_s']:.0f} s / {warm['rss_gb']:.2f} GB", flush=True)  # fmt: skip
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    sizes = [r[0] for r in rows]
    lines = [
        "# How a BM25 job's cost grows with the corpus",
        "",
        f"Command: `python benchmarks/scale.py --sizes {args.sizes} --source {args.source}` "
        f"(`make scale`), on this machine ({os.cpu_count()} cores). Corpora: {name}'s documents, then copies with "
        "their words shuffled; its queries and qrels. Each job is its own process (`retriever=bm25 reranker=none "
        "mlflow.enabled=false cache.enabled=false`): cold with a new `.cache/` (document store and BM25 index "
        "built), warm with the same one (both opened, memory-mapped). Wall and peak RSS from /usr/bin/time; "
        "index and retrieval seconds from the job's own metrics.json.",
        "",
        "| documents | corpus | cold wall | cold index | retrieval | cold peak RSS | warm wall | warm index "
        "| warm peak RSS | warm/cold | store + index on disk | nDCG@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, corpus_gb, cold, warm, disk in rows:
        lines.append(
            f"| {size:,} | {corpus_gb:.2f} GB | {cold['wall_s']:.1f} s | {cold['index_s']:.1f} s | "
            f"{cold['retrieval_s']:.1f} s | {cold['rss_gb']:.2f} GB | {warm['wall_s']:.1f} s | "
            f"{warm['index_s']:.1f} s | {warm['rss_gb']:.2f} GB | {warm['wall_s'] / cold['wall_s']:.2f} | "
            f"{disk:.2f} GB | {cold['ndcg@10']:.4f} |"
        )
    if len(rows) >= 2:
        e_time = slope(sizes, [r[2]["wall_s"] for r in rows])
        e_mem = slope(sizes, [r[2]["rss_gb"] for r in rows])
        big = 8_841_823
        at = lambda i: rows[-1][2][i] * (big / sizes[-1]) ** (e_time if i == "wall_s" else e_mem)  # noqa: E731
        lines += [
            "",
            f"Fitted growth of the cold job against corpus size: time ~ n^{e_time:.2f}, peak memory ~ "
            f"n^{e_mem:.2f}. Extrapolated from the largest size to MS MARCO passage ({big:,} passages): "
            f"{at('wall_s') / 60:.0f} min cold and {at('rss_gb'):.1f} GB peak (an extrapolation, not a "
            "measurement).",
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"scale: wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
