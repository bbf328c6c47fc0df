"""BM25 over title + text: bm25s (fast, Lucene scoring) or rank-bm25 (the reference), same tokenization."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

import numpy as np

from ..datasets import Dataset
from ..errors import ConfigError, DataError
from ..paths import cache_root
from ..provenance import environment, scoring_code
from ..ranking import top_k
from ..types import Query, Ranking

log = logging.getLogger("rerank_eval")
_CHUNK = 50_000  # documents tokenized at once while building
CHECK_DOCS, CHECK_QUERIES = 1000, 20  # the sample on which each build checks itself against bm25s's own index


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
        lib = "bm25s" if self.backend == "bm25s" else "rank-bm25"
        return (
            f"bm25|{environment((lib, 'PyStemmer', 'numpy'))}|k1={self.k1}|b={self.b}|{self.method}|{self.stemmer_name}|"
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
        """The bounded-memory build (``_bounded``) where it equals ``bm25s.BM25.index`` on a sample of this corpus
        under the installed bm25s (it calls bm25s's private scoring helpers, which a release may change); else
        bm25s's own index, with a warning."""
        if self._agrees_with_bm25s(list(itertools.islice(dataset.corpus(), CHECK_DOCS))):
            return self._bounded(dataset.corpus(), self._tok)
        log.warning(
            "bm25s %s: the bounded-memory build differs from bm25s.BM25.index on a sample; using bm25s's own "
            "index (all of the corpus's tokens in memory)",
            environment(("bm25s",)),
        )
        return self._plain(dataset.corpus())

    def _agrees_with_bm25s(self, sample: list) -> bool:
        """Whether ``_bounded`` gives ``bm25s.BM25.index``'s scores, bit for bit, on ``sample`` for queries made of
        its documents' first words."""
        if not sample:
            return True
        try:
            ours, _ = self._bounded(sample, self._tokenizer())
        except (AttributeError, TypeError, KeyError):  # a private helper renamed or re-signed by a release
            return False
        theirs, _ = self._plain(sample, self._tokenizer())
        words = self._tokenizer().tokenize(
            [d.full_text for d in sample[:CHECK_QUERIES]], return_as="string", show_progress=False
        )
        return all(
            np.array_equal(ours.get_scores(w[:12]), theirs.get_scores(w[:12])) for w in words if any(w[:12])
        )

    def _plain(self, docs, tok=None):
        """bm25s's own index over the documents (their tokens held in memory)."""
        import bm25s

        docs = list(docs)
        tok = tok or self._tok
        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        texts = [d.full_text for d in docs]
        index.index(tok.tokenize(texts, return_as="string", show_progress=False), show_progress=False)
        return index, [d.doc_id for d in docs]

    def _bounded(self, docs, tok):
        """bm25s's index, built in bounded memory: documents are tokenized a chunk at a time into term counts kept
        on disk, then scored with bm25s's own idf and tf functions into the column-major matrix bm25s searches
        (``bm25s.BM25.index`` holds every token of the corpus as Python lists: 6 GB at a million abstracts)."""
        import tempfile

        import bm25s
        from bm25s import scoring

        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        ids: list[str] = []
        lengths: list[np.ndarray] = []  # tokens a document (repeats counted), as bm25s's document length
        df = np.zeros(0, dtype=np.int64)
        root = cache_root() / "bm25"
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".counts.") as spill:
            chunks = 0
            for texts in _chunks(docs, ids):
                toks = tok.tokenize(texts, return_as="ids", show_progress=False, update_vocab=True)
                vocab = len(tok.get_vocab_dict())
                dl = np.fromiter((len(d) for d in toks), dtype=np.int64, count=len(toks))
                flat = np.fromiter((t for d in toks for t in d), dtype=np.int64, count=int(dl.sum()))
                # (document, term) pairs and their counts, ordered by document then term
                pairs, tf = np.unique(np.repeat(np.arange(len(toks)), dl) * vocab + flat, return_counts=True)
                doc, term = np.divmod(pairs, vocab)
                np.savez(
                    f"{spill}/{chunks}.npz",
                    doc=(doc + len(ids) - len(toks)).astype(np.int32),
                    term=term.astype(np.int32),
                    tf=tf.astype(np.float32),
                    dl=dl[doc].astype(np.int32),
                )
                df = np.pad(df, (0, vocab - len(df))) + np.bincount(term, minlength=vocab)
                lengths.append(dl)
                chunks += 1
            n_docs = len(ids)
            avg_dl = np.concatenate(lengths).mean() if lengths else 0.0
            freqs = dict(enumerate(df.tolist()))
            idf = scoring._build_idf_array(
                freqs, n_docs, scoring._select_idf_scorer(index.idf_method), index.dtype
            )
            tfc = scoring._select_tfc_scorer(self.method)
            if self.method in index.methods_requiring_nonoccurrence:
                index.nonoccurrence_array = scoring._build_nonoccurrence_array(
                    freqs, n_docs, scoring._select_idf_scorer(index.idf_method), tfc,
                    avg_dl, avg_dl, self.k1, self.b, index.delta, index.dtype,
                )  # fmt: skip
            else:
                index.nonoccurrence_array = None
            indptr = np.concatenate([[0], np.cumsum(df)])  # int64: MS MARCO-sized matrices pass 2**31 entries
            data = np.empty(int(indptr[-1]), dtype=index.dtype)
            rows = np.empty(int(indptr[-1]), dtype=index.int_dtype)
            fill = indptr[:-1].astype(np.int64)  # the next free slot of each term's column
            for c in range(chunks):  # chunks in document order: each column's documents stay ascending
                part = np.load(f"{spill}/{c}.npz")
                term, doc = part["term"], part["doc"]
                scores = idf[term] * tfc(
                    tf_array=part["tf"], l_d=part["dl"], l_avg=avg_dl, k1=self.k1, b=self.b, delta=index.delta
                )
                if index.nonoccurrence_array is not None:
                    scores -= index.nonoccurrence_array[term]
                order = np.argsort(term, kind="stable")
                term = term[order]
                counts = np.bincount(term, minlength=len(df))
                first = np.concatenate([[0], np.cumsum(counts)[:-1]])
                slot = fill[term] + np.arange(len(term)) - first[term]
                data[slot], rows[slot] = scores[order], doc[order]
                fill += counts
        index.scores = {"data": data, "indices": rows, "indptr": indptr, "num_docs": n_docs}
        index.vocab_dict = dict(tok.get_vocab_dict())  # a copy: queries must not grow the index's vocabulary
        index.unique_token_ids_set = set(index.vocab_dict.values())
        return index, ids

    def query_tokens(self, queries: Sequence[Query]) -> list[list[str]]:
        return self._tok.tokenize(
            [q.text for q in queries], return_as="string", show_progress=False, update_vocab=True
        )

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        """Each query's ``k`` best documents; several queries are scored on a thread pool of one thread a core
        (as bm25s's own ``retrieve(n_threads=-1)`` does), each list the same as alone: ties in corpus order."""
        if not self._ids:
            raise DataError("BM25Retriever.retrieve called before index(dataset)")
        k = min(k, len(self._ids))
        tokens = self.query_tokens(queries)

        def one(toks: list[str]):
            if self.backend == "rank_bm25":
                return top_k(self._ids, self._index.get_scores(toks), k)
            toks = [t for t in toks if t]  # bm25s's "" stands for "no term"; it would match empty documents
            return top_k(self._ids, self._index.get_scores(toks) if toks else np.zeros(len(self._ids)), k)

        threads = min(len(tokens), os.cpu_count() or 1) if self.backend == "bm25s" else 1
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                lists = list(pool.map(one, tokens))
        else:
            lists = [one(t) for t in tokens]
        return {q.query_id: hits for q, hits in zip(queries, lists, strict=True)}


def _chunks(docs, ids: list[str]):
    """The documents' texts, ``_CHUNK`` at a time; their ids appended to ``ids`` as they go."""
    texts: list[str] = []
    for d in docs:
        ids.append(d.doc_id)
        texts.append(d.full_text)
        if len(texts) == _CHUNK:
            yield texts
            texts = []
    if texts:
        yield texts


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
