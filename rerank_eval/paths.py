"""Where the harness reads and writes, decided in one place and never from where the package is installed.

Everything is relative to the working folder, the *home* (``RERANK_EVAL_HOME`` to choose another): ``outputs/``
and ``multirun/`` (Hydra's job folders), ``results/`` (tables, plots, reports), ``.cache/`` (score, response and
embedding caches; ``RERANK_EVAL_CACHE``), ``mlruns.db`` (the default MLflow store; ``MLFLOW_TRACKING_URI``).
Local collections are looked up in ``RERANK_EVAL_DATA``, then ``<home>/data``, then ``<home>/../shared/data``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The folder outputs, results, caches and the default MLflow store live under."""
    return Path(os.environ.get("RERANK_EVAL_HOME") or os.getcwd()).expanduser().resolve()


def cache_root() -> Path:
    """Where caches live: ``$RERANK_EVAL_CACHE``, else ``<home>/.cache``."""
    env = os.environ.get("RERANK_EVAL_CACHE")
    return Path(env).expanduser() if env else home() / ".cache"


def results_dir() -> Path:
    return home() / "results"


def outputs_dir() -> Path:
    return home() / "outputs"


def mlflow_uri() -> str:
    """The MLflow store: ``$MLFLOW_TRACKING_URI``, else a SQLite file ``<home>/mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlruns.db'}"


def shared_dir() -> Path:
    """The shared folder beside the home (``../shared``) that holds this workplace's collections and models."""
    return home().parent / "shared"


DATA_ENV = "RERANK_EVAL_DATA"


def data_roots() -> list[Path]:
    """The folders a dataset's local copy is looked for in, first match wins."""
    roots = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    return [*roots, home() / "data", shared_dir() / "data"]
