"""``rerank-eval-shard``: a large collection's first stage split into shards, each a job of a Hydra multirun
(the joblib launcher locally, submitit on a cluster), whose outputs take the forms a job reads:

- ``stage=encode``: shard i of n encodes every n-th chunk of the dense corpus into ``.cache/dense/``; the next
  job on the corpus finds every chunk saved and only joins them.
- ``stage=retrieve``: shard i of n retrieves every n-th query, ``candidates`` deep, into
  ``<out>/<dataset>.<retriever>.<hash>.<i>-of-<n>.trec`` (the first stage's own scores; ``run_name``).
- ``stage=merge``: once every shard's file is there, ``<out>/<dataset>.<retriever>.<hash>.trec``: the run one
  pass would write,
  for ``retriever=run retriever.path=...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError, DataError, check_whole
from .files import atomic_writer


def run_name(dataset, retriever, candidates: int) -> str:
    """``<dataset>.<retriever>.<hash>``: the hash covers the dataset's content, the retriever's identity, the depth
    and the code, so a shard written under other settings or code is never merged into this run."""
    import hashlib

    from .provenance import code_version

    key = f"{dataset.fingerprint}|{retriever.identity(dataset)}|{candidates}|{code_version()}"
    return (
        f"{dataset.name.replace('/', '_')}.{retriever.name}.{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    )


def shard_file(out: Path, name: str, shard: int, shards: int) -> Path:
    return out / f"{name}.{shard}-of-{shards}.trec"


def run_shard(
    dataset, retriever, stage: str, shard: int, shards: int, candidates: int, out: Path
) -> Path | int:
    """One shard's work (see the module docstring); returns the file written, or the chunks encoded."""
    check_whole("shards", shards, 1)
    check_whole("candidates", candidates, 1)
    if stage != "merge" and (not isinstance(shard, int) or not 0 <= shard < shards):
        raise ConfigError(f"shard must be a whole number in [0, {shards}), got {shard!r}")
    if stage == "encode":
        if not hasattr(retriever, "encode_shard"):
            raise ConfigError(
                f"{retriever.name} builds its index in one process (it has no encoding to shard); shard its "
                "queries with stage=retrieve"
            )
        return retriever.encode_shard(dataset, shard, shards)
    if stage == "retrieve":
        queries = dataset.queries()[shard::shards]
        retriever.index(dataset)
        path = shard_file(out, run_name(dataset, retriever, candidates), shard, shards)
        out.mkdir(parents=True, exist_ok=True)
        from .job import write_trec

        ranking = retriever.retrieve(queries, candidates) if queries else {}
        write_trec(ranking, path, retriever.name, raw_scores=True)
        return path
    if stage == "merge":
        name = run_name(dataset, retriever, candidates)
        files = [shard_file(out, name, i, shards) for i in range(shards)]
        missing = [i for i, f in enumerate(files) if not f.is_file()]
        if missing:
            raise DataError(
                f"shards {missing} of {shards} have no run file {name}.*.trec in {out} for these settings and "
                f"this code; run them first (stage=retrieve shard={missing[0]} shards={shards})"
            )
        lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line]
        lines.sort(key=lambda line: (line.split()[0], int(line.split()[3])))
        merged = out / f"{name}.trec"
        with atomic_writer(merged) as f:
            f.writelines(line + "\n" for line in lines)
        return merged
    raise ConfigError(f"stage must be encode, retrieve or merge, got {stage!r}")


def main() -> None:
    """``rerank-eval-shard [overrides]`` (the config is conf/shard.yaml)."""
    import hydra

    from .console import CONF_MODULE, check_no_secret_inputs, friendly_errors, full_errors

    full_errors()

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}", config_name="shard")
    @friendly_errors
    def _shard(cfg) -> None:
        from .config import build, check_no_secrets

        check_no_secrets(cfg)
        got = run_shard(
            build(cfg.dataset, "dataset"),
            build(cfg.retriever, "retriever"),
            cfg.stage,
            cfg.shard,
            cfg.shards,
            cfg.candidates,
            Path(cfg.out),
        )
        if cfg.stage == "merge":
            print(f"{cfg.shards} shards merged: wrote {got}")
        else:
            done = f"{got} chunks saved" if isinstance(got, int) else f"wrote {got}"
            print(f"shard {cfg.shard} of {cfg.shards} ({cfg.stage}): {done}")

    friendly_errors(check_no_secret_inputs)(sys.argv[1:])
    _shard()


if __name__ == "__main__":
    main()
