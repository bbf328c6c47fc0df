"""Cohere Rerank through the official ``cohere`` SDK (v2 client): ``relevance_score`` is the score."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..errors import ConfigError
from ..provenance import scoring_code
from ..types import Doc, Query
from .api import RateLimiter, RerankerCallError, Usage, api_key, describe, refuse_key, require


class CohereReranker:
    """Scores documents with Cohere's rerank endpoint.

    Args:
        model: e.g. ``rerank-v3.5`` or ``rerank-english-v3.0``.
        api_key_env: the environment variable holding the key (never the key itself).
        base_url: another endpoint (a proxy, or a local emulator in tests).
        max_docs_per_call: documents per request (the API's limit is 1,000); more are split across calls.
        max_tokens_per_doc: longer documents are truncated by the API to this many tokens.
        timeout, max_retries: the SDK's own timeout (s) and retry count (429 and 5xx, honouring Retry-After).
        requests_per_minute: a client-side limit (a trial key allows 10).
        price_per_search_unit: USD per search unit (one unit per query per 100 documents); ``prices_as_of``
            when it was published (a tag on every run, beside the cost).
    """

    pointwise = True  # a document's relevance score does not depend on the others sent with it

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
        if not 1 <= max_docs_per_call <= 1000:
            raise ConfigError(f"max_docs_per_call must be within 1..1000, got {max_docs_per_call}")
        cohere = require("cohere", "cohere")
        kwargs = {"base_url": base_url} if base_url else {}
        self._client = cohere.ClientV2(
            api_key=api_key(api_key_env, "reranker=cohere"),
            timeout=timeout,
            max_retries=max_retries,
            **kwargs,
        )
        self.model, self.max_docs_per_call, self.max_tokens_per_doc = (
            model,
            max_docs_per_call,
            max_tokens_per_doc,
        )
        self.max_retries, self.api_key_env = max_retries, api_key_env
        self.price = price_per_search_unit
        self.limiter = RateLimiter(requests_per_minute)
        self.usage = Usage()
        if prices_as_of:
            self.usage.tags["prices_as_of"] = str(prices_as_of)
        self.name = f"cohere-{model}"
        self.base_url = base_url or "https://api.cohere.com"
        self.device = f"api:{self.base_url}"
        # the endpoint is part of the identity: scores from a proxy or a test server are never served as the API's
        self.identity = (
            f"cohere|{self.base_url}|{model}|max_tokens_per_doc={max_tokens_per_doc}"
            f"|code={scoring_code('rerankers/cohere')}"
        )

    def _call(self, query: Query, chunk: list[str]):
        """One rerank request. The SDK retries 429 and 5xx itself (honouring Retry-After) but not a dropped
        connection or a read timeout: those are retried here, as many times, with the same backoff shape."""
        import httpx

        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            try:
                return self._client.rerank(
                    model=self.model,
                    query=query.text,
                    documents=chunk,
                    top_n=len(chunk),
                    max_tokens_per_doc=self.max_tokens_per_doc,
                )
            except httpx.TransportError as e:
                if attempt == self.max_retries:
                    raise RerankerCallError(
                        f"cohere rerank failed for query {query.query_id} after "
                        f"{attempt + 1} attempts: {type(e).__name__}: {str(e)[:200]}"
                    ) from e
                time.sleep(min(8.0, 0.25 * 2**attempt))
            except Exception as e:  # the SDK's own retries are spent: every other failure counts the same
                refuse_key(e, self.api_key_env, "cohere rerank")
                raise RerankerCallError(
                    f"cohere rerank failed for query {query.query_id}: {describe(e)}"
                ) from e
        raise AssertionError("unreachable")

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(docs), self.max_docs_per_call):
            chunk = [d.full_text for d in docs[start : start + self.max_docs_per_call]]
            resp = self._call(query, chunk)
            got = {r.index: float(r.relevance_score) for r in resp.results}
            if sorted(got) != list(range(len(chunk))):
                raise RerankerCallError(
                    f"cohere rerank answered for {len(got)} of {len(chunk)} documents "
                    f"(query {query.query_id}); the response is incomplete"
                )
            meta = getattr(resp, "meta", None)
            units = float(getattr(getattr(meta, "billed_units", None), "search_units", 0) or 0)
            self.usage.add(api_requests=1, search_units=units, api_cost_usd=units * self.price)
            scores.extend(got[i] for i in range(len(chunk)))
        return scores
