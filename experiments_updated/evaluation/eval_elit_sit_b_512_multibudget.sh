#!/usr/bin/env bash
# ELIT-SiT-B/2, ImageNet 512 (experiments_updated/train/elit_sit_b_512_multibudget.yaml): 50k samples with
# experiments_updated/generation/elit_sit_b_512_multibudget.yaml (no guidance, 50-step Euler ODE, full budget, EMA weights),
# then FID, sFID, FDD, IS, precision and recall against ADM's reference batch (eval.sh).
#   REF=VIRTUAL_imagenet512.npz bash experiments_updated/evaluation/eval_elit_sit_b_512_multibudget.sh [KEY=VALUE ...]
# CKPT defaults to the training run's last checkpoint, exps/elit_sit_b_512_multibudget/checkpoints/0400000.pt.
# Every eval.sh setting can be given the same way (CKPT=..., NUM_SAMPLES=10000, BUDGET=0.5, INCEPTION=...,
# DINOV2=...).
# Multibudget model: one evaluation per budget in BUDGETS (default 1.0 0.75 0.5 0.25; valid budgets are
# j/64), each with its own sample folder and metrics JSON. BUDGET=1.0: full budget only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CKPT="${CKPT:-exps/elit_sit_b_512_multibudget/checkpoints/0400000.pt}" \
  GEN_CONFIG="${GEN_CONFIG:-$HERE/../generation/elit_sit_b_512_multibudget.yaml}" \
  REF_EXAMPLE="VIRTUAL_imagenet512.npz" BUDGETS="${BUDGETS:-1.0 0.75 0.5 0.25}" \
  bash "$HERE/eval.sh" "$@"
