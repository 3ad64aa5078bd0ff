#!/usr/bin/env bash
# Generate samples from a checkpoint (generate.py under torchrun), then score them against an ADM reference
# batch with evaluate.py: FID, sFID, FDD (DINOv2 ViT-L/14, EDM2's protocol), Inception Score, precision, recall.
# The metrics JSON is written beside the samples (SAMPLES_vs_REF.json) and the table printed. Nothing is deleted
# or overwritten by this script. FDD is reported whenever the DINOv2 weights are found (DINOV2, or
# $ELIT_DINOV2_WEIGHTS, or torch.hub's cache); without them its row says n/a and one line says how to enable it.
#
# Settings: environment variables, or KEY=VALUE arguments (arguments win). Only CKPT and REF are required.
#   CKPT           checkpoint written by train.py (or converted from the reference implementation)
#   REF            ADM reference batch, e.g. VIRTUAL_imagenet256_labeled.npz (its stored mu/sigma are used)
#   GEN_CONFIG     generation YAML (experiments_updated/generation/*.yaml); empty = generate.py's defaults
#   NUM_SAMPLES    images to generate (default 50000, the ADM protocol)
#   BUDGET         ELIT budget of the conditional pass (--inference-budget); empty = full / the config's
#   BUDGETS        several budgets, space-separated: one evaluation each (the multibudget wrappers' default)
#   UNCOND_BUDGET  ELIT budget of the unconditional guidance pass (--unconditional-inference-budget; cheap CFG)
#   AUTOGUIDANCE   1 = --autoguidance, 0 = --no-autoguidance, empty = the config's
#   CFG_SCALE      guidance scale (--cfg-scale); empty = the config's
#   NPROC          processes (default: the visible GPUs, else 1)
#   INCEPTION      pt_inception-2015-12-05-6726825d.pth (default: $ELIT_INCEPTION_WEIGHTS, then torch.hub's cache)
#   DINOV2         dinov2_vitl14_pretrain.pth or timm's model.safetensors, for FDD (default: $ELIT_DINOV2_WEIGHTS,
#                  then torch.hub's / Hugging Face's cache)
#   FDD            1 = FDD required (missing DINOv2 weights are an error), 0 = skip it, empty = when found
#   SAMPLES        an existing sample .npz: skip generation and only evaluate it
#   GEN_ARGS       extra generate.py flags (word-split), e.g. "--num-steps 250 --mode sde"
#   EVAL_ARGS      extra evaluate.py flags (word-split), e.g. "--cache-ref --batch-size 250"
#
# Example:
#   CKPT=exps/elit-xl/checkpoints/0400000.pt REF=VIRTUAL_imagenet256_labeled.npz \
#     INCEPTION=pt_inception-2015-12-05-6726825d.pth DINOV2=dinov2_vitl14_pretrain.pth \
#     bash experiments_updated/evaluation/eval.sh BUDGET=0.5
# The per-configuration scripts beside this one (eval_<training config>.sh) set CKPT and GEN_CONFIG for you.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEYS=" CKPT REF GEN_CONFIG NUM_SAMPLES BUDGETS BUDGET UNCOND_BUDGET AUTOGUIDANCE CFG_SCALE NPROC INCEPTION DINOV2 FDD SAMPLES GEN_ARGS EVAL_ARGS "

for arg in "$@"; do
  key="${arg%%=*}"
  if [[ "$arg" != *=* || "$KEYS" != *" $key "* ]]; then
    echo "error: expected KEY=VALUE with KEY one of:$KEYS(got '$arg')" >&2
    exit 2
  fi
  export "$arg"
  [[ "$key" == BUDGET ]] && unset BUDGETS                  # one budget given: it replaces a wrapper's list
done

# BUDGETS="1.0 0.5": one evaluation per budget, each with its own sample folder and metrics JSON.
if [[ -n "${BUDGETS:-}" ]]; then
  for budget in $BUDGETS; do
    BUDGETS="" BUDGET="$budget" bash "${BASH_SOURCE[0]}"
  done
  exit 0
fi

if [[ -z "${REF:-}" ]]; then
  echo "error: set REF to an ADM reference batch .npz (from guided-diffusion's evaluations, e.g." \
       "${REF_EXAMPLE:-VIRTUAL_imagenet256_labeled.npz})" >&2
  exit 2
fi
[[ -f "$REF" ]] || { echo "error: reference batch not found: $REF" >&2; exit 2; }
[[ -z "${DINOV2:-}" || -f "$DINOV2" ]] || { echo "error: DINOv2 weights not found: $DINOV2 (DINOV2)" >&2; exit 2; }
fdd=()
case "${FDD:-}" in
  1|true|yes) fdd=(--fdd) ;;
  0|false|no) fdd=(--no-fdd) ;;
  "") ;;
  *) echo "error: FDD must be 1 or 0, got '$FDD'" >&2; exit 2 ;;
esac

ev=()
[[ -n "${INCEPTION:-}" ]] && ev+=(--inception-weights "$INCEPTION")
[[ -n "${DINOV2:-}" ]] && ev+=(--dinov2-weights "$DINOV2")
ev+=("${fdd[@]}")
# shellcheck disable=SC2206
ev+=(${EVAL_ARGS:-})

if [[ -z "${SAMPLES:-}" ]]; then
  : "${CKPT:?set CKPT to a checkpoint (or SAMPLES to evaluate existing samples)}"
  [[ -f "$CKPT" ]] || { echo "error: checkpoint not found: $CKPT" >&2; exit 2; }
  # The evaluator's weights are located (and loaded) before hours of sampling, not after.
  python "$ROOT/evaluate.py" --check "${ev[@]}"
  if [[ -z "${NPROC:-}" ]]; then
    NPROC=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [[ "$NPROC" -ge 1 ]] || NPROC=1
  fi
  gen=(--ckpt "$CKPT" --num-samples "${NUM_SAMPLES:-50000}")
  [[ -n "${GEN_CONFIG:-}" ]] && gen=(--config "$GEN_CONFIG" "${gen[@]}")
  [[ -n "${BUDGET:-}" ]] && gen+=(--inference-budget "$BUDGET")
  [[ -n "${UNCOND_BUDGET:-}" ]] && gen+=(--unconditional-inference-budget "$UNCOND_BUDGET")
  [[ -n "${CFG_SCALE:-}" ]] && gen+=(--cfg-scale "$CFG_SCALE")
  case "${AUTOGUIDANCE:-}" in
    1|true|yes) gen+=(--autoguidance) ;;
    0|false|no) gen+=(--no-autoguidance) ;;
    "") ;;
    *) echo "error: AUTOGUIDANCE must be 1 or 0, got '$AUTOGUIDANCE'" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2206
  gen+=(${GEN_ARGS:-})

  # generate.py prints the .npz it wrote as the last line of its stdout; keep a copy of stdout to read it.
  stdout_copy="$(mktemp)"
  trap 'rm -f "$stdout_copy"' EXIT
  echo "+ torchrun --standalone --nproc_per_node=$NPROC generate.py ${gen[*]}" >&2
  torchrun --standalone --nproc_per_node="$NPROC" "$ROOT/generate.py" "${gen[@]}" | tee "$stdout_copy"
  SAMPLES="$(grep -v '^[[:space:]]*$' "$stdout_copy" | tail -n 1 || true)"
  if [[ "$SAMPLES" != *.npz || ! -f "$SAMPLES" ]]; then
    echo "error: generate.py's last stdout line is not an existing .npz: '$SAMPLES'" >&2
    exit 1
  fi
fi

ev=(--samples "$SAMPLES" --ref "$REF" "${ev[@]}")
echo "+ python evaluate.py ${ev[*]}" >&2
python "$ROOT/evaluate.py" "${ev[@]}"
