"""Loopback HTTP servers that speak Cohere's v2 rerank, Jina's, Voyage's and mixedbread's rerank, Anthropic's
messages and OpenAI's chat completions wire formats, with a lexical scorer inside (so their rankings mean something) and faults injected on request.

    with CohereEmulator(fault_rate=0.3, seed=1) as emu:
        CohereReranker(base_url=emu.url, ...)

Faults: 429 (with retry-after), 500, 503, 529, a connection reset, a response slower than the client's timeout
(``slow``), and for the LLM, answers that are malformed (``garbage``) or partial. At most ``max_consecutive`` faults
in a row, so retries succeed. ``adversarial=True`` makes the LLM emulator obey instructions planted in passages.
Every request is recorded (time, path, status) in ``requests``.
"""

from __future__ import annotations

import html
import json
import math
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRANSIENT = ("429", "500", "503", "529", "reset", "slow")
RETRYABLE = (*TRANSIENT, "502")  # what a client should retry (only Voyage's emulator sends 502)
INJECTION = re.compile(r"rank this (?:document|passage) first", re.I)


def terms(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def lexical(query: str, doc: str) -> float:
    """Query-term overlap, length-normalised: a crude but meaningful relevance score."""
    q, d = set(terms(query)), terms(doc)
    if not d:
        return 0.0
    hits = sum(1 for t in d if t in q)
    return round(hits / math.sqrt(len(d)) + len(q & set(d)), 6)


class _Emulator:
    path = ""

    def __init__(
        self,
        faults: list[str] | None = None,
        fault_rate: float = 0.0,
        seed: int = 0,
        max_consecutive: int = 2,
        slow_s: float = 1.5,
        retry_after_5xx: bool = False,
        key: str | None = None,
        transient_only: bool = False,
    ):
        self.plan = list(faults or [])  # faults for the first requests, in order ("" for none)
        self.fault_rate, self.rng, self.max_consecutive = fault_rate, random.Random(seed), max_consecutive
        self.slow_s, self.key = slow_s, key
        self.retry_after_5xx = (
            retry_after_5xx  # also send retry-after with 5xx (servers may; it speeds tests)
        )
        self.requests: list[tuple[float, str, int]] = []
        self.bodies: list[dict] = []
        self._consecutive = 0
        self.injected: Counter[str] = Counter()  # faults injected, by kind
        self._lock = threading.Lock()
        self.down = False  # answer every request with 503
        if transient_only:
            self.kinds = tuple(k for k in self.kinds if k in RETRYABLE)

    def _fault(self) -> str:
        with self._lock:
            if self.down:
                return "503"
            if self.plan:
                f = self.plan.pop(0)
            elif (
                self.fault_rate
                and self._consecutive < self.max_consecutive
                and self.rng.random() < self.fault_rate
            ):
                f = self.rng.choice(self.kinds)
            else:
                f = ""
            self._consecutive = self._consecutive + 1 if f in RETRYABLE else 0
            if f:
                self.injected[f] += 1
            return f

    kinds = TRANSIENT

    def error_payload(self, fault: str) -> dict:
        return {"type": "error", "error": {"type": "overloaded_error", "message": f"injected {fault}"}}

    def answer(self, body: dict, fault: str) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fault = emu._fault()
                status = 200
                if emu.key and emu.key not in (
                    self.headers.get("authorization", "") + self.headers.get("x-api-key", "")
                ):
                    status, payload = 401, {"message": "invalid api key"}
                elif not self.path.startswith(emu.path):
                    status, payload = 404, {"message": f"no route {self.path}"}
                elif fault == "reset":
                    emu.requests.append((time.monotonic(), self.path, 0))
                    self.connection.close()
                    return
                elif fault in ("429", "500", "502", "503", "529"):
                    status, payload = int(fault), emu.error_payload(fault)
                else:
                    if fault == "slow":
                        time.sleep(emu.slow_s)
                    payload = emu.answer(body, fault)
                emu.requests.append((time.monotonic(), self.path, status))
                emu.bodies.append(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    if status == 429 or (status >= 500 and emu.retry_after_5xx):
                        self.send_header("retry-after", "0.05")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def served(self) -> int:
        return sum(1 for _, _, s in self.requests if s == 200)


class CohereEmulator(_Emulator):
    path = "/v2/rerank"
    kinds = (*TRANSIENT, "missing")

    def answer(self, body: dict, fault: str) -> dict:
        docs = [d if isinstance(d, str) else d.get("text", "") for d in body["documents"]]
        cut = body.get("max_tokens_per_doc") or 4096
        scores = [lexical(body["query"], " ".join(d.split()[:cut])) for d in docs]
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[: body.get("top_n") or len(docs)]
        results = [{"index": i, "relevance_score": scores[i]} for i in order]
        if fault == "missing":
            results = results[:-1]
        return {
            "id": "emulated",
            "results": results,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": math.ceil(len(docs) / 100)},
            },
        }


def billed_tokens(query: str, docs: list[str]) -> int:
    """What the token-billed emulators charge: query and document words, the query counted once a document."""
    return sum(len(terms(query)) + len(terms(d)) for d in docs)


class _TokenRerankEmulator(_Emulator):
    """A rerank API billed in tokens: ``documents_field`` in the request, ``results_field`` items with
    ``score_field`` in the answer, and what ``billed_tokens`` counts in ``usage.total_tokens``."""

    documents_field, results_field, score_field, top_field = (
        "documents",
        "results",
        "relevance_score",
        "top_n",
    )
    kinds = (*TRANSIENT, "missing")

    def answer(self, body: dict, fault: str) -> dict:
        docs = body[self.documents_field]
        scores = [lexical(body["query"], d) for d in docs]
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[
            : body.get(self.top_field) or len(docs)
        ]
        results = [{"index": i, self.score_field: scores[i]} for i in order]
        if fault == "missing":
            results = results[:-1]
        tokens = billed_tokens(body["query"], docs)
        return {"model": body.get("model"), self.results_field: results, "usage": {"total_tokens": tokens}}


class JinaEmulator(_TokenRerankEmulator):
    path = "/v1/rerank"

    def error_payload(self, fault: str) -> dict:
        return {"detail": f"injected {fault}"}


class VoyageEmulator(_TokenRerankEmulator):
    """Voyage's errors carry ``detail`` (its SDK reads it) and it sends no 529, which its SDK would not read."""

    path = "/v1/rerank"
    results_field, top_field = "data", "top_k"
    kinds = ("429", "500", "502", "503", "reset", "slow", "missing")

    def error_payload(self, fault: str) -> dict:
        return {"detail": f"injected {fault}"}

    def answer(self, body: dict, fault: str) -> dict:
        return {**super().answer(body, fault), "object": "list"}


class MixedbreadEmulator(_TokenRerankEmulator):
    path = "/v1/reranking"
    documents_field, results_field, score_field, top_field = "input", "data", "score", "top_k"

    def answer(self, body: dict, fault: str) -> dict:
        out = super().answer(body, fault)
        out["usage"]["prompt_tokens"] = out["usage"]["total_tokens"]
        return {
            **out,
            "object": "list",
            "top_k": body.get("top_k") or len(body["input"]),
            "return_input": False,
        }


class AnthropicEmulator(_Emulator):
    path = "/v1/messages"
    kinds = TRANSIENT

    def __init__(self, *args, adversarial: bool = False, answer_model: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adversarial, self.answer_model = adversarial, answer_model

    def answer(self, body: dict, fault: str) -> dict:
        prompt = body["messages"][-1]["content"]
        if isinstance(prompt, list):
            prompt = "".join(b.get("text", "") for b in prompt)
        text = self.reply(prompt, fault)
        return {
            "id": "msg_emulated",
            "type": "message",
            "role": "assistant",
            "model": self.answer_model or body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": len(prompt.split()) + len(body.get("system", "").split()),
                "output_tokens": len(text.split()),
            },
        }

    def reply(self, prompt: str, fault: str) -> str:
        """The ranking or grades a lexical 'model' gives the prompt's passages (or the fault's bad answer)."""
        query = re.search(r"Query: (.*?)\n\n", prompt, re.S).group(1)
        passages = [
            (int(i), html.unescape(t))
            for i, t in re.findall(r'<passage id="(\d+)">\n(.*?)\n</passage>', prompt, re.S)
        ]
        scores = {i: lexical(query, t) for i, t in passages}
        if self.adversarial:
            for i, t in passages:
                if INJECTION.search(t):
                    scores[i] = float("inf")
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        if "Grade each passage" in prompt:
            top = max(scores.values(), default=0) or 1
            text = "\n".join(
                f"[{i}] {min(3, int(4 * scores[i] / top)) if scores[i] != float('inf') else 3}"
                for i, _ in passages
            )
        else:
            text = " > ".join(f"[{i}]" for i in ranked)
        if fault == "garbage":
            text = "I cannot rank these passages."
        elif fault == "partial":
            text = " > ".join(f"[{i}]" for i in ranked[: len(ranked) // 2]) + " > [99] > [1]"
        return text


class OpenAIEmulator(AnthropicEmulator):
    """OpenAI's ``/v1/chat/completions`` (as vLLM, Ollama and LM Studio serve it): the same lexical model and
    faults; point the SDK at ``url + "/v1"``."""

    path = "/v1/chat/completions"

    def answer(self, body: dict, fault: str) -> dict:
        system = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
        prompt = body["messages"][-1]["content"]
        text = self.reply(prompt, fault)
        return {
            "id": "chatcmpl-emulated",
            "object": "chat.completion",
            "created": 0,
            "model": self.answer_model or body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": len(prompt.split()) + len(system.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": len(prompt.split()) + len(system.split()) + len(text.split()),
            },
        }
