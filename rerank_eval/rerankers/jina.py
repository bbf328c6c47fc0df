"""Jina Reranker over its HTTP API (``POST /v1/rerank``; Jina publishes no Python SDK for it): ``relevance_score``
is the score, ``usage.total_tokens`` what it bills. Retries, Retry-After and timeouts are handled here, as the
SDKs do it for the others."""

from __future__ import annotations

from ..provenance import scoring_code
from .api import RerankService


class _Transient(Exception):
    """A response worth retrying (429, 5xx)."""

    def __init__(self, status_code: int, message: str, retry_after: float | None):
        super().__init__(message)
        self.status_code, self.retry_after = status_code, retry_after


class _Refused(Exception):
    def __init__(self, status_code: int, message: str):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


class JinaReranker(RerankService):
    """Scores documents with Jina's rerank endpoint.

    Args:
        model: e.g. ``jina-reranker-v2-base-multilingual`` or ``jina-reranker-m0``.
        api_key_env: the environment variable holding the key (never the key itself).
        base_url: another endpoint (a proxy, or a local emulator in tests).
        max_docs_per_call: documents per request; more are split across calls.
        timeout, max_retries: seconds per request, and retries of 429, 5xx, timeouts and dropped connections
            (honouring Retry-After, else backing off 0.25 s, 0.5 s, ... up to 8 s).
        requests_per_minute: a client-side limit (a free key allows 100).
        price_per_million_tokens: USD per million billed tokens (Jina sells prepaid token packs: the price of
            yours); ``prices_as_of`` when it was read.
    """

    service, billed = "jina rerank", "tokens"

    def __init__(
        self,
        model: str = "jina-reranker-v2-base-multilingual",
        api_key_env: str = "JINA_API_KEY",
        base_url: str | None = None,
        max_docs_per_call: int = 1000,
        timeout: float = 60.0,
        max_retries: int = 3,
        requests_per_minute: float | None = None,
        price_per_million_tokens: float | None = None,
        prices_as_of: str | None = None,
    ):
        import httpx

        self.transient = (_Transient, httpx.TransportError)
        url = (base_url or "https://api.jina.ai").rstrip("/")
        key = self.setup(
            "jina",
            model,
            api_key_env,
            url,
            max_docs_per_call,
            1000,
            max_retries,
            requests_per_minute,
            price_per_million_tokens,
            prices_as_of,
            f"code={scoring_code('rerankers/jina', 'rerankers/api')}",
        )
        self._client = httpx.Client(base_url=url, timeout=timeout, headers={"authorization": f"Bearer {key}"})

    def _request(self, query: str, documents: list[str]) -> tuple[dict[int, float], float]:
        resp = self._client.post(
            "/v1/rerank",
            json={
                "model": self.model,
                "query": query,
                "documents": documents,
                "top_n": len(documents),
                "return_documents": False,
            },
        )
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Transient(resp.status_code, _message(resp), _retry_after(resp.headers.get("retry-after")))
        if resp.status_code != 200:
            raise _Refused(resp.status_code, _message(resp))
        body = resp.json()
        scores = {int(r["index"]): float(r["relevance_score"]) for r in body["results"]}
        return scores, float(body.get("usage", {}).get("total_tokens", 0))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: back off as usual
        return None


def _message(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    detail = (
        body.get("detail") or body.get("message") or body.get("error") if isinstance(body, dict) else body
    )
    return str(detail)[:200]
