#!/usr/bin/env bash
# Multi-GPU runs on one host (2 GPUs): DDP scaling of the real train step, and train.py under accelerate launch.
#   bash benchmarks/run_ddp.sh [FASHION_MNIST_IDX_DIR]
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-.}
SRC=${1:-/usr/share/datasets/fashion-mnist}
T="benchmarks/train_throughput.py --json $OUT/bench_ddp.jsonl --model SiT-XL/2 --steps 20"
torchrun --nproc_per_node 1 --master_port 29601 $T 2>&1 | grep '^{'
torchrun --nproc_per_node 2 --master_port 29602 $T 2>&1 | grep '^{'
# ELIT-SiT-B/2 multibudget through train.py + accelerate launch, on Fashion-MNIST (32x32x1 pixels, 256 tokens),
# 256 images per GPU per step; img/s of the last log interval (after warm-up) is in log.txt.
python3 dataset_tools.py fashion-mnist --source "$SRC" --dest /tmp/fm >/dev/null || exit 1
for n in 1 2; do
  accelerate launch --num_processes $n $([ $n -gt 1 ] && echo --multi_gpu) --mixed_precision bf16 --main_process_port 2961$n \
    train.py --model ELIT-SiT-B/2 --data-dir /tmp/fm/train --exp-name elit_b2_${n}gpu --output-dir /tmp/runs \
    --global-batch-size $((256 * n)) --max-train-steps 120 --log-every 40 --checkpointing-steps 100000 \
    --sample-every 0 --sample-num-steps 10 --elit-group-size 4 --elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 \
    --no-compile --report-to none --no-progress --num-workers 4 > /tmp/elit_b2_${n}.out 2>&1 || tail -5 /tmp/elit_b2_${n}.out
  echo "ELIT-SiT-B/2 multibudget, $n GPU(s):"; grep "step " /tmp/runs/elit_b2_${n}gpu/log.txt
  cp /tmp/runs/elit_b2_${n}gpu/log.txt $OUT/elit_b2_${n}gpu_log.txt
done
