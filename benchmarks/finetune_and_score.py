"""Fine-tune the SciFact cross-encoder with the project's recipe, then rerank SciFact test's BM25 top 100 with it
and write the run (evaluate it anywhere with ranx: the GPU machine lacks ranx).

Used by benchmarks/gpu_check.sh; runs on CPU too (slowly): python benchmarks/finetune_and_score.py --out DIR
"""

import argparse
import json
import os
import time
from pathlib import Path

from rerank_eval.datasets import BeirDirDataset
from rerank_eval.job import write_trec
from rerank_eval.pipeline import run_pipeline
from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker
from rerank_eval.retrievers.bm25 import BM25Retriever
from rerank_eval.train import TrainSettings, train_cross_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--init-model", default="sentence-transformers/all-MiniLM-L6-v2")
ap.add_argument("--model-dir", default="/tmp/ft-scifact")
ap.add_argument("--epochs", type=float, default=5)
ap.add_argument("--negatives", type=int, default=15)
ap.add_argument("--max-length", type=int, default=256)
ap.add_argument("--max-queries", type=int, default=None)
ap.add_argument(
    "--test-queries", type=int, default=None, help="rerank only the first N test queries (a smoke run)"
)
args = ap.parse_args()
data = Path(os.environ.get("RERANK_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
settings = TrainSettings(
    init_model=args.init_model,
    epochs=args.epochs,
    negatives=args.negatives,
    max_length=args.max_length,
    max_queries=args.max_queries,
)
info = train_cross_encoder(
    BeirDirDataset(data / "scifact", split="train"), BM25Retriever(), args.model_dir, settings, progress=False
)
test = BeirDirDataset(data / "scifact", split="test")
t = time.perf_counter()
res = run_pipeline(
    test,
    BM25Retriever(),
    CrossEncoderReranker(args.model_dir, max_length=args.max_length),
    100,
    10,
    queries=test.queries()[: args.test_queries],
    progress=False,
)
info["score_test_s"] = round(time.perf_counter() - t, 1)
write_trec(res.reranked, out / "scifact-test-ft.trec", "ft")
write_trec(res.first_stage, out / "scifact-test-bm25.trec", "bm25")
(out / "train_info.json").write_text(json.dumps(info, indent=2))
print(json.dumps(info, indent=2))
