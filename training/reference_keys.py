"""The public reference's train.py options (snap-research/elit @4c7184a) in TrainConfig's terms.

A user moving from the reference brings its YAMLs (`experiments/train/*.yaml`) and flags; every name it
accepts either means the same here (same name, or an alias below) or is refused in one line that says why
and what to use. Same name, same meaning: output_dir, exp_name, report_to, resume_step (-1 = latest), model,
qk_norm, data_dir, resolution, allow_tf32, mixed_precision, max_train_steps, checkpointing_steps,
gradient_accumulation_steps, learning_rate, adam_beta1/2, adam_epsilon, max_grad_norm, warmup_steps, seed,
num_workers, path_type, proj_coeff, weighting, elit_max_mask_prob, elit_min_mask_prob, elit_group_size,
elit_write_depth. Differences worth knowing:
- seed: the reference seeds each process with seed + rank; ours derives every random stream from the seed
  and the step, so a run does not depend on the process count (the values drawn differ from the reference's).
- warm-up: `constant_with_linear_warmup` with warmup_steps w is our linear warm-up (the reference starts at
  lr/w and reaches lr at step w, ours reaches it one step earlier); `constant` requires warmup_steps 0 (the
  reference then ignores warmup_steps; ours would not).
- encoder_depth: the block whose tokens the REPA projector reads (repa_depth, when REPA is on:
  proj_coeff > 0); in the reference's ELIT models it is also the number of blocks before Read, so for ELIT it
  sets elit_head_depth too (as models/convert.py reads reference checkpoints). The reference's default 8 is
  not implied: give encoder_depth (or repa_depth / elit_head_depth) when you need it.
- cfg_prob: our label_dropout. (The reference's model drops labels at a fixed 0.1 whatever cfg_prob > 0
  says; with `legacy` it drops again at cfg_prob in the loop. Ours drops once, at label_dropout.)
- sampling_steps: the interval between sample grids (our sample_every; 0 = only the final grid here, none
  in the reference). num_steps_per_scale / stage_sampling_thresholds set the DFM grids' sampler.
"""

from __future__ import annotations

from typing import Literal, Optional

from models import FAMILIES, constructor_defaults, parse_model_name
from samplers import default_dfm_schedule
from utils.errors import UserError
from utils.vocabulary import Alias, Derive, ReferenceKeys, Refuse


def _settings(model: str) -> dict:
    """The constructor settings (with defaults) the model's family takes: tells ELIT / DFM apart by what they take."""
    try:
        return constructor_defaults(FAMILIES[parse_model_name(model)[0]])
    except ValueError as e:
        raise UserError(str(e)) from None


def _encoder_depth(depth: int, cfg: dict) -> dict:
    out = {"elit_head_depth": depth} if "elit_head_depth" in _settings(cfg["model"]) else {}
    if cfg["proj_coeff"] > 0:
        out["repa_depth"] = depth
    return out


def _enc_type(name: str, cfg: dict) -> dict:
    if name.strip().lower() in ("", "none"):
        if cfg["proj_coeff"] > 0:
            raise UserError(f"enc_type none turns REPA off (as in the reference), but proj_coeff is {cfg['proj_coeff']}:"
                            " set proj_coeff 0, or name an encoder")
        return {}
    return {"repa_encoder": name}           # the names themselves are validated where the encoder is built


def _lr_scheduler(kind: str, cfg: dict) -> dict:
    if kind == "constant" and cfg["warmup_steps"] > 0:
        raise UserError(f"lr_scheduler_type constant has no warm-up, but warmup_steps is {cfg['warmup_steps']}: set "
                        "warmup_steps 0, or use lr_scheduler_type constant_with_linear_warmup")
    return {}                               # constant_with_linear_warmup: our warmup_steps (0 = constant)


def _dfm_stages(cfg: dict) -> Optional[int]:
    """The stage count of a DFM model (None for other families)."""
    settings = _settings(cfg["model"])
    if "dfm_stages" not in settings:
        return None
    return cfg["dfm_stages"] or settings["dfm_stages"]


def _grid_steps(steps: list[int], cfg: dict) -> dict:
    stages = _dfm_stages(cfg)
    if stages is None:
        return {}                           # the reference reads it for DFM sample grids only
    try:
        ours = default_dfm_schedule(sum(steps), stages)[0]
    except ValueError as e:
        raise UserError(f"num_steps_per_scale {steps}: {e}") from None
    if ours != list(steps):
        raise UserError(f"num_steps_per_scale {steps}: our sample grids split sample_num_steps {sum(steps)} over "
                        f"{stages} stages as {ours}; set sample_num_steps instead")
    return {"sample_num_steps": sum(steps)}


def _grid_thresholds(thresholds: list[float], cfg: dict) -> dict:
    stages = _dfm_stages(cfg)
    if stages is None:
        return {}
    ours = default_dfm_schedule(stages, stages)[1]
    if len(ours) != len(thresholds) or any(abs(a - b) > 1e-9 for a, b in zip(ours, thresholds)):
        raise UserError(f"stage_sampling_thresholds {thresholds}: our sample grids use {ours} for {stages} stages "
                        "(generate.py takes dfm_stage_thresholds)")
    return {}


REFERENCE_KEYS = ReferenceKeys({
    "batch_size": Alias("global_batch_size", note="over all processes, as in the reference"),
    "adam_weight_decay": Alias("weight_decay"),
    "cfg_prob": Alias("label_dropout"),
    "sampling_steps": Alias("sample_every", note="steps between sample grids, not sampler steps"),
    "stages_count": Alias("dfm_stages"),
    "stage_weights": Alias("dfm_stage_weights"),
    "encoder_depth": Derive(_encoder_depth, int, "REPA projector block (repa_depth, when proj_coeff > 0); "
                            "for ELIT also elit_head_depth"),
    "enc_type": Derive(_enc_type, str, "REPA encoder name(s) (repa_encoder); none = REPA off"),
    "lr_scheduler_type": Derive(_lr_scheduler, Literal["constant", "constant_with_linear_warmup"],
                                "checked against warmup_steps (our warm-up is linear, then constant)"),
    "num_steps_per_scale": Derive(_grid_steps, list[int], "DFM sample grids: steps per stage (sets sample_num_steps)"),
    "stage_sampling_thresholds": Derive(_grid_thresholds, list[float], "DFM sample grids: checked against ours"),
    "epochs": Refuse("training length is counted in optimizer steps here: use max_train_steps (the reference stops "
                     "at whichever of epochs and max_train_steps ends first)", int),
    "logging_dir": Refuse("the tracker's logs go to OUTPUT_DIR/EXP_NAME/logs here: drop logging_dir", str),
    "num_classes": Refuse("the number of classes comes from the dataset's labels (dataset.json): drop num_classes", int),
    "s3_cache_dir": Refuse("S3 data is not supported: copy the dataset to a local disk, pass that folder as data_dir "
                           "and drop s3_cache_dir", Optional[str], accept=(None,)),
    "fused_attn": Refuse("attention always runs through PyTorch's fused scaled_dot_product_attention here (there is "
                         "no unfused path): drop fused_attn", bool, accept=(True,)),
    "prediction": Refuse("only velocity prediction (v) is trained, as in the reference", str, accept=("v",)),
    "legacy": Refuse("the legacy mode drops labels a second time in the training loop; labels are dropped once "
                     "here, at label_dropout (cfg_prob): drop legacy", bool, accept=(False,)),
    "elit_read_depth": Refuse("ELIT has one Read layer here (the reference's default): drop elit_read_depth",
                              int, accept=(1,)),
})
