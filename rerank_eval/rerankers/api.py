"""What the API rerankers share: keys from the environment, a client-side rate limit, usage accounting, and a
persistent cache of API responses (so rerunning a study never pays twice)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError, RerankEvalError


class RerankerCallError(RerankEvalError):
    """An API call that still failed after the SDK's retries; the pipeline counts the query as failed."""


def api_key(env_var: str, what: str) -> str:
    """The key in ``env_var``; configs name the variable, never the key."""
    if not env_var or not str(env_var).isidentifier():
        raise ConfigError(f"{what}: api_key_env must name an environment variable, got {env_var!r}")
    key = os.environ.get(env_var, "")
    if not key:
        raise BackendUnavailableError(f"{what} needs an API key: set the environment variable {env_var}")
    return key


def describe(e: Exception) -> str:
    """An SDK error in a few words: its type, the HTTP status and the API's own message (no headers)."""
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error")
        message = body.get("message") or (inner.get("message") if isinstance(inner, dict) else inner)
    if status is None or message is None:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": ")
    return f"{type(e).__name__} (HTTP {status}): {str(message)[:200]}"


def refuse_key(e: Exception, env_var: str, what: str) -> None:
    """Raise ``BackendUnavailableError`` when the API refused the key (401/403): every query would fail the
    same way, so the run stops at once whatever ``on_failure`` says."""
    status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        raise BackendUnavailableError(
            f"{what} refused the key in {env_var} (HTTP {status}); check that variable's key and its permissions"
        ) from None


def require(module: str, extra: str):
    """Import an SDK lazily; a missing one names the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailableError(
            f"the {module} SDK is not installed: pip install 'rerank-eval[{extra}]'"
        ) from None


class RateLimiter:
    """Spaces request starts at least 60/``per_minute`` seconds apart (None: no limit). Thread-safe."""

    def __init__(self, per_minute: float | None):
        if per_minute is not None and per_minute <= 0:
            raise ConfigError(f"requests_per_minute must be positive or null, got {per_minute}")
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                time.sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


class ResponseCache:
    """API responses by a hash of everything the request depends on (model, settings, texts). One SQLite file."""

    def __init__(self, path: str | Path | None, enabled: bool = True):
        self._conn = None
        self.read = True  # False while a latency probe runs: answers are fetched fresh (and stored again)
        if enabled and path:
            p = Path(path).expanduser()
            p.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(p, timeout=60, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        if self._conn is None or not self.read:
            return None
        row = self._conn.execute("SELECT value FROM responses WHERE key=?", [key]).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        if self._conn is not None:
            self._conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", [key, json.dumps(value)])


class Usage:
    """Requests, tokens or search units and their cost, summed over a run."""

    def __init__(self):
        self.counts: dict[str, float] = {"api_requests": 0.0, "api_cost_usd": 0.0}
        self.tags: dict[str, str] = {}

    def add(self, **amounts: float) -> None:
        for k, v in amounts.items():
            self.counts[k] = self.counts.get(k, 0.0) + float(v)
