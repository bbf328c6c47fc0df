"""Rerankers only score: ``score(query, docs)`` returns one float per document, in input order, higher is better.

Sorting, cutting, caching and timing live once, in ``pipeline.py`` and ``cache.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..types import Doc, Query


class Reranker(Protocol):
    name: str
    identity: str  # model, weights hash and every setting that changes scores: the score cache's key
    pointwise: bool  # a document's score does not depend on the other documents scored with it
    # optional: batch_invariant (a local model's scores are bitwise independent of batching: a latency probe that
    # finds fresh scores differing from cached ones then stops the job), device (where latency is measured),
    # usage (API requests and cost), internal_hits (a count of what it served from its own caches: a call that
    # used any is not timed), uncached() (a context in which it computes everything afresh: the probe's) and
    # score_many([(query, docs), ...]) (several queries' candidates in one call: the pipeline's query_batch)

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]: ...
