"""Errors a user can act on. Each message says what was expected, what was found, and the fix."""


class RerankEvalError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(RerankEvalError):
    """A configuration value is missing, unknown or out of range."""


class DataError(RerankEvalError):
    """A dataset, run file or corpus is missing or malformed."""


class BackendUnavailableError(RerankEvalError):
    """An optional package, model or API key is missing."""


def check_whole(name: str, value, least: int) -> None:
    """Raises ConfigError unless ``value`` is a whole number (not a bool) of at least ``least``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"{name} must be a whole number >= {least}, got {value!r}")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a misspelt ``word``, else an empty string."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class OutputError(RerankEvalError):
    """A result file or store cannot be written (a full disk, a read-only folder, an unreachable server)."""
