"""What a job is: one frozen record. ``config.job_spec`` builds it with the shipped defaults (from Python, or from
a Hydra config); the defaults live in one place, the shipped ``config.yaml``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets import Dataset
from ..errors import ConfigError, check_whole
from ..evaluation import Metric, parse_metrics
from ..pipeline import check_depths
from ..rerankers import Reranker
from ..retrievers import Retriever

# each option's key in the config (config.yaml documents them and holds their defaults)
CONFIG_KEYS = {
    "candidates": "candidates",
    "top_k": "top_k",
    "metrics": "metrics",
    "final_measures": "final_metrics",
    "context_tokenizer": "context_tokenizer",
    "significance": "significance",
    "no_relevant": "no_relevant",
    "allow_pool": "allow_pool",
    "latency_probe": "latency.probe",
    "latency_probe_api": "latency.probe_api",
    "bootstrap": "stats.bootstrap",
    "seed": "stats.seed",
    "query_batch": "query_batch",
    "on_failure": "on_failure",
    "resume": "resume",
    "progress": "progress",
}
CHOICES = {
    "significance": ("student", "fisher"),
    "no_relevant": ("keep", "drop"),
    "on_failure": ("fail", "zero"),
}


@dataclass(frozen=True)
class JobSpec:
    """One job: a dataset, a first stage cut to ``candidates``, a reranker (None: the first stage's order), the
    final list cut to ``top_k``, and how they are evaluated.

    Args:
        metrics: the reranked candidates' metrics at the standard cutoffs (``ndcg@10``; strings or ``Metric``).
        final_measures: the final list's measures, each evaluated at ``top_k``.
        context_tokenizer: the tokenizer ``context_tokens`` counts with (None: not counted), and the documents
            of rerankers without a tokenizer of their own.
        significance: the paired test against the job's own first stage: ``student`` or ``fisher``.
        no_relevant: ``keep`` (trec_eval's default: queries without a relevant document score 0 and stay in the
            mean) or ``drop`` (left out of every mean and test).
        allow_pool: run a full-corpus first stage over a dataset whose corpus is only a pool (recorded).
        latency_probe: queries timed afresh when some scores came from a cache (0: report no latency then).
        latency_probe_api: the same for API rerankers (their probe requests are paid for).
        bootstrap, seed: resamples and seed of the paired bootstrap intervals (``analysis``).
        query_batch: queries whose candidates are scored in one call by rerankers that can.
        on_failure: a query an API reranker still fails on after retries: ``fail`` or ``zero``.
        resume: reuse a finished MLflow run with the same fingerprint instead of running again.
        name: the job's name in logs and MLflow (default: dataset/first stage/reranker@depth/top k).
        config: the resolved config the job was built from (fingerprinted; needed to ``resume``).
    """

    dataset: Dataset
    retriever: Retriever
    reranker: Reranker | None
    candidates: int
    top_k: int
    metrics: tuple[Metric, ...]
    final_measures: tuple[str, ...]
    context_tokenizer: str | None
    significance: str
    no_relevant: str
    allow_pool: bool
    latency_probe: int
    latency_probe_api: int
    bootstrap: int
    seed: int
    query_batch: int
    on_failure: str
    resume: bool
    progress: bool
    name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        metrics = tuple(m if isinstance(m, Metric) else parse_metrics([m])[0] for m in self.metrics)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "final_measures", tuple(self.final_measures or ()))
        check_options(vars(self))

    @property
    def reranker_name(self) -> str:
        return self.reranker.name if self.reranker is not None else "none"

    @property
    def label(self) -> str:
        """The job's name in logs and MLflow."""
        return self.name or (
            f"{self.dataset.name}/{self.retriever.name}/{self.reranker_name}@{self.candidates}/top{self.top_k}"
        )


def check_options(options: Mapping[str, Any]) -> None:
    """Raises ConfigError, naming the config key, for an option out of range: checked before anything loads."""
    check_depths(options["candidates"], options["top_k"])
    for key in ("latency_probe", "latency_probe_api", "seed"):
        check_whole(CONFIG_KEYS[key], options[key], 0)
    check_whole("query_batch", options["query_batch"], 1)
    if not isinstance(options["bootstrap"], int) or options["bootstrap"] < 100:
        raise ConfigError(f"stats.bootstrap must be at least 100 resamples, got {options['bootstrap']!r}")
    for key, allowed in CHOICES.items():
        if options[key] not in allowed:
            raise ConfigError(f"{key} must be {' or '.join(allowed)}, got {options[key]!r}")
    for key in ("allow_pool", "resume", "progress"):
        if not isinstance(options[key], bool):
            raise ConfigError(f"{key} must be true or false, got {options[key]!r}")


@dataclass
class JobResult:
    name: str
    metrics: dict[str, float]  # reranked pipeline, by metric name
    first_stage: dict[str, float]
    pvalues: dict[str, float]  # paired test of reranked vs first stage, by metric name
    latency: dict[str, float]
    per_query: pd.DataFrame
    output_dir: Path
    run_id: str | None = None
    counts: dict[str, float] = field(default_factory=dict)
    latency_source: str = "none"  # measured, probe, none, or replayed:<run> (timings of another run)
