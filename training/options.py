"""Options of train.py (`TrainConfig`) and the model options it shares with the inference script.

Every default is declared once, here; `utils.cli.parse_config(TrainConfig, argv)` reads YAML and flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional, Union

from models import FAMILIES, constructor_defaults, parse_model_name
from training.encoders import encoder_names
from training.reference_keys import REFERENCE_KEYS
from utils.cli import opt
from utils.device import ATTENTION_HELP, AttentionBackend
from utils.errors import UserError


@dataclass
class ModelOptions:
    model: str = opt("ELIT-SiT-XL/2", "registry name Family-Size/Patch, e.g. SiT-XL/2, ELIT-SiT-B/2, DFM-SiT-XL/2")
    resolution: Optional[int] = opt(None, "image resolution in pixels, checked against the data (default: the data's)", ge=1)
    qk_norm: bool = opt(False, "per-head LayerNorm on queries and keys in self-attention")
    elit_group_size: Optional[int] = opt(None, "ELIT window side g (default: 16 windows, 4 at 256 px, 8 at 512 px)", ge=1)
    elit_head_depth: Optional[int] = opt(None, "ELIT blocks before Read (default 2 for S/B, 4 for L/XL)", ge=0)
    elit_tail_depth: Optional[int] = opt(None, "ELIT blocks after Write (default 2 for S/B, 4 for L/XL)", ge=0)
    elit_write_depth: Optional[int] = opt(None, "ELIT Write layers (default 1)", ge=1)
    elit_write_dropped_latents: Optional[bool] = opt(
        None, "Write also attends to dropped latents (the reference's behaviour; default off)")
    dfm_stages: Optional[int] = opt(None, "DFM pyramid stages (default 2)", ge=1)


@dataclass
class DataOptions:
    data_dir: Optional[str] = opt(None, "dataset folder written by dataset_tools.py (latents or pixels), or the folder "
                                     "holding it (the reference README's TARGET_PATH with images/ and vae-sd/)")
    num_workers: int = opt(2, "data-loader worker processes per GPU", ge=0)


@dataclass
class LossOptions:
    path_type: Literal["linear", "cosine"] = opt("linear", "interpolation path: linear (rectified flow) or cosine (GVP)")
    weighting: Literal["uniform", "lognormal"] = opt("uniform", "training time distribution")
    label_dropout: float = opt(0.1, "probability of replacing a label by the null label (classifier-free guidance)",
                               ge=0, le=1)
    proj_coeff: float = opt(0.0, "REPA loss weight (0 = off)", ge=0)
    repa_depth: int = opt(0, "block (1-indexed) whose tokens the REPA projector reads (0 = no projector)", ge=0)
    repa_encoder: str = opt("dinov2_vitb14", "REPA target encoder(s) (the reference's enc_type): a torch.hub DINOv2 "
                            "name, or timm names such as dinov2-vit-b, dinov2-vit-b-reg, dinov1-vit-b, clip-vit-L, "
                            "mocov3-vit-b, mae-vit-l, jepa-vit-h (local weights), comma-separated for several")
    repa_encoder_path: Optional[str] = opt(None, "REPA encoder weights: a file, one file per encoder (comma list) or a "
                                           "folder of NAME.safetensors; for torch.hub names also a local hub repo")
    elit_min_mask_prob: Optional[float] = opt(
        None, "ELIT: lowest mask probability (1 - budget) drawn in training (default: max, a single budget)", ge=0, lt=1)
    elit_max_mask_prob: Optional[float] = opt(
        None, "ELIT: highest mask probability (default 0 = full budget; 1 - 1/g^2 when only the min is set)", ge=0, lt=1)
    dfm_stage_weights: Optional[list[float]] = opt(None, "DFM: probability of each highest-active stage (default 0.9, 0.1)", ge=0)
    dfm_low_stage_location: float = opt(-2.0, "DFM: logit-normal location of the times of stages below the drawn one")

    def __post_init__(self):
        encoder_names(self.repa_encoder)     # encoder names are checked when the options are read, before any load


@dataclass
class OptimOptions:
    global_batch_size: int = opt(256, "images per optimizer step over all processes and accumulation steps", ge=1)
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", ge=1)
    max_train_steps: int = opt(400_000, "optimizer steps", ge=1)
    learning_rate: float = opt(1e-4, "AdamW learning rate", gt=0)
    adam_beta1: float = opt(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = opt(0.999, "AdamW beta2", ge=0, lt=1)
    adam_epsilon: float = opt(1e-8, "AdamW epsilon", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps (0 = off)", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", ge=0)
    ema_decay: float = opt(0.9999, "EMA decay per optimizer step", ge=0, le=1)


@dataclass
class RunOptions:
    exp_name: str = opt("run", "experiment name: outputs go to OUTPUT_DIR/EXP_NAME")
    output_dir: str = opt("exps", "folder holding experiment folders (the reference's default)")
    seed: int = opt(0, "global seed", ge=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("bf16", "autocast precision on GPU (CPU runs use fp32)")
    allow_tf32: bool = opt(True, "TF32 matmuls on Ampere+ GPUs")
    compile: bool = opt(False, "torch.compile the model")
    gradient_checkpointing: bool = opt(False, "recompute each transformer block's activations in the backward "
                                       "pass (less activation memory, ~1/3 more compute; results unchanged)")
    compile_cache: str = opt("auto", "persistent compile cache: auto = OUTPUT_DIR/EXP_NAME/compile_cache, off, or a folder")
    compile_dynamic: bool = opt(False, "compile with automatic dynamic shapes (ELIT budgets share graphs: short warm-up)")
    compile_mode: Optional[str] = opt(None, "torch.compile mode, e.g. max-autotune-no-cudagraphs, reduce-overhead")
    compile_scope: Literal["regions", "model"] = opt("regions", "compile every block (regions) or the whole forward (model)")
    bf16_residual: bool = opt(False, "keep the residual stream in bf16 under bf16 autocast (changes numerics; faster)")
    attention_backend: AttentionBackend = opt("auto", ATTENTION_HELP)
    checkpointing_steps: int = opt(50_000, "save a checkpoint every N steps (and at the end)", ge=1)
    resume_step: Union[int, Literal["auto"]] = opt(
        0, "resume from this step's checkpoint; -1 = the latest; 0 = start fresh; auto = the latest when there is "
           "one, else start fresh (one command line for a requeued job)", ge=-1)
    allow_resume_change: Optional[str] = opt(
        None, "KEY[,KEY]: settings allowed to differ from the checkpoint's on resume (e.g. learning_rate); the "
              "new values are applied and logged (policy: training/resume.py)")
    report_to: Literal["tensorboard", "wandb", "none"] = opt(
        "tensorboard", "experiment tracker of the scalars and sample grids (training/tracking.py; wandb also offline: "
        "WANDB_MODE=offline)")
    log_every: int = opt(100, "log loss and throughput every N steps", ge=1)
    sample_every: int = opt(10_000, "write an EMA sample grid every N steps (0 = only at the end)", ge=0)
    sample_low_budget: float = opt(0.25, "ELIT: the low budget (a fraction) of the sample grids (the other is full)", gt=0, le=1)
    progress: bool = opt(True, "show a progress bar")


@dataclass
class TrainConfig(ModelOptions, DataOptions, LossOptions, OptimOptions, RunOptions):
    """train.py"""
    sample_num_steps: int = opt(50, "Euler steps of the periodic sample grids", ge=1)
    sample_cfg_scale: float = opt(4.0, "guidance scale of the periodic sample grids")
    sample_class_check: bool = opt(False, "score each grid with a tiny classifier fitted on the real images "
                                          "(small, easy label sets such as the demo's: prints the class agreement)")
    reference_keys = REFERENCE_KEYS     # the public reference's option names (not a field): training/reference_keys.py

    def __post_init__(self):
        super().__post_init__()                                         # the option groups' own checks
        experiment_dir(self)                                            # refuse an escaping exp_name at once


def experiment_dir(cfg) -> str:
    """OUTPUT_DIR/EXP_NAME, refused unless it lies inside OUTPUT_DIR (no absolute path, no '..' escape)."""
    root = os.path.abspath(cfg.output_dir)
    path = os.path.abspath(os.path.join(root, cfg.exp_name))
    if not cfg.exp_name.strip() or os.path.isabs(cfg.exp_name) or os.path.commonpath([root, path]) != root \
            or path == root:
        raise UserError(f"exp_name {cfg.exp_name!r} must name a folder inside output_dir {cfg.output_dir!r} "
                        f"(no absolute path, no '..')")
    return os.path.join(cfg.output_dir, cfg.exp_name)


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
