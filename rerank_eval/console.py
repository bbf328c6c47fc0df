"""What the console commands share (rerank-eval, -ask, -train, -shard, -report): input mistakes as one line and
exit status 2, secrets refused on the command line and in config files, and the config folders Hydra reads."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .config import CONF_MODULE, conf_dir, studies_dir
from .errors import ConfigError, RerankEvalError, did_you_mean

__all__ = [
    "CONF_MODULE",
    "check_no_secret_inputs",
    "config_dirs",
    "friendly_errors",
    "full_errors",
    "quiet_terminal",
]


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
        key = getattr(e.__cause__, "full_key", None) or unknown.group(1)
        parent = getattr(e.__cause__, "parent_node", None)
        siblings = [str(k) for k in parent if not str(k).startswith("_")] if parent is not None else []
        prefix = key.rpartition(".")[0]
        guess = did_you_mean(key, [f"{prefix}.{k}" if prefix else k for k in siblings])
        add = f", or add it with {override.group(1)}" if override and not guess else ""
        return f"unknown config key {key!r}{guess}; check the spelling (rerank-eval --cfg job prints the keys){add}"
    text = str(e)
    options = re.search(r"Available options in '([^']+)':((?:\n[ \t]+\S+)+)", text)
    if options:  # an unknown group choice: Hydra lists the options one a line
        asked = re.search(r"Could not find '[^']*/([^'/]+)'", text)
        guess = did_you_mean(asked.group(1), options.group(2).split()) if asked else ""
        text = text[: options.start()].strip() + f"{guess}; choose {options.group(1)}= one of: "
        text += ", ".join(options.group(2).split()) + " (a file of your own: --config-dir DIR)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("See http")]
    return " ".join(lines) or type(e).__name__


NOISY = (
    "ir_datasets",
    "huggingface_hub",
)  # libraries whose retries and progress belong in the log, not the terminal


def quiet_terminal(noisy: tuple[str, ...] = NOISY) -> None:
    """Keep these libraries' records below ERROR off the terminal; the job's log file still holds them. Call it
    once logging is set up (inside a Hydra task)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.name.startswith(noisy)

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(keep)


def full_errors() -> None:
    """Have Hydra raise its errors (its documented ``HYDRA_FULL_ERROR``) instead of printing them over several
    lines and exiting 1: ``friendly_errors`` folds them onto one line with exit 2, and a bug in a job shows its
    whole traceback, as bugs should. A sweep's worker processes inherit it."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def config_dirs(argv: list[str]) -> list[Path]:
    """The shipped config folder, a checkout's studies and any folder a user adds with ``--config-dir``/``-cd``."""
    dirs = [conf_dir(), *filter(None, [studies_dir()])]
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

    for folder in config_dirs(argv):
        for path in folder.rglob("*.yaml"):
            try:
                node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix that file"
                ) from None
            check_no_secrets(node, str(path))
