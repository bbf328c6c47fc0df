"""Turns a composed config into objects. The only caller of ``hydra.utils.instantiate``.

Config files are constructor calls (``_target_`` plus arguments). Targets outside this package are refused, so
a config cannot run arbitrary code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, RerankEvalError, did_you_mean
from .evaluation import parse_metrics
from .job.spec import CONFIG_KEYS, JobSpec, check_options

PACKAGE = "rerank_eval."
CONF_MODULE = (
    "rerank_eval.conf"  # the shipped configs, package data: Hydra reads them as pkg://rerank_eval.conf
)
SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password)$")  # key names that hold secrets


def none() -> None:
    """The target of ``reranker=none``: keep the first-stage order."""
    return None


def _check_targets(node: Any, where: str) -> None:
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(PACKAGE):
            raise ConfigError(
                f"{where}._target_={target} is outside the rerank_eval package; only "
                f"rerank_eval.* constructors may be named in configs"
            )
        if target is not None:
            _check_arguments(node, str(target), where)
        for k, v in node.items():
            _check_targets(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_targets(v, f"{where}[{i}]")


def _check_arguments(node: Mapping, target: str, where: str) -> None:
    """Refuse a key the constructor does not take, with the closest one it does take."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # instantiate names a target it cannot find
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p in params if p not in ("self", "cls")]
    for key in node:
        if not str(key).startswith("_") and key not in known:
            guess = did_you_mean(f"{where}.{key}", [f"{where}.{k}" for k in known])
            raise ConfigError(
                f"{where}.{key} is not an option of {name}{guess}; its options: {', '.join(known) or 'none'}"
            )


def is_secret_key(name: str) -> bool:
    """True for config keys that would hold a secret (``api_key``, ``token``...), not for ``api_key_env``."""
    return bool(SECRET_KEY.search(name.lower()))


def check_no_secrets(node: Any, where: str = "config") -> None:
    """Refuse literal secrets in a config: keys are read from the environment variable a config names."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if is_secret_key(str(k)) and v not in (None, ""):
                raise ConfigError(
                    f"{where}.{k} holds a secret in the config; put it in an environment variable "
                    f"and name that variable instead ({k}_env: NAME)"
                )
            check_no_secrets(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            check_no_secrets(v, f"{where}[{i}]")


def build(node: Any, where: str) -> Any:
    """Instantiate one config node (a ``_target_`` mapping), unwrapping Hydra's wrapper around our errors."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(plain, Mapping) or "_target_" not in plain:
        raise ConfigError(f"{where} is not a constructor call (no _target_); pick one of the shipped options")
    _check_targets(plain, where)
    try:
        return instantiate(plain, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, RerankEvalError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        first = e.__cause__
        why = f"{type(first).__name__}: {first}" if first is not None else str(e)
        raise ConfigError(f"{where}: {plain['_target_']} could not be built: {' '.join(why.split())}") from e


@dataclass
class Components:
    dataset: Any
    retriever: Any
    reranker: Any


def build_components(cfg: Any) -> Components:
    """Dataset, first stage and reranker from a composed config, checked before anything heavy loads."""
    check_no_secrets(cfg)
    dataset = build(cfg.dataset, "dataset")
    retriever = build(cfg.retriever, "retriever")
    return Components(dataset, retriever, build_reranker(cfg.reranker))


def build_reranker(node: Any) -> Any:
    """The reranker a config node describes, under its document policy (``reranker.long_docs``: ``truncate``,
    or ``passages`` with ``passage_tokens``, ``stride`` and ``aggregate``; ``scoring.passages``)."""
    from omegaconf import DictConfig, OmegaConf

    from .scoring.passages import split_long_docs, with_long_docs

    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    base, policy = split_long_docs(plain)
    return with_long_docs(build(base, "reranker"), **policy)


def resolved_config(cfg: Any) -> dict:
    """The job's config as plain data, without Hydra's own section."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def conf_dir() -> Path:
    """The shipped config folder (package data)."""
    from importlib.resources import files

    return Path(str(files(CONF_MODULE)))


def studies_dir() -> Path | None:
    """The repository's own studies: ``conf/`` beside the package in a checkout (``conf/experiment/bench.yaml``),
    None in an installed wheel, which carries only the reusable groups."""
    folder = Path(__file__).resolve().parent.parent / "conf"
    return folder if (folder / "experiment").is_dir() else None


@functools.cache
def shipped_options() -> dict[str, Any]:
    """The job options' defaults: the shipped ``config.yaml``, the one place they are set."""
    import yaml

    plain = yaml.safe_load((conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    return {name: _get(plain, key) for name, key in CONFIG_KEYS.items()}


def job_options(plain: Mapping[str, Any]) -> dict[str, Any]:
    """``JobSpec``'s options from a resolved config: the keys it sets over the shipped defaults, checked."""
    options = dict(shipped_options())
    for name, key in CONFIG_KEYS.items():
        value = _get(plain, key, MISSING)
        if value is not MISSING:
            options[name] = value
    options["metrics"] = tuple(
        parse_metrics(options["metrics"])
    )  # an unknown metric fails before models load
    check_options(options)
    return options


def job_spec(dataset: Any, retriever: Any, reranker: Any, **options: Any) -> JobSpec:
    """A ``JobSpec`` in Python: the shipped defaults for every option not given (``top_k=5``, ``metrics=[...]``)."""
    return JobSpec(dataset, retriever, reranker, **{**shipped_options(), **options})


FLAGS = ("cache.enabled", "mlflow.enabled")


def check_config(cfg: Any) -> dict:
    """What a job's config is checked for before anything loads, without building anything (a sweep checks every
    job with it before the first runs): its options, flags, secrets and the keys each constructor takes. Returns
    the resolved config."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig) and "hydra" in cfg:  # a sweep's job config before Hydra fills in its job
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    plain = resolved_config(cfg)
    for flag in FLAGS:
        section, key = flag.split(".")
        if not isinstance((plain.get(section) or {}).get(key, True), bool):
            raise ConfigError(f"{flag} must be true or false, got {plain[section][key]!r}")
    threads = plain.get("threads")
    if threads not in (None, "auto") and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise ConfigError(f"threads must be auto, null or a whole number >= 1, got {threads!r}")
    job_options(plain)
    check_no_secrets(plain)
    for group in ("dataset", "retriever"):
        _check_targets(plain.get(group), group)
    if isinstance(plain.get("reranker"), Mapping):
        from .scoring.passages import check_policy, split_long_docs

        base, policy = split_long_docs(plain["reranker"])
        _check_targets(base, "reranker")
        check_policy(**policy)
    return plain


def spec_from_config(cfg: Any) -> JobSpec:
    """The job a composed config describes: options checked first, then the dataset, first stage and reranker
    built."""
    plain = resolved_config(cfg)
    options = job_options(plain)
    comps = build_components(cfg)
    return JobSpec(comps.dataset, comps.retriever, comps.reranker, **options, config=plain)


MISSING = object()


def _get(plain: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = plain
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b.c -> value`` strings (MLflow params), with secret-looking values redacted."""
    out: dict[str, str] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        key = prefix[:-1]
        secret = is_secret_key(key.rsplit(".", 1)[-1])
        out[key] = "***" if secret and node not in (None, "") else str(node)
    return out
