# rerank-eval. `make` alone prints this help.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements.lock
UV_SPEC ?= uv==0.13.9
LOCK_BEFORE ?= $(shell date -u -d "3 days ago" +%Y-%m-%dT00:00:00Z)
EXTRAS := dev,cohere,anthropic,openai,voyage,mixedbread,submitit,faiss
BM25_SIZES ?= scifact=50000,250000,1000000;msmarco=50000,250000,1000000,4000000
DENSE_SIZES ?= scifact=10000,50000
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help venv lock test-latest tokenizers-check bench test test-all chromium reliability lint perf scale sweep-cost report screenshot ui clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed  ## create .venv with exactly the versions in requirements.lock (CPU torch; docs/environment.md for CUDA)

lock:  ## refresh requirements.lock: the newest versions pyproject.toml's bounds allow, with hashes
	$(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install -q "$(UV_SPEC)"
	.venv-tools/bin/uv pip compile pyproject.toml --all-extras --override requirements-torch-cpu.txt \
	  --find-links /opt/wheels --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --exclude-newer $(LOCK_BEFORE) --no-header -o $(LOCK).tmp -q
	{ sed -n '1,/^# lock: /p' $(LOCK) | grep -v '^# lock: '; echo '# lock: releases uploaded before $(LOCK_BEFORE)'; echo; cat $(LOCK).tmp; } > $(LOCK).new && rm $(LOCK).tmp && mv $(LOCK).new $(LOCK)

.venv-latest/.installed: pyproject.toml
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q -r requirements-torch-cpu.txt
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	touch $@

test-latest: .venv-latest/.installed  ## the suite on the newest versions the bounds allow (.venv-latest), not the lock
	.venv-latest/bin/pip freeze --exclude-editable > .venv-latest/freeze.txt
	@diff <(grep -E '^[a-z0-9]' $(LOCK) | sed 's/ .*//') .venv-latest/freeze.txt | grep '^>' || echo "same versions as the lock"
	.venv-latest/bin/python -m pytest -q

bench: venv  ## the standard offline study (conf/experiment/bench.yaml): MLflow runs, results/bench.md, .png, bench-report/
	$(VENV)/bin/rerank-eval -m +experiment=bench

test: venv  ## the test suite (slow checks excluded)
	$(PY) -m pytest -q

test-all: venv chromium  ## every test, slow ones included (the browser tests need Debian's chromium)
	$(PY) -m pytest -q -m ""

chromium:  ## Debian's chromium for the browser tests and make screenshot (installed when missing, as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium >/dev/null; } || \
	  { echo "the browser tests need Debian's chromium: run 'sudo apt-get install chromium', then make test-all"; exit 1; }

TOKENIZERS_OLD ?= 0.23.1
tokenizers-check: venv  ## the engine equals CrossEncoder.predict on long pairs under the locked tokenizers and 0.23.1
	rm -rf .cache/tokenizers-$(TOKENIZERS_OLD)
	$(PY) -m pip install -q --no-deps --target .cache/tokenizers-$(TOKENIZERS_OLD) tokenizers==$(TOKENIZERS_OLD)
	$(PY) scripts/engine_equals_predict.py
	PYTHONPATH=.cache/tokenizers-$(TOKENIZERS_OLD) $(PY) scripts/engine_equals_predict.py

reliability: venv  ## the reliability suite, slow parts and all 25 kill points (~15 min): results/reliability.md
	RELIABILITY_REPORT=results/reliability.md $(PY) -m pytest -q -m "" tests/reliability

lint: venv  ## ruff
	$(VENV)/bin/ruff check rerank_eval hydra_plugins tests

perf: venv  ## throughput benchmark: results/perf.md
	$(PY) benchmarks/perf.py

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
