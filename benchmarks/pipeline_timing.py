"""Where the cross-encoder's end-to-end time goes on this device: the tokenizer alone (one call, several threads,
chunks), then ``score_pairs`` on the 4,300 DL19 pairs with cold and warm token stores for several numbers of
preparation threads and chunk sizes, and the time the model loop waited for prepared batches. Writes a Markdown
table to --out. Usage: python benchmarks/pipeline_timing.py --model M --device cuda --out pipeline.md"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from perf import _data_root, _sync, dl19_pairs  # benchmarks/perf.py (this folder)

from rerank_eval.scoring.cross_encoder import CrossEncoderEngine


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=None, help="only the first N pairs (a rehearsal on CPU)")
    args = ap.parse_args()
    pairs = dl19_pairs(_data_root(args.data), args.pairs)
    texts = list(dict.fromkeys(t for p in pairs for t in p))
    rows = [
        f"# end-to-end pipeline timing ({len(pairs):,} DL19 pairs, {len(texts):,} unique texts, "
        f"{os.cpu_count()} CPUs)",
        "",
        "| what | seconds | pairs/s |",
        "|---|---:|---:|",
    ]

    def row(what, s):
        rows.append(f"| {what} | {s:.4f} | {len(pairs) / s:,.0f} |")
        print(rows[-1], flush=True)

    eng = CrossEncoderEngine(args.model, device=args.device, dtype="auto", batch_invariant=False)
    fast = eng._fast

    def encode(ts):
        return [e.ids for e in fast.encode_batch_fast(ts, add_special_tokens=False)]

    row("tokenize all texts, one call", best(lambda: encode(texts)))
    row(
        "tokenize all texts, one call, Rust part only",
        best(lambda: fast.encode_batch_fast(texts, add_special_tokens=False)),
    )
    for w in (2, 4, 8):
        with ThreadPoolExecutor(w) as ex:
            row(
                f"tokenize all texts, {w} threads at once",
                best(lambda ex=ex, w=w: list(ex.map(encode, [texts[i::w] for i in range(w)]))),
            )
    row(
        "tokenize in chunks of 512 texts, one thread",
        best(lambda: [encode(texts[i : i + 512]) for i in range(0, len(texts), 512)]),
    )

    def run(e, cold=True):
        if cold:
            e._store.clear()
        e.score_pairs(pairs)
        _sync(e.device)

    for workers in (1, 2, 4):
        for chunk in (1024, 2048, 4096):
            e = CrossEncoderEngine(
                args.model,
                device=args.device,
                prep_workers=workers,
                chunk_pairs=chunk,
                dtype="auto",
                batch_invariant=False,
            )
            run(e)
            row(
                f"score_pairs, cold store, {workers} prep threads, chunks up to {chunk}",
                best(lambda e=e: run(e)),
            )
    row("score_pairs, warm store (ids cached), default engine", best(lambda: run(eng, cold=False)))

    waits, preps = [], []
    prepare = eng._prepare

    def timed_prepare(*a):
        t = time.perf_counter()
        out = prepare(*a)
        preps.append(time.perf_counter() - t)
        return out

    eng._prepare = timed_prepare
    import concurrent.futures as cf

    result = cf.Future.result

    def timed_result(self, timeout=None):
        t = time.perf_counter()
        out = result(self, timeout)
        waits.append(time.perf_counter() - t)
        return out

    cf.Future.result = timed_result
    total = best(lambda: run(eng), repeat=1)
    cf.Future.result = result
    rows.append("")
    rows.append(
        f"Default engine, one cold run: {total:.4f} s; the model loop waited {sum(waits):.4f} s for "
        f"prepared chunks ({len(waits)} chunks; each chunk's preparation took "
        f"{', '.join(f'{p:.4f}' for p in preps)} s)."
    )
    print(rows[-1])
    Path(args.out).write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
