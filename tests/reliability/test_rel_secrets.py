"""Secrets: with API keys in the environment, run every reranker and the report, then scan everything the harness
wrote (MLflow store and artifacts, .hydra folders, job logs, result files, caches) and everything it printed for
the keys. Keys in config files are refused (see the bad-input catalogue)."""

from __future__ import annotations

import contextlib
import io

from emulators import (
    AnthropicEmulator,
    CohereEmulator,
    JinaEmulator,
    MixedbreadEmulator,
    OpenAIEmulator,
    VoyageEmulator,
)
from relhelp import CE_MODEL, FIGURES, TINY, run_cli, secret_hits, store_env

COHERE_KEY = "co-rel-secret-0b7d5e2f9a13c4d6"
ANTHROPIC_KEY = "sk-ant-rel-secret-5f0e9d8c7b6a5948"
OPENAI_KEY = "sk-oai-rel-secret-7a2c4e6b8d0f1357"
JINA_KEY, VOYAGE_KEY, MXBAI_KEY = (
    "jina_rel_secret_3c5e7a9b",
    "pa-rel-secret-8d6f4b2a",
    "mx-rel-secret-1e3c5a7f",
)
KEYS = [COHERE_KEY, ANTHROPIC_KEY, OPENAI_KEY, JINA_KEY, VOYAGE_KEY, MXBAI_KEY]
TINY_DS = ["dataset=beir_dir", f"dataset.path={TINY}", "dataset.name=tiny", "candidates=5", "top_k=3"]


def test_no_key_anywhere(tmp_path, monkeypatch):
    env = {
        **store_env(tmp_path),
        "COHERE_API_KEY": COHERE_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_API_KEY": OPENAI_KEY,
        "JINA_API_KEY": JINA_KEY,
        "VOYAGE_API_KEY": VOYAGE_KEY,
        "MXBAI_API_KEY": MXBAI_KEY,
    }
    printed = []
    with (
        CohereEmulator(key=COHERE_KEY) as co,
        AnthropicEmulator(key=ANTHROPIC_KEY) as an,
        OpenAIEmulator(key=OPENAI_KEY) as oa,
        JinaEmulator(key=JINA_KEY) as ji,
        VoyageEmulator(key=VOYAGE_KEY) as vo,
        MixedbreadEmulator(key=MXBAI_KEY) as mx,
    ):
        jobs = {
            "none": ["reranker=none"],
            "cross_encoder": ["reranker=cross_encoder", f"reranker.model={CE_MODEL}"],
            "bi_encoder": ["reranker=bi_encoder"],
            "colbert": ["reranker=colbert", f"reranker.model={CE_MODEL.parent / 'colbert-tiny-stanford'}"],
            "maxsim_demo": ["reranker=maxsim_demo"],
            "cohere": ["reranker=cohere", f"reranker.base_url={co.url}"],
            "llm-listwise": ["reranker=llm", f"reranker.base_url={an.url}"],
            "llm-pointwise": ["reranker=llm", "reranker.mode=pointwise", f"reranker.base_url={an.url}"],
            "llm-openai": ["reranker=llm_openai", f"reranker.base_url={oa.url}/v1"],
            "jina": [
                "reranker=jina",
                f"reranker.base_url={ji.url}",
                "reranker.price_per_million_tokens=0.02",
            ],
            "voyage": ["reranker=voyage", f"reranker.base_url={vo.url}/v1"],
            "mixedbread": ["reranker=mixedbread", f"reranker.base_url={mx.url}"],
        }
        for name, over in jobs.items():
            res = run_cli(
                [*TINY_DS, *over, "mlflow.experiment=secrets"], tmp_path / "out" / name, monkeypatch, env
            )
            assert res.code == 0, res.stderr[-2000:]
            printed += [res.stdout, res.stderr]
        # a sweep too: parent run, sweep report, multirun folders
        res = run_cli(
            [
                "-m",
                *TINY_DS,
                "reranker=cohere",
                f"reranker.base_url={co.url}",
                "top_k=1,3",
                "mlflow.experiment=secrets",
            ],
            tmp_path / "out" / "sweep",
            monkeypatch,
            env,
        )
        assert res.code == 0, res.stderr[-2000:]
        printed += [res.stdout, res.stderr]
    assert len(co.requests) >= 2 and len(an.requests) >= 4 and len(oa.requests) >= 1  # the keys were used
    assert min(len(ji.requests), len(vo.requests), len(mx.requests)) >= 1
    from rerank_eval import report

    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        report.main(["--experiment", "secrets", "--out", str(tmp_path / "results" / "secrets")])
    printed += [o.getvalue(), e.getvalue()]
    assert (tmp_path / "results" / "secrets" / "report.md").is_file()
    hydra_dirs = list(tmp_path.rglob(".hydra"))
    logs = list(tmp_path.rglob("*.log"))
    assert len(hydra_dirs) >= len(jobs) + 2 and logs  # every job and two sweep jobs
    files, nbytes, hits = secret_hits([tmp_path], KEYS)
    printed_hits = sum(text.count(k) for text in printed for k in KEYS)
    assert hits == [] and printed_hits == 0
    FIGURES["secrets"] = {
        "rerankers": list(jobs),
        "files_scanned": files,
        "bytes_scanned": nbytes,
        "hydra_folders": len(hydra_dirs),
        "logs": len(logs),
        "hits_in_files": len(hits),
        "hits_in_output": printed_hits,
    }
