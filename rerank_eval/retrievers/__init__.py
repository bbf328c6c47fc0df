"""First stages. Each has ``index(dataset)`` (build or load what it needs) and ``retrieve(queries, k)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..datasets import Dataset
from ..types import Query, Ranking


class Retriever(Protocol):
    name: str
    full_corpus: bool  # searches the whole corpus (refused over a pool corpus); False: replays a saved run

    def identity(
        self, dataset: Dataset
    ) -> str: ...  # what its rankings depend on beyond the config (contents)

    def index(self, dataset: Dataset) -> None: ...
    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking: ...
