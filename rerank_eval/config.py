"""Turns a composed config into objects. The only caller of ``hydra.utils.instantiate``.

Config files are constructor calls (``_target_`` plus arguments). Targets outside this package are refused, so
a config cannot run arbitrary code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, RerankEvalError

PACKAGE = "rerank_eval."
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
        for k, v in node.items():
            _check_targets(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_targets(v, f"{where}[{i}]")


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
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from e


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
    reranker = build(cfg.reranker, "reranker") if cfg.reranker is not None else None
    return Components(dataset, retriever, reranker)


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
