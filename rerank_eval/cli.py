"""``rerank-eval``: Hydra composes the config, plain functions do the work.

Input mistakes (``RerankEvalError``, a missing mandatory config value) print one line and exit with status 2;
anything else is a bug and keeps its traceback (``console``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import CONF_MODULE
from .console import check_no_secret_inputs, friendly_errors, full_errors, quiet_terminal
from .errors import RerankEvalError

log = logging.getLogger("rerank_eval")


def run_from_config(
    cfg: Any, output_dir: str | Path, tracker=None, parent_run_id: str | None = None, share=None
):
    """Build the job a composed config describes and run it (``job.run_job``); ``share``: the sweep's
    ``CandidateShare``."""
    import yaml

    from .cache import ScoreCache
    from .config import check_config, flatten, spec_from_config
    from .files import write_atomic
    from .job import run_job
    from .paths import cache_root
    from .sweep import PARENT_ENV
    from .tracking import tracker_for

    plain = check_config(cfg)
    spec = spec_from_config(cfg)
    cache_cfg = plain.get("cache") or {}
    cache = ScoreCache(
        cache_cfg.get("path") or cache_root() / "scores.sqlite", cache_cfg.get("enabled", True)
    )
    if tracker is None and plain.get("mlflow", {}).get("enabled", True):
        tracker = tracker_for(plain["mlflow"].get("experiment", "rerank-eval"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(plain, sort_keys=False))
    with job_threads(plain.get("threads")):
        try:
            return run_job(
                spec,
                out,
                cache=cache,
                tracker=tracker,
                share=share,
                params=flatten(plain),
                parent_run_id=parent_run_id or os.environ.get(PARENT_ENV),
            )
        finally:
            cache.close()


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def job_threads(threads: int | str | None):
    """Run the job's torch, OpenMP and MKL work on this many threads (None: leave the defaults; ``auto``: the cores
    other processes leave idle, ``threads.resolve_threads``), and give the process its own settings back after it.
    Torch reads the variables when it loads; a sweep's later jobs find it loaded and are set directly."""
    from .threads import resolve_threads

    threads = resolve_threads(threads)
    if threads is None:
        yield
        return
    env = {var: os.environ.get(var) for var in THREAD_VARS}
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    os.environ.update(dict.fromkeys(THREAD_VARS, str(threads)))
    if torch:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if before is not None:
            torch.set_num_threads(before)


UNSTARTED = {".hydra", "config.yaml"}  # what a job folder holds before its job computes anything (and logs)


def discard_unstarted(folder: Path) -> None:
    """Remove the folder of a job refused before it computed anything (Hydra's .hydra/, the log, the config),
    and its date folder when that is left empty; a folder holding anything else is kept."""
    import shutil

    if not folder.is_dir() or any(p.name not in UNSTARTED and p.suffix != ".log" for p in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty: a sweep's folder keeps multirun.yaml and its jobs
        folder.parent.rmdir()


def _setup_logging() -> None:
    for name in ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "alembic", "bm25s"):
        logging.getLogger(name).setLevel(logging.WARNING)


@friendly_errors
def main() -> None:
    """``rerank-eval [overrides]`` (or ``python -m rerank_eval``): one job, or a sweep with ``-m``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import OmegaConfBaseException

    from .job import CandidateShare

    _setup_logging()
    full_errors()
    check_no_secret_inputs(sys.argv[1:])
    share = CandidateShare()  # the jobs of a sweep run in this process: top_k siblings rank once

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}", config_name="config")
    @friendly_errors
    def _job(cfg) -> float:
        quiet_terminal()
        out = Path(HydraConfig.get().runtime.output_dir)
        try:
            res = run_from_config(cfg, out, share=share)
        except (RerankEvalError, OmegaConfBaseException):  # refused (a missing value is found on first read)
            discard_unstarted(out)
            raise
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
