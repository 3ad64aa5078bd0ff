#!/usr/bin/env bash
# The CPU demo model, ELIT-SiT-S/8 (experiments_updated/train/demo.yaml): 1000 samples with
# experiments_updated/generation/demo.yaml (its guidance and 8 steps), then FID, sFID, FDD, IS,
# precision and recall (eval.sh). REF: an .npz of real demo images, arr_0 uint8 (N, 32, 32, 3).
#   REF=demo_reference.npz bash experiments_updated/evaluation/eval_demo.sh [KEY=VALUE ...]
# CKPT defaults to the training run's last checkpoint, results/demo/checkpoints/0000300.pt.
# Every eval.sh setting can be given the same way (CKPT=..., NUM_SAMPLES=10000, BUDGET=0.5, INCEPTION=...,
# DINOV2=...).
# Multibudget model: one evaluation per budget in BUDGETS (default 1.0 0.75 0.5 0.25; valid budgets are
# j/4), each with its own sample folder and metrics JSON. BUDGETS="1.0" (or BUDGET=1.0): full budget only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pass=()
for arg in "$@"; do
  case "$arg" in
    BUDGETS=*|BUDGET=*) BUDGETS="${arg#*=}" ;;
    *) pass+=("$arg") ;;
  esac
done
for budget in ${BUDGETS:-1.0 0.75 0.5 0.25}; do
  CKPT="${CKPT:-results/demo/checkpoints/0000300.pt}" \
    GEN_CONFIG="${GEN_CONFIG:-$HERE/../generation/demo.yaml}" \
    NUM_SAMPLES="${NUM_SAMPLES:-1000}" REF_EXAMPLE="an .npz of real demo images, arr_0 uint8 (N, 32, 32, 3)" BUDGET="$budget" \
    bash "$HERE/eval.sh" "${pass[@]}"
done
