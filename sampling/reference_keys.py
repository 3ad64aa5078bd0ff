"""The public reference's generate.py options (snap-research/elit @4c7184a) in GenerateConfig's terms.

Same name, same meaning: ckpt, sample_dir, per_proc_batch_size, mode, num_steps, cfg_scale, guidance_low,
guidance_high, heun, inference_budget, unconditional_inference_budget, autoguidance. Aliases: num_fid_samples
-> num_samples, num_steps_per_scale -> dfm_steps_per_stage, stage_sampling_thresholds -> dfm_stage_thresholds,
global_seed -> seed, `vae: ema | mse` -> stabilityai/sd-vae-ft-ema | -mse. Differences worth knowing:
- global_seed: the reference seeds each rank with global_seed * world_size + rank, so its images depend on the
  GPU count; here image i has its own generator seeded with seed + i (identical for any process count).
- `--train-config T.yaml --eval-config E.yaml` layer as in the reference: from the train YAML only its
  architecture keys and path_type are read (TRAIN_YAML_KEYS; its training settings are ignored), below every
  --config / --eval-config, which layer in order; flags override both.
- The architecture (model, resolution, encoder_depth, elit_group_size, stages_count, ..., and path_type)
  comes from the checkpoint here. Given in a YAML or as flags, these values are kept as expectations
  (`utils.cli.reference_expectations(cfg)`) and `check_checkpoint_expectations` refuses a checkpoint that
  disagrees, in one line. Training-only keys (the mask range, REPA settings, stage_weights) are ignored.
  Hook for the caller (generate.py, the multibudget script): after loading the checkpoint,
      check_checkpoint_expectations(reference_expectations(cfg), model, path_type, resolution)
"""

from __future__ import annotations

import os
from typing import Literal, Optional

from utils.errors import UserError
from utils.vocabulary import Alias, Expect, Ignore, ReferenceKeys, Refuse

SD_VAES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}

# The reference's TRAIN_KEYS_TO_IMPORT without exp_name (our folder names come from the checkpoint), plus our
# own model option names, so that our train presets work as --train-config too.
TRAIN_YAML_KEYS = frozenset({
    "model", "resolution", "num_classes", "encoder_depth", "fused_attn", "qk_norm", "path_type", "enable_repa",
    "proj_coeff", "enc_type", "projector_embed_dims", "elit_max_mask_prob", "elit_min_mask_prob", "elit_group_size",
    "elit_read_depth", "elit_write_depth", "stages_count", "stage_weights",
    "elit_head_depth", "elit_tail_depth", "elit_write_dropped_latents", "dfm_stages"})


def _vae(name: Optional[str]) -> Optional[str]:
    return name if name is None or os.path.isdir(name) else SD_VAES.get(name, name)


_CHECKED = "checked against the checkpoint (the architecture comes from it)"
_TRAINING = "a training setting; sampling does not use it"

REFERENCE_KEYS = ReferenceKeys({
    "num_fid_samples": Alias("num_samples"),
    "global_seed": Alias("seed", note="here image i uses seed + i (any GPU count); the reference seeds rank r "
                         "with global_seed * world_size + r"),
    "num_steps_per_scale": Alias("dfm_steps_per_stage"),
    "stage_sampling_thresholds": Alias("dfm_stage_thresholds"),
    "vae": Alias("vae", convert=_vae, note="ema | mse = stabilityai/sd-vae-ft-ema | -mse"),
    "path_type": Expect(Literal["linear", "cosine"], _CHECKED),
    "model": Expect(str, _CHECKED),
    "resolution": Expect(Optional[int], _CHECKED),
    "num_classes": Expect(int, _CHECKED),
    "encoder_depth": Expect(int, _CHECKED + " (ELIT: the head depth; otherwise the REPA projector block)"),
    "qk_norm": Expect(bool, _CHECKED),
    "elit_group_size": Expect(Optional[int], _CHECKED),
    "elit_head_depth": Expect(Optional[int], _CHECKED),
    "elit_tail_depth": Expect(Optional[int], _CHECKED),
    "elit_write_depth": Expect(Optional[int], _CHECKED),
    "elit_write_dropped_latents": Expect(Optional[bool], _CHECKED),
    "stages_count": Expect(int, _CHECKED),
    "dfm_stages": Expect(Optional[int], _CHECKED),
    "elit_max_mask_prob": Ignore(_TRAINING + " (the budget is inference_budget)", Optional[float]),
    "elit_min_mask_prob": Ignore(_TRAINING + " (the budget is inference_budget)", Optional[float]),
    "stage_weights": Ignore(_TRAINING, list[float]),
    "proj_coeff": Ignore(_TRAINING, float),
    "enc_type": Ignore(_TRAINING, str),
    "enable_repa": Ignore("the checkpoint says whether the model has a REPA projector (unused for sampling)", bool),
    "projector_embed_dims": Ignore("the checkpoint says whether the model has a REPA projector", str),
    "exp_name": Refuse("the sample folder is named after the checkpoint and every sampling setting, inside "
                       "sample_dir: drop exp_name (choose the parent folder with sample_dir)", str),
    "tf32": Refuse("TF32 matmuls stay on for fp32 work on the GPU here (sampling itself runs in bf16 unless "
                   "--precision fp32): drop tf32", bool, accept=(True,)),
    "fused_attn": Refuse("attention always runs through PyTorch's fused scaled_dot_product_attention here: drop "
                         "fused_attn", bool, accept=(True,)),
    "legacy": Refuse("legacy (REPA-era, decoder_blocks) checkpoints are not read here; checkpoints of the reference "
                     "convert with `python -m models.convert`: drop legacy", bool, accept=(False,)),
    "elit_read_depth": Refuse("ELIT has one Read layer here (the reference's default): drop elit_read_depth",
                              int, accept=(1,)),
}, config_flags={"train_config": TRAIN_YAML_KEYS, "eval_config": None}, config_help={
    "train_config": "a training YAML: only its architecture keys and path_type are read (checked against the "
                    "checkpoint; TRAIN_YAML_KEYS in sampling/reference_keys.py), below every --config",
    "eval_config": "a generation YAML, layered like --config"})


def _actual(model, path_type: str, resolution: Optional[int]) -> dict:
    """What the checkpoint says, in the expectation names (None: the setting does not apply to this model)."""
    arch = model.arch
    head = getattr(model, "head_depth", None)                       # ELIT models only
    stages = model.stages if "dfm_stages" in arch else None         # DFM models only
    return {
        "path_type": path_type, "model": arch["name"], "resolution": resolution, "num_classes": arch["num_classes"],
        "qk_norm": arch["qk_norm"], "encoder_depth": head if head is not None else (arch.get("repa_depth") or None),
        "elit_group_size": getattr(model, "group_size", None), "elit_head_depth": head,
        "elit_tail_depth": getattr(model, "tail_depth", None), "elit_write_depth": arch.get("elit_write_depth"),
        "elit_write_dropped_latents": getattr(model, "write_dropped_latents", None),
        "stages_count": stages, "dfm_stages": stages,
    }


def check_checkpoint_expectations(expected: dict, model, path_type: str, resolution: Optional[int] = None) -> None:
    """Refuse (one line) the first architecture / path setting the user gave that the checkpoint contradicts.

    `expected`: `reference_expectations(cfg)`; `model`: the model rebuilt from the checkpoint; `path_type`: the
    checkpoint's training path; `resolution`: the image side its decoding gives (None: not checked)."""
    actual = _actual(model, path_type, resolution)
    for key, value in expected.items():
        have = actual.get(key)
        if value is None or (key == "resolution" and resolution is None):
            continue
        if have is None:
            if key == "encoder_depth":
                continue                                            # no head and no projector: unused, as there
            raise UserError(f"{key} {value!r} does not apply to the checkpoint's model {actual['model']}: drop it")
        if have != value:
            raise UserError(f"{key} {value!r} does not match the checkpoint, which holds {key} {have!r} (the "
                            "architecture and path come from the checkpoint): drop it or pick the matching checkpoint")
