"""Token ids of (query, document) pairs exactly as the tokenizer builds them: the tokenizer owns pair building (its
Rust backend's pair encoding with ``longest_first`` truncation, as ``CrossEncoder.predict`` uses it). The per-text
token store (each text tokenized once, pairs built from ids) is a fast path taken only where it equals that encoding
on probe pairs covering every truncation branch under the installed tokenizers version."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Sequence

import numpy as np

_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # what BERT's clean-up drops from ASCII


class _TokenStore:
    """Token ids of every text seen, in one flat int32 array that grows by doubling (``slot[text]`` indexes
    ``_start`` and ``_length``). Safe for the helper threads that fill it while others read it."""

    def __init__(self):
        self.slot: dict[str, int] = {}
        self._tokens = np.zeros(1 << 16, dtype=np.int32)
        self._start = np.zeros(1 << 10, dtype=np.int64)
        self._length = np.zeros(1 << 10, dtype=np.int64)  # the text's full length, before any cut
        self._n_tokens = 0
        self._lock = threading.Lock()

    def missing(self, texts: Sequence[str]) -> list[str]:
        with self._lock:
            return [t for t in dict.fromkeys(texts) if t not in self.slot]

    def add(self, texts: Sequence[str], ids: Sequence[Sequence[int]], max_length: int) -> None:
        with self._lock:
            new = [k for k, t in enumerate(texts) if t not in self.slot]  # another thread may have added some
            texts, ids = [texts[k] for k in new], [ids[k] for k in new]
            full = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
            # only max_length tokens of a text can ever be kept; its full length decides longest-first truncation
            if full.max(initial=0) > max_length:
                ids = [i[:max_length] for i in ids]
            lengths = np.minimum(full, max_length)
            n, used = len(self.slot), self._n_tokens
            total = int(lengths.sum())
            self._tokens = _room(self._tokens, used + total)
            self._tokens[used : used + total] = np.fromiter(
                itertools.chain.from_iterable(ids), np.int32, total
            )
            self._start = _room(self._start, n + len(texts))
            self._length = _room(self._length, n + len(texts))
            self._start[n : n + len(texts)] = used + np.cumsum(lengths) - lengths
            self._length[n : n + len(texts)] = full
            self._n_tokens = used + total
            self.slot.update(zip(texts, range(n, n + len(texts)), strict=True))

    def spans(self, pairs: Sequence[tuple[str, str]]):
        """Where each pair's query and document tokens start, their full lengths (at most ``max_length`` tokens
        of each are stored), and the token array they index."""
        with self._lock:
            s = self.slot
            q = np.fromiter((s[p[0]] for p in pairs), dtype=np.int64, count=len(pairs))
            d = np.fromiter((s[p[1]] for p in pairs), dtype=np.int64, count=len(pairs))
            return self._start[q], self._length[q], self._start[d], self._length[d], self._tokens

    def clear(self) -> None:
        self.__init__()


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """``array``, or a copy at least twice as long when it holds fewer than ``size`` items."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def truncate_pairs(n1: np.ndarray, n2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after the tokenizer's ``longest_first`` truncation of pairs of ``n1`` and ``n2`` tokens (arrays)
    to ``budget`` content tokens."""
    fits = n1 + n2 <= budget
    keep2 = np.minimum(n2, budget // 2)  # when the query is the longer one
    keep1 = np.minimum(n1, budget // 2)  # otherwise
    q_longer = n1 > n2
    t1 = np.where(fits, n1, np.where(q_longer, budget - keep2, keep1))
    t2 = np.where(fits, n2, np.where(q_longer, keep2, budget - keep1))
    return t1, t2


def _layout(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where sequences of these lengths sit in one packed row: ``cu`` (sequence i is ``cu[i]:cu[i+1]``), and for
    each token its sequence and its position within it."""
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    row = np.repeat(np.arange(len(lengths)), lengths)
    return cu, row, np.arange(cu[-1]) - cu[row]


def _pad(ids, types, row, pos, width: int, pad_id: int, has_types: bool) -> dict:
    """A packed row (laid out by ``_layout``) as the padded batch a Hugging Face forward takes."""
    shape = (int(row[-1]) + 1, width)
    feed = {
        "input_ids": np.full(shape, pad_id, dtype=np.int64),
        "attention_mask": np.zeros(shape, dtype=np.int64),
    }
    feed["input_ids"][row, pos] = ids
    feed["attention_mask"][row, pos] = 1
    if has_types:
        feed["token_type_ids"] = np.zeros(shape, dtype=np.int64)
        feed["token_type_ids"][row, pos] = types
    return feed


def _tokenize(texts: Sequence[str], tokenizer, fast, fast_ascii) -> list[list[int]]:
    """Token ids of the texts without special tokens, in order: the Rust tokenizer directly when there is one,
    plain ASCII texts through its copy without BERT's Unicode clean-up (``_ascii_tokenizer``)."""
    if fast is None:
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if fast_ascii is None:
        return [e.ids for e in fast.encode_batch_fast(list(texts), add_special_tokens=False)]
    plain = [t.isascii() and not _ASCII_CONTROL.search(t) for t in texts]
    light = fast_ascii.encode_batch_fast(
        [t for t, p in zip(texts, plain, strict=True) if p], add_special_tokens=False
    )
    full = fast.encode_batch_fast(
        [t for t, p in zip(texts, plain, strict=True) if not p], add_special_tokens=False
    )
    light, full = iter(light), iter(full)
    return [next(light).ids if p else next(full).ids for p in plain]


def _pair_tokenizer(tokenizer, max_length: int):
    """A copy of the tokenizer's Rust backend that encodes (query, document) pairs with the model's special
    tokens, cut ``longest_first`` to ``max_length`` (what ``CrossEncoder.predict`` gets from it); None for a
    tokenizer without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    pairs = Tokenizer.from_str(backend.to_str())
    pairs.no_padding()
    pairs.enable_truncation(max_length, strategy="longest_first")
    return pairs


def _truncation_probes(max_length: int) -> list[tuple[str, str]]:
    """Pairs that take every branch of longest-first truncation at ``max_length``: either text longer, equal
    lengths, one or both past ``max_length`` (each before and after the cut), odd and even room, non-ASCII."""
    words = lambda n, w: " ".join([w] * n)  # noqa: E731  (one token a word in common vocabularies)
    m = max_length
    sizes = [(3, 5), (m // 2, m // 2), (m // 2 + 1, m // 2), (m // 2, m // 2 + 1), (2, 2 * m), (2 * m, 2)]
    sizes += [(m + 1, m), (m, m + 1), (m, m), (2 * m, m + 3), (m + 3, 2 * m), (3 * m, 3 * m + 1)]
    probes = [(words(a, "cat"), words(b, "dog")) for a, b in sizes]
    return probes + [("Café naïve 東京?", "Résumé — ünïcödé\ttext"), ("", "empty query")]


def _plain_fast_tokenizer(tokenizer):
    """A copy of the tokenizer's Rust backend without truncation or padding, or None for a Python tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.no_truncation()
    fast.no_padding()
    return fast


def _ascii_tokenizer(fast):
    """For a tokenizer whose normalizer is BERT's: a copy that only lowercases (if the original does). On ASCII
    text without control characters BERT's normalizer does nothing else that changes tokens (accents, Chinese
    characters and odd whitespace need non-ASCII; tabs and newlines split words either way), and skipping it
    tokenizes about 30% faster. None for any other tokenizer."""
    if fast is None:
        return None
    norm = json.loads(fast.to_str()).get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        return None
    from tokenizers import Tokenizer, normalizers

    light = Tokenizer.from_str(fast.to_str())
    light.normalizer = normalizers.Lowercase() if norm.get("lowercase") else normalizers.Sequence([])
    return light


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1
