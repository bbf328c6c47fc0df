"""Thin entry points: Hydra composes the config, plain functions do the work.

Input mistakes (``RerankEvalError``, a missing mandatory config value) print one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, RerankEvalError, check_whole

CONF_MODULE = (
    "rerank_eval.conf"  # the shipped configs, package data: Hydra reads them as pkg://rerank_eval.conf
)
PARENT_ENV = (
    "RERANK_EVAL_PARENT_RUN"  # set by the sweep callback: the MLflow run that a sweep's jobs belong to
)
log = logging.getLogger("rerank_eval")


def friendly_errors(fn: Callable) -> Callable:
    """Turn input mistakes into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hydra.errors import HydraException
        from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

        try:
            return fn(*args, **kwargs)
        except RerankEvalError as e:
            print(f"rerank-eval: error: {e}", file=sys.stderr)
            sys.exit(2)
        except HydraException as e:  # a malformed or unknown override, a missing config group option
            print(f"rerank-eval: error: bad override: {_hydra_message(e)}", file=sys.stderr)
            sys.exit(2)
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or str(e)
            print(
                f"rerank-eval: error: {key} is required; pass {key}=<value> on the command line",
                file=sys.stderr,
            )
            sys.exit(2)
        except OmegaConfBaseException as e:
            print(f"rerank-eval: error: bad config: {str(e).splitlines()[0]}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _hydra_message(e: Exception) -> str:
    """Hydra's message folded onto one line, with the fix it names kept."""
    import re

    cause = str(e.__cause__ or "")
    unknown = re.search(r"Key '([^']+)' is not in struct", cause)
    override = re.search(r"use (\+\S+)", str(e))
    if unknown:
        add = f", or add it with {override.group(1)}" if override else ""
        key = getattr(e.__cause__, "full_key", None) or unknown.group(1)
        return f"unknown config key {key!r}; check the spelling (rerank-eval --cfg job prints the keys){add}"
    text = str(e)
    options = re.search(r"Available options in '([^']+)':((?:\n[ \t]+\S+)+)", text)
    if options:  # an unknown group choice: Hydra lists the options one a line
        text = text[: options.start()].strip() + f"; choose {options.group(1)}= one of: "
        text += ", ".join(options.group(2).split()) + " (a file of your own: --config-dir DIR)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("See http")]
    return " ".join(lines) or type(e).__name__


def full_errors() -> None:
    """Have Hydra raise its errors (its documented ``HYDRA_FULL_ERROR``) instead of printing them over several
    lines and exiting 1: ``friendly_errors`` folds them onto one line with exit 2, and a bug in a job shows its
    whole traceback, as bugs should. A sweep's worker processes inherit it."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def conf_dir() -> Path:
    """The shipped config folder (package data)."""
    from importlib.resources import files

    return Path(str(files(CONF_MODULE)))


def resolved_config(cfg: Any) -> dict:
    """The job's config as plain data, without Hydra's own section."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def run_from_config(cfg: Any, output_dir: str | Path, tracker=None, parent_run_id: str | None = None):
    """Build the objects a composed config names and run one job (see ``experiment.run_experiment``)."""
    import yaml

    from .cache import ScoreCache
    from .config import build_components, flatten
    from .evaluation import parse_metrics
    from .experiment import run_experiment
    from .files import write_atomic
    from .paths import cache_root
    from .pipeline import check_depths
    from .tracking import tracker_for

    plain = resolved_config(cfg)
    check_depths(plain["candidates"], plain["top_k"])
    flags = (
        (None, "progress"),
        (None, "resume"),
        (None, "allow_pool"),
        ("cache", "enabled"),
        ("mlflow", "enabled"),
    )
    for section, key in flags:
        value = (plain.get(section) or {}).get(key, True) if section else plain.get(key, True)
        if not isinstance(value, bool):
            name = f"{section}.{key}" if section else key
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    metrics = parse_metrics(plain["metrics"])
    if plain.get("significance") not in ("student", "fisher"):
        raise ConfigError(f"significance must be student or fisher, got {plain.get('significance')!r}")
    comps = build_components(cfg)
    cache_cfg = plain.get("cache") or {}
    cache = ScoreCache(
        cache_cfg.get("path") or cache_root() / "scores.sqlite", cache_cfg.get("enabled", True)
    )
    if tracker is None and plain.get("mlflow", {}).get("enabled", True):
        tracker = tracker_for(plain["mlflow"].get("experiment", "rerank-eval"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(plain, sort_keys=False))
    try:
        return run_experiment(
            comps.dataset,
            comps.retriever,
            comps.reranker,
            candidates=plain["candidates"],
            top_k=plain["top_k"],
            metrics=metrics,
            output_dir=out,
            cache=cache,
            tracker=tracker,
            config=plain,
            significance=plain["significance"],
            params=flatten(plain),
            parent_run_id=parent_run_id or os.environ.get(PARENT_ENV),
            progress=plain.get("progress", True),
            resume=plain.get("resume", True),
            on_failure=plain.get("on_failure", "fail"),
            final_measures=plain.get("final_metrics") or (),
            no_relevant=plain.get("no_relevant", "keep"),
            allow_pool=plain.get("allow_pool", False),
            latency_probe=_count(plain, "latency", "probe", 10),
            latency_probe_api=_count(plain, "latency", "probe_api", 0),
            query_batch=plain.get("query_batch", 1),
            context_tokenizer=plain.get("context_tokenizer"),
            bootstrap=_count(plain, "stats", "bootstrap", 10000),
            seed=_count(plain, "stats", "seed", 42),
        )
    finally:
        cache.close()


def _count(plain: dict, section: str, key: str, default: int) -> int:
    value = (plain.get(section) or {}).get(key, default)
    check_whole(f"{section}.{key}", value, 0)
    return value


def _setup_logging() -> None:
    for name in ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "alembic", "bm25s"):
        logging.getLogger(name).setLevel(logging.WARNING)


def config_dirs(argv: list[str]) -> list[Path]:
    """The shipped config folder and any a user adds with ``--config-dir``/``-cd``."""
    dirs = [conf_dir()]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.partition("=")[2]))
    return dirs


def check_no_secret_inputs(argv: list[str]) -> None:
    """Refuse a key-like value on the command line or in a config file before Hydra saves either to disk."""
    from .config import check_no_secrets, is_secret_key

    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
            raise ConfigError(
                f"{key.lstrip('+~')} holds a secret on the command line; put it in an environment "
                f"variable and name that variable instead ({key.rsplit('.', 1)[-1].lstrip('+~')}_env: NAME)"
            )
    import yaml

    for conf_dir in config_dirs(argv):
        for path in conf_dir.rglob("*.yaml"):
            try:
                node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix that file"
                ) from None
            check_no_secrets(node, str(path))


@friendly_errors
def main() -> None:
    """``rerank-eval [overrides]`` (or ``python -m rerank_eval``): one job, or a sweep with ``-m``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    _setup_logging()
    full_errors()
    check_no_secret_inputs(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}", config_name="config")
    @friendly_errors
    def _job(cfg) -> float:
        res = run_from_config(cfg, HydraConfig.get().runtime.output_dir)
        key = "ndcg@10" if "ndcg@10" in res.metrics else next(iter(res.metrics))
        ms = res.latency.get("reranker_ms_mean")
        cost = (
            f"reranker {ms:.1f} ms/query ({res.latency_source})" if ms is not None else "no reranker latency"
        )
        print(
            f"{res.name}: {key}={res.metrics[key]:.4f} (first stage {res.first_stage[key]:.4f}, "
            f"p={res.pvalues[key]:.3g}); {cost}; results in {res.output_dir}"
        )
        return res.metrics[key]

    _job()
