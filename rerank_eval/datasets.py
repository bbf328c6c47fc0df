"""Datasets: an ir_datasets id or a local BEIR-format folder behind one small interface.

A local folder holds ``corpus.jsonl[.gz]`` (``{"_id", "title", "text"}`` a line), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id  corpus-id  score`` with a header). Both paths give
the same records: ``Query(query_id, text)``, ``Doc(doc_id, text, title)`` and graded qrels.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

from .docstore import DocStore
from .errors import ConfigError, DataError
from .paths import DATA_ENV, cache_root
from .provenance import file_hash, scoring_code
from .types import Doc, Qrels, Query

log = logging.getLogger("rerank_eval")


class Dataset(Protocol):
    name: str
    relevance_level: int

    def queries(self) -> list[Query]: ...
    def qrels(self) -> Qrels: ...
    def docs(self, doc_ids: Sequence[str]) -> dict[str, Doc]: ...
    def corpus(self) -> Iterable[Doc]: ...
    @property
    def fingerprint(
        self,
    ) -> str: ...  # content hash of the corpus, queries and qrels: what the figures depend on
    @property
    def corpus_fingerprint(self) -> str: ...  # content hash of the corpus alone: what indexes depend on


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[dict]:
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: not a JSON object ({e.msg}); fix or remove that line"
                    ) from None
                if not isinstance(obj, dict) or any(k not in obj for k in required):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object with keys {list(required)}; fix that line"
                    )
                yield obj
    except UnicodeDecodeError:
        raise DataError(f"{path}:{lineno + 1}: not valid UTF-8; re-encode the file as UTF-8") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip ({e}); download or copy the file again") from None


_STORES: dict[tuple[str, int, int], DocStore] = {}


class BeirDirDataset:
    """A BEIR-format folder on disk. Queries are those judged in ``qrels/<split>.tsv``."""

    def __init__(
        self,
        path: str | Path,
        split: str = "test",
        name: str | None = None,
        relevance_level: int = 1,
        pool: bool = False,
    ):
        self.path = Path(path)
        self.split = split
        self.name = name or self.path.name
        self.relevance_level = int(relevance_level)
        self.pool = bool(
            pool
        )  # the corpus is only a pool of judged and retrieved documents, not the collection
        self.source = str(self.path)
        if not self.path.is_dir():
            raise DataError(
                f"dataset folder {self.path} does not exist; pass dataset.path=<BEIR folder> "
                f"or set {DATA_ENV} to the folder that holds it"
            )
        self._corpus_file = next(
            (p for p in (self.path / "corpus.jsonl", self.path / "corpus.jsonl.gz") if p.is_file()), None
        )
        if self._corpus_file is None:
            raise DataError(
                f"{self.path} has no corpus.jsonl or corpus.jsonl.gz; is it a BEIR-format folder?"
            )
        self._qrels_file = self.path / "qrels" / f"{split}.tsv"
        if not self._qrels_file.is_file():
            have = sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))
            raise DataError(
                f"{self.path} has no qrels for split '{split}'; available splits: {have or 'none'}"
            )

    def __repr__(self) -> str:
        return f"BeirDirDataset({str(self.path)!r}, split={self.split!r})"

    @cached_property
    def _docs(self) -> DocStore:
        stat = self._corpus_file.stat()
        key = (str(self._corpus_file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _STORES:  # opened once per process: the jobs of a sweep share it
            records = _read_jsonl(self._corpus_file, ("_id", "text"))
            store = DocStore.open_or_build(
                self._corpus_file,
                f"{self.corpus_fingerprint}-{scoring_code('docstore', 'datasets')}",  # a code change rebuilds it
                cache_root() / "docstore",
                records,
            )
            self._check(store)
            _STORES[key] = store
        return _STORES[key]

    def _check(self, store: DocStore) -> None:
        if store.blank:
            log.warning(
                "%s: %d documents have no title and no text; kept, they score as empty",
                self.name,
                store.blank,
            )
        judged = {d for rel in self._qrels.values() for d in rel}
        unknown = judged - store.get(sorted(judged)).keys()
        if unknown == judged:
            raise DataError(
                f"{self._qrels_file} judges none of the documents in {self._corpus_file.name} (e.g. "
                f"{sorted(unknown)[:3]}); do the qrels belong to this corpus?"
            )
        if unknown:
            log.warning(
                "%s: the qrels judge %d documents the corpus lacks (e.g. %s); they count as relevant but are "
                "never retrieved",
                self.name,
                len(unknown),
                sorted(unknown)[:3],
            )

    @cached_property
    def _qrels(self) -> Qrels:
        qrels: Qrels = {}
        with self._qrels_file.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if lineno == 1 and parts[0] == "query-id":
                    continue
                if not line.strip():
                    continue
                if len(parts) != 3:
                    raise DataError(
                        f"{self._qrels_file}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score'"
                    )
                try:
                    grade = int(float(parts[2]))
                except ValueError:
                    raise DataError(
                        f"{self._qrels_file}:{lineno}: score {parts[2]!r} is not a number"
                    ) from None
                qrels.setdefault(parts[0], {})[parts[1]] = grade
        if not qrels:
            raise DataError(f"{self._qrels_file} holds no judgements")
        return qrels

    def queries(self) -> list[Query]:
        judged = self._qrels
        out = [
            Query(str(o["_id"]), str(o["text"]))
            for o in _read_jsonl(self.path / "queries.jsonl", ("_id", "text"))
            if str(o["_id"]) in judged
        ]
        missing = judged.keys() - {q.query_id for q in out}
        if missing:
            raise DataError(
                f"qrels/{self.split}.tsv judges queries that queries.jsonl lacks: {sorted(missing)[:3]}; "
                "add them or remove their judgements"
            )
        return out

    def qrels(self) -> Qrels:
        return self._qrels

    def docs(self, doc_ids: Sequence[str]) -> dict[str, Doc]:
        return _lookup(self._docs.get(doc_ids), doc_ids, self.name)

    def corpus(self) -> Iterable[Doc]:
        return self._docs

    @cached_property
    def corpus_fingerprint(self) -> str:
        return file_hash(self._corpus_file)

    @cached_property
    def fingerprint(self) -> str:
        parts = [self.corpus_fingerprint, file_hash(self.path / "queries.jsonl"), file_hash(self._qrels_file)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _lookup(store, doc_ids: Sequence[str], name: str) -> dict[str, Doc]:
    out, missing = {}, []
    for d in doc_ids:
        doc = store.get(d)
        if doc is None:
            missing.append(d)
        else:
            out[d] = doc
    if missing:
        raise DataError(
            f"{len(missing)} document id(s) are not in the {name} corpus, e.g. {missing[:3]}; "
            "does the run file belong to this dataset?"
        )
    return out


class IrDatasetsDataset:
    """A dataset through its ir_datasets id (downloads on first use, then reads ir_datasets' own cache)."""

    def __init__(
        self, irds_id: str, name: str | None = None, relevance_level: int = 1, searched: Sequence[str] = ()
    ):
        try:
            import ir_datasets
        except ImportError as e:  # pragma: no cover - a core dependency
            raise DataError("ir_datasets is not installed; pip install ir-datasets") from e
        _route_irds_logs(ir_datasets)
        self.searched = tuple(searched)  # the local folders looked for first (named when a download fails)
        try:
            self._ds = ir_datasets.load(irds_id)
        except KeyError:
            raise ConfigError(
                f"unknown ir_datasets id {irds_id!r}; see https://ir-datasets.com for the ids"
            ) from None
        self.irds_id = irds_id
        self.name = name or irds_id
        self.relevance_level = int(relevance_level)
        self.pool = False  # ir_datasets serves the whole collection
        self.source = f"irds:{irds_id}"

    def __repr__(self) -> str:
        return f"IrDatasetsDataset({self.irds_id!r})"

    def _guard(self, what: str):
        return _IrdsGuard(self, what)

    def queries(self) -> list[Query]:
        judged = self.qrels()
        with self._guard("queries"):
            out = []
            for q in self._ds.queries_iter():
                text = getattr(q, "text", None) or getattr(q, "title", "")
                if q.query_id in judged:
                    out.append(Query(q.query_id, text))
        return out

    @cached_property
    def _qrels(self) -> Qrels:
        qrels: Qrels = {}
        with self._guard("qrels"):
            for r in self._ds.qrels_iter():
                qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
        return qrels

    def qrels(self) -> Qrels:
        return self._qrels

    def docs(self, doc_ids: Sequence[str]) -> dict[str, Doc]:
        with self._guard("documents"):
            found = self._ds.docs_store().get_many(list(doc_ids))
        return _lookup({k: _irds_doc(v) for k, v in found.items()}, doc_ids, self.name)

    def corpus(self) -> Iterable[Doc]:
        with self._guard("documents"):
            for d in self._ds.docs_iter():
                yield _irds_doc(d)

    @property
    def corpus_fingerprint(self) -> str:
        import ir_datasets

        parent = ir_datasets.docs_parent_id(self.irds_id)
        return hashlib.sha256(f"{parent}|{ir_datasets.__version__}".encode()).hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """ir_datasets verifies its files against fixed checksums, so the id and the library version that
        holds those checksums name the content."""
        import ir_datasets

        return hashlib.sha256(f"{self.irds_id}|{ir_datasets.__version__}".encode()).hexdigest()[:16]


def _irds_doc(d) -> Doc:
    return Doc(
        d.doc_id, getattr(d, "text", "") or getattr(d, "body", "") or "", getattr(d, "title", "") or ""
    )


def _route_irds_logs(ir_datasets) -> None:
    """ir_datasets prints its progress and download retries on stderr through handlers of its own; route them to
    the root logger instead (the job's log), where the CLI keeps what is below an error off the terminal."""
    import sys

    for module in [m for n, m in list(sys.modules.items()) if n.startswith("ir_datasets")]:
        wrapper = getattr(module, "_logger", None)
        if isinstance(wrapper, ir_datasets.log.Logger):
            logger = wrapper.logger()
            for handler in [h for h in logger.handlers if isinstance(h, ir_datasets.log.TqdmHandler)]:
                logger.removeHandler(handler)
            logger.propagate = True


class _IrdsGuard:
    """A download that fails (offline, a dead mirror) becomes one line naming the folders searched and the fix."""

    def __init__(self, dataset: IrDatasetsDataset, what: str):
        self.dataset, self.what = dataset, what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        failed = isinstance(exc, RuntimeError) and "download sources failed" in str(exc)
        if exc is not None and (failed or isinstance(exc, OSError | ConnectionError)):
            ds = self.dataset
            offline = failed or any(w in str(exc) for w in ("NameResolution", "Connection", "resolve"))
            why = "no network" if offline else " ".join(str(exc).split())[:80]
            where = f"no local copy in {' or '.join(ds.searched)}, and " if ds.searched else ""
            raise DataError(
                f"{ds.name}: {where}ir_datasets could not download {ds.irds_id} ({why}); set "
                f"dataset.path=<BEIR folder> or {DATA_ENV}=<folder holding it>"
            ) from None
        return False


def _short(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when that is shorter."""
    import os

    rel = os.path.relpath(path)
    return rel if len(rel) < len(str(path)) else str(path)


def local_folder(folder: str | None, path: str | None) -> Path | None:
    """Where a dataset's local copy is: ``path`` if given, else ``<root>/<folder>`` for the first of
    ``paths.data_roots()`` that has it (``$RERANK_EVAL_DATA``, ``./data``, ``../shared/data``); None when none has."""
    if path:
        return Path(path).expanduser()
    if not folder:
        return None
    from .paths import data_roots

    for root in data_roots():
        if (root / folder).is_dir():
            return root / folder
    return None


def load_dataset(
    name: str,
    irds_id: str | None = None,
    folder: str | None = None,
    path: str | None = None,
    split: str = "test",
    relevance_level: int = 1,
    source: str = "auto",
    pool: bool = False,
) -> Dataset:
    """Open a dataset from its config.

    Args:
        name: short name used in logs and results.
        irds_id: the ir_datasets id of the same collection and split.
        folder: the folder name under the data root (``$RERANK_EVAL_DATA`` or ``../shared/data``).
        path: an explicit BEIR-format folder; wins over ``folder``.
        split: the qrels split of a local folder.
        relevance_level: the lowest grade binary metrics (MAP, MRR, recall) count as relevant.
        source: ``auto`` (local copy when there is one, else ir_datasets), ``local`` or ``irds``.
        pool: the local copy's corpus is only a pool (judged and retrieved documents), not the whole collection:
            full-corpus first stages over it give figures no published run can be compared with.

    Raises:
        ConfigError: unknown ``source`` or nothing to load from.
        DataError: the folder or the data in it is missing or malformed.
    """
    if source not in ("auto", "local", "irds"):
        raise ConfigError(f"dataset.source must be auto, local or irds, got {source!r}")
    if int(relevance_level) < 1:
        raise ConfigError(f"dataset.relevance_level must be >= 1, got {relevance_level}")
    if source != "irds":
        local = local_folder(folder, path)
        if local is not None or source == "local":
            if local is None:
                raise DataError(
                    f"no local copy of {name}: set dataset.path=<BEIR folder> or {DATA_ENV}=<folder holding {folder}/>"
                )
            return BeirDirDataset(local, split=split, name=name, relevance_level=relevance_level, pool=pool)
    if not irds_id:
        raise ConfigError(
            f"dataset {name} has neither a local folder nor an ir_datasets id; set dataset.path=..."
        )
    from .paths import data_roots

    searched = [_short(root / folder) for root in data_roots()] if folder and not path else []
    return IrDatasetsDataset(irds_id, name=name, relevance_level=relevance_level, searched=searched)
