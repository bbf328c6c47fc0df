"""The repository's own studies (``conf/experiment/`` at the top of a checkout) on Hydra's search path: found by
``rerank-eval -m +experiment=bench`` from any folder with an editable install; an installed wheel has none."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class RerankEvalStudiesPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from rerank_eval.config import CONF_MODULE, studies_dir

        ours = any(e.path == f"pkg://{CONF_MODULE}" for e in search_path.get_path())
        folder = studies_dir()
        if ours and folder is not None:  # another Hydra app in the same environment keeps its own path
            search_path.append(provider="rerank-eval-studies", path=f"file://{folder}")
