#!/usr/bin/env bash
# ELIT-SiT-XL/2, ImageNet 256: one checkpoint evaluated at several inference budgets (no guidance, 50k samples,
# ADM protocol, + FDD). Each budget gets its own sample folder and metrics JSON (generate.py names folders by every knob).
#   CKPT=... REF=VIRTUAL_imagenet256_labeled.npz bash experiments_updated/evaluation/elit_xl_256_multibudget.sh
# Override any eval.sh setting the same way (BUDGETS="1 0.5", NUM_SAMPLES=10000, INCEPTION=..., DINOV2=...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# g = 4 at 256 px: 16 latent slots per window, valid budgets j/16.
CFG_SCALE="${CFG_SCALE:-1.0}" NUM_SAMPLES="${NUM_SAMPLES:-50000}" BUDGETS="${BUDGETS:-1.0 0.75 0.5 0.25}" \
  bash "$HERE/eval.sh" "$@"
