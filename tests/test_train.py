"""Fine-tuning on a tiny budget produces a model the cross-encoder reranker loads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT

from rerank_eval.datasets import BeirDirDataset
from rerank_eval.errors import ConfigError
from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker
from rerank_eval.retrievers.bm25 import BM25Retriever
from rerank_eval.train import TrainSettings, mine_groups, train_cross_encoder
from rerank_eval.types import Doc, Query


def test_mined_groups_hold_one_positive_and_hard_negatives():
    ds = BeirDirDataset(DATA / "scifact", split="train")
    rows = mine_groups(ds, BM25Retriever(), TrainSettings(max_queries=5, negatives=4, mine_depth=30))
    qrels, queries = ds.qrels(), {q.text: q.query_id for q in ds.queries()}
    by_text = {d.full_text: d.doc_id for d in ds.corpus()}
    first5 = [q for q in ds.queries() if any(g > 0 for g in qrels[q.query_id].values())][:5]
    assert len(rows) == sum(sum(g > 0 for g in qrels[q.query_id].values()) for q in first5)
    for r in rows:
        rel = qrels[queries[r["query"]]]
        assert rel[by_text[r["positive"]]] > 0
        negs = [by_text[r[f"negative_{i}"]] for i in range(1, 5)]
        assert len(set(negs)) == 4 and all(rel.get(n, 0) <= 0 for n in negs)


def test_tiny_training_run_writes_a_loadable_model(tmp_path):
    ds = BeirDirDataset(DATA / "scifact", split="train")
    out = tmp_path / "ce"
    info = train_cross_encoder(
        ds,
        BM25Retriever(),
        out,
        TrainSettings(max_steps=3, batch_groups=2, negatives=3, max_queries=8, max_length=64),
        progress=False,
    )
    assert info["steps"] == 3 and info["groups"] >= 8
    assert json.loads((out / "train_info.json").read_text())["settings"]["negatives"] == 3
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    # the saved model is what sentence-transformers loads, the harness scores it as predict does, and the three
    # steps changed the weights of the body it started from
    from safetensors.numpy import load_file
    from sentence_transformers import CrossEncoder

    from rerank_eval.scoring.models import resolve_model

    rr = CrossEncoderReranker(str(out), max_length=64)
    docs = [Doc("a", "cell biology of the nucleus"), Doc("b", "stock markets fell")]
    scores = rr.score(Query("q", "cells"), docs)
    ref = CrossEncoder(str(out), max_length=64, activation_fn=torch.nn.Identity()).predict(
        [("cells", d.text) for d in docs]
    )
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    trained = load_file(str(out / "model.safetensors"))
    base = load_file(str(Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2")) / "model.safetensors"))
    name = next(k for k in trained if k.endswith("encoder.layer.0.attention.self.query.weight"))
    start = base[name.removeprefix("bert.")] if name.removeprefix("bert.") in base else base[name]
    assert np.abs(trained[name] - start).max() > 0
    with pytest.raises(ConfigError, match="already holds a model"):
        train_cross_encoder(ds, BM25Retriever(), out, TrainSettings(max_steps=1))


def test_train_cli_refuses_bad_settings(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_eval.train",
            "train.negatives=0",
            f"output={tmp_path / 'm'}",
            f"hydra.run.dir={tmp_path / 'o'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "rerank-eval: error: train needs negatives >= 1, batch_groups >= 1 and max_length >= 16"
    )
