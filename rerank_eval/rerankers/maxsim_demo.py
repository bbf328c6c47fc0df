"""An offline demo of late interaction, not ColBERT: MaxSim over a plain encoder's last-layer token vectors.

Each query token takes its best cosine match among the document's tokens; the document's score is the sum. Token
embeddings come from sentence-transformers (``output_value="token_embeddings"``), with none of a ColBERT
checkpoint's projection, markers, query expansion or skiplist (``reranker=colbert`` reads those from a real
checkpoint). Offline it runs on the bundled all-MiniLM-L6-v2, a model never trained for late interaction: its
figures are a plumbing check, not a late-interaction model's quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine import MINILM_ID, BiEncoder
from ..provenance import scoring_code
from ..types import Doc, Query


class MaxSimDemoReranker:
    """MaxSim over a plain encoder's token embeddings (``reranker=maxsim_demo``).

    Args:
        model: a Hugging Face id or local folder (default: the bundled all-MiniLM-L6-v2).
        query_max_length, doc_max_length: tokens kept of each (ColBERT's 32 and 180 by default).
        device, dtype, batch_size: see ``BiEncoder``.
    """

    pointwise = True

    def __init__(
        self,
        model: str = MINILM_ID,
        query_max_length: int = 32,
        doc_max_length: int = 180,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 64,
    ):
        self.encoder = BiEncoder(model, device=device, dtype=dtype, batch_size=batch_size)
        self.device = self.encoder.device
        self.query_max_length, self.doc_max_length = int(query_max_length), int(doc_max_length)
        self.name = f"maxsim-demo-{model.rstrip('/').rsplit('/', 1)[-1]}"
        self.identity = (
            f"maxsim-demo|{self.encoder.identity}|q={query_max_length}|d={doc_max_length}"
            f"|code={scoring_code('rerankers/maxsim_demo')}"
        )

    def _tokens(self, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
        m = self.encoder.model
        m.max_seq_length = max_length
        out = m.encode(
            list(texts),
            output_value="token_embeddings",
            batch_size=self.encoder.batch_size,
            show_progress_bar=False,
        )
        vecs = [t.float().cpu().numpy() for t in out]
        return [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in vecs]

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        q = self._tokens([query.text], self.query_max_length)[0]
        return [
            float((q @ d.T).max(axis=1).sum())
            for d in self._tokens([d.full_text for d in docs], self.doc_max_length)
        ]
