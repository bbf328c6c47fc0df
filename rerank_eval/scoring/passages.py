"""Long documents as passages: a document cut into overlapping windows of the model's own tokens, each (query,
passage) pair scored by the reranker as it scores any pair, and the document's score an aggregate of its
passages' (BERT-MaxP's ``max``, FirstP's ``first``, SumP's ``sum``, or ``mean``).

How a document is cut (``spans``):

- the body (``Doc.text``) is tokenized once by the reranker's tokenizer, no special tokens; a window holds
  ``passage_tokens`` tokens minus the title's, and never less than half of ``passage_tokens``;
- windows end before a word that would not fit (a word is never split, unless it alone is longer than a window)
  and the next one starts at the first word that reaches into the window's last ``stride`` tokens (the overlap:
  at least ``stride`` tokens, none where that word began in the window's first token), so every token is in
  some passage;
- a passage's text is the body's characters from its first token to its last (the text as written, not decoded),
  with the title in front of every passage; a document whose body fits one window is one passage, its
  ``full_text``, scored exactly as truncation scores it.

A passage's score depends on the query and the passage's text alone, so the score cache keeps it under the
reranker's own identity keyed by the passage: a depth sweep, a second aggregate of the same passages, or a
passage that is a whole short document costs nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..provenance import scoring_code
from ..types import Doc, Query

POLICIES = ("truncate", "passages")
AGGREGATES = ("max", "first", "sum", "mean")
PASSAGES_CODE = ("scoring/passages",)


def spans(tokenizer, text: str, window: int, stride: int) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of ``text``'s passages: windows of at most ``window`` tokens of
    ``tokenizer`` (a fast transformers tokenizer), whole words only, consecutive ones overlapping by at least
    ``stride`` tokens (see the module docstring). One span, the whole text, when it fits one window."""
    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )  # no length warning
    offsets, words, n = enc["offset_mapping"], enc.word_ids(), len(enc["input_ids"])
    if n <= window:
        return [(0, len(text))]
    first = [j == 0 or words[j] is None or words[j] != words[j - 1] for j in range(n)]

    def word_start(j: int) -> int:  # the first token of the word that token j belongs to
        while j > 0 and not first[j]:
            j -= 1
        return j

    out, start = [], 0
    while True:
        end = min(n, start + window)
        if end < n:
            snapped = word_start(end)
            end = snapped if snapped > start else end  # a word longer than a window is split
        out.append((offsets[start][0], offsets[end - 1][1]))
        if end >= n:
            return out
        nxt = word_start(end - stride) if stride else end
        start = nxt if nxt > start else end  # no whole word in the overlap: the next passage starts after


class PassageReranker:
    """A local reranker that scores a document by its passages (``reranker.long_docs=passages``).

    Args:
        base: the reranker that scores each (query, passage) pair: it must have ``tokenizer`` and
            ``document_room(query_text)`` (the document tokens one pair with that query holds before its cut).
        passage_tokens: tokens of each passage, its title included.
        stride: tokens shared by consecutive passages (0: none); less than ``passage_tokens``.
        aggregate: ``max`` (MaxP), ``first`` (FirstP), ``sum`` (SumP) or ``mean`` of a document's passage scores.

    Raises:
        ConfigError: settings out of range, or a base that cannot cut passages (one line saying why).
    """

    pointwise = True

    def __init__(self, base, passage_tokens: int = 128, stride: int = 32, aggregate: str = "max"):
        check_policy("passages", passage_tokens, stride, aggregate)
        _check_base(base)
        self.base, self.aggregate = base, aggregate
        self.passage_tokens, self.stride = int(passage_tokens), int(stride)
        self.tokenizer = base.tokenizer
        self.name = f"{base.name}-p{passage_tokens}s{stride}-{aggregate}"
        self.identity = f"{base.identity}|passages={passage_tokens},{stride},{aggregate}|code={scoring_code(*PASSAGES_CODE)}"
        self.settings = {
            **(getattr(base, "settings", None) or {}),
            "long_docs": "passages",
            "passage_tokens": self.passage_tokens,
            "stride": self.stride,
            "aggregate": aggregate,
        }
        for attr in ("device", "dtype", "batch_invariant"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    @property
    def internal_hits(self) -> int:
        return getattr(self.base, "internal_hits", 0)

    def uncached(self):
        import contextlib

        return getattr(self.base, "uncached", contextlib.nullcontext)()

    def check_queries(self, queries: Sequence[Query]) -> None:
        """Refuse, in one line naming the fix, a query that leaves a pair less room than ``passage_tokens``."""
        for q in queries:
            room = self.base.document_room(q.text)
            if room < self.passage_tokens:
                raise ConfigError(
                    f"query {q.query_id} leaves room for {max(room, 0)} document tokens in a pair of "
                    f"{self.base.name}, fewer than passage_tokens={self.passage_tokens}, so its passages would "
                    f"be cut: set reranker.passage_tokens<={max(room, 0)} or raise reranker.max_length"
                )

    def passages(self, docs: Sequence[Doc]) -> tuple[list[Doc], np.ndarray]:
        """Each document's passages, in document order (``doc_id`` kept, ``title`` folded into ``text``), and
        for each passage the index of its document."""
        out: list[Doc] = []
        owner: list[int] = []
        for i, d in enumerate(docs):
            title = (
                len(self.tokenizer(d.title, add_special_tokens=False, verbose=False)["input_ids"])
                if d.title
                else 0
            )
            window = max(self.passage_tokens - title, self.passage_tokens // 2)
            cuts = spans(self.tokenizer, d.text, window, self.stride)
            if len(cuts) == 1:
                out.append(Doc(d.doc_id, d.full_text))
            else:
                out.extend(Doc(d.doc_id, d.text[a:b].strip(), d.title) for a, b in cuts)
            owner.extend([i] * len(cuts))
        return out, np.asarray(owner, dtype=np.int64)

    def combine(self, scores: Sequence[float], owner: np.ndarray, docs: int) -> np.ndarray:
        """One fp32 score per document from its passages' (``owner``: each passage's document, grouped)."""
        return aggregate(np.asarray(scores, dtype=np.float32), owner, docs, self.aggregate)

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        units, owner = self.passages(docs)
        return self.combine(self.base.score(query, units), owner, len(docs)).tolist()


def aggregate(scores: np.ndarray, owner: np.ndarray, docs: int, how: str) -> np.ndarray:
    """Per document (``owner[i]``: the document of passage ``i``, each document's passages contiguous and
    every document present), the ``max``, ``first``, ``sum`` or ``mean`` of its passages' fp32 scores, in fp32;
    ``sum`` and ``mean`` add in passage order."""
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    if len(starts) != docs or (len(owner) and not np.array_equal(owner[starts], np.arange(docs))):
        raise ValueError("passages must be grouped by document, every document with at least one")
    if how == "max":
        return np.maximum.reduceat(scores, starts).astype(np.float32)
    if how == "first":
        return scores[starts].astype(np.float32)
    sums = np.array(
        [
            scores[a:b].sum(dtype=np.float32)
            for a, b in zip(starts, np.r_[starts[1:], len(scores)], strict=True)
        ]
    )
    if how == "sum":
        return sums.astype(np.float32)
    counts = np.diff(np.r_[starts, len(scores)]).astype(np.float32)
    return (sums / counts).astype(np.float32)


def check_policy(long_docs: str = "truncate", passage_tokens=128, stride=32, aggregate: str = "max") -> None:
    """Refuse, in one line, a document policy's settings out of range (checked before anything loads)."""
    if long_docs not in POLICIES:
        raise ConfigError(f"reranker.long_docs must be one of {', '.join(POLICIES)}, got {long_docs!r}")
    if long_docs == "truncate":
        return
    for name, v, low in (("passage_tokens", passage_tokens, 1), ("stride", stride, 0)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
            raise ConfigError(f"reranker.{name} must be an integer >= {low}, got {v!r}")
    if stride >= passage_tokens:
        raise ConfigError(
            f"reranker.stride ({stride}) is the overlap of consecutive passages; keep it below passage_tokens "
            f"({passage_tokens})"
        )
    if aggregate not in AGGREGATES:
        raise ConfigError(f"reranker.aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")


def _check_base(base) -> None:
    if not getattr(base, "pointwise", True):
        raise ConfigError(
            f"{base.name} cannot score passages: a listwise reranker orders whole documents in one prompt; "
            "use reranker.long_docs=truncate"
        )
    if not hasattr(base, "document_room") or not getattr(getattr(base, "tokenizer", None), "is_fast", False):
        raise ConfigError(
            f"{base.name} cannot score passages: passages are cut by a local model's own (fast) tokenizer, and "
            "this reranker has none (an API reranker's service cuts or chunks long documents itself); use "
            "reranker.long_docs=truncate"
        )


LONG_DOCS_KEYS = ("long_docs", "passage_tokens", "stride", "aggregate")


def split_long_docs(node: dict) -> tuple[dict, dict]:
    """A reranker's config node without its document policy's keys, and those keys (``LONG_DOCS_KEYS``)."""
    base = {k: v for k, v in node.items() if k not in LONG_DOCS_KEYS}
    return base, {k: node[k] for k in LONG_DOCS_KEYS if k in node}


def with_long_docs(base, long_docs: str = "truncate", **passages):
    """``base`` as it is (``truncate``: the model cuts each pair to its length), or a ``PassageReranker`` over
    it (``passages``, with ``passage_tokens``, ``stride`` and ``aggregate``)."""
    check_policy(long_docs, **passages)
    if long_docs == "truncate":
        return base
    if base is None:
        raise ConfigError(
            "reranker=none scores nothing, so it has no passages to score; drop reranker.long_docs"
        )
    return PassageReranker(base, **passages)
