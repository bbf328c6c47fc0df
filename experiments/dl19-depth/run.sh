#!/usr/bin/env bash
# The DL19 depth study: the shared cross-encoder and the MiniLM bi-encoder over the published BM25 run at depths
# 10, 20, 50 and 100, two Hydra sweeps into MLflow experiment dl19-depth, then the full report with comparisons
# between the two rerankers. Run from the project root after `make venv` (`make bench` first fills the score
# cache at depth 100, so the sweeps only probe latency).
set -euo pipefail
PY=${PY:-.venv/bin/python}
common=(dataset=msmarco-dl19 retriever=run retriever.name=bm25 candidates=10,20,50,100 top_k=10
        mlflow.experiment=dl19-depth progress=false)
$PY -m rerank_eval -m "${common[@]}" reranker=cross_encoder reranker.model=../shared/models/scifact-minilm-l6-ce \
    reranker.max_length=256 hydra.sweep.dir=multirun/dl19-depth/cross-encoder
$PY -m rerank_eval -m "${common[@]}" reranker=bi_encoder hydra.sweep.dir=multirun/dl19-depth/bi-encoder
$PY -m rerank_eval.report --experiment dl19-depth --latest-parents 2 --between --out results/dl19-depth
