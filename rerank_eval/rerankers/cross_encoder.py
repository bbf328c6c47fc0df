"""Cross-encoder reranker: any sentence-transformers / Hugging Face sequence-classification model."""

from __future__ import annotations

from collections.abc import Sequence

from ..provenance import environment, model_identity, scoring_code
from ..scoring.batching import SUFFIX
from ..scoring.cross_encoder import CROSS_ENCODER_CODE, CrossEncoderEngine
from ..scoring.models import dtype_name, resolve_model
from ..types import Doc, Query

_ENGINES: dict[tuple, CrossEncoderEngine] = {}


class CrossEncoderReranker:
    """Scores each (query, title + text) pair jointly with a cross-encoder, through ``CrossEncoderEngine``.

    Args:
        model: a Hugging Face id (e.g. ``cross-encoder/ms-marco-MiniLM-L-6-v2``) or a local model folder.
        max_length: longest pair in tokens; None: what the model declares (its sentence-transformers config, else
            its tokenizer's ``model_max_length``, capped by its position embeddings).
        revision: the hub revision the model was loaded at (recorded; a hub id is identified by the commit of
            its cached snapshot and the hash of its files).
        device, dtype, batch_tokens, activation, batch_invariant: see ``CrossEncoderEngine``.
    """

    pointwise = True

    def __init__(
        self,
        model: str,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_tokens: int | None = None,
        activation: bool = False,
        batch_invariant: bool | str = True,
        revision: str | None = None,
    ):
        files = model_identity(resolve_model(model), revision)  # a model rewritten in place is loaded again
        key = (model, files, max_length, device, dtype, batch_tokens, activation, batch_invariant)
        if key not in _ENGINES:  # one loaded model per process: the jobs of a sweep share it
            _ENGINES[key] = CrossEncoderEngine(
                model,
                max_length=max_length,
                device=device,
                dtype=dtype,
                batch_tokens=batch_tokens,
                activation=activation,
                batch_invariant=batch_invariant,
            )
        self.engine = e = _ENGINES[key]
        self.dtype = dtype_name(e.dtype)
        self.max_length = e.max_length
        # the name says what ran: the model, its dtype, and the length where it is not the model's own
        length = "" if e.max_length == e.declared_max_length else f"-len{e.max_length}"
        self.name = f"ce-{model.rstrip('/').rsplit('/', 1)[-1]}-{self.dtype}{length}{SUFFIX[e._policy]}"
        self.identity = (
            f"cross-encoder|{files}|len={e.max_length}|{self.dtype}|act={activation}"
            f"|{e.batching}|{'packed' if e.packed else 'padded'}"
            f"|code={scoring_code(*CROSS_ENCODER_CODE)}"
            f"|env={environment(device=e.device)}"
        )
        self.settings = {
            "batching": e.batching,
            "max_length": e.max_length,
            "model_max_length": e.declared_max_length,
            "dtype": self.dtype,
            "tokenization": e.tokenization,
        }
        self.device = e.device
        self.batch_invariant = e.batch_invariant  # a fresh score must equal a cached one bit for bit

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def document_room(self, query: str) -> int:
        """Document tokens a pair with ``query`` holds before its cut (``max_length`` less the query's and the
        special tokens)."""
        tok = self.engine.tokenizer
        return (
            self.max_length
            - len(tok(query, add_special_tokens=False)["input_ids"])
            - tok.num_special_tokens_to_add(True)
        )

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        # every call tokenizes its own texts, as a service would: nothing a timing measures was done before
        self.engine._store.clear()
        return self.engine.score_pairs([(query.text, d.full_text) for d in docs]).tolist()

    def score_many(self, items: Sequence[tuple[Query, Sequence[Doc]]]) -> list[list[float]]:
        """Several queries' candidates in one ``score_pairs`` call: full batches for a GPU."""
        self.engine._store.clear()
        flat = self.engine.score_pairs([(q.text, d.full_text) for q, docs in items for d in docs]).tolist()
        out, start = [], 0
        for _, docs in items:
            out.append(flat[start : start + len(docs)])
            start += len(docs)
        return out
