"""Voyage AI Rerank through the official ``voyageai`` SDK: ``relevance_score`` is the score, ``total_tokens``
what it bills."""

from __future__ import annotations

from ..provenance import scoring_code
from .api import RerankService, require


class VoyageReranker(RerankService):
    """Scores documents with Voyage's rerank endpoint.

    Args:
        model: e.g. ``rerank-2.5`` or ``rerank-2.5-lite``.
        api_key_env: the environment variable holding the key (never the key itself).
        base_url: another endpoint (MongoDB's ``https://ai.mongodb.com/v1``, a proxy, a local emulator).
        max_docs_per_call: documents per request (the API's limit is 1,000); more are split across calls.
        truncation: let the API truncate documents past the model's context (else it refuses them).
        timeout, max_retries: seconds per request, and retries of 429, 5xx, timeouts and dropped connections
            (honouring Retry-After): ``RerankService``'s one retry loop, every attempt counted; the SDK's own
            retries are off.
        requests_per_minute: a client-side limit.
        price_per_million_tokens: USD per million billed tokens; ``prices_as_of`` when it was published.
    """

    sdk = ("voyageai", "httpx")

    service, billed = "voyage rerank", "tokens"

    def __init__(
        self,
        model: str = "rerank-2.5",
        api_key_env: str = "VOYAGE_API_KEY",
        base_url: str | None = None,
        max_docs_per_call: int = 1000,
        truncation: bool = True,
        timeout: float = 60.0,
        max_retries: int = 3,
        requests_per_minute: float | None = None,
        price_per_million_tokens: float | None = 0.05,
        prices_as_of: str | None = None,
    ):
        voyageai = require("voyageai", "voyage")
        from voyageai import error

        self.transient = (
            error.ServerError,
            error.APIConnectionError,
            error.Timeout,
            error.RateLimitError,
            error.ServiceUnavailableError,
        )
        url = (base_url or "https://api.voyageai.com/v1").rstrip("/")
        key = self.setup(
            "voyage",
            model,
            api_key_env,
            url,
            max_docs_per_call,
            1000,
            max_retries,
            requests_per_minute,
            price_per_million_tokens,
            prices_as_of,
            f"truncation={truncation}|code={scoring_code('rerankers/voyage', 'rerankers/api')}",
        )
        self.truncation = bool(truncation)
        # one attempt a call (the SDK counts attempts): RerankService retries, and counts each
        self._client = voyageai.Client(api_key=key, max_retries=1, timeout=timeout, base_url=url)

    def _request(self, query: str, documents: list[str]) -> tuple[dict[int, float], float]:
        resp = self._client.rerank(
            query, documents, self.model, top_k=len(documents), truncation=self.truncation
        )
        return {r.index: float(r.relevance_score) for r in resp.results}, float(resp.total_tokens)
