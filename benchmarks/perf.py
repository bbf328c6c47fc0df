"""``make perf``: throughput of the scoring engine, BM25 and bi-encoder encoding against their baselines,
measured side by side in one run, written to ``results/perf.md`` (and JSON beside it).

- cross-encoder: sentence-transformers ``CrossEncoder.predict(pairs, batch_size=32)`` in fp32 (the seed's call),
  and the strongest simple use of the same library (the model in the engine's dtype through ``model_kwargs``, the
  pairs sorted by length), against ``CrossEncoderEngine`` on the 4,300 DL19 BM25 top-100 pairs;
- BM25: rank-bm25 against bm25s on SciFact's 300 test queries (same tokens), with nDCG@10 of each;
- batching: the batch-invariant default against the throughput mode and one pair a forward, per dtype, one
  query's candidates a call;
- bi-encoder: ``SentenceTransformer.encode(batch_size=32)`` in fp32 against ``BiEncoder`` on SciFact abstracts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from datetime import datetime
from pathlib import Path

import numpy as np

# perf measures the engine's throughput mode: bf16 where the hardware has it, packed batches. Evaluation jobs default
# to fp32, one pair a forward (scores independent of batching); docs/figures.md ("Precision") gives that cost.
THROUGHPUT = {"dtype": "auto", "batch_invariant": False}


def _data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from rerank_eval.paths import data_roots

    return next((r for r in data_roots() if (r / "msmarco-dl19-passage").is_dir()), data_roots()[-1])


def dl19_pairs(root: Path, limit: int | None = None) -> list[tuple[str, str]]:
    from rerank_eval.datasets import BeirDirDataset

    ds = BeirDirDataset(root / "msmarco-dl19-passage")
    queries = {q.query_id: q.text for q in ds.queries()}
    run = [line.split() for line in (ds.path / "runs" / "bm25.top100.trec").read_text().splitlines() if line]
    docs = ds.docs(sorted({r[2] for r in run}))
    pairs = [(queries[r[0]], docs[r[2]].full_text) for r in run]
    return pairs[:limit] if limit else pairs


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _engine_child(model, pairs, device, batch_tokens, compile, packed, queue):
    """Score the pairs in a fresh process and report its peak memory (RSS, or CUDA allocations)."""
    import torch

    from rerank_eval.scoring.cross_encoder import CrossEncoderEngine

    eng = CrossEncoderEngine(
        model, device=device, batch_tokens=batch_tokens, compile=compile, packed=packed, **THROUGHPUT
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    eng.score_pairs(pairs)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    queue.put(
        {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mib": peak_gpu}
    )


def cross_encoder_section(
    model: str,
    pairs,
    device: str,
    batch_tokens: int | None,
    baseline: bool,
    profile: bool,
    compile: bool = False,
    packed: bool | None = None,
) -> dict:
    import torch

    from rerank_eval.scoring.cross_encoder import CrossEncoderEngine

    res: dict = {"pairs": len(pairs), "model": model, "device": device}
    warm = pairs[-64:]
    eng = CrossEncoderEngine(
        model, device=device, batch_tokens=batch_tokens, compile=compile, packed=packed, **THROUGHPUT
    )
    cuda = device.startswith("cuda")
    res["compile"] = compile
    res["dtype"] = str(eng.dtype).removeprefix("torch.")
    res["batch_tokens"] = eng.batch_tokens
    res["path"] = _route(eng._body, "padded batches through the model's own forward")
    # on a GPU every new batch shape picks its kernels once: warm up on all pairs, then time with cold id caches
    eng.score_pairs(pairs if cuda else warm)

    def ours(cold: bool = True):
        if cold:
            eng._store.clear()
        out = eng.score_pairs(pairs)
        _sync(device)
        return out

    t_ours, s_ours = _timed(ours, repeat=3 if cuda else 1)  # best of 3 on a GPU, where one run is ~0.1 s
    eng._store.clear()
    t_tok, _ = _timed(lambda: eng._token_ids([t for p in pairs for t in p]))
    t_pretok, _ = _timed(lambda: ours(cold=False), repeat=3 if cuda else 2)  # model compute plus packing
    res.update(_arithmetic(eng, pairs, t_ours))
    res.update(
        ours_s=t_ours,
        ours_pairs_s=len(pairs) / t_ours,
        tokenize_s=t_tok,
        pretokenized_pairs_s=len(pairs) / t_pretok,
    )
    if baseline:
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(eng.path, device=device)
        ce.predict(warm, batch_size=32, show_progress_bar=False)
        t_base, s_base = _timed(
            lambda: ce.predict(
                pairs, batch_size=32, show_progress_bar=False, activation_fn=torch.nn.Identity()
            )
        )
        res.update(
            baseline_s=t_base,
            baseline_pairs_s=len(pairs) / t_base,
            ratio=t_base / t_ours,
            max_abs_logit_diff=float(np.abs(np.asarray(s_base) - s_ours).max()),
            max_abs_sigmoid_diff=float(
                np.abs(1 / (1 + np.exp(-np.asarray(s_base))) - 1 / (1 + np.exp(-s_ours))).max()
            ),
            top10_agreement=_top10_agreement(pairs, np.asarray(s_base), s_ours),
        )
        del ce
        # the strongest simple baseline: one model_kwargs argument and a sort away for any user
        strong = CrossEncoder(eng.path, device=device, model_kwargs={"torch_dtype": eng.dtype})
        order = np.argsort([len(q) + len(d) for q, d in pairs], kind="stable")
        ranked = [pairs[i] for i in order]
        strong.predict(warm, batch_size=32, show_progress_bar=False)

        def sorted_predict():
            out = strong.predict(
                ranked, batch_size=32, show_progress_bar=False, activation_fn=torch.nn.Identity()
            )
            back = np.empty(len(pairs), dtype=np.float64)
            back[order] = np.asarray(out, dtype=np.float64)
            return back

        t_strong, s_strong = _timed(sorted_predict)
        res.update(
            strong_s=t_strong,
            strong_pairs_s=len(pairs) / t_strong,
            strong_ratio=t_strong / t_ours,
            strong_top10_agreement=_top10_agreement(pairs, s_strong, s_ours),
        )
        del strong
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_engine_child, args=(model, pairs, device, batch_tokens, compile, packed, queue)
    )
    proc.start()
    res.update(queue.get(timeout=1800))
    proc.join()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        eng._store.clear()
        sub = pairs[: min(len(pairs), 1000)]
        t = time.perf_counter()
        eng._token_ids([x for p in sub for x in p])
        tok = time.perf_counter() - t
        with torch_profile(activities=acts) as prof:
            eng.score_pairs(sub)
            _sync(device)
        key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        events = sorted(
            prof.key_averages(),
            key=lambda e: getattr(e, key.replace("cuda", "device"), 0) or getattr(e, key, 0),
            reverse=True,
        )
        total = sum((getattr(e, key.replace("cuda", "device"), 0) or getattr(e, key, 0)) for e in events) or 1
        res["profile"] = [
            {
                "op": e.key,
                "share": (getattr(e, key.replace("cuda", "device"), 0) or getattr(e, key, 0)) / total,
            }
            for e in events[:8]
        ]
        res["profile_tokenize_s_1000"] = tok
    return res


def dl19_queries(root: Path, n_queries: int) -> list[list[tuple[str, str]]]:
    """Each of the first ``n_queries`` DL19 queries' BM25 top-100 pairs: one reranking call each."""
    groups: dict[str, list] = {}
    for query, pair in zip(_run_query_ids(root), dl19_pairs(root), strict=True):
        groups.setdefault(query, []).append(pair)
    return list(groups.values())[:n_queries]


def _run_query_ids(root: Path) -> list[str]:
    run = root / "msmarco-dl19-passage" / "runs" / "bm25.top100.trec"
    return [line.split()[0] for line in run.read_text().splitlines() if line]


def batching_section(model: str, root: Path, device: str, n_queries: int) -> dict:
    """The batch-invariant default against the throughput mode (packed, not invariant) and one pair a forward, in
    each dtype, at job level: one query's candidates a call, each call tokenizing afresh as a job's does."""
    from rerank_eval.scoring.cross_encoder import CrossEncoderEngine
    from rerank_eval.scoring.models import cpu_has_bf16

    calls = dl19_queries(root, n_queries)
    pairs = sum(len(c) for c in calls)
    dtypes = ["fp32", "bf16"] if device.startswith("cuda") or cpu_has_bf16() else ["fp32"]
    res: dict = {"queries": len(calls), "pairs": pairs, "rates": {}}
    for dtype in dtypes:
        for mode, setting in (("default", True), ("throughput", False), ("single", "single")):
            eng = CrossEncoderEngine(model, device=device, dtype=dtype, batch_invariant=setting)
            eng.score_pairs(calls[-1][:32])

            def job(eng=eng):
                for call in calls:
                    eng._store.clear()
                    eng.score_pairs(call)
                _sync(device)

            seconds, _ = _timed(job)
            res["rates"][f"{dtype} {mode}"] = {"pairs_s": pairs / seconds, "batching": eng.batching}
            del eng
    return res


def _route(body, otherwise: str) -> str:
    """How an encoder ran: packed (and which attention) when it has a packed body, else ``otherwise``."""
    if body is None:
        return otherwise
    return "packed, " + ("flash attention over variable lengths" if body.varlen else "padded attention")


def _arithmetic(eng, pairs, seconds: float) -> dict:
    """The model's arithmetic on these pairs (matrix multiplications and attention, from the real token counts),
    the rate the engine ran it at, and this device's own bf16 and fp32 matrix-multiplication rate on the shape of
    the model's feed-forward layer: the ceiling any engine meets."""
    import torch

    cfg = eng.model.config
    h, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    lengths = np.diff(eng.pack(pairs)[2]).astype(np.float64)
    flop = layers * (lengths.sum() * 2 * (4 * h * h + 2 * h * inner) + (4 * lengths**2 * h).sum())
    rows = 8192 if eng.device.startswith("cuda") else 1024
    peak = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(rows, h, dtype=dtype, device=eng.device)
        b = torch.randn(h, inner, dtype=dtype, device=eng.device)
        (a @ b).sum().item()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 1.0:
            for _ in range(10):
                a @ b
            _sync(eng.device)
            n += 10
        peak[name] = 2 * rows * h * inner * n / (time.perf_counter() - t) / 1e9
    return {
        "gflop_per_pair": flop / len(pairs) / 1e9,
        "ours_gflop_s": flop / seconds / 1e9,
        "matmul_peak_gflop_s": peak,
        "matmul_shape": [rows, h, inner],
    }


def _top10_agreement(pairs, a: np.ndarray, b: np.ndarray) -> float:
    """Mean overlap of the per-query top 10 under two score vectors."""
    by_q: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        by_q.setdefault(q, []).append(i)
    overlaps = []
    for idx in by_q.values():
        idx = np.array(idx)
        ta = set(idx[np.argsort(-a[idx], kind="stable")[:10]])
        tb = set(idx[np.argsort(-b[idx], kind="stable")[:10]])
        overlaps.append(len(ta & tb) / min(10, len(idx)))
    return float(np.mean(overlaps))


def bm25_section(root: Path) -> dict:
    from rerank_eval.datasets import BeirDirDataset
    from rerank_eval.evaluation import evaluate, parse_metrics

    from .retrievers.bm25 import BM25Retriever

    ds = BeirDirDataset(root / "scifact")
    queries = ds.queries()
    res: dict = {"queries": len(queries), "docs": sum(1 for _ in ds.corpus())}
    metrics = parse_metrics(["ndcg@10"])
    for backend in ("rank_bm25", "bm25s"):
        r = BM25Retriever(backend=backend)
        t_index, _ = _timed(lambda r=r: r.index(ds))
        r.retrieve(queries[:5], 100)
        t_query, ranking = _timed(lambda r=r: r.retrieve(queries, 100))
        res[backend] = {
            "index_s": t_index,
            "queries_s": len(queries) / t_query,
            "ndcg@10": float(evaluate(ds.qrels(), ranking, metrics)["ndcg@10"].mean()),
        }
    res["ratio"] = res["bm25s"]["queries_s"] / res["rank_bm25"]["queries_s"]
    return res


def bi_encoder_section(root: Path, device: str, n_docs: int, model: str) -> dict:
    from sentence_transformers import SentenceTransformer

    from rerank_eval.datasets import BeirDirDataset
    from rerank_eval.scoring.bi_encoder import BiEncoder

    texts = [d.full_text for d in BeirDirDataset(root / "scifact").corpus()][:n_docs]
    ours = BiEncoder(model, device=device, **THROUGHPUT)
    ours.encode(texts[:32])
    t_ours, e_ours = _timed(lambda: ours.encode(texts))
    base = SentenceTransformer(ours.path, device=device)
    base.encode(texts[:32], batch_size=32)
    t_base, e_base = _timed(lambda: base.encode(texts, batch_size=32, normalize_embeddings=True))
    cos = (e_ours * e_base).sum(1)
    return {
        "docs": len(texts),
        "dtype": str(ours.dtype).removeprefix("torch."),
        "path": _route(ours._body, "length-sorted batches through `encode`"),
        "baseline_docs_s": len(texts) / t_base,
        "ours_docs_s": len(texts) / t_ours,
        "ratio": t_base / t_ours,
        "min_cosine_to_fp32": float(cos.min()),
    }


def render(res: dict) -> str:
    ce, lines = res.get("cross_encoder"), []
    lines += [
        "# rerank-eval perf",
        "",
        f"Command: `{res['command']}`; {res['date']}; device: {res['device_name']} "
        f"({res['threads']} torch threads). Every ratio compares two runs made side by side in this one run.",
        "",
        "| component | baseline | ours | ratio | notes |",
        "|---|---:|---:|---:|---|",
    ]
    if ce:
        base = f"{ce['baseline_pairs_s']:,.0f} pairs/s" if "baseline_pairs_s" in ce else "not run"
        ratio = f"{ce['ratio']:.2f}x" if "ratio" in ce else ""
        notes = (
            f"{ce['pairs']:,} DL19 BM25 top-100 pairs; `CrossEncoder.predict(batch_size=32)` fp32 vs "
            f"`CrossEncoderEngine` {ce['dtype']}, {ce['batch_tokens']} tokens/batch, {ce['path']}"
            f"{', torch.compile' if ce.get('compile') else ''}"
        )
        if "max_abs_sigmoid_diff" in ce:
            notes += (
                f"; max |Δ sigmoid score| {ce['max_abs_sigmoid_diff']:.4f}, per-query top-10 overlap "
                f"{ce['top10_agreement']:.3f}"
            )
        lines.append(
            f"| cross-encoder, end to end | {base} | {ce['ours_pairs_s']:,.0f} pairs/s | {ratio} | {notes} |"
        )
        if "strong_pairs_s" in ce:
            lines.append(
                f"| cross-encoder, against the strongest simple baseline | {ce['strong_pairs_s']:,.0f} pairs/s | "
                f"{ce['ours_pairs_s']:,.0f} pairs/s | {ce['strong_ratio']:.2f}x | the same `predict` with the model in "
                f"{ce['dtype']} (`model_kwargs={{'torch_dtype': ...}}`) over length-sorted pairs, batch 32; per-query "
                f"top-10 overlap with the engine {ce['strong_top10_agreement']:.3f} |"
            )
        lines.append(
            f"| cross-encoder, ids cached (model + batching) | | {ce['pretokenized_pairs_s']:,.0f} pairs/s | | "
            f"tokenizing the unique texts took {ce['tokenize_s']:.3f} s of the end-to-end run |"
        )
        pk = ce["matmul_peak_gflop_s"]
        base_rate = (
            f"; the baseline's {ce['gflop_per_pair'] * ce['baseline_pairs_s']:,.0f}"
            if "baseline_pairs_s" in ce
            else ""
        )
        lines.append(
            f"| cross-encoder, arithmetic rate | | {ce['ours_gflop_s']:,.0f} GFLOP/s | | "
            f"{ce['gflop_per_pair']:.2f} GFLOP a pair (matrix multiplications and attention){base_rate}; "
            f"this device's own {'x'.join(map(str, ce['matmul_shape']))} matrix multiplication: "
            f"{pk['bf16']:,.0f} GFLOP/s bf16, {pk['fp32']:,.0f} fp32 |"
        )
        mem = f"peak RSS {ce['peak_rss_mib']:,.0f} MiB" + (
            f", peak CUDA allocations {ce['peak_gpu_mib']:,.0f} MiB" if ce.get("peak_gpu_mib") else ""
        )
        lines.append(
            f"| cross-encoder, peak memory | | {mem} | | a fresh process scoring all {ce['pairs']:,} pairs "
            "(model and libraries included) |"
        )
    if "bm25" in res:
        b = res["bm25"]
        lines.append(
            f"| BM25 query throughput | {b['rank_bm25']['queries_s']:,.0f} q/s (rank-bm25) | "
            f"{b['bm25s']['queries_s']:,.0f} q/s (bm25s) | {b['ratio']:.0f}x | SciFact, {b['queries']} queries, "
            f"top 100; nDCG@10 {b['rank_bm25']['ndcg@10']:.4f} vs {b['bm25s']['ndcg@10']:.4f}; index "
            f"{b['rank_bm25']['index_s']:.1f} s vs {b['bm25s']['index_s']:.1f} s |"
        )
    if "bi_encoder" in res:
        e = res["bi_encoder"]
        lines.append(
            f"| bi-encoder encoding | {e['baseline_docs_s']:,.0f} docs/s | {e['ours_docs_s']:,.0f} docs/s | "
            f"{e['ratio']:.2f}x | {e['docs']} SciFact abstracts; `encode(batch_size=32)` fp32 vs `BiEncoder` "
            f"{e['dtype']}, {e['path']}; min cosine to the fp32 vectors {e['min_cosine_to_fp32']:.4f} |"
        )
    if "batching" in res:
        lines += _render_batching(res["batching"])
    if ce and ce.get("profile"):
        lines += [
            "",
            f"Where the engine's time goes ({ce['device']}, first 1,000 pairs, torch profiler, self time):",
            "",
            "| op | share |",
            "|---|---:|",
        ]
        lines += [f"| `{p['op']}` | {p['share']:.1%} |" for p in ce["profile"]]
        lines += [
            "",
            f"Tokenizing those 1,000 pairs' unique texts took {ce['profile_tokenize_s_1000']:.3f} s.",
        ]
    return "\n".join(lines) + "\n"


def _render_batching(b: dict) -> list[str]:
    rates = b["rates"]
    lines = [
        "",
        f"Batching policies at job level ({b['queries']} DL19 queries, {b['pairs']:,} BM25 top-100 pairs, one "
        "query's candidates a call, tokenized afresh each call). The default is batch invariant (a score bitwise "
        "the same whatever it is scored with); the throughput mode is not; `single` is one pair a forward:",
        "",
        "| dtype | default | throughput mode | one pair a forward | default / throughput | default / single |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dtype in dict.fromkeys(k.split()[0] for k in rates):
        d, t, s = (rates[f"{dtype} {m}"] for m in ("default", "throughput", "single"))
        lines.append(
            f"| {dtype} | {d['pairs_s']:,.0f} pairs/s ({d['batching']}) | {t['pairs_s']:,.0f} pairs/s | "
            f"{s['pairs_s']:,.0f} pairs/s | {d['pairs_s'] / t['pairs_s']:.2f}x | {d['pairs_s'] / s['pairs_s']:.2f}x |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    import torch

    from rerank_eval.paths import results_dir, shared_dir

    ap = argparse.ArgumentParser(
        prog="python benchmarks/perf.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--model",
        default=str(shared_dir() / "models" / "scifact-minilm-l6-ce"),
        help="cross-encoder to time (speed does not depend on its weights)",
    )
    ap.add_argument("--data", default=None, help="folder holding scifact/ and msmarco-dl19-passage/")
    ap.add_argument("--sections", default="cross_encoder,batching,bm25,bi_encoder")
    ap.add_argument("--queries", type=int, default=10, help="DL19 queries of the batching section")
    ap.add_argument("--pairs", type=int, default=None, help="time only the first N DL19 pairs")
    ap.add_argument("--batch-tokens", type=int, default=0, help="0: the engine's default for the device")
    ap.add_argument("--docs", type=int, default=1000, help="abstracts encoded in the bi-encoder section")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the cross-encoder")
    ap.add_argument("--no-packed", action="store_true", help="padded batches even for BERT-family models")
    ap.add_argument("--bi-model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--out", default=str(results_dir() / "perf.md"))
    args = ap.parse_args(argv)
    from rerank_eval.scoring.models import pick_device

    device = pick_device(args.device)
    root = _data_root(args.data)
    sections = set(args.sections.split(","))
    res: dict = {
        "command": "python benchmarks/perf.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
    }
    if "cross_encoder" in sections:
        print("cross-encoder ...", flush=True)
        res["cross_encoder"] = cross_encoder_section(
            args.model,
            dl19_pairs(root, args.pairs),
            device,
            args.batch_tokens or None,
            not args.no_baseline,
            profile=True,
            compile=args.compile,
            packed=False if args.no_packed else None,
        )
    if "batching" in sections:
        print("batching policies ...", flush=True)
        res["batching"] = batching_section(args.model, root, device, args.queries)
    if "bm25" in sections:
        print("bm25 ...", flush=True)
        res["bm25"] = bm25_section(root)
    if "bi_encoder" in sections:
        print("bi-encoder ...", flush=True)
        res["bi_encoder"] = bi_encoder_section(root, device, args.docs, args.bi_model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(res)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
