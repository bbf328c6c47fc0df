"""Persistent score cache: a reranker never scores the same (reranker identity, query, document) twice.

One SQLite file (WAL mode, so parallel jobs can write at once). Keys are hashes of the texts, not of ids, so a
query-document pair met again in another dataset or at another depth is a hit. The reranker identity names the
model's weights, every setting that changes scores and a hash of the scoring code, so a changed model or engine
never reads old scores. Only scores are kept: latency is measured, never replayed from a cache (the pipeline
times fresh calls, or a fresh probe sample, instead).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS pair_scores (
    reranker TEXT NOT NULL, query TEXT NOT NULL, doc TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (reranker, query, doc)
) WITHOUT ROWID
"""


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class ScoreCache:
    """Scores keyed by (reranker identity, query text, document text).

    Args:
        path: the SQLite file; its folder is created.
        enabled: when False every lookup misses and nothing is stored.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.enabled = bool(enabled)
        self.path = Path(path).expanduser()
        self._conn: sqlite3.Connection | None = None
        if self.enabled:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(SCHEMA)
            except (sqlite3.Error, OSError) as e:
                if "not a database" in str(e):
                    raise ConfigError(
                        f"the score cache {self.path} is damaged ({e}); move it away (its scores are "
                        "recomputed) or set cache.path to another file"
                    ) from None
                raise ConfigError(
                    f"cannot open the score cache {self.path} ({e}); set cache.path to a writable "
                    "file or cache.enabled=false"
                ) from None

    def get(self, reranker: str, query: str, docs: Sequence[str]) -> dict[str, float]:
        """Cached scores by document key (``text_key``) for the documents that have one."""
        if self._conn is None or not docs:
            return {}
        q = text_key(query)
        keys = list({text_key(d) for d in docs})
        out: dict[str, float] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._conn.execute(
                f"SELECT doc, score FROM pair_scores WHERE reranker=? AND query=? AND doc IN "
                f"({','.join('?' * len(chunk))})",
                [reranker, q, *chunk],
            ).fetchall()
            out.update(dict(rows))
        return out

    def put(self, reranker: str, query: str, docs: Sequence[str], scores: Sequence[float]) -> None:
        """Store the scores of one scoring call."""
        if self._conn is None or not docs:
            return
        q = text_key(query)
        rows = [(reranker, q, text_key(d), float(s)) for d, s in zip(docs, scores, strict=True)]
        for attempt in range(5):
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany("INSERT OR REPLACE INTO pair_scores VALUES (?,?,?,?)", rows)
                return
            except sqlite3.OperationalError:  # locked by a parallel writer past the timeout: wait and retry
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def count(self, reranker: str | None = None) -> int:
        if self._conn is None:
            return 0
        if reranker is None:
            return self._conn.execute("SELECT COUNT(*) FROM pair_scores").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM pair_scores WHERE reranker=?", [reranker]).fetchone()[
            0
        ]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
