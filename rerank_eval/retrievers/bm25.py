"""BM25 over title + text: bm25s (fast, Lucene scoring) or rank-bm25 (the reference), same tokenization."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..datasets import Dataset
from ..errors import ConfigError, DataError
from ..paths import cache_root
from ..provenance import scoring_code
from ..ranking import top_k
from ..types import Query, Ranking

_CHUNK = 50_000  # documents tokenized at once while building


class BM25Retriever:
    """BM25 with English stop words and Snowball stemming.

    Args:
        k1, b: BM25 parameters (Anserini's defaults 0.9 / 0.4).
        method: bm25s scoring variant (``lucene``, ``robertson``, ``atire``, ``bm25l``, ``bm25+``).
        backend: ``bm25s`` (sparse matrix, fast) or ``rank_bm25`` (pure Python reference, Okapi BM25).
        stemmer: a PyStemmer language, or null for none.
        stopwords: ``en`` or null.
    """

    def __init__(
        self,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        backend: str = "bm25s",
        stemmer: str | None = "english",
        stopwords: str | None = "en",
    ):
        if backend not in ("bm25s", "rank_bm25"):
            raise ConfigError(f"retriever.backend must be bm25s or rank_bm25, got {backend!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.method, self.backend = k1, b, method, backend
        self.stemmer_name, self.stopwords = stemmer, stopwords
        defaults = {"k1": 0.9, "b": 0.4, "method": "lucene", "stemmer": "english", "stopwords": "en"}
        given = {"k1": k1, "b": b, "method": method, "stemmer": stemmer, "stopwords": stopwords}
        changed = "".join(f"-{k}={v}" for k, v in given.items() if v != defaults[k])
        self.name = f"bm25-{backend}{changed}"  # the parameters that differ from the defaults are in the name
        self._ids: list[str] = []

    full_corpus = True

    def identity(self, dataset: Dataset) -> str:
        from importlib.metadata import version

        lib = "bm25s" if self.backend == "bm25s" else "rank-bm25"
        return (
            f"bm25|{lib}={version(lib)}|k1={self.k1}|b={self.b}|{self.method}|{self.stemmer_name}|"
            f"{self.stopwords}|corpus={dataset.corpus_fingerprint}"
        )

    def _tokenizer(self):
        import bm25s

        stemmer = None
        if self.stemmer_name:
            import Stemmer

            stemmer = Stemmer.Stemmer(self.stemmer_name)
        return bm25s.tokenization.Tokenizer(stopwords=self.stopwords or [], stemmer=stemmer)

    def index(self, dataset: Dataset) -> None:
        """Index the corpus; with bm25s the index is persisted under ``.cache/bm25/`` per (corpus, settings,
        library version) and memory-mapped by later jobs and processes instead of built again."""
        self._tok = self._tokenizer()
        if self.backend == "bm25s":
            key = f"{self.identity(dataset)}|code={scoring_code('retrievers/bm25')}"  # a code change rebuilds it
            self._index, self._ids = persisted(key, lambda: self._build(dataset))
            return
        from rank_bm25 import BM25Okapi

        docs = list(dataset.corpus())
        self._ids = [d.doc_id for d in docs]
        tokens = self._tok.tokenize([d.full_text for d in docs], return_as="string", show_progress=False)
        self._index = BM25Okapi(tokens, k1=self.k1, b=self.b)

    def _build(self, dataset: Dataset):
        import bm25s

        ids: list[str] = []
        tokens: list[list[str]] = []
        texts: list[str] = []
        for d in dataset.corpus():  # the store streams: only a chunk's texts are held, then their tokens
            ids.append(d.doc_id)
            texts.append(d.full_text)
            if len(texts) == _CHUNK:
                tokens += self._tok.tokenize(
                    texts, return_as="string", show_progress=False, update_vocab=True
                )
                texts = []
        tokens += (
            self._tok.tokenize(texts, return_as="string", show_progress=False, update_vocab=True)
            if texts
            else []
        )
        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        index.index(tokens, show_progress=False)
        return index, ids

    def query_tokens(self, queries: Sequence[Query]) -> list[list[str]]:
        return self._tok.tokenize(
            [q.text for q in queries], return_as="string", show_progress=False, update_vocab=True
        )

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        if not self._ids:
            raise DataError("BM25Retriever.retrieve called before index(dataset)")
        k = min(k, len(self._ids))
        out: Ranking = {}
        tokens = self.query_tokens(queries)
        for q, toks in zip(queries, tokens, strict=True):
            if self.backend == "bm25s":
                scores = self._index.get_scores(toks) if toks else np.zeros(len(self._ids))
            else:
                scores = self._index.get_scores(toks)
            out[q.query_id] = top_k(self._ids, scores, k)
        return out


def persisted(identity: str, build):
    """The bm25s index and document ids saved for ``identity``, memory-mapped; built by ``build()`` and saved
    (beside its final folder, renamed when complete) when absent or unreadable."""
    import hashlib
    import json
    import os
    import shutil

    import bm25s

    root = cache_root() / "bm25"
    folder = root / hashlib.sha256(identity.encode()).hexdigest()[:20]
    if (folder / "ids.json").is_file():
        try:
            index = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
            return index, json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)  # damaged: built again
    index, ids = build()
    tmp = root / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        index.save(str(tmp), show_progress=False)
        (tmp / "identity.txt").write_text(identity, encoding="utf-8")
        (tmp / "ids.json").write_text(json.dumps(ids), encoding="utf-8")  # last: it marks the folder complete
        if folder.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except (
        OSError
    ) as e:  # the cache is an optimisation: a full disk costs the next job a rebuild, not this one
        shutil.rmtree(tmp, ignore_errors=True)
        import logging

        logging.getLogger("rerank_eval").warning(
            "bm25: could not save the index (%s); it is rebuilt next time", e
        )
    return index, ids
