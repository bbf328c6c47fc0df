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
