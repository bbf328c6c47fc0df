"""How a job's cost grows with the corpus (`make scale`): synthetic corpora made from a shipped collection's
documents with their words shuffled (its queries and qrels, its own documents first under their own ids); per
size a cold BM25 job (a new cache: document store and index built), a warm one (the same cache) and a small
reranked job, and dense jobs cold and warm at the sizes a CPU can encode; each job its own process under
/usr/bin/time. Writes results/scale.md.

    python benchmarks/scale.py --bm25 'scifact=50000,250000;msmarco=50000' --dense 'scifact=10000' [--keep]
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


CE_MODEL = ROOT.parent / "shared" / "models" / "scifact-minilm-l6-ce"


def run_job(folder: Path, cache: Path, work: Path, level: int, extra: list[str] = ()) -> dict:
    out = work / f"job-{time.time_ns()}"
    cmd = [
        "/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "rerank_eval",
        "dataset=beir_dir", f"dataset.path={folder}", f"dataset.relevance_level={level}", "retriever=bm25",
        "reranker=none", "mlflow.enabled=false", "cache.enabled=false", "progress=false", f"hydra.run.dir={out}",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "RERANK_EVAL_CACHE": str(cache), "RERANK_EVAL_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"scale: the job on {folder} failed:\n{proc.stderr[-2000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    m = json.loads((out / "metrics.json").read_text())
    c = m["counts"]
    return {
        "wall_s": float(wall),
        "rss_gb": int(rss_kb) / 2**20,
        "index_s": c["index_s"],
        "retrieval_s": c["retrieval_s"],
        "rerank_s": c.get("rerank_s", 0.0),
        "pairs_s": c.get("rerank_pairs_per_s", 0.0),
        "ndcg@10": m["metrics"]["ndcg@10"],
    }


# the small reranked job on each corpus: a cross-encoder over BM25's top 10, several queries a call
RERANKED = [
    "reranker=cross_encoder", f"reranker.model={CE_MODEL}", "reranker.dtype=bf16", "reranker.batch_invariant=false",
    "candidates=10", "top_k=10", "query_batch=16", "latency.probe=5",
]  # fmt: skip
DENSE = ["retriever=dense", "retriever.dtype=bf16", "retriever.batch_invariant=false"]


def retrieval_rates(folder: Path, cache: Path, level: int, k: int = 100) -> tuple[float, float]:
    """First-stage queries a second on the warm index, each query alone (as a job calls it, to time each
    query) and all in one ``retrieve`` call (a thread a core: ``rerank-eval-shard stage=retrieve``), in this
    process; the two must return the same lists."""
    os.environ["RERANK_EVAL_CACHE"] = str(cache)
    from rerank_eval.datasets import BeirDirDataset
    from rerank_eval.retrievers.bm25 import BM25Retriever

    ds = BeirDirDataset(folder, relevance_level=level)
    r = BM25Retriever()
    r.index(ds)
    queries = ds.queries()
    t = time.perf_counter()
    alone = {q.query_id: r.retrieve([q], k)[q.query_id] for q in queries}
    t_alone = time.perf_counter() - t
    t = time.perf_counter()
    together = r.retrieve(queries, k)
    t_together = time.perf_counter() - t
    if together != alone:
        raise SystemExit(f"scale: {folder}: retrieving all queries at once changed the lists")
    del r
    return len(queries) / t_alone, len(queries) / t_together


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares exponent of y ~ x^e on a log-log scale."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def plan(text: str) -> list[tuple[str, list[int]]]:
    """``scifact=50000,250000;msmarco=50000`` as [(source, sizes)]."""
    out = []
    for part in filter(None, text.split(";")):
        source, _, sizes = part.partition("=")
        if source not in SOURCES or not sizes:
            raise SystemExit(
                f"scale: bad plan {part!r}; write source=size,size;... with sources {sorted(SOURCES)}"
            )
        out.append((source, [int(x) for x in sizes.split(",")]))
    return out


def bm25_section(source: str, sizes: list[int], args, work: Path) -> list[str]:
    name, _, level = SOURCES[source]
    rows = []
    for size in sizes:
        folder = work / f"{source}-{size}"
        make_corpus(Path(args.data) / name, folder, size)
        cache = work / f"cache-{source}-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = run_job(folder, cache, work, level)
        warm = run_job(folder, cache, work, level)
        disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**30
        ranked = run_job(folder, cache, work, level, RERANKED)
        batched = retrieval_rates(folder, cache, level)
        corpus_gb = (folder / "corpus.jsonl").stat().st_size / 2**30
        rows.append((size, corpus_gb, cold, warm, disk, ranked, batched))
        print(f"scale: {source} {size:,}: cold {cold['wall_s']:.0f} s / {cold['rss_gb']:.2f} GB, warm "
              f"{warm['wall_s']:.0f} s / {warm['rss_gb']:.2f} GB, reranked {ranked['wall_s']:.0f} s", flush=True)  # fmt: skip
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    kind = "abstracts" if source == "scifact" else "passages (MS MARCO's lengths)"
    lines = [
        f"## BM25 on {name}-like {kind}",
        "",
        "| documents | corpus | cold wall | cold index | retrieval | cold peak RSS | warm wall | warm peak RSS "
        "| warm/cold | store + index on disk | nDCG@10 | reranked job: wall | rerank | pairs/s | peak RSS "
        "| nDCG@10 | queries/s: one a call | all in one call |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, corpus_gb, cold, warm, disk, r, (alone, together) in rows:
        lines.append(
            f"| {size:,} | {corpus_gb:.2f} GB | {cold['wall_s']:.1f} s | {cold['index_s']:.1f} s | "
            f"{cold['retrieval_s']:.1f} s | {cold['rss_gb']:.2f} GB | {warm['wall_s']:.1f} s | "
            f"{warm['rss_gb']:.2f} GB | {warm['wall_s'] / cold['wall_s']:.2f} | {disk:.2f} GB | "
            f"{cold['ndcg@10']:.4f} | {r['wall_s']:.1f} s | {r['rerank_s']:.1f} s | {r['pairs_s']:,.0f} | "
            f"{r['rss_gb']:.2f} GB | {r['ndcg@10']:.4f} | {alone:,.0f} | {together:,.0f} |"
        )
    if len(rows) >= 2:
        xs = [r[0] for r in rows]
        wall, rss = [r[2]["wall_s"] for r in rows], [r[2]["rss_gb"] for r in rows]
        big, (n0, n1) = 8_841_823, xs[-2:]
        # the line through the two largest sizes: a fixed cost (start-up, the model, the queries) plus a cost a
        # document, which the small sizes' start-up hides from the all-sizes exponent
        per_s, per_gb = (wall[-1] - wall[-2]) / (n1 - n0), (rss[-1] - rss[-2]) / (n1 - n0)
        lines += [
            "",
            f"Fitted growth of the cold job over all sizes: time ~ n^{slope(xs, wall):.2f}, peak memory ~ "
            f"n^{slope(xs, rss):.2f}; over the two largest sizes: time ~ n^{slope(xs[-2:], wall[-2:]):.2f}, memory "
            f"~ n^{slope(xs[-2:], rss[-2:]):.2f}. Between those two, a million more documents cost "
            f"{per_s * 1e6:.0f} s and {per_gb * 1e6:.2f} GB of peak memory. Extrapolated along that line to MS "
            f"MARCO passage's count, {big:,} documents: {(wall[-1] + per_s * (big - n1)) / 60:.1f} min cold and "
            f"{rss[-1] + per_gb * (big - n1):.1f} GB peak (an extrapolation, not a measurement; the all-sizes "
            f"exponents give {wall[-1] * (big / n1) ** slope(xs, wall) / 60:.1f} min and "
            f"{rss[-1] * (big / n1) ** slope(xs, rss):.1f} GB).",
        ]
    return lines + [""]


def dense_section(source: str, sizes: list[int], args, work: Path) -> list[str]:
    name, _, level = SOURCES[source]
    lines = [
        f"## Dense ({', '.join(DENSE[1:])}) on {name}-like documents",
        "",
        "| documents | cold wall | encoding | docs/s | cold peak RSS | warm wall | warm index | warm peak RSS | "
        "vectors on disk | nDCG@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        folder = work / f"{source}-{size}"
        make_corpus(Path(args.data) / name, folder, size)
        cache = work / f"dense-cache-{source}-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = run_job(folder, cache, work, level, DENSE)
        warm = run_job(folder, cache, work, level, DENSE)
        disk = sum(p.stat().st_size for p in (cache / "dense").rglob("*") if p.is_file()) / 2**30
        print(
            f"scale: dense {source} {size:,}: cold {cold['wall_s']:.0f} s, warm {warm['wall_s']:.0f} s",
            flush=True,
        )
        lines.append(
            f"| {size:,} | {cold['wall_s']:.1f} s | {cold['index_s']:.1f} s | {size / cold['index_s']:,.0f} | "
            f"{cold['rss_gb']:.2f} GB | {warm['wall_s']:.1f} s | {warm['index_s']:.1f} s | {warm['rss_gb']:.2f} GB | "
            f"{disk:.3f} GB | {cold['ndcg@10']:.4f} |"
        )
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    rate, per_doc = size / cold["index_s"], disk * 2**30 / size
    big = 8_841_823
    lines += [
        "",
        f"At the largest size's rate, encoding {big:,} documents (MS MARCO passage's count) on this CPU would "
        f"take {big / rate / 3600:.0f} h, and its vectors {big * per_doc / 2**30:.1f} GB on disk "
        "(memory-mapped; fp16 storage halves it): the sharded path on GPUs (docs/scale.md) is the way there.",
    ]
    return lines + [""]


def commit() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return (proc.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty.stdout.strip() else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bm25", default="scifact=50000,250000,1000000;msmarco=50000,250000,1000000,4000000")
    ap.add_argument("--dense", default="scifact=10000,50000")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / ".scale"))
    ap.add_argument("--out", default=str(ROOT / "results" / "scale.md"))
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora and caches")
    args = ap.parse_args(argv)
    from rerank_eval.provenance import code_version

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        "# How a job's cost grows with the corpus",
        "",
        f"Code: rerank-eval {code_version()} (commit {commit()}). "
        f"Command: `python benchmarks/scale.py --bm25 '{args.bm25}' --dense '{args.dense}'` (`make scale`), on "
        f"this machine ({os.cpu_count()} cores). Corpora: a shipped collection's documents, then copies with "
        "their words shuffled; its queries and qrels. Each job is its own process (`mlflow.enabled=false "
        "cache.enabled=false`): cold with a new `.cache/` (document store and index built), warm with the same "
        "one (both opened, memory-mapped), then the reranked job on the warm cache (`"
        + " ".join(RERANKED)
        + "`; "
        "its latency is probed, its rate is pairs scored over the reranking wall time). Wall and peak RSS from "
        "/usr/bin/time; index, retrieval and rerank seconds from the job's own metrics.json. Queries/s: the warm "
        "index's first stage over the collection's queries at depth 100 in this process, one query a call (as a "
        "job calls it, timing each) and all in one call (a thread a core, as `rerank-eval-shard stage=retrieve` "
        "calls it); the lists are checked equal. nDCG@10 here is no quality figure: a shuffled copy scores as "
        "its original for BM25 and is judged non-relevant, so the columns only show that the jobs ran the same "
        "queries on the same judgements.",
        "",
    ]
    for source, sizes in plan(args.bm25):
        lines += bm25_section(source, sizes, args, work)
    for source, sizes in plan(args.dense):
        lines += dense_section(source, sizes, args, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"scale: wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
