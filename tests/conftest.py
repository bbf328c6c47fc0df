"""Shared fixtures. Tests never download: models and collections come from ../shared and the installed packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
CE_MODEL = SHARED / "models" / "scifact-minilm-l6-ce"
TINY = Path(__file__).parent / "data" / "tiny"
DL19_CE = [  # DL19's shipped BM25 run reranked by the shared cross-encoder: the suite's real scoring workload
    "dataset=msmarco-dl19",
    "retriever=run",
    "retriever.name=bm25",
    "reranker=cross_encoder",
    f"reranker.model={CE_MODEL}",
    "reranker.max_length=128",
    # the plumbing tests (crashes, sweeps, load) run the throughput mode, packed bf16 batches; the default
    # (fp32, one pair a forward) is what tests/test_trust.py checks
    "reranker.dtype=bf16",
    "reranker.batch_invariant=false",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["RERANK_EVAL_NO_PROGRESS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own caches and MLflow store: nothing leaks into the project folder."""
    base = tmp_path_factory.mktemp("iso")
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(base / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlruns.db'}")
    yield


@pytest.fixture(scope="session")
def electra_ce(tmp_path_factory):
    """A random-weight ELECTRA classifier with the shared cross-encoder's tokenizer: a cross-encoder that is not
    BERT, so it runs through its own forward."""
    import torch
    from transformers import AutoTokenizer, ElectraConfig, ElectraForSequenceClassification

    folder = tmp_path_factory.mktemp("electra_ce")
    torch.manual_seed(0)
    cfg = ElectraConfig(
        embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        num_labels=1, vocab_size=30522,
    )  # fmt: skip
    ElectraForSequenceClassification(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(CE_MODEL).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny():
    from rerank_eval.datasets import BeirDirDataset

    return BeirDirDataset(TINY, name="tiny")


@pytest.fixture(scope="session")
def dl19():
    from rerank_eval.datasets import BeirDirDataset

    return BeirDirDataset(DATA / "msmarco-dl19-passage", name="msmarco-dl19", relevance_level=2)


@pytest.fixture(scope="session")
def scifact():
    from rerank_eval.datasets import BeirDirDataset

    return BeirDirDataset(DATA / "scifact", name="scifact")


def pytest_sessionfinish(session, exitstatus):
    """`make reliability` sets RELIABILITY_REPORT: the figures tests/reliability recorded are written there."""
    import sys

    target, relhelp = os.environ.get("RELIABILITY_REPORT"), sys.modules.get("relhelp")
    if target and relhelp is not None and relhelp.FIGURES:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relhelp.render_report(relhelp.FIGURES, failed=bool(exitstatus)), encoding="utf-8")
