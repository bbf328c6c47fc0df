"""Cross-encoder reranker: any sentence-transformers / Hugging Face sequence-classification model."""

from __future__ import annotations

from collections.abc import Sequence

from ..engine import CrossEncoderEngine, model_fingerprint
from ..types import Doc, Query

_ENGINES: dict[tuple, CrossEncoderEngine] = {}


class CrossEncoderReranker:
    """Scores each (query, title + text) pair jointly with a cross-encoder, through ``CrossEncoderEngine``.

    Args:
        model: a Hugging Face id (e.g. ``cross-encoder/ms-marco-MiniLM-L-6-v2``) or a local model folder.
        max_length: longest pair in tokens.
        device, dtype, batch_tokens, activation: see ``CrossEncoderEngine``.
    """

    pointwise = True

    def __init__(
        self,
        model: str,
        max_length: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        batch_tokens: int | None = None,
        activation: bool = False,
    ):
        key = (model, max_length, device, dtype, batch_tokens, activation)
        if key not in _ENGINES:  # one loaded model per process: the jobs of a sweep share it
            _ENGINES[key] = CrossEncoderEngine(
                model,
                max_length=max_length,
                device=device,
                dtype=dtype,
                batch_tokens=batch_tokens,
                activation=activation,
            )
        self.engine = _ENGINES[key]
        e = self.engine
        self.name = f"ce-{model.rstrip('/').rsplit('/', 1)[-1]}"
        dtype_name = str(e.dtype).removeprefix("torch.")
        self.identity = (
            f"cross-encoder|{model_fingerprint(e.path)}|len={e.max_length}|{dtype_name}|act={activation}"
        )

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        return self.engine.score_pairs([(query.text, d.full_text) for d in docs]).tolist()
