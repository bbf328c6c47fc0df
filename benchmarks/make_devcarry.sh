#!/usr/bin/env bash
# Builds .devcarry/, what benchmarks/gpu_check.sh needs on a GPU machine that cannot reach a package index:
# the DL19 and SciFact data, the all-MiniLM-L6-v2 body in fp16 (the carry limit is 64 MiB), the config and
# tokenizer of the MiniLM-L6 cross-encoder (gpu_check.sh makes random weights there: speed does not depend on them),
# and Python 3.12 wheels of what that machine lacks. Run from the project root; .devcarry/ is git-ignored.
set -euo pipefail
S=${SHARED:-../shared}
D=.devcarry
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
mkdir -p $D/data/msmarco-dl19-passage/{runs,qrels} $D/data/scifact/qrels $D/whl
cp $S/data/msmarco-dl19-passage/{corpus.jsonl.gz,queries.jsonl} $D/data/msmarco-dl19-passage/
cp $S/data/msmarco-dl19-passage/runs/bm25.top100.trec $D/data/msmarco-dl19-passage/runs/
cp $S/data/msmarco-dl19-passage/qrels/test.tsv $D/data/msmarco-dl19-passage/qrels/
cp $S/data/scifact/{corpus.jsonl.gz,queries.jsonl} $D/data/scifact/
cp $S/data/scifact/qrels/*.tsv $D/data/scifact/qrels/
.venv/bin/python - "$S" <<'PY'
import json, sys
from pathlib import Path
from transformers import AutoModel, AutoTokenizer
from rerank_eval.scoring.models import resolve_model
src = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
AutoModel.from_pretrained(src).half().save_pretrained(".devcarry/minilm-fp16")
AutoTokenizer.from_pretrained(src).save_pretrained(".devcarry/minilm-fp16")
cfg = Path(".devcarry/minilm-fp16/config.json")
cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "dtype": "float32"}, indent=2))  # fp32 master weights
ce = Path(sys.argv[1]) / "models" / "scifact-minilm-l6-ce"
out = Path(".devcarry/ce-random")
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text((ce / "config.json").read_text())
AutoTokenizer.from_pretrained(ce).save_pretrained(out)
PY
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $D/whl datasets==5.2.0 dill multiprocess bm25s==0.3.16 PyStemmer==3.1.0
du -sh $D
