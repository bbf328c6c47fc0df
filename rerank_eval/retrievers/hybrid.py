"""Hybrid first stage: two first stages fused with ranx (reciprocal rank fusion by default)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..datasets import Dataset
from ..errors import ConfigError
from ..provenance import environment
from ..ranking import top_k
from ..types import Query, Ranking
from . import Retriever


class HybridRetriever:
    """Fuses the rankings of two first stages.

    Args:
        sparse, dense: the two first stages (any retrievers).
        method: a ranx fusion method (``rrf``, ``wsum``, ``sum``, ...).
        norm: ranx score normalisation before fusion (None for rank-based methods such as rrf).
        params: the method's parameters, e.g. ``{k: 60}`` for rrf or ``{weights: [0.3, 0.7]}`` for wsum.
        depth: how many documents each first stage contributes (at least the requested k).
    """

    def __init__(
        self,
        sparse: Retriever,
        dense: Retriever,
        method: str = "rrf",
        norm: str | None = None,
        params: dict | None = None,
        depth: int = 1000,
    ):
        from ranx.fusion import fusion_switch

        try:
            fusion_switch(method)
        except (ValueError, NotImplementedError, KeyError):
            raise ConfigError(f"unknown ranx fusion method {method!r}; try rrf, wsum, sum or mnz") from None
        self.sparse, self.dense = sparse, dense
        self.method, self.norm, self.params, self.depth = method, norm, dict(params or {}), int(depth)
        self.name = f"hybrid-{method}({sparse.name},{dense.name})"

    full_corpus = True

    def identity(self, dataset: Dataset) -> str:
        """Both stages' identities and every fusion setting: the method, its parameters, the normalisation, the
        depth each stage contributes, and ranx's version (it computes the fusion)."""
        fusion = json.dumps([self.method, self.params, self.norm, self.depth], sort_keys=True)
        return (
            f"hybrid|{self.sparse.identity(dataset)}|{self.dense.identity(dataset)}|fusion={fusion}"
            f"|{environment(('ranx',))}"
        )

    def index(self, dataset: Dataset) -> None:
        self.sparse.index(dataset)
        self.dense.index(dataset)

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        from ranx import Run, fuse

        depth = max(k, self.depth)
        runs = []
        for stage in (self.sparse, self.dense):
            ranking = stage.retrieve(queries, depth)
            runs.append(
                Run({q: {d.doc_id: d.score for d in docs} or {"": 0.0} for q, docs in ranking.items()})
            )
        fused = fuse(runs, norm=self.norm, method=self.method, params=self.params).to_dict()
        out: Ranking = {}
        for q in queries:
            scores = {d: s for d, s in fused.get(q.query_id, {}).items() if d}
            ids = sorted(scores)  # ties break by doc id, independent of dict order
            out[q.query_id] = top_k(ids, [scores[d] for d in ids], k)
        return out
