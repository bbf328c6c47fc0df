"""The config tree itself: every option of every group composes and instantiates."""

from pathlib import Path

import pytest
from conftest import CE_MODEL
from hydra import compose, initialize_config_module

from rerank_eval.config import (
    CONF_MODULE,
    build,
    build_components,
    check_no_secrets,
    conf_dir,
    flatten,
    studies_dir,
)
from rerank_eval.datasets import BeirDirDataset, IrDatasetsDataset
from rerank_eval.errors import ConfigError

GROUPS = {
    g: sorted(p.stem for p in (conf_dir() / g).glob("*.yaml")) for g in ("dataset", "retriever", "reranker")
}
LOCAL = {"scifact", "msmarco-dl19", "vaswani", "cranfield"}


def compose_cfg(*overrides, name="config"):
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_groups_hold_the_promised_options():
    assert {
        "scifact",
        "msmarco-dl19",
        "msmarco-dl20",
        "msmarco-dev",
        "vaswani",
        "cranfield",
        "beir_dir",
        "nfcorpus",
        "fiqa",
        "arguana",
        "scidocs",
        "trec-covid",
        "quora",
    } <= set(GROUPS["dataset"])
    assert set(GROUPS["retriever"]) == {"bm25", "run", "dense", "hybrid"}
    assert set(GROUPS["reranker"]) == {
        "none",
        "cross_encoder",
        "bi_encoder",
        "cohere",
        "cohere_english_v3",
        "llm",
        "llm_openai",
        "colbert",
        "maxsim_demo",
        "causal_lm",
        "causal_lm_gemma",
        "seq2seq",
        "jina",
        "voyage",
        "mixedbread",
    }


@pytest.mark.parametrize("name", GROUPS["dataset"])
def test_every_dataset_composes_and_instantiates(name, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_EVAL_DATA", str(tmp_path))  # only ../shared/data holds local copies
    over = [f"dataset={name}"] + (
        ["dataset.path=" + str(Path(__file__).parent / "data" / "tiny")] if name == "beir_dir" else []
    )
    cfg = compose_cfg(*over)
    assert cfg.dataset.irds_id or name == "beir_dir"
    ds = build(cfg.dataset, "dataset")
    if name in LOCAL or name == "beir_dir":
        assert isinstance(ds, BeirDirDataset) and ds.queries()
    else:
        assert isinstance(ds, IrDatasetsDataset) and ds.irds_id == cfg.dataset.irds_id  # lazily, no download


def test_dataset_ids_and_levels():
    assert compose_cfg("dataset=scifact").dataset.irds_id == "beir/scifact/test"
    assert compose_cfg("dataset=scifact", "dataset.split=train").dataset.irds_id == "beir/scifact/train"
    dl19 = compose_cfg("dataset=msmarco-dl19").dataset
    assert (dl19.irds_id, dl19.relevance_level) == ("msmarco-passage/trec-dl-2019/judged", 2)


@pytest.mark.parametrize("retriever", GROUPS["retriever"])
@pytest.mark.parametrize("reranker", GROUPS["reranker"])
def test_every_pipeline_instantiates(retriever, reranker, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY", "dummy")  # constructing a client sends nothing
    monkeypatch.setenv("ANTHROPIC_API_KEY", "dummy")
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    for var in ("JINA_API_KEY", "VOYAGE_API_KEY", "MXBAI_API_KEY"):
        monkeypatch.setenv(var, "dummy")
    over = [f"retriever={retriever}", f"reranker={reranker}", "dataset=msmarco-dl19"]
    if reranker == "jina":
        over.append(
            "reranker.price_per_million_tokens=0.02"
        )  # the shipped config asks for the price of one's pack
    if reranker in ("causal_lm", "causal_lm_gemma", "seq2seq"):  # hub ids: offline, refused in one line
        from rerank_eval.errors import BackendUnavailableError

        with pytest.raises(BackendUnavailableError, match="offline, pass a local model folder") as err:
            build_components(compose_cfg(*over))
        assert "\n" not in str(err.value)
        return
    if reranker == "cross_encoder":
        over.append(f"reranker.model={CE_MODEL}")  # the shipped default is a hub id, unreachable here
    if reranker == "colbert":
        over.append(f"reranker.model={CE_MODEL.parent / 'colbert-tiny-stanford'}")
    comps = build_components(compose_cfg(*over))
    assert comps.retriever.name
    assert (comps.reranker is None) == (reranker == "none")
    if comps.reranker is not None:
        assert comps.reranker.identity and comps.reranker.pointwise in (True, False)


def test_the_shipped_cross_encoder_default_is_a_hub_id_that_fails_offline_in_one_line(monkeypatch):
    """The default names cross-encoder/ms-marco-MiniLM-L-6-v2: offline it is refused with the fix, not scored."""
    from rerank_eval.errors import BackendUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg("reranker=cross_encoder", "dataset=msmarco-dl19")
    assert cfg.reranker.model == "cross-encoder/ms-marco-MiniLM-L-6-v2" and cfg.reranker.dtype == "fp32"
    with pytest.raises(BackendUnavailableError) as err:
        build_components(cfg)
    msg = str(err.value)
    assert "cross-encoder/ms-marco-MiniLM-L-6-v2" in msg and "pass a local model folder" in msg
    assert "\n" not in msg


def test_train_config_composes():
    cfg = compose_cfg("dataset=scifact", name="train")
    assert cfg.dataset.split == "train" and cfg.dataset.irds_id == "beir/scifact/train"
    assert cfg.train.negatives == 15 and cfg.output == "models/scifact-minilm-l6-ce"


def test_targets_outside_the_package_are_refused():
    with pytest.raises(ConfigError, match="outside the rerank_eval package"):
        build({"_target_": "os.system", "command": "true"}, "reranker")
    with pytest.raises(ConfigError, match="not a constructor call"):
        build({"model": "x"}, "reranker")


def test_secrets_are_refused_and_redacted():
    with pytest.raises(ConfigError, match=r"config.reranker.api_key holds a secret.*\(api_key_env: NAME\)"):
        check_no_secrets({"reranker": {"api_key": "sk-123", "api_key_env": "COHERE_API_KEY"}})
    check_no_secrets({"reranker": {"api_key_env": "COHERE_API_KEY", "batch_tokens": 4096, "max_tokens": 5}})
    flat = flatten({"reranker": {"api_key": "sk-123", "api_key_env": "X", "batch_tokens": 1}})
    assert flat == {"reranker.api_key": "***", "reranker.api_key_env": "X", "reranker.batch_tokens": "1"}


def study(name: str, environ: dict) -> tuple[list[list[str]], list[str]]:
    """A study overlay's jobs (each its overrides, as the study sweeper builds them) and what it skipped."""
    import itertools

    from hydra_plugins.rerank_eval_study.study_sweeper import axis_entries

    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("StudySweeper")
    axes, skipped = axis_entries(cfg.hydra.sweeper.axes, environ)
    return [[o for part in combo for o in part] for combo in itertools.product(*axes)], skipped


def test_the_bench_study_lists_its_pipelines_and_joins_api_rerankers_only_with_their_keys():
    jobs, skipped = study("bench", environ={})
    # every family that runs offline here; one line each for those that need a checkpoint or a key
    assert len(jobs) == 8 * 4 and len(skipped) == 10
    assert skipped[0].startswith("colbert: set RERANK_EVAL_COLBERT (a ColBERT checkpoint folder")
    assert "qwen3-reranker: set RERANK_EVAL_QWEN3_RERANKER (a Qwen/Qwen3-Reranker-0.6B folder)" in skipped
    assert "cohere: set COHERE_API_KEY (Cohere Rerank)" in skipped
    assert ["dataset=msmarco-dl19", "retriever=run", "retriever.name=splade-pp-ed", "reranker=none"] in jobs
    jobs, skipped = study("bench", environ={"COHERE_API_KEY": "x", "RERANK_EVAL_MONOT5": "/m/monot5"})
    assert len(jobs) == 8 * 6 and len(skipped) == 8
    assert sum("reranker=seq2seq" in j for j in jobs) == 8
    ce = next(j for j in jobs if "reranker=cross_encoder" in j)
    assert "reranker.max_length=256" in ce and any(o.endswith("scifact-minilm-l6-ce") for o in ce)
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):  # every job composes
        for job in jobs:
            cfg = compose("config", overrides=["+experiment=bench", *job])
            assert cfg.candidates == 100 and cfg.mlflow.experiment == "bench" and cfg.report.study == "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in (studies_dir() / "experiment").glob("*.yaml")))
def test_every_study_composes(name):
    jobs, skipped = study(name, environ={})
    assert jobs or skipped
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        for job in jobs:
            compose("config", overrides=[f"+experiment={name}", *job])


def test_the_repositorys_studies_are_found_from_any_folder(tmp_path):
    """conf/experiment/ sits at the top of the checkout, outside the package: Hydra finds it through the search
    path plugin, also when rerank-eval runs in another folder."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "rerank-eval"
    proc = subprocess.run(
        [str(exe), "+experiment=bench", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "study: bench" in proc.stdout and "experiment: bench" in proc.stdout
    assert (
        not (conf_dir() / "experiment").exists() and (studies_dir() / "experiment" / "bench.yaml").is_file()
    )
