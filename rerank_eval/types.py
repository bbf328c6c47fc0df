"""Immutable records shared by every stage. One field vocabulary: query_id, doc_id, text, score, relevance."""

from __future__ import annotations

from dataclasses import dataclass

# query_id -> doc_id -> relevance grade
Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Query:
    query_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Doc:
    doc_id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and text joined the way BEIR models see them (title first, when there is one)."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class ScoredDoc:
    doc_id: str
    score: float


# query_id -> ranked list, best first. Only pipeline.py and the retrievers build these.
Ranking = dict[str, list[ScoredDoc]]
NO_RESULT = "rerank-eval:no-result"
"""A document id no qrels holds: the one line a run file gives a query whose list is empty (so trec_eval counts the
query, at 0, as the harness's mean does), and ranx's placeholder for it."""
