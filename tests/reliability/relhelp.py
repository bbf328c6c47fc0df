"""Helpers of the reliability suite: the CLI run in this process (cheap) or as a child process (killable), a
scan for secrets, and the figures the suite reports in results/reliability.md."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from conftest import CE_MODEL, DL19_CE, ROOT, TINY  # noqa: F401 - re-exported for the suite

FIGURES: dict[str, object] = {}  # section -> figures; written to results/reliability.md by `make reliability`


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def store_env(base: Path) -> dict[str, str]:
    """Environment of an isolated run: its own score cache and MLflow store under ``base``."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlruns.db'}",
        "RERANK_EVAL_CACHE": str(base / "cache"),
        "RERANK_EVAL_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_cli(argv: list[str], out: Path, monkeypatch, env: dict[str, str] | None = None) -> Outcome:
    """``python -m rerank_eval <argv>`` inside this process: the same code path without seconds of imports.
    Returns the exit status (0 when the job returned; 1 with the traceback printed when an exception escapes,
    as the interpreter does) and what it printed."""
    from rerank_eval import cli

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(
        sys, "argv", ["rerank_eval", *argv, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}-multi"]
    )
    o, e = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            cli.main()
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else 1
        except Exception:  # what the interpreter does with an exception that escapes: traceback, exit 1
            traceback.print_exc()
            code = 1
    return Outcome(code, o.getvalue(), e.getvalue())


def spawn(argv: list[str], env: dict[str, str], module: str = "rerank_eval") -> subprocess.Popen:
    """The CLI as a child process in its own process group (so a SIGKILL takes its workers too)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def secret_hits(roots: list[Path], secrets: list[str]) -> tuple[int, int, list[str]]:
    """Scan every file under ``roots`` for each secret (as bytes). Returns (files scanned, bytes scanned,
    ``path: secret`` for each hit)."""
    files = nbytes = 0
    hits = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if not p.is_file():
                continue
            data = p.read_bytes()
            files, nbytes = files + 1, nbytes + len(data)
            hits += [f"{p}: {s[:6]}..." for s in secrets if s.encode() in data]
    return files, nbytes, hits


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def render_report(fig: dict, failed: bool = False) -> str:
    """results/reliability.md from the figures the suite's tests recorded."""
    import datetime
    import platform
    from collections import Counter

    md = [
        "# Reliability and security figures",
        "",
        f"Written by `make reliability` (every test in tests/reliability, slow ones included) on "
        f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores."
        + (" **Some tests failed: these figures are incomplete.**" if failed else " Every test passed."),
        "",
    ]
    kills = fig.get("kills", {})
    if kills:
        total = sum(len(k["points"]) for k in kills.values())
        md += [
            "## 1. Crash anywhere, lose nothing",
            "",
            f"{total} SIGKILLs at seeded random moments (uniform between 0.5 s and the uninterrupted run's wall "
            "time), each into a fresh store and cache, then a rerun of the same command. After every kill: the "
            "score cache passes `PRAGMA integrity_check`, every result file present is whole, every MLflow run "
            "marked FINISHED holds its files. After every rerun: run files, metrics and p-values identical to "
            "the uninterrupted run; nothing the cache held was scored again (cached + rescored = all pairs); one "
            "finished MLflow run per job. A kill loses at most the scoring call in flight (one query's "
            "candidates): scores are committed to the cache after each call.",
            "",
        ]
        for name, k in kills.items():
            phases = Counter(p["phase"] for p in k["points"])
            md += [
                f"**{name}** (seed {k['seed']}; uninterrupted: {k['wall_s']} s, {k['total_pairs']} pairs): "
                + ", ".join(f"{n} {ph}" for ph, n in phases.items()),
                "",
            ]
            md += _table(
                [
                    "kill at (s)",
                    "phase",
                    "pairs cached at kill",
                    "pairs scored by the rerun",
                    "jobs reused",
                    "stale MLflow run closed",
                    "identical",
                ],
                [
                    [
                        p["delay_s"],
                        p["phase"],
                        p["cached_at_kill"],
                        int(p["rescored"]),
                        p["jobs_reused"],
                        "yes" if p["stale_run_closed"] else "-",
                        "yes",
                    ]
                    for p in k["points"]
                ],
            )
    if "api_faults" in fig or "api_down" in fig:
        md += ["## 2. API faults", ""]
        if "api_faults" in fig:
            md += [
                "A full DL19 run (43 queries, BM25 top 10) against the loopback servers, 30% of requests "
                "failing (at most two in a row), compared with a fault-free run:",
                "",
            ]
            md += _table(
                [
                    "reranker",
                    "queries",
                    "requests",
                    "answered",
                    "faults injected and survived",
                    "nDCG@10",
                    "same results",
                ],
                [
                    [
                        n,
                        int(f["queries"]),
                        f["requests"],
                        int(f["answered"]),
                        ", ".join(f"{k}: {v}" for k, v in f["faults"].items())
                        + f" ({sum(f['faults'].values())})",
                        f["ndcg@10"],
                        "yes" if f["identical"] else "NO",
                    ]
                    for n, f in fig["api_faults"].items()
                ],
            )
        if "api_down" in fig:
            md += ["An API that goes down after five queries, `max_retries=2`:", ""]
            md += _table(
                ["reranker", "requests to the dead API", "kept", "what the user sees (exit 2)"],
                [
                    [n, f["requests_after_outage"], f["kept"], f"`{f['message']}`"]
                    for n, f in fig["api_down"].items()
                ],
            )
    if "bad_inputs" in fig:
        cat = fig["bad_inputs"]
        md += [
            "## 3. Bad input catalogue",
            "",
            f"{len(cat)} kinds, each through the CLI: {sum(c['code'] == 2 for c in cat)} answered with one line "
            f"and exit 2, {sum(c['code'] == 0 for c in cat)} legitimate-but-odd inputs accepted with a documented "
            "behaviour (exit 0), no traceback in any. A bug (an exception that is not an input mistake) still "
            "shows its traceback and exits 1.",
            "",
        ]
        md += _table(["input", "exit", "answer"], [[c["kind"], c["code"], f"`{c['answer']}`"] for c in cat])
    if "secrets" in fig:
        s = fig["secrets"]
        md += [
            "## 4. Secrets",
            "",
            f"With COHERE_API_KEY and ANTHROPIC_API_KEY set, jobs with every reranker ({', '.join(s['rerankers'])}), "
            f"a two-job sweep and the report; then every file under the test's folder (MLflow store and "
            f"artifacts, {s['hydra_folders']} `.hydra/` folders, {s['logs']} job logs, outputs, caches, the "
            f"report) and all printed output scanned for both keys: {s['files_scanned']} files, "
            f"{s['bytes_scanned']:,} bytes. **Hits: {s['hits_in_files']} in files, {s['hits_in_output']} in "
            "output.** Keys on the command line or in a config file are refused before anything is written "
            "(catalogue above).",
            "",
        ]
    if "injection" in fig:
        md += [
            "## 5. Prompt injection",
            "",
            "20 DL19 queries, BM25 top 20; the 20th candidate gets an instruction appended. Mean rank of that "
            "document after the LLM reranker (1 = top), against the emulator in honest mode (ranks by term "
            "overlap, ignores instructions) and adversarial mode (obeys any passage that says to rank it first). "
            "The prompt fences passages (`<passage id=..>`, with `</passage>` inside a passage escaped) and the "
            "system prompt says passages are data; no run crashed, every list came back complete.",
            "",
        ]
        rows = []
        for mode, attacks in fig["injection"].items():
            for attack, f in attacks.items():
                rows.append(
                    [
                        mode,
                        attack,
                        f["first_stage_rank"],
                        f["no_attack_mean_rank"],
                        f["honest_mean_rank"],
                        f["obedient_mean_rank"],
                        f"{f['obedient_top1']}/{f['queries']}",
                        f["crashes"],
                    ]
                )
        md += _table(
            [
                "mode",
                "attack",
                "first stage",
                "no attack (honest)",
                "honest model",
                "obedient model",
                "obedient: moved to 1st",
                "crashes",
            ],
            rows,
        )
        md += [
            "Fencing keeps a passage from posing as another passage or as the answer; it cannot stop a model "
            "that chooses to obey: the defence against that is the model's own training, which only a real "
            "API run can measure.",
            "",
        ]
    if "load" in fig:
        f = fig["load"]
        md += [
            "## 6. Load",
            "",
            f"{f['jobs']} jobs (`candidates=5,10,15,20 top_k=1,2,3,5`, cross-encoder on DL19) through "
            f"`hydra/launcher=parallel` with {f['workers']} worker processes, one score cache, one MLflow store: "
            f"{f['wall_s']} s; {f['mlflow_runs']} MLflow runs (1 parent + 16 children, all FINISHED), "
            f"{f['duplicate_runs']} duplicates; cache integrity `{f['cache_integrity']}`, {f['cache_rows']} rows "
            f"= the deepest job's 43 x 20 pairs, each once ({f['pairs_scored_by_jobs']} pairs scored by the jobs: "
            "workers racing on one pair score it twice and keep one row).",
            "",
        ]
    return "\n".join(md)
