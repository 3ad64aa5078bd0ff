#!/usr/bin/env bash
# ELIT-SiT-XL/2, ImageNet 256, classifier-free guidance with the unconditional pass at a low budget ("cheap CFG"):
# conditional pass at full budget, unconditional at 1/16 of the latents; 50k samples, ADM protocol (+ FDD).
#   CKPT=... REF=VIRTUAL_imagenet256_labeled.npz bash experiments_updated/evaluation/elit_xl_256_cheap_cfg.sh
# Override any eval.sh setting the same way (CFG_SCALE=4.0, UNCOND_BUDGET=0.25, AUTOGUIDANCE=1, DINOV2=...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CFG_SCALE="${CFG_SCALE:-1.5}" UNCOND_BUDGET="${UNCOND_BUDGET:-0.0625}" NUM_SAMPLES="${NUM_SAMPLES:-50000}" \
  bash "$HERE/eval.sh" "$@"
