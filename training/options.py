"""Options of train.py (`TrainConfig`) and the model options it shares with the inference script.

Every default is declared once, here; `utils.cli.parse_config(TrainConfig, argv)` reads YAML and flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from models import FAMILIES, constructor_defaults, parse_model_name
from training.reference_keys import REFERENCE_KEYS
from utils.cli import opt
from utils.errors import UserError


@dataclass
class ModelOptions:
    model: str = opt("ELIT-SiT-XL/2", "registry name Family-Size/Patch, e.g. SiT-XL/2, ELIT-SiT-B/2, DFM-SiT-XL/2")
    resolution: Optional[int] = opt(None, "image resolution in pixels, checked against the data (default: the data's)")
    qk_norm: bool = opt(False, "per-head LayerNorm on queries and keys in self-attention")
    elit_group_size: Optional[int] = opt(None, "ELIT window side g (default: 16 windows, 4 at 256 px, 8 at 512 px)")
    elit_head_depth: Optional[int] = opt(None, "ELIT blocks before Read (default 2 for S/B, 4 for L/XL)")
    elit_tail_depth: Optional[int] = opt(None, "ELIT blocks after Write (default 2 for S/B, 4 for L/XL)")
    elit_write_depth: Optional[int] = opt(None, "ELIT Write layers (default 1)")
    elit_write_dropped_latents: Optional[bool] = opt(
        None, "Write also attends to dropped latents (the reference's behaviour; default off)")
    dfm_stages: Optional[int] = opt(None, "DFM pyramid stages (default 2)")


@dataclass
class DataOptions:
    data_dir: Optional[str] = opt(None, "dataset folder written by dataset_tools.py (latents or pixels)")
    num_workers: int = opt(2, "data-loader worker processes per GPU")


@dataclass
class LossOptions:
    path_type: Literal["linear", "cosine"] = opt("linear", "interpolation path: linear (rectified flow) or cosine (GVP)")
    weighting: Literal["uniform", "lognormal"] = opt("uniform", "training time distribution")
    label_dropout: float = opt(0.1, "probability of replacing a label by the null label (classifier-free guidance)")
    proj_coeff: float = opt(0.0, "REPA loss weight (0 = off)")
    repa_depth: int = opt(0, "block (1-indexed) whose tokens the REPA projector reads (0 = no projector)")
    repa_encoder: str = opt("dinov2_vitb14", "REPA target encoder: a torch.hub DINOv2 name")
    repa_encoder_path: Optional[str] = opt(None, "local torch.hub repo folder or weights file for the REPA encoder")
    elit_min_mask_prob: Optional[float] = opt(None, "ELIT: lowest mask probability (1 - budget) drawn in training (default: max, a single budget)")
    elit_max_mask_prob: Optional[float] = opt(None, "ELIT: highest mask probability (default 0 = full budget; 1 - 1/g^2 when only the min is set)")
    dfm_stage_weights: Optional[list[float]] = opt(None, "DFM: probability of each highest-active stage (default 0.9, 0.1)")
    dfm_low_stage_location: float = opt(-2.0, "DFM: logit-normal location of the times of stages below the drawn one")


@dataclass
class OptimOptions:
    global_batch_size: int = opt(256, "images per optimizer step over all processes and accumulation steps")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step")
    max_train_steps: int = opt(400_000, "optimizer steps")
    learning_rate: float = opt(1e-4, "AdamW learning rate")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)")
    ema_decay: float = opt(0.9999, "EMA decay per optimizer step")


@dataclass
class RunOptions:
    exp_name: str = opt("run", "experiment name: outputs go to OUTPUT_DIR/EXP_NAME")
    output_dir: str = opt("results", "folder holding experiment folders")
    seed: int = opt(0, "global seed")
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("bf16", "autocast precision on GPU (CPU runs use fp32)")
    allow_tf32: bool = opt(True, "TF32 matmuls on Ampere+ GPUs")
    compile: bool = opt(False, "torch.compile the model")
    compile_cache: str = opt("auto", "persistent compile cache: auto = OUTPUT_DIR/EXP_NAME/compile_cache, off, or a folder")
    compile_dynamic: bool = opt(False, "compile with automatic dynamic shapes (ELIT budgets share graphs: short warm-up)")
    compile_mode: Optional[str] = opt(None, "torch.compile mode, e.g. max-autotune-no-cudagraphs, reduce-overhead")
    compile_scope: Literal["regions", "model"] = opt("regions", "compile every block (regions) or the whole forward (model)")
    bf16_residual: bool = opt(False, "keep the residual stream in bf16 under bf16 autocast (changes numerics; faster)")
    checkpointing_steps: int = opt(50_000, "save a checkpoint every N steps (and at the end)")
    resume_step: int = opt(0, "resume from this step's checkpoint; -1 = the latest; 0 = start fresh")
    report_to: Literal["tensorboard", "wandb", "none"] = opt("tensorboard", "experiment tracker (offline-safe)")
    log_every: int = opt(100, "log loss and throughput every N steps")
    sample_every: int = opt(10_000, "write an EMA sample grid every N steps (0 = only at the end)")
    sample_low_budget: float = opt(0.25, "ELIT: the low budget of the sample grids (the other is full)")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class TrainConfig(ModelOptions, DataOptions, LossOptions, OptimOptions, RunOptions):
    """train.py"""
    sample_num_steps: int = opt(50, "Euler steps of the periodic sample grids")
    sample_cfg_scale: float = opt(4.0, "guidance scale of the periodic sample grids")
    reference_keys = REFERENCE_KEYS     # the public reference's option names (not a field): training/reference_keys.py


MODEL_SETTINGS = ("qk_norm", "elit_group_size", "elit_head_depth", "elit_tail_depth", "elit_write_depth",
                  "elit_write_dropped_latents", "dfm_stages")


def model_overrides(cfg, **data_settings) -> dict:
    """build_model kwargs from the model options of `cfg` plus data-derived settings (input_size, in_channels,
    num_classes, repa_*). A setting the model's family does not take (e.g. an elit_* key for SiT) is an error."""
    try:
        family, _, _ = parse_model_name(cfg.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    accepted = constructor_defaults(FAMILIES[family])
    out = dict(data_settings)
    for name in MODEL_SETTINGS:
        value = getattr(cfg, name)
        if value is None:
            continue
        if name not in accepted:
            raise UserError(f"config key '{name}' applies to {name.split('_')[0].upper()} models, not {cfg.model}")
        out[name] = value
    return out
