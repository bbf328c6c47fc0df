# rerank-eval. `make` alone prints this help.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
BM25_SIZES ?= scifact=50000,250000,1000000;msmarco=50000,250000,1000000,4000000
DENSE_SIZES ?= scifact=10000,50000
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help venv bench test test-all chromium reliability lint perf scale sweep-cost report screenshot ui clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,cohere,anthropic,openai,voyage,mixedbread,submitit,faiss]"
	touch $@

venv: $(VENV)/.installed  ## create .venv and install the project (CPU torch by default: TORCH_SPEC=torch for CUDA)

bench: venv  ## the standard offline study (conf/experiment/bench.yaml): MLflow runs, results/bench.md, .png, bench-report/
	$(VENV)/bin/rerank-eval -m +experiment=bench

test: venv  ## the test suite (slow checks excluded)
	$(PY) -m pytest -q

test-all: venv chromium  ## every test, slow ones included (the browser tests need Debian's chromium)
	$(PY) -m pytest -q -m ""

chromium:  ## Debian's chromium for the browser tests and make screenshot (installed when missing, as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium >/dev/null; } || \
	  { echo "the browser tests need Debian's chromium: run 'sudo apt-get install chromium', then make test-all"; exit 1; }

reliability: venv  ## the reliability suite, slow parts and all 25 kill points (~15 min): results/reliability.md
	RELIABILITY_REPORT=results/reliability.md $(PY) -m pytest -q -m "" tests/reliability

lint: venv  ## ruff
	$(VENV)/bin/ruff check rerank_eval hydra_plugins tests

perf: venv  ## throughput benchmark: results/perf.md
	$(PY) -m rerank_eval.perf

scale: venv  ## BM25 (50k-4M documents) and dense jobs on synthetic corpora, cold, warm, reranked: results/scale.md
	$(PY) benchmarks/scale.py --bm25 '$(BM25_SIZES)' --dense '$(DENSE_SIZES)'

sweep-cost: venv  ## a 16-job depth sweep against one job: results/sweep_cost.md
	$(PY) benchmarks/sweep_cost.py

report: venv  ## the full comparison report of the latest bench, from MLflow: results/bench-report/
	$(VENV)/bin/rerank-eval-report --experiment bench --latest-parent --out results/bench-report

screenshot: venv chromium  ## the MLflow UI's compare view of a depth sweep, in headless Chromium: results/mlflow_compare.png
	$(PY) scripts/mlflow_screenshot.py

ui: venv  ## the MLflow UI on the project's store (http://127.0.0.1:5000)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000

clean:  ## remove outputs and caches (keeps .venv and the MLflow store)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
