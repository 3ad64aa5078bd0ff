#!/usr/bin/env bash
# The SPEC 11 benchmark suite on one GPU; results as JSON lines in ${OUT:-.}/bench_{train,inference}.jsonl.
#   bash benchmarks/run_all.sh train        # training throughput and memory (the real train.py step)
#   bash benchmarks/run_all.sh inference    # ELIT latency per budget, 50-step CFG sampling, cheap CFG
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
what=${1:-all}
T="python3 benchmarks/train_throughput.py --json $OUT/bench_train.jsonl"
I="python3 benchmarks/inference.py"
if [ "$what" = train ] || [ "$what" = all ]; then
  $T --model SiT-XL/2 --steps 30 2>&1 | grep '^{'
  $T --model ELIT-SiT-XL/2 --steps 30 2>&1 | grep '^{'
  $T --model ELIT-SiT-XL/2 --multibudget --steps 64 2>&1 | grep '^{'
  $T --model DFM-SiT-XL/2 --steps 30 2>&1 | grep '^{'
  $T --model SiT-XL/2 --resolution 512 --batch 16 --steps 30 2>&1 | grep '^{'
fi
if [ "$what" = inference ] || [ "$what" = all ]; then
  { $I latency --model ELIT-SiT-XL/2 --budgets 1 0.5 0.25 0.0625
    $I sampling --model SiT-XL/2
    $I sampling --model ELIT-SiT-XL/2
    $I sampling --model ELIT-SiT-XL/2 --unconditional-budget 0.0625; } 2>&1 | grep '^{' | tee -a $OUT/bench_inference.jsonl
fi
