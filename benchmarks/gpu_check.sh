#!/usr/bin/env bash
# The GPU checks, as one script for the device tool (an H100 here). Needs the carried folder .devcarry/ with
# data/{msmarco-dl19-passage,scifact}, minilm-fp16/ (the all-MiniLM-L6-v2 body in fp16: the carry limit is 64 MiB),
# ce-random/ (config and tokenizer of the MiniLM-L6-H384 cross-encoder) and whl/ (datasets, dill, multiprocess,
# bm25s, PyStemmer for Python 3.12): benchmarks/make_devcarry.sh builds it. Writes into $OUT. FINETUNE=0 skips the
# fine-tuning run.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RERANK_EVAL_NO_PROGRESS=1 RERANK_EVAL_DATA=$PWD/.devcarry/data
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# a random-weight cross-encoder of the ms-marco-MiniLM-L-6-v2 architecture (speed does not depend on weights)
python3 -c "
import torch; from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
torch.manual_seed(0); m = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained('.devcarry/ce-random'))
m.save_pretrained('/tmp/ce-random'); AutoTokenizer.from_pretrained('.devcarry/ce-random').save_pretrained('/tmp/ce-random')"
P="python3 -m rerank_eval.perf --device cuda --model /tmp/ce-random"
$P --sections cross_encoder,bi_encoder --docs 5183 --bi-model .devcarry/minilm-fp16 --out "$OUT/perf_gpu.md" 2>&1 \
  | grep -E "^\| (cross|bi)"
$P --sections cross_encoder --no-baseline --compile --out "$OUT/perf_gpu_compile.md" 2>&1 | grep -E "^\| cross"
if [ "${FINETUNE:-1}" = 1 ]; then
  timeout 420 python3 benchmarks/finetune_and_score.py --out "$OUT" --init-model .devcarry/minilm-fp16 2>&1 | tail -25
fi
