"""mixedbread Rerank through the official ``mixedbread`` SDK (``POST /v1/reranking``): ``score`` is the score,
``usage.total_tokens`` what it bills."""

from __future__ import annotations

from ..provenance import scoring_code
from .api import RerankService, require


class MixedbreadReranker(RerankService):
    """Scores documents with mixedbread's reranking endpoint.

    Args:
        model: e.g. ``mixedbread-ai/mxbai-rerank-large-v2``.
        api_key_env: the environment variable holding the key (never the key itself).
        base_url: another endpoint (a proxy, or a local emulator in tests).
        max_docs_per_call: documents per request (the API's limit is 1,000); more are split across calls.
        timeout, max_retries: seconds per request, and retries of 429, 5xx, timeouts and dropped connections
            (honouring Retry-After): ``RerankService``'s one retry loop, every attempt counted; the SDK's own
            retries are off.
        requests_per_minute: a client-side limit.
        price_per_million_tokens: USD per million billed tokens; ``prices_as_of`` when it was published.
    """

    sdk = ("mixedbread", "httpx")

    service, billed = "mixedbread rerank", "tokens"

    def __init__(
        self,
        model: str = "mixedbread-ai/mxbai-rerank-large-v2",
        api_key_env: str = "MXBAI_API_KEY",
        base_url: str | None = None,
        max_docs_per_call: int = 1000,
        timeout: float = 60.0,
        max_retries: int = 3,
        requests_per_minute: float | None = None,
        price_per_million_tokens: float | None = 0.15,
        prices_as_of: str | None = None,
    ):
        mixedbread = require("mixedbread", "mixedbread")
        self.transient = (
            mixedbread.APIConnectionError,
        )  # timeouts too; statuses: RerankService.RETRY_STATUS
        url = (base_url or "https://api.mixedbread.com").rstrip("/")
        key = self.setup(
            "mixedbread",
            model,
            api_key_env,
            url,
            max_docs_per_call,
            1000,
            max_retries,
            requests_per_minute,
            price_per_million_tokens,
            prices_as_of,
            f"code={scoring_code('rerankers/mixedbread', 'rerankers/api')}",
        )
        self._client = mixedbread.Mixedbread(
            api_key=key,
            base_url=url,
            timeout=timeout,
            max_retries=0,  # RerankService retries, and counts each
        )

    def _request(self, query: str, documents: list[str]) -> tuple[dict[int, float], float]:
        resp = self._client.rerank(
            model=self.model, query=query, input=documents, top_k=len(documents), return_input=False
        )
        return {d.index: float(d.score) for d in resp.data}, float(resp.usage.total_tokens)
