"""API faults: a full DL19 run against the loopback Cohere and Anthropic servers with 30% of requests failing
(429 with retry-after, 500, 503, 529, connection resets, answers slower than the client's timeout) gives the
fault-free run's results; an API that stays down stops the run after the configured retries, keeping what was
scored."""

from __future__ import annotations

import json
import sqlite3

import pytest
from emulators import AnthropicEmulator, CohereEmulator
from relhelp import FIGURES, run_cli, store_env

KEYS = {"COHERE_API_KEY": "co-rel-faults-81d2a0", "ANTHROPIC_API_KEY": "sk-ant-rel-faults-7e44c1"}
DL19 = ["dataset=msmarco-dl19", "retriever=run", "retriever.name=bm25", "candidates=10", "top_k=10"]
RERANKERS = {
    "cohere": (CohereEmulator, ["reranker=cohere", "reranker.timeout=1.0", "reranker.max_retries=4"]),
    "llm-listwise": (
        AnthropicEmulator,
        [
            "reranker=llm",
            "reranker.timeout=1.0",
            "reranker.max_retries=4",
            "reranker.window=10",
            "reranker.step=5",
        ],
    ),
    "llm-pointwise": (
        AnthropicEmulator,
        ["reranker=llm", "reranker.mode=pointwise", "reranker.timeout=1.0", "reranker.max_retries=4"],
    ),
}


def outcome(out):
    summary = json.loads((out / "metrics.json").read_text())
    return (out / "run.trec").read_text(), summary["metrics"], summary["counts"]


@pytest.mark.slow  # about a minute for the three; tests/test_api_rerankers.py checks the same on fewer queries
@pytest.mark.parametrize("name", list(RERANKERS))
def test_thirty_percent_faults_change_nothing(name, tmp_path, monkeypatch):
    emu_cls, over = RERANKERS[name]
    key = KEYS["COHERE_API_KEY" if emu_cls is CohereEmulator else "ANTHROPIC_API_KEY"]
    with emu_cls(key=key) as emu:
        clean = run_cli(
            [*DL19, *over, f"reranker.base_url={emu.url}"],
            tmp_path / "clean",
            monkeypatch,
            {**store_env(tmp_path / "a"), **KEYS},
        )
    assert clean.code == 0, clean.stderr[-2000:]
    with emu_cls(
        key=key,
        fault_rate=0.3,
        seed=11 + list(RERANKERS).index(name),
        transient_only=True,
        retry_after_5xx=True,
    ) as emu:
        faulty = run_cli(
            [*DL19, *over, f"reranker.base_url={emu.url}"],
            tmp_path / "faulty",
            monkeypatch,
            {**store_env(tmp_path / "b"), **KEYS},
        )
    assert faulty.code == 0, faulty.stderr[-2000:]
    run_a, metrics_a, counts_a = outcome(tmp_path / "clean")
    run_b, metrics_b, counts_b = outcome(tmp_path / "faulty")
    assert run_a == run_b and metrics_a == metrics_b
    assert counts_b["failed_queries"] == 0 and counts_b["api_requests"] == counts_a["api_requests"]
    faults = sum(emu.injected.values())
    assert len(emu.requests) == counts_b["api_requests"] + faults  # every fault was retried, none was fatal
    assert faults >= 0.2 * len(emu.requests)  # about 30% of requests failed (at most 2 in a row)
    assert len(emu.injected) >= 5  # of most kinds
    FIGURES.setdefault("api_faults", {})[name] = {
        "queries": counts_b["queries"],
        "requests": len(emu.requests),
        "answered": counts_b["api_requests"],
        "faults": dict(sorted(emu.injected.items())),
        "ndcg@10": round(metrics_b["ndcg@10"], 4),
        "identical": True,
    }


@pytest.mark.parametrize("name", ["cohere", "llm-listwise"])
def test_api_down_stops_after_the_retries_and_keeps_the_scores(name, tmp_path, monkeypatch):
    emu_cls, over = RERANKERS[name]
    key = KEYS["COHERE_API_KEY" if emu_cls is CohereEmulator else "ANTHROPIC_API_KEY"]
    env = {**store_env(tmp_path), **KEYS}
    pointwise = emu_cls is CohereEmulator  # listwise scores are never cached across lists; responses are
    with emu_cls(key=key, faults=[""] * 5) as emu:
        emu.plan.append("503")  # five good answers, then down for good
        emu.kinds = ("503",)
        emu.fault_rate, emu.max_consecutive = 1.0, 10**6
        res = run_cli(
            [*DL19, *over, "reranker.max_retries=2", f"reranker.base_url={emu.url}"],
            tmp_path / "o",
            monkeypatch,
            env,
        )
    assert res.code == 2 and "stopped after 5 of 43 queries" in res.last_error_line, res.stderr[-2000:]
    assert "rerun to resume" in res.last_error_line and "Traceback" not in res.stderr
    failed_requests = [s for _, _, s in emu.requests].count(503)
    assert failed_requests == 1 + 2  # the call and its two retries
    from rerank_eval.cache import ScoreCache

    kept = ScoreCache(tmp_path / "cache" / "scores.sqlite").count() if pointwise else None
    if pointwise:
        assert kept == 5 * 10
    else:
        with sqlite3.connect(tmp_path / "cache" / "responses.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 5
    assert not (tmp_path / "o" / "metrics.json").exists()
    FIGURES.setdefault("api_down", {})[name] = {
        "requests_after_outage": failed_requests,
        "kept": f"{kept} scores" if pointwise else "5 responses",
        "message": res.last_error_line,
    }
