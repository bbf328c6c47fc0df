"""`make screenshot`: the MLflow UI as users compare runs. Runs a small depth sweep into a temporary store, starts
a real `mlflow server` on loopback, opens the compare view of the sweep's child runs in headless Chromium (driven
by Playwright), closes MLflow's assistant panel, plots candidates against nDCG@10 and the reranker's p50 latency,
and saves results/mlflow_compare.png. `--dom` prints the rendered page instead (used by a slow test).

Needs Debian's `chromium` package (apt-get install chromium; `make chromium` installs it) and the `playwright`
package (the [dev] extra; it drives the system Chromium, nothing is downloaded).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
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


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("mlflow_screenshot: Chromium is not installed; apt-get install chromium (or make chromium)")
    return exe


def compare_view(url: str, metrics: list[str], out: Path | None) -> str:
    """Open the compare view, close the assistant panel, chart ``metrics`` against the swept parameter; save a
    screenshot to ``out`` and return the rendered page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.get_by_text("Comparing").first.wait_for(timeout=120_000)
        page.wait_for_timeout(2000)
        close = page.get_by_role("button", name="Close", exact=True)
        if close.count():
            close.first.click()
        box = page.get_by_role("combobox").nth(1)  # the parallel-coordinates plot's metrics
        for _ in range(4):
            box.press("Backspace")
        for m in metrics:
            box.fill(m)
            page.wait_for_timeout(300)
            box.press("Enter")
        page.keyboard.press("Escape")
        page.mouse.click(1200, 60)
        page.wait_for_timeout(1500)
        if out is not None:
            page.screenshot(path=str(out))
        html = page.content()
        browser.close()
    return html


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "results" / "mlflow_compare.png"))
    ap.add_argument(
        "--dom", action="store_true", help="print the rendered page instead of saving a screenshot"
    )
    ap.add_argument("--reranker", default="bi_encoder", help="the sweep's reranker (none is quickest)")
    args = ap.parse_args()
    chromium()
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
                f"hydra.sweep.dir={tmp / 's'}",
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
        latency = "reranker_ms_p50" if args.reranker != "none" else "first_stage_ms_p50"
        from rerank_eval.tracking import local_server

        with local_server(store) as base:
            runs = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
            url = f"{base}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}"
            out = None if args.dom else Path(args.out)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
            html = compare_view(url, ["ndcg_at_10", latency], out)
        if args.dom:
            print(html)
            print("RUN NAMES:", json.dumps([r.info.run_name for r in children]))
        else:
            print(f"screenshot of {len(children)} runs' compare view (candidates, nDCG@10, {latency}): {out}")


if __name__ == "__main__":
    main()
