"""The API rerankers end to end against the loopback emulators (tests/emulators.py), plus late interaction:
`python benchmarks/emulated_api_rerankers.py` writes results/api_emulated.md.

The emulators rank by query-term overlap, so these figures show only that requests, parsing, ordering and
accounting are right, never what Cohere or Claude would score.
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RERANK_EVAL_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from emulators import AnthropicEmulator, CohereEmulator  # noqa: E402

from rerank_eval.datasets import load_dataset  # noqa: E402
from rerank_eval.evaluation import evaluate, paired_test, parse_metrics  # noqa: E402
from rerank_eval.pipeline import run_pipeline  # noqa: E402
from rerank_eval.rerankers.cohere import CohereReranker  # noqa: E402
from rerank_eval.rerankers.colbert import ColBERTReranker  # noqa: E402
from rerank_eval.rerankers.llm import LLMReranker  # noqa: E402
from rerank_eval.retrievers.bm25 import BM25Retriever  # noqa: E402
from rerank_eval.retrievers.run_file import RunFileRetriever  # noqa: E402

os.environ["COHERE_API_KEY"] = os.environ["ANTHROPIC_API_KEY"] = "emulated-key"
METRIC = parse_metrics(["ndcg@10"])


def main() -> None:
    sets = [
        ("scifact", load_dataset("scifact", folder="scifact"), BM25Retriever),
        (
            "msmarco-dl19",
            load_dataset("msmarco-dl19", folder="msmarco-dl19-passage", relevance_level=2),
            lambda: RunFileRetriever(name="bm25"),
        ),
    ]
    rows = []
    for name, ds, first in sets:
        base = None
        for label, make, emu_cls in [
            (
                "cohere rerank-v3.5 (emulated; DL19 with 30% faults)",
                lambda u: CohereReranker(base_url=u, timeout=1, max_retries=6),
                CohereEmulator,
            ),
            (
                "claude listwise 20/10 (emulated; DL19 with 30% faults)",
                lambda u: LLMReranker(base_url=u, timeout=1, max_retries=6, cache_enabled=False),
                AnthropicEmulator,
            ),
            (
                "claude pointwise (emulated)",
                lambda u: LLMReranker(base_url=u, mode="pointwise", cache_enabled=False),
                AnthropicEmulator,
            ),
            ("colbert MaxSim, all-MiniLM-L6-v2 (local)", None, None),
        ]:
            t = time.perf_counter()
            if make is None:
                if name == "scifact":
                    continue  # 30,000 pairs of token embeddings: DL19 shows the plumbing in a minute
                rr, requests = ColBERTReranker(), 0
                res = run_pipeline(ds, first(), rr, 100, 10, progress=False)
            else:
                # faults on DL19 only: on SciFact's 2,700 LLM requests the SDK's backoff would take many minutes
                faults = 0.3 if "faults" in label and name == "msmarco-dl19" else 0.0
                with emu_cls(fault_rate=faults, seed=11, transient_only=True, slow_s=1.2) as emu:
                    rr = make(emu.url)
                    res = run_pipeline(ds, first(), rr, 100, 10, progress=False)
                requests = len(emu.requests)
            per_q = evaluate(ds.qrels(), res.reranked, METRIC, ds.relevance_level)["ndcg@10"]
            fs = evaluate(ds.qrels(), res.first_stage, METRIC, ds.relevance_level)["ndcg@10"]
            base = fs.mean()
            usage = getattr(rr, "usage", None)
            cost = usage.counts.get("api_cost_usd", 0.0) if usage else 0.0
            rows.append(
                f"| {name} | {label} | {base:.4f} | {per_q.mean():.4f} | {paired_test(per_q, fs):.3g} | "
                f"{requests} | {int(usage.counts.get('api_requests', 0)) if usage else 0} | {cost:.4f} | "
                f"{time.perf_counter() - t:.0f} s |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# API rerankers against the emulators",
            "",
            "Command: `python benchmarks/emulated_api_rerankers.py`. First stage: BM25 (SciFact), the shipped BM25 run (DL19); "
            "depth 100. The emulators score by query-term overlap: these numbers show the plumbing (requests, retries, "
            "parsing, ordering, cost) is right, not what the real services score.",
            "",
            "| dataset | reranker | first stage nDCG@10 | reranked nDCG@10 | p (t-test) | HTTP requests (faults included) "
            "| billed requests | cost (USD, list prices) | wall |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    (ROOT / "results" / "api_emulated.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
