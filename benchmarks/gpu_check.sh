#!/usr/bin/env bash
# The GPU checks, as one script for the device tool (an H100 here). Needs the carried folder .devcarry/ with
# data/{msmarco-dl19-passage,scifact}, minilm-fp16/ (the all-MiniLM-L6-v2 body in fp16: the carry limit is 64 MiB),
# ce-random/ (config and tokenizer of the MiniLM-L6-H384 cross-encoder) and whl/ (datasets, dill, multiprocess,
# bm25s, PyStemmer for Python 3.12): benchmarks/make_devcarry.sh builds it. Writes into $OUT: perf_gpu.md (the
# engine as it runs by default, against CrossEncoder.predict, and the bi-encoder), perf_gpu_padded.md (padded
# batches through the model's own forward, for comparison), perf_gpu_compile.md (torch.compile), pipeline_gpu.md
# (benchmarks/pipeline_timing.py: where the end-to-end time goes), mixed_company_gpu.md (batch invariance on the
# GPU), batching_gpu.md (the batching policies' rates) and the log of any step that failed.
# QUICK=1 stops after batching_gpu.md; FINETUNE=1 also runs the fine-tuning check. DEVICE=cpu PAIRS=200 PY=.venv/bin/python rehearses it here.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RERANK_EVAL_NO_PROGRESS=1 RERANK_EVAL_DATA=$PWD/.devcarry/data
PY=${PY:-python3}
$PY -c "import bm25s, datasets" 2>/dev/null \
  || $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, transformers, sentence_transformers as st
print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', st.__version__)"
# a random-weight cross-encoder of the ms-marco-MiniLM-L-6-v2 architecture (speed does not depend on weights)
$PY -c "
import torch; from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
torch.manual_seed(0); m = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained('.devcarry/ce-random'))
m.save_pretrained('/tmp/ce-random'); AutoTokenizer.from_pretrained('.devcarry/ce-random').save_pretrained('/tmp/ce-random')"
DOCS=${DOCS:-${PAIRS:+200}} QUERIES=${QUERIES:-${PAIRS:+2}}  # a CPU rehearsal (PAIRS set) runs small sets throughout
P="$PY benchmarks/perf.py --device ${DEVICE:-cuda} --model /tmp/ce-random ${PAIRS:+--pairs $PAIRS}"
step() {  # name, time limit, perf arguments... (the log is kept only when the step fails)
  local name=$1 limit=$2
  shift 2
  if timeout "$limit" $P "$@" --out "$OUT/$name.md" >"/tmp/$name.log" 2>&1; then rm -f "$OUT/$name.json"
  else echo "$name: exit $?"; cp "/tmp/$name.log" "$OUT/"; fi
  grep -E "^\| (cross|bi|fp32|bf16)|Error" "/tmp/$name.log"
}
step perf_gpu 240 --sections cross_encoder,bi_encoder --docs "${DOCS:-5183}" --bi-model .devcarry/minilm-fp16
# batch invariance on this device (every pair alone and in mixed company, bitwise), then the batching policies'
# rates at job level (one query's candidates a call): the default against the throughput mode and one pair a forward
timeout 120 $PY benchmarks/mixed_company.py --model /tmp/ce-random --device "${DEVICE:-cuda}" \
  --pairs "${PAIRS:-4300}" | tee "$OUT/mixed_company_gpu.md"
step batching_gpu 200 --sections batching --queries "${QUERIES:-43}" --no-baseline
[ "${QUICK:-0}" = 1 ] && exit 0
timeout 150 $PY benchmarks/pipeline_timing.py --model /tmp/ce-random --device "${DEVICE:-cuda}" \
  ${PAIRS:+--pairs $PAIRS} --out "$OUT/pipeline_gpu.md" 2>&1 | grep -E "^\||Error|Default"
step perf_gpu_padded 120 --sections cross_encoder --no-baseline --no-packed
step perf_gpu_compile 200 --sections cross_encoder --no-baseline --compile
if [ "${FINETUNE:-0}" = 1 ]; then
  timeout 420 $PY benchmarks/finetune_and_score.py --out "$OUT" --init-model .devcarry/minilm-fp16 2>&1 | tail -25
fi
