"""``make bench``: the standard offline study. Every job is a normal job (same code path as the CLI), logged as a
child of one MLflow parent run; the study's table and plot go to ``results/`` and to the parent run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from .cli import CONF_DIR, friendly_errors, run_from_config
from .errors import ConfigError
from .evaluation import metric_key
from .files import write_atomic
from .report import (
    best_per_metric,
    comparison_frame,
    markdown_table,
    plot_bars,
    records_from_dirs,
    write_report,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("rerank_eval")


def plan(
    bench_cfg: dict, environ: dict | None = None
) -> tuple[list[tuple[str, str, str, list[str]]], list[str]]:
    """The study's jobs as (dataset, first stage, reranker, overrides), and the API rerankers skipped for want of
    their key."""
    environ = os.environ if environ is None else environ
    jobs, skipped = [], []
    api = bench_cfg.get("api_rerankers") or {}
    for study in bench_cfg["studies"]:
        rerankers = {}
        for rr in study["rerankers"]:
            if rr not in bench_cfg["rerankers"]:
                raise ConfigError(f"bench: unknown reranker {rr!r}; define it under rerankers:")
            rerankers[rr] = bench_cfg["rerankers"][rr]
        for rr in study.get("api_rerankers") or []:
            if rr not in api:
                raise ConfigError(f"bench: unknown API reranker {rr!r}; define it under api_rerankers:")
            if environ.get(api[rr]["env"]):
                rerankers[rr] = api[rr]["overrides"]
            elif f"{rr} ({api[rr]['env']})" not in skipped:
                skipped.append(f"{rr} ({api[rr]['env']})")
        for stage, stage_over in study["first_stages"].items():
            for rr, rr_over in rerankers.items():
                over = [f"dataset={study['dataset']}", *stage_over, *rr_over, *bench_cfg["common"]]
                jobs.append((study["dataset"], stage, rr, over))
    return jobs, skipped


def load_bench_config(path: Path) -> dict:
    """The study definition, resolved (the cross-encoder path is relative to the working directory)."""
    from omegaconf import OmegaConf

    if not path.is_file():
        raise ConfigError(f"bench: no study definition at {path}; pass --config <file>")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from .tracking import Tracker

    ap = argparse.ArgumentParser(prog="python -m rerank_eval.bench", description=__doc__)
    ap.add_argument("--config", default=str(Path(CONF_DIR) / "bench.yaml"), help="the study definition")
    ap.add_argument("--results", default=str(PROJECT_ROOT / "results"), help="where bench.md/png go")
    ap.add_argument("--only", default=None, help="run only the jobs whose dataset matches this name")
    ap.add_argument("overrides", nargs="*", help="extra overrides for every job (e.g. mlflow.experiment=x)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bm25s", "sentence_transformers", "transformers", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    cfg = load_bench_config(Path(args.config))
    if not Path(cfg["cross_encoder"]).is_dir():
        raise ConfigError(
            f"bench: cross-encoder folder {cfg['cross_encoder']} does not exist; set "
            "RERANK_EVAL_CE_MODEL to a trained model (python -m rerank_eval.train writes one)"
        )
    jobs, skipped = plan(cfg)
    jobs = [j for j in jobs if args.only in (None, j[0])]
    if skipped:
        print(f"bench: skipped the API rerankers {', '.join(skipped)}: set those variables to include them")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_root = PROJECT_ROOT / "outputs" / "bench" / stamp
    tracker = Tracker(cfg["experiment"])
    parent = tracker.start_run(f"bench-{stamp}", {"study": "bench", "parent": "true"})
    dirs: list[Path] = []
    t0 = time.perf_counter()
    ok = False
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            for i, (ds, stage, rr, over) in enumerate(jobs, 1):
                print(f"[{i}/{len(jobs)}] {ds} / {stage} / {rr}", flush=True)
                job_cfg = compose(
                    "config", overrides=[*over, f"mlflow.experiment={cfg['experiment']}", *args.overrides]
                )
                dirs.append(out_root / f"{i:02d}-{ds}-{stage}-{rr}")
                res = run_from_config(job_cfg, dirs[-1], tracker=tracker, parent_run_id=parent)
                print(
                    f"    ndcg@10={res.metrics['ndcg@10']:.4f} (first stage {res.first_stage['ndcg@10']:.4f}); "
                    f"{res.counts['pairs_scored']:.0f} pairs scored, {res.counts['pairs_cached']:.0f} from cache; "
                    f"{res.counts['wall_s']:.0f}s",
                    flush=True,
                )
        elapsed = time.perf_counter() - t0
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        records = records_from_dirs(dirs)
        for r, d, (_, stage, rr, _) in zip(records, dirs, jobs, strict=True):  # the study's own labels
            dtype = json.loads((d / "metrics.json").read_text())["origin"].get("reranker.dtype")
            r.first_stage_name, r.reranker = stage, f"{rr} ({dtype})" if dtype else rr
        frame = comparison_frame(records)
        scored = int(
            sum(json.loads((d / "metrics.json").read_text())["counts"]["pairs_scored"] for d in dirs)
        )
        md = [
            "# rerank-eval bench",
            "",
            f"Command: `make bench`: {len(jobs)} jobs at candidate depth 100, {elapsed / 60:.1f} min wall on this "
            f"machine ({scored:,} query-document pairs scored; the rest came from the score cache). Cross-encoder: "
            f"`{Path(cfg['cross_encoder']).name}`, max length 256; models in the dtype the reranker column names, "
            "one pair a forward (scores independent of batching). Significance: paired t-test of nDCG@10 against "
            "each job's own first stage, Holm-adjusted across the distinct comparisons; † marks p < 0.05. "
            "Reranker ms/query: measured on the job's own fresh calls, or on a fresh probe sample of 10 queries "
            "(ᵖ) where its scores came from the cache. MLflow parent "
            f"run `{parent}` in experiment `{cfg['experiment']}`.",
            "",
            markdown_table(frame),
        ]
        write_atomic(results / "bench.md", "\n".join(md))
        write_atomic(results / "bench.csv", frame.to_csv(index=False))
        plot_bars(frame, "ndcg@10", results / "bench.png", "nDCG@10 by pipeline (rerank depth 100)")
        report = write_report(  # every section: headroom, judgements, ties, truncation, cost
            records,
            results / "bench-report",
            "rerank-eval bench: the full report",
            intro=f"`make bench`, MLflow parent run `{parent}`; the same as `make report` writes from MLflow.",
        )
        best = best_per_metric(records, ["ndcg@10", "mrr@10", "recall@100"])
        tracker.log(
            parent,
            metrics={
                "wall_s": elapsed,
                "jobs": len(jobs),
                "pairs_scored": scored,
                **{f"best_{metric_key(m)}": v for m, (_, v) in best.items()},
            },
            tags={f"best_{metric_key(m)}": name for m, (name, _) in best.items()},
            artifacts=[results / "bench.md", results / "bench.csv", results / "bench.png", *report],
            params={"jobs": json.dumps([j[3] for j in jobs])[:6000]},
        )
        ok = True
        print(
            f"bench: {len(jobs)} jobs in {elapsed / 60:.1f} min; wrote {results / 'bench.md'}, "
            f"{results / 'bench.png'} and {results / 'bench-report'}"
        )
    finally:
        tracker.finish(parent, ok=ok)


if __name__ == "__main__":
    main()
