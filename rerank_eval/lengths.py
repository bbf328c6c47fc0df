"""How many tokens each candidate has, and how many of them a reranker's ``max_length`` keeps.

A cross-encoder sees the pair (query, title + text) cut longest-first to ``max_length``, counted by the engine's own
pair building (``CrossEncoderEngine.kept_tokens``: the tokenizer's pair encoding, or the token cache proven equal to
it); a bi-encoder sees the document alone cut to ``max_seq_length``. Rerankers without a
local tokenizer (APIs, none) keep everything; their documents are counted with the context tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import Doc


@dataclass
class Lengths:
    full: np.ndarray  # document tokens, before any cut
    kept: np.ndarray  # document tokens the model saw
    sent: int  # every token the model was given for these pairs (query, document and special tokens)


def count_tokens(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokens in each text, no special tokens: ``tokenizer`` is a transformers tokenizer or a bare
    ``tokenizers.Tokenizer`` (the context tokenizer, ``experiment._tokenizer``)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    if hasattr(tokenizer, "encode_batch"):
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(texts))


def tokenizer_of(reranker) -> tuple[object, int | None, bool] | None:
    """(tokenizer, max_length, pair) of a local model reranker, or None for one without a local tokenizer."""
    engine = getattr(reranker, "engine", None)  # a cross-encoder
    if engine is not None and getattr(engine, "tokenizer", None) is not None:
        return engine.tokenizer, engine.max_length, True
    encoder = getattr(reranker, "encoder", None)  # a bi-encoder
    model = getattr(encoder, "model", None)
    if model is not None and getattr(model, "tokenizer", None) is not None:
        return model.tokenizer, model.max_seq_length, False
    return None


def candidate_lengths(
    reranker, fallback_tokenizer, queries: dict[str, str], ranking: dict[str, list], docs: dict[str, Doc]
) -> dict[str, Lengths]:
    """Token counts of each query's candidates (``ranking``: query_id -> hits) as the reranker sees them; each
    distinct text is tokenized once. ``fallback_tokenizer`` counts them for rerankers without a tokenizer of
    their own (nothing is cut, nothing counted as sent). A reranker that scores passages sees a document's
    tokens less those its passages lost to their cuts, and is sent every passage's pair."""
    if getattr(reranker, "passages", None) is not None:
        return _passage_lengths(reranker, queries, ranking, docs)
    found = tokenizer_of(reranker) if reranker is not None else None
    tok, max_length, pair = found if found is not None else (fallback_tokenizer, None, False)
    ids = sorted({h.doc_id for hits in ranking.values() for h in hits})
    if tok is None:
        n = {d: 0 for d in ids}
    else:
        n = dict(zip(ids, count_tokens(tok, [docs[d].full_text for d in ids]).tolist(), strict=True))
    out = {}
    for q, hits in ranking.items():
        full = np.fromiter((n[h.doc_id] for h in hits), dtype=np.int64, count=len(hits))
        if found is None:
            out[q] = Lengths(full, full, 0)
            continue
        ql = int(count_tokens(tok, [queries[q]])[0])
        special = tok.num_special_tokens_to_add(pair=pair)
        if max_length is None:
            out[q] = Lengths(full, full, int(full.sum() + len(hits) * (ql + special)))
        elif pair:
            kept, whole = reranker.engine.kept_tokens([(queries[q], docs[h.doc_id].full_text) for h in hits])
            out[q] = Lengths(full, kept, int(whole.sum()))
        else:  # the documents alone, plus the query encoded once
            kept = np.minimum(full, max_length - special)
            query = min(ql, max_length - special) + special
            out[q] = Lengths(full, kept, int(kept.sum() + len(hits) * special + query))
    return out


def _passage_lengths(reranker, queries: dict[str, str], ranking: dict[str, list], docs: dict[str, Doc]):
    """``candidate_lengths`` of a ``scoring.passages.PassageReranker``, counted by its base over the passages."""
    from .types import ScoredDoc

    out = {}
    for q, hits in ranking.items():
        units, owner = reranker.passages([docs[h.doc_id] for h in hits])
        ids = [f"{k}" for k in range(len(units))]
        sub = candidate_lengths(
            reranker.base,
            None,
            {q: queries[q]},
            {q: [ScoredDoc(i, 0.0) for i in ids]},
            dict(zip(ids, units, strict=True)),
        )[q]
        full = count_tokens(reranker.tokenizer, [docs[h.doc_id].full_text for h in hits])
        lost = np.bincount(owner, weights=sub.full - sub.kept, minlength=len(hits)).astype(np.int64)
        out[q] = Lengths(full, np.maximum(full - lost, 0), sub.sent)
    return out
