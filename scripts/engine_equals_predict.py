"""The engine's pairs and scores against ``CrossEncoder.predict`` under whatever tokenizers version is imported: long
pairs (both texts past max_length, either one longer, odd and even room) at several lengths. Prints one line a
length and exits 1 on any difference. ``make tokenizers-check`` runs it on the locked tokenizers and on 0.23.1
(whose truncation stops tokenizing a text at max_length, giving the odd token to the other text)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
from sentence_transformers import CrossEncoder

from rerank_eval.scoring.cross_encoder import CrossEncoderEngine
from rerank_eval.scoring.tokens import _truncation_probes

MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "scifact-minilm-l6-ce"


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else str(MODEL)
    bad = 0
    for max_length in (31, 64, 256):
        eng = CrossEncoderEngine(model, max_length=max_length)
        ce = CrossEncoder(model, max_length=max_length, activation_fn=torch.nn.Identity())
        words = " ".join(f"term{i} word" for i in range(400))
        pairs = _truncation_probes(max_length) + [(words, words[: len(words) // 2]), (words[:999], words)]
        ids, _, cu = eng.pack(pairs)
        same_ids = all(
            ids[cu[i] : cu[i + 1]].tolist()
            == ce.tokenizer(a, b, truncation=True, max_length=max_length)["input_ids"]
            for i, (a, b) in enumerate(pairs)
        )
        diff = float(np.abs(eng.score_pairs(pairs) - ce.predict(pairs, batch_size=1)).max())
        ok = same_ids and diff < 1e-5
        bad += not ok
        print(
            f"tokenizers {tokenizers.__version__} max_length {max_length}: tokenization={eng.tokenization} "
            f"ids {'equal' if same_ids else 'DIFFER'}, max |score - predict| {diff:.2e} {'ok' if ok else 'FAIL'}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
