#!/usr/bin/env bash
# SiT-XL/2, ImageNet 512 (experiments_updated/train/sit_xl_512_reference.yaml): 50k samples with
# experiments_updated/generation/sit_xl_512_reference.yaml (no guidance, 50-step Euler ODE, EMA weights),
# then FID, sFID, FDD, IS, precision and recall against ADM's reference batch (eval.sh).
#   REF=VIRTUAL_imagenet512.npz bash experiments_updated/evaluation/eval_sit_xl_512_reference.sh [KEY=VALUE ...]
# CKPT defaults to the training run's last checkpoint, exps/sit-xl-2-512px/checkpoints/0400000.pt.
# Every eval.sh setting can be given the same way (CKPT=..., NUM_SAMPLES=10000, BUDGET=0.5, INCEPTION=...,
# DINOV2=...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CKPT="${CKPT:-exps/sit-xl-2-512px/checkpoints/0400000.pt}" \
  GEN_CONFIG="${GEN_CONFIG:-$HERE/../generation/sit_xl_512_reference.yaml}" \
  REF_EXAMPLE="VIRTUAL_imagenet512.npz" \
  bash "$HERE/eval.sh" "$@"
