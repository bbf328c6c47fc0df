"""An offline demo of late interaction, not ColBERT: MaxSim over a plain encoder's last-layer token vectors.

Each query token takes its best cosine match among the document's tokens; the document's score is the sum. Token
embeddings are the encoder's last hidden states (what sentence-transformers' ``output_value="token_embeddings"``
returns), run in fixed-shape length buckets (``scoring.batching``) so a document's vectors never depend on the
others, with none of a ColBERT
checkpoint's projection, markers, query expansion or skiplist (``reranker=colbert`` reads those from a real
checkpoint). Offline it runs on the bundled all-MiniLM-L6-v2, a model never trained for late interaction: its
figures are a plumbing check, not a late-interaction model's quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..provenance import scoring_code
from ..scoring.batching import bucket_batches, bucket_tokens, fit_width, with_fillers
from ..scoring.bi_encoder import BiEncoder
from ..scoring.models import MINILM_ID
from ..types import Doc, Query


class MaxSimDemoReranker:
    """MaxSim over a plain encoder's token embeddings (``reranker=maxsim_demo``).

    Args:
        model: a Hugging Face id or local folder (default: the bundled all-MiniLM-L6-v2).
        query_max_length, doc_max_length: tokens kept of each (ColBERT's 32 and 180 by default).
        device, dtype, batch_size: see ``BiEncoder`` (documents run in fixed-shape length buckets,
            ``scoring.batching``, whatever ``batch_size`` says).
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
            f"|code={scoring_code('rerankers/maxsim_demo', 'scoring/batching')}"
        )

    @property
    def tokenizer(self):
        return self.encoder.model.tokenizer

    def document_room(self, query: str) -> int:
        """Document tokens kept of a document (``doc_max_length`` less the special tokens)."""
        return self.doc_max_length - len(self.tokenizer("")["input_ids"])

    def _tokens(self, texts: Sequence[str], max_length: int, alone: bool = False) -> list[np.ndarray]:
        """Unit last-layer vectors of each text's tokens ([CLS] and [SEP] too), cut to ``max_length``; ``alone``:
        one text (a query) in one forward of its own shape."""
        import torch

        tok, body = self.encoder.model.tokenizer, self.encoder.model[0].auto_model
        enc = tok(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(dim=1).numpy()
        out = [np.zeros((0, 0), np.float32)] * len(texts)
        if alone:
            batches = [(np.arange(1), int(lengths[0]), 1)]
        else:
            batches = bucket_batches(lengths, bucket_tokens(self.device), cap=max_length)
        for idx, width, rows in batches:
            take = torch.from_numpy(with_fillers(idx, rows))
            feed = {
                k: fit_width(v[take], width, tok.pad_token_id if k == "input_ids" else 0)
                for k, v in enc.items()
            }
            with torch.inference_mode():
                h = body(**{k: v.to(self.device) for k, v in feed.items()}).last_hidden_state.float().cpu()
            for row, i in enumerate(idx.tolist()):
                v = h[row, : lengths[i]].numpy()
                out[i] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        q = self._tokens([query.text], self.query_max_length, alone=True)[0]
        return [
            float((q @ d.T).max(axis=1).sum())
            for d in self._tokens([d.full_text for d in docs], self.doc_max_length)
        ]
