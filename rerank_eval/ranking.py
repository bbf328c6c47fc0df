"""Sorting and cutting ranked lists: one deterministic order everywhere (score descending, then input order)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .types import ScoredDoc


def top_k(
    doc_ids: Sequence[str], scores: Sequence[float] | np.ndarray, k: int | None = None
) -> list[ScoredDoc]:
    """The ``k`` best documents by score, descending; ties keep the input order.

    Pass documents in first-stage rank order to break reranker ties by first-stage rank. Scores are kept as
    fp32 values (what models output), so ties are judged at that precision.
    """
    s = np.asarray(scores, dtype=np.float32)
    n = len(s)
    if k is not None and k < n:
        cand = np.argpartition(-s, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        # a tie at the k-th score could leave out an earlier document: take every tied one, then cut
        if k > 0:
            cand = np.union1d(cand, np.flatnonzero(s == s[cand].min()))
    else:
        cand = np.arange(n)
    order = cand[np.lexsort((cand, -s[cand]))][:k]
    return [ScoredDoc(doc_ids[i], float(s[i])) for i in order]
