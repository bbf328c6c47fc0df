"""``hydra/sweeper=study``: Hydra's basic grid sweep, crossed with a study's *axes*.

A study (``conf/experiment/<name>.yaml``) names its pipelines in one file: each axis lists entries, each entry the
overrides it stands for; every combination of one entry per axis, crossed with the ``params`` grid and the command
line's sweeps (``choice``, ``range``, ``glob``, comma lists, as the basic sweeper reads them), is one job::

    hydra:
      sweeper:
        axes:
          pipeline:
            scifact-bm25: [dataset=scifact, retriever=bm25]
            dl19-bm25: [dataset=msmarco-dl19, retriever=run, retriever.name=bm25]
          reranker:
            none: [reranker=none]
            cohere: {needs: COHERE_API_KEY, overrides: [reranker=cohere]}
        params:
          candidates: 10,20,50,100

An entry with ``needs`` joins only when that environment variable is set; each one skipped gets one line, saying
what to set and, from its ``why``, what the variable names (``{needs: VAR, why: ..., overrides: [...]}``).
Every job's config is composed and checked before the first one runs.
"""

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf reads these in a structured config)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("rerank_eval")


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.rerank_eval_study.study_sweeper.StudySweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045
    axes: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(
    group="hydra/sweeper", name="study", node=StudySweeperConf, provider="rerank_eval"
)


def axis_entries(axes: Any, environ: dict | None = None) -> tuple[list[list[list[str]]], list[str]]:
    """Per axis the override lists of its entries that can run, and one line per entry skipped (``name: set VAR
    (why)``)."""
    environ = os.environ if environ is None else environ
    plain = OmegaConf.to_container(axes, resolve=True) if isinstance(axes, DictConfig | ListConfig) else axes
    lists, skipped = [], []
    for axis, entries in (plain or {}).items():
        if not isinstance(entries, dict) or not entries:
            raise HydraException(f"study axis {axis!r} must map entry names to their overrides")
        kept = []
        for name, entry in entries.items():
            spec = entry if isinstance(entry, dict) else {"overrides": entry}
            overrides = spec.get("overrides")
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise HydraException(f"study entry {axis}.{name} must be a list of overrides")
            if spec.get("needs") and not environ.get(spec["needs"]):
                why = f" ({spec['why']})" if spec.get("why") else ""
                skipped.append(f"{name}: set {spec['needs']}{why}")
                continue
            kept.append(overrides)
        lists.append(kept)
    return lists, skipped


class StudySweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None, axes: Any = None):  # noqa: UP045
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.axes = axes or {}
        self.config = None
        self.hydra_context = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def grid(self, arguments: Sequence[str]) -> list[list[str]]:
        """The basic sweeper's grid: the params, then the command line (which wins), each sweep expanded."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        lists: dict[str, list[str]] = {}
        for o in overrides:
            key = o.get_key_element()
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise HydraException(
                        f"the study sweeper takes discrete sweeps only, not {key}={o.input_line}"
                    )
                lists[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:
                lists[key] = [f"{key}={o.get_value_element_as_str()}"]
        return [list(x) for x in itertools.product(*lists.values())]

    def check_jobs(self, jobs: list[list[str]]) -> None:
        """Compose every job's config and check its values (rerank_eval.config.check_config) before the first
        job runs: one bad value stops the sweep before any work, naming that job's overrides."""
        from rerank_eval.config import check_config
        from rerank_eval.errors import ConfigError, RerankEvalError

        self.validate_batch_is_legal(jobs)  # unknown keys and choices, as Hydra's sweepers check them
        for i, overrides in enumerate(jobs):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            try:
                check_config(cfg)
            except RerankEvalError as e:
                raise ConfigError(f"sweep job #{i} ({' '.join(overrides)}): {e}; nothing was run") from None

    def sweep(self, arguments: list[str]) -> Any:
        axes, skipped = axis_entries(self.axes)
        for line in skipped:
            print(f"study: skipped {line}", flush=True)
        grid = self.grid(arguments)
        jobs = [
            [o for part in combo for o in part] + point
            for combo in itertools.product(*axes)
            for point in grid
        ]
        self.check_jobs(jobs)
        size = self.max_batch_size or len(jobs) or 1
        returns, start = [], 0
        for i in range(0, len(jobs), size):
            batch = jobs[i : i + size]
            self.validate_batch_is_legal(batch)
            returns.append(self.launcher.launch(batch, initial_job_idx=start))
            start += len(batch)
        return returns
