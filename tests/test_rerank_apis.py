"""Jina (over HTTP), Voyage and mixedbread (their official SDKs) against loopback emulators of their wire formats:
30% injected faults give the fault-free ranking, tokens and cost are counted exactly, a refused key stops the run,
an incomplete answer fails the query, and the endpoint is part of the score cache's key."""

import pytest
from emulators import JinaEmulator, MixedbreadEmulator, VoyageEmulator, billed_tokens
from test_api_rerankers import dl19_run, order

from rerank_eval.errors import BackendUnavailableError, ConfigError, RerankEvalError
from rerank_eval.rerankers.jina import JinaReranker
from rerank_eval.rerankers.mixedbread import MixedbreadReranker
from rerank_eval.rerankers.voyage import VoyageReranker

KEYS = {
    "JINA_API_KEY": "jina_test_4e1f0c",
    "VOYAGE_API_KEY": "pa-test-9d3b7a",
    "MXBAI_API_KEY": "mx-test-2c8e51",
}
SERVICES = {  # reranker, its emulator, the base_url a client is given, price per million tokens
    "jina": (JinaReranker, JinaEmulator, "", 0.02),
    "voyage": (VoyageReranker, VoyageEmulator, "/v1", 0.05),
    "mixedbread": (MixedbreadReranker, MixedbreadEmulator, "", 0.15),
}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)


def make(name, emu, **kwargs):
    cls, _, suffix, price = SERVICES[name]
    return cls(base_url=emu.url + suffix, price_per_million_tokens=price, **kwargs)


@pytest.mark.parametrize("name", list(SERVICES))
def test_faults_leave_the_ranking_unchanged_and_tokens_and_cost_are_exact(dl19, name):
    emulator, key = SERVICES[name][1], KEYS[f"{name.upper() if name != 'mixedbread' else 'MXBAI'}_API_KEY"]
    with emulator(key=key) as emu:
        clean = dl19_run(dl19, make(name, emu), n_queries=8)
    # every kind of fault once (a clean answer between them), then 30% at random
    kinds = [k for k in emulator.kinds if k != "missing"]
    plan = [f for k in kinds for f in (k, "")]
    with emulator(
        key=key, faults=plan, fault_rate=0.3, seed=3, transient_only=True, retry_after_5xx=True, slow_s=1.2
    ) as emu:
        rr = make(name, emu, timeout=1.0, max_retries=4)
        faulty = dl19_run(dl19, rr, n_queries=8)
    assert order(faulty) == order(clean) and len(order(clean)) == 8
    # faults were injected and survived (a slow answer is served, after the client gave up on it)
    assert set(emu.injected) == set(kinds) and emu.served() == 8 + emu.injected["slow"]
    asked = {b["query"]: b.get("documents") or b["input"] for b in emu.bodies}  # the same texts each attempt
    tokens = sum(billed_tokens(q, docs) for q, docs in asked.items())
    assert rr.usage.counts["tokens"] == tokens and rr.usage.counts["api_requests"] == 8
    assert rr.usage.counts["api_cost_usd"] == pytest.approx(tokens * SERVICES[name][3] / 1e6)
    assert rr.name.startswith(f"{name}-") and f"|{emu.url}" in rr.identity
    # one retry layer (the SDKs' retries are off): every request received was an attempt, and counted
    assert rr.usage.counts["api_attempts"] == len(emu.requests) > 8
    assert rr.usage.counts["api_unanswered"] == emu.injected["slow"] + emu.injected["reset"]


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_refused_key_stops_and_an_incomplete_answer_fails_the_query(dl19, name):
    with (
        SERVICES[name][1](key="another-key") as emu,
        pytest.raises(BackendUnavailableError, match="HTTP 401"),
    ):
        dl19_run(dl19, make(name, emu, max_retries=0), n_queries=1)
    with (
        SERVICES[name][1](faults=["missing"]) as emu,
        pytest.raises(RerankEvalError, match="answered for 19 of 20"),
    ):
        dl19_run(dl19, make(name, emu, max_retries=0), n_queries=1)


def test_split_calls_give_the_same_scores_and_a_price_is_required(dl19, monkeypatch):
    with JinaEmulator() as emu:
        whole = dl19_run(dl19, make("jina", emu), n_queries=2)
        split = make("jina", emu, max_docs_per_call=7)
        assert order(dl19_run(dl19, split, n_queries=2)) == order(whole)
        assert split.usage.counts["api_requests"] == 2 * 3  # 20 documents in calls of 7
    with pytest.raises(ConfigError, match="reranker=jina needs its price"):
        JinaReranker(base_url="http://127.0.0.1:9")
    monkeypatch.delenv("VOYAGE_API_KEY")
    with pytest.raises(BackendUnavailableError, match="set the environment variable VOYAGE_API_KEY"):
        VoyageReranker()
