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
from ..provenance import environment

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
"""HTTP statuses worth another attempt: timeouts, conflicts, rate limits, server errors and overload."""


def retry_after(error: Exception) -> float | None:
    """Seconds the server asked to wait (an error's ``retry_after``, or its Retry-After header), else None."""
    wait = getattr(error, "retry_after", None)
    if wait is not None:
        return float(wait)
    for obj in (error, getattr(error, "response", None)):
        headers = getattr(obj, "headers", None)
        try:
            value = headers.get("retry-after") if headers is not None else None
            return float(value) if value is not None else None
        except (TypeError, ValueError, AttributeError):
            continue
    return None


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
    status = status_of(e)
    body = getattr(e, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error")
        message = body.get("message") or (inner.get("message") if isinstance(inner, dict) else inner)
    if status is None or message is None:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": ")
    return f"{type(e).__name__} (HTTP {status}): {str(message)[:200]}"


def status_of(e: Exception) -> int | None:
    """The HTTP status an SDK's error carries (``status_code``, ``http_status`` or its response's), if any."""
    for status in (
        getattr(e, "status_code", None),
        getattr(e, "http_status", None),
        getattr(getattr(e, "response", None), "status_code", None),
    ):
        if isinstance(status, int):
            return status
    return None


def refuse_key(e: Exception, env_var: str, what: str) -> None:
    """Raise ``BackendUnavailableError`` when the API refused the key (401/403): every query would fail the
    same way, so the run stops at once whatever ``on_failure`` says."""
    status = status_of(e)
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


class RerankService:
    """What the rerank APIs share (Cohere, Jina, Voyage, mixedbread): documents split over calls, a client-side
    rate limit, retries of the transient failures the SDK does not retry itself (``transient``: exception types;
    an error's ``retry_after`` seconds are waited for, else 0.25 s doubling up to 8 s; the SDKs' own retries
    honour Retry-After), one-line errors, a score for every document or a failed query, and
    usage: requests, the unit the service bills (``billed``) and its cost.

    A service module sets ``service`` and ``billed``, builds its client in ``__init__`` (calling ``setup``) and
    implements ``_request(query, documents) -> (scores by index, billed amount)``.
    """

    pointwise = True  # a document's relevance score does not depend on the others sent with it
    service = ""  # e.g. "jina rerank": how errors name it
    billed = ""  # the usage counter of what the service bills: "search_units", "tokens"
    transient: tuple[type[Exception], ...] = ()
    sdk: tuple[str, ...] = ("httpx",)  # the client libraries whose versions shape a request (in the identity)

    def setup(
        self,
        name: str,
        model: str,
        api_key_env: str,
        base_url: str,
        max_docs_per_call: int,
        limit: int,
        max_retries: int,
        requests_per_minute: float | None,
        price: float | None,
        prices_as_of: str | None,
        identity: str,
    ) -> str:
        """Check and keep the shared settings; return the key (from ``api_key_env``)."""
        if not 1 <= max_docs_per_call <= limit:
            raise ConfigError(f"max_docs_per_call must be within 1..{limit}, got {max_docs_per_call}")
        if price is None or price < 0:
            raise ConfigError(
                f"reranker={name} needs its price (a number, USD, from the provider's pricing page), got {price!r}"
            )
        self.model, self.max_docs_per_call, self.max_retries = model, max_docs_per_call, int(max_retries)
        self.api_key_env, self.price, self.base_url = api_key_env, float(price), base_url
        self.limiter = RateLimiter(requests_per_minute)
        self.usage = Usage()
        if prices_as_of:
            self.usage.tags["prices_as_of"] = str(prices_as_of)
        self.name = f"{name}-{model.rsplit('/', 1)[-1]}"
        self.device = f"api:{base_url}"
        # the endpoint is part of the identity: scores from a proxy or a test server are never served as the API's
        self.identity = f"{name}|{base_url}|{model}|{identity}|sdk={environment(self.sdk)}"
        return api_key(api_key_env, f"reranker={name}")

    def _request(self, query: str, documents: list[str]) -> tuple[dict[int, float], float]:
        raise NotImplementedError

    def _call(self, query, chunk: list[str]) -> tuple[dict[int, float], float]:
        """One request, retried here and only here (the SDK clients are built with no retries of their own), so
        every attempt is counted: ``api_attempts``, and ``api_unanswered`` for attempts that timed out or lost
        their connection after sending (the service may have billed them)."""
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            self.usage.add(api_attempts=1)
            try:
                return self._request(query.text, chunk)
            except RerankerCallError:
                raise
            except Exception as e:
                if not (isinstance(e, self.transient) or status_of(e) in RETRY_STATUS):
                    refuse_key(e, self.api_key_env, self.service)
                    raise RerankerCallError(
                        f"{self.service} failed for query {query.query_id}: {describe(e)}"
                    ) from e
                if status_of(e) is None:
                    self.usage.add(api_unanswered=1)
                if attempt == self.max_retries:
                    raise RerankerCallError(
                        f"{self.service} failed for query {query.query_id} after {attempt + 1} attempts: "
                        f"{describe(e)}"
                    ) from e
                wait = retry_after(e)  # the server's Retry-After, where the error carries it
                time.sleep(min(60.0, wait) if wait is not None else min(8.0, 0.25 * 2**attempt))
        raise AssertionError("unreachable")

    def score(self, query, docs) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(docs), self.max_docs_per_call):
            chunk = [d.full_text for d in docs[start : start + self.max_docs_per_call]]
            got, amount = self._call(query, chunk)
            if sorted(got) != list(range(len(chunk))):
                raise RerankerCallError(
                    f"{self.service} answered for {len(got)} of {len(chunk)} documents (query {query.query_id}); "
                    "the response is incomplete"
                )
            cost = amount * self.price / (1e6 if self.billed == "tokens" else 1)
            self.usage.add(api_requests=1, **{self.billed: amount}, api_cost_usd=cost)
            scores.extend(got[i] for i in range(len(chunk)))
        return scores
