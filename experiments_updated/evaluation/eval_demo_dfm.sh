#!/usr/bin/env bash
# The CPU demo model, DFM-SiT-S/4 (experiments_updated/train/demo_dfm.yaml): 1000 samples with
# experiments_updated/generation/demo_dfm.yaml (its guidance and 8 steps), then FID, sFID, FDD, IS,
# precision and recall (eval.sh). REF: an .npz of real demo images, arr_0 uint8 (N, 32, 32, 3).
#   REF=demo_reference.npz bash experiments_updated/evaluation/eval_demo_dfm.sh [KEY=VALUE ...]
# CKPT defaults to the training run's last checkpoint, results/demo_dfm/checkpoints/0000300.pt.
# Every eval.sh setting can be given the same way (CKPT=..., NUM_SAMPLES=10000, BUDGET=0.5, INCEPTION=...,
# DINOV2=...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CKPT="${CKPT:-results/demo_dfm/checkpoints/0000300.pt}" \
  GEN_CONFIG="${GEN_CONFIG:-$HERE/../generation/demo_dfm.yaml}" \
  NUM_SAMPLES="${NUM_SAMPLES:-1000}" REF_EXAMPLE="an .npz of real demo images, arr_0 uint8 (N, 32, 32, 3)" \
  bash "$HERE/eval.sh" "$@"
