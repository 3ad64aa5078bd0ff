#!/usr/bin/env bash
# One GPU, one run: the same benchmark scripts on an older tree (BEFORE, e.g. `git archive REV | tar -x -C DIR`)
# and on this checkout, interleaved, so a before/after comparison shares the card, driver and thermal state.
#   BEFORE=.bench_before bash benchmarks/before_after.sh      # JSON lines in $OUT/before_after.jsonl
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
BEFORE=${BEFORE:-.bench_before}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
here=$(pwd)
tag() { python3 -c "import json,sys; [print(json.dumps(dict(json.loads(l), tree='$1'))) for l in sys.stdin if l.startswith('{')]"; }
for job in "train_throughput.py --model SiT-XL/2 --steps 30" "train_throughput.py --model ELIT-SiT-XL/2 --steps 30" \
           "inference.py sampling --model SiT-XL/2"; do
  for tree in "$BEFORE" "$here"; do
    name=$([ "$tree" = "$here" ] && echo after || echo before)
    (cd "$tree" && python3 benchmarks/$job 2>&1 | tag "$name") | tee -a "$OUT/before_after.jsonl"
  done
done
