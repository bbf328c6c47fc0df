"""Stage 1, identify: what a job's figures depend on, as two fingerprints."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import ConfigError
from ..evaluation import Metric, parse_metrics
from ..provenance import ENVIRONMENT_LIBRARIES, code_version, fingerprint, library_versions
from .spec import JobSpec

TOP_K_KEYS = ("top_k", "final_metrics", "context_tokenizer")  # config keys that only change the final cut
REPORT_KEYS = ("report",)  # what a sweep's report concludes: no job result depends on it


@dataclass(frozen=True)
class Identity:
    fingerprint: str  # everything the job's figures depend on: a finished run with it is this job's result
    comparison: str  # the same less top_k: jobs that share it share one scoring pass and one evaluation
    retriever: str  # the first stage's identity (its settings, index and code)
    reranker: str
    finals: tuple[Metric, ...]  # the final list's metrics, each measure at top_k


def identify(spec: JobSpec) -> Identity:
    """The job's fingerprints: its resolved config, the data and run files, the first stage's and reranker's
    identities (model files, endpoint, library versions, device), the code version and the options.

    Raises:
        ConfigError: a pool corpus under a full-corpus first stage without ``allow_pool``.
    """
    check_pool(spec)
    finals = tuple(parse_metrics([f"{m}@{spec.top_k}" for m in spec.final_measures]))
    settings = {
        "candidates": spec.candidates,
        "metrics": [m.name for m in spec.metrics],
        "significance": spec.significance,
        "on_failure": spec.on_failure,
        "no_relevant": spec.no_relevant,
        "allow_pool": spec.allow_pool,
        "latency_probe": spec.latency_probe,
        "latency_probe_api": spec.latency_probe_api,
        "query_batch": spec.query_batch,
        "bootstrap": spec.bootstrap,
        "seed": spec.seed,
    }
    ingredients = {
        "dataset": spec.dataset.fingerprint,
        "retriever": spec.retriever.identity(spec.dataset),
        "reranker": getattr(spec.reranker, "identity", "none"),
        "code": code_version(),
        "settings": json.dumps(settings, sort_keys=True),
        "environment": json.dumps(library_versions(ENVIRONMENT_LIBRARIES), sort_keys=True),
    }
    job = {k: v for k, v in spec.config.items() if k not in REPORT_KEYS}
    base = {k: v for k, v in job.items() if k not in TOP_K_KEYS}
    top = {"top_k": spec.top_k, "final": [m.name for m in finals], "tokenizer": spec.context_tokenizer}
    return Identity(
        fingerprint=fingerprint(job, {**ingredients, "top": json.dumps(top, sort_keys=True)}),
        comparison=fingerprint(base, ingredients),
        retriever=ingredients["retriever"],
        reranker=ingredients["reranker"],
        finals=finals,
    )


def check_pool(spec: JobSpec) -> None:
    """Refuse a full-corpus first stage over a pool corpus (DL19 offline) unless ``allow_pool``."""
    if (
        getattr(spec.dataset, "pool", False)
        and getattr(spec.retriever, "full_corpus", False)
        and not spec.allow_pool
    ):
        raise ConfigError(
            f"{spec.dataset.name}'s corpus here is only a pool of judged and retrieved passages, so "
            f"{spec.retriever.name} over it gives figures no published run can be compared with; rerank a saved "
            "run instead (retriever=run retriever.name=bm25), or pass allow_pool=true to run it anyway (recorded "
            "on the run)"
        )
