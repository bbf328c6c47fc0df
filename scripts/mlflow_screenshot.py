"""`make screenshot`: the MLflow UI as users see it. Runs a small depth sweep into a temporary store, starts a
real `mlflow server` on loopback, opens the compare view of the sweep's child runs in headless Chromium and saves
results/mlflow_compare.png. `--dom` prints the page's rendered HTML instead (used by a slow test).

Needs Debian's `chromium` package (apt-get install chromium).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [
    "-m",
    "dataset=msmarco-dl19",
    "retriever=run",
    "retriever.name=bm25",
    "candidates=10,20,50,100",
    "top_k=10",
    "mlflow.experiment=depth-sweep",
    "progress=false",
]
BROWSER = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("mlflow_screenshot: Chromium is not installed; apt-get install chromium")
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "results" / "mlflow_compare.png"))
    ap.add_argument(
        "--dom", action="store_true", help="print the rendered page instead of taking a screenshot"
    )
    ap.add_argument("--reranker", default="bi_encoder", help="the sweep's reranker (none is quickest)")
    args = ap.parse_args()
    browser = chromium()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = f"sqlite:///{tmp / 'mlruns.db'}"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "RERANK_EVAL_NO_PROGRESS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rerank_eval",
                *SWEEP,
                f"reranker={args.reranker}",
                f"hydra.sweep.dir={tmp / 'sweep'}",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import mlflow

        client = mlflow.MlflowClient(store)
        exp = client.get_experiment_by_name("depth-sweep")
        children = [
            r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")
        ]
        from rerank_eval.tracking import local_server

        with local_server(store) as base:
            runs = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
            url = f"{base}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}"
            if args.dom:
                dom = subprocess.run(
                    [browser, *BROWSER, "--dump-dom", url], capture_output=True, text=True, timeout=180
                )
                print(dom.stdout)
                print("RUN NAMES:", json.dumps([r.info.run_name for r in children]))
                return
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [browser, *BROWSER, f"--screenshot={out}", url],
                check=True,
                capture_output=True,
                timeout=180,
                cwd=tmp,
            )
            print(f"screenshot of {len(children)} runs' compare view: {out}")


if __name__ == "__main__":
    main()
