"""A local corpus looked up, not held: a BEIR ``corpus.jsonl[.gz]`` read once, streaming, into one SQLite file
(``id``, ``title``, ``text`` in the file's order) named by the corpus file's content hash and the hash of the code
that reads it under ``.cache/docstore/``; later processes open it and read only the texts asked for, so memory does not grow with the
corpus. The file is written beside its final name and renamed when complete: a store that is missing its
completion record or cannot be read is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import DataError
from .types import Doc

_BATCH = 5000


class DocStore:
    """Documents by id from a store built by ``DocStore.open_or_build``."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "count" not in meta:
            raise sqlite3.DatabaseError("incomplete store")
        self.count, self.blank = int(meta["count"]), int(meta["blank"])

    @classmethod
    def open_or_build(cls, corpus_file: Path, key: str, root: Path, records) -> DocStore:
        """The store named ``key`` (the corpus's content hash and the reading code's) under ``root``, built from
        ``records`` (an iterator of the file's JSON objects) when there is none or it is damaged."""
        path = root / f"{key}.sqlite"
        if path.is_file():
            try:
                return cls(path)
            except sqlite3.DatabaseError:
                path.unlink(missing_ok=True)  # damaged or incomplete: built again
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _build(tmp, corpus_file, records)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return cls(path)

    def get(self, doc_ids: Sequence[str]) -> dict[str, Doc]:
        """The documents of these ids that the store holds (unknown ids are absent)."""
        out: dict[str, Doc] = {}
        ids = list(dict.fromkeys(doc_ids))
        with self._lock:
            for start in range(0, len(ids), 900):
                chunk = ids[start : start + 900]
                rows = self._conn.execute(
                    f"SELECT id, title, text FROM docs WHERE id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                out.update((i, Doc(i, text, title)) for i, title, text in rows)
        return out

    def __iter__(self) -> Iterator[Doc]:
        """Every document in the corpus file's order, read in batches."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT rowid, id, title, text FROM docs WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, _BATCH),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield from (Doc(i, text, title) for _, i, title, text in rows)

    def __len__(self) -> int:
        return self.count


def _build(tmp: Path, corpus_file: Path, records) -> None:
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL)")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        count = blank = 0
        batch: list[tuple[str, str, str]] = []

        def flush():
            dup = _duplicate(conn, batch)
            if dup is not None:
                raise DataError(f"{corpus_file}: document id {dup!r} appears twice; ids must be unique")
            conn.executemany("INSERT INTO docs VALUES (?, ?, ?)", batch)
            batch.clear()

        for obj in records:
            doc_id, title, text = str(obj["_id"]), str(obj.get("title") or ""), str(obj["text"] or "")
            batch.append((doc_id, title, text))
            count += 1
            blank += not (title.strip() or text.strip())
            if len(batch) >= _BATCH:
                flush()
        if batch:
            flush()
        if not count:
            raise DataError(f"{corpus_file} holds no documents")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("count", count), ("blank", blank)])
        conn.commit()
    finally:
        conn.close()


def _duplicate(conn, batch: list[tuple[str, str, str]]) -> str | None:
    """The first id of ``batch`` seen twice in it or stored by an earlier batch, if any."""
    seen: set[str] = set()
    for doc_id, _, _ in batch:
        if doc_id in seen:
            return doc_id
        seen.add(doc_id)
    ids = [i for i, _, _ in batch]
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        row = conn.execute(
            f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(chunk))}) LIMIT 1", chunk
        ).fetchone()
        if row:
            return row[0]
    return None
