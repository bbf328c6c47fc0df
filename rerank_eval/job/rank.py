"""Stage 3, rank: the pipeline (retrieve, cut, rerank through the score cache), or the candidates a ``top_k``
sibling ranked, handed over by a ``CandidateShare``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..cache import ScoreCache
from ..pipeline import PipelineResult, run_pipeline
from ..types import Ranking
from .identify import Identity
from .spec import JobSpec

log = logging.getLogger("rerank_eval")


@dataclass
class Ranked:
    result: PipelineResult
    final: Ranking  # the reranked candidates cut to top_k: what a consumer (a RAG prompt) receives
    first_final: Ranking  # the first stage cut to top_k
    shared_from: str | None = None  # the sibling run whose ranking (scores and timings) this job reuses

    @property
    def latency_source(self) -> str:
        """measured, probe or none; ``replayed:<run>`` for timings a sibling measured."""
        source = self.result.latency_source
        return f"replayed:{self.shared_from}" if self.shared_from and source != "none" else source


@dataclass
class _Entry:
    fingerprint: str
    result: PipelineResult
    origin: str  # the MLflow run id of the job that ranked it, else its name


class CandidateShare:
    """Candidates ranked by one job, for the next job that differs from it only in ``top_k`` (sweeps list
    ``top_k`` innermost): one scoring pass and one timing for all of them, and the later jobs' results say whose
    timings they carry (``replayed:<run>``). A sweep or study makes one and hands it to each of its jobs; a job
    without one ranks its own candidates. It holds the last job's ranking only."""

    def __init__(self) -> None:
        self._last: dict[str, _Entry] = {}

    def take(self, identity: Identity) -> _Entry | None:
        """The sibling's entry: same comparison, another fingerprint (the very same job asked again runs again)."""
        entry = self._last.get(identity.comparison)
        return entry if entry is not None and entry.fingerprint != identity.fingerprint else None

    def offer(self, identity: Identity, result: PipelineResult, origin: str) -> None:
        self._last = {identity.comparison: _Entry(identity.fingerprint, result, origin)}

    def name_origin(self, identity: Identity, run_id: str) -> None:
        """The ranking job's MLflow run id, once it is tracked: its siblings name it as their latency's origin."""
        entry = self._last.get(identity.comparison)
        if entry is not None and entry.fingerprint == identity.fingerprint:
            entry.origin = run_id


def rank(spec: JobSpec, identity: Identity, cache: ScoreCache | None, share: CandidateShare | None) -> Ranked:
    """The job's candidates, first stage and reranked: from ``share`` when a sibling ranked them, else run."""
    entry = share.take(identity) if share is not None else None
    if entry is not None:
        log.info(
            "%s: same candidates as the job just run (only top_k differs): its scoring and timing reused",
            spec.label,
        )
        result, shared_from = entry.result, entry.origin
    else:
        result = run_pipeline(
            spec.dataset,
            spec.retriever,
            spec.reranker,
            spec.candidates,
            spec.top_k,
            cache=cache,
            progress=spec.progress,
            on_failure=spec.on_failure,
            latency_probe=spec.latency_probe,
            latency_probe_api=spec.latency_probe_api,
            query_batch=spec.query_batch,
        )
        shared_from = None
        if share is not None:
            share.offer(identity, result, spec.label)
    cut = spec.top_k
    return Ranked(
        result,
        final={q: hits[:cut] for q, hits in result.reranked.items()},
        first_final={q: hits[:cut] for q, hits in result.first_stage.items()},
        shared_from=shared_from,
    )
