"""The mixed-company test on any device: DL19 BM25 pairs scored alone, then shuffled among as many other pairs
(other batch mates, other blocks), each pair's two scores compared bit for bit, for each dtype and batching.
``benchmarks/gpu_check.sh`` runs it on a GPU; ``tests/test_invariance.py`` is the CPU test of every family.

    python benchmarks/mixed_company.py --device cuda --model /tmp/ce-random --pairs 4300
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from perf import _data_root, dl19_pairs


def check(model: str, pairs, device: str, dtype: str, batch_invariant) -> tuple[int, float, str]:
    """How many of the pairs scored alone equal their scores in mixed company, the largest difference, and the
    batching that ran."""
    from rerank_eval.scoring.cross_encoder import CrossEncoderEngine

    eng = CrossEncoderEngine(model, device=device, dtype=dtype, batch_invariant=batch_invariant)
    half = len(pairs) // 2
    mine, company = pairs[:half], pairs[half:]
    alone = eng.score_pairs(mine)
    mixed = [*mine, *company]
    random.Random(0).shuffle(mixed)
    where = {p: i for i, p in enumerate(mixed)}
    together = eng.score_pairs(mixed)[[where[p] for p in mine]]
    return int((alone == together).sum()), float(np.abs(alone - together).max()), eng.batching


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    pairs = list(dict.fromkeys(dl19_pairs(_data_root(args.data), args.pairs)))
    print("| dtype | batching | pairs equal alone and in company | largest difference |")
    print("|---|---|---:|---:|")
    for dtype in ("fp32", "bf16"):
        for setting in (True, False):
            equal, worst, batching = check(args.model, pairs, args.device, dtype, setting)
            print(f"| {dtype} | {batching} | {equal}/{len(pairs) // 2} | {worst:.3g} |", flush=True)


if __name__ == "__main__":
    main()
