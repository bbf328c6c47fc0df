"""Cohere Rerank through the official ``cohere`` SDK (v2 client): ``relevance_score`` is the score."""

from __future__ import annotations

from ..provenance import scoring_code
from .api import RerankService, require


class CohereReranker(RerankService):
    """Scores documents with Cohere's rerank endpoint.

    Args:
        model: e.g. ``rerank-v3.5`` or ``rerank-english-v3.0``.
        api_key_env: the environment variable holding the key (never the key itself).
        base_url: another endpoint (a proxy, or a local emulator in tests).
        max_docs_per_call: documents per request (the API's limit is 1,000); more are split across calls.
        max_tokens_per_doc: longer documents are truncated by the API to this many tokens.
        timeout, max_retries: seconds per request, and retries of 429, 5xx, timeouts and dropped connections
            (honouring Retry-After): ``RerankService``'s one retry loop, every attempt counted; the SDK's own
            retries are off.
        requests_per_minute: a client-side limit (a trial key allows 10).
        price_per_search_unit: USD per search unit (one unit per query per 100 documents); ``prices_as_of``
            when it was published (a tag on every run, beside the cost).
    """

    sdk = ("cohere", "httpx")

    service, billed = "cohere rerank", "search_units"

    def __init__(
        self,
        model: str = "rerank-v3.5",
        api_key_env: str = "COHERE_API_KEY",
        base_url: str | None = None,
        max_docs_per_call: int = 1000,
        max_tokens_per_doc: int = 4096,
        timeout: float = 60.0,
        max_retries: int = 3,
        requests_per_minute: float | None = None,
        price_per_search_unit: float = 0.002,
        prices_as_of: str | None = None,
    ):
        import httpx

        cohere = require("cohere", "cohere")
        self.transient = (httpx.TransportError,)
        key = self.setup(
            "cohere",
            model,
            api_key_env,
            base_url or "https://api.cohere.com",
            max_docs_per_call,
            1000,
            max_retries,
            requests_per_minute,
            price_per_search_unit,
            prices_as_of,
            f"max_tokens_per_doc={max_tokens_per_doc}|code={scoring_code('rerankers/cohere', 'rerankers/api')}",
        )
        self.name = f"cohere-{model}"
        self.max_tokens_per_doc = max_tokens_per_doc
        kwargs = {"base_url": base_url} if base_url else {}
        self._client = cohere.ClientV2(api_key=key, timeout=timeout, **kwargs)

    def _request(self, query: str, documents: list[str]) -> tuple[dict[int, float], float]:
        resp = self._client.rerank(
            model=self.model,
            query=query,
            documents=documents,
            top_n=len(documents),
            max_tokens_per_doc=self.max_tokens_per_doc,
            request_options={"max_retries": 0},  # RerankService retries, and counts each attempt
        )
        meta = getattr(resp, "meta", None)
        units = float(getattr(getattr(meta, "billed_units", None), "search_units", 0) or 0)
        return {r.index: float(r.relevance_score) for r in resp.results}, units
