"""The one typed configuration schema shared by every script.

Each script's options are a dataclass composed of the option groups below; every default is declared once,
here. Values come from, in increasing precedence: these defaults, `--config FILE.yaml`, command-line flags.

    cfg = parse_config(TrainConfig, argv)    # --config, --print-config, --some-flag / --some_flag, --no-flag

Unknown keys (YAML or CLI) and values of the wrong type are rejected with a one-line error naming the key.
Flags accept dashes or underscores; booleans are negatable (`--compile` / `--no-compile`); Optional values
accept `none`; lists take several values (`--budgets 1 0.5 0.25`). `--print-config` prints the resolved
YAML and exits. The resolved config is saved beside every run (`save_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional

import yaml

from errors import UserError


# ----------------------------------------------------------------------------------------------------------
# Option groups. `help` metadata is shown by --help.

def opt(default, help: str = "", **kw):
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


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
    checkpointing_steps: int = opt(50_000, "save a checkpoint every N steps (and at the end)")
    resume_step: int = opt(0, "resume from this step's checkpoint; -1 = the latest; 0 = start fresh")
    report_to: Literal["tensorboard", "wandb", "none"] = opt("tensorboard", "experiment tracker (offline-safe)")
    log_every: int = opt(100, "log loss and throughput every N steps")
    sample_every: int = opt(10_000, "write an EMA sample grid every N steps (0 = only at the end)")
    sample_low_budget: float = opt(0.25, "ELIT: the low budget of the sample grids (the other is full)")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class SamplingOptions:
    mode: Literal["ode", "sde"] = opt("ode", "sampler: Euler(/Heun) ODE or Euler-Maruyama SDE")
    num_steps: int = opt(50, "sampling steps (DFM: see dfm_steps_per_stage)")
    heun: bool = opt(False, "Heun's 2nd-order correction (ODE only; 2n-1 model calls)")
    cfg_scale: float = opt(1.0, "classifier-free guidance scale (1 = no guidance)")
    guidance_low: float = opt(0.0, "guidance is applied for guidance_low <= t <= guidance_high")
    guidance_high: float = opt(1.0, "see guidance_low")
    inference_budget: Optional[float] = opt(None, "ELIT budget of the (conditional) pass (None = full)")
    unconditional_inference_budget: Optional[float] = opt(
        None, "ELIT: budget of the unconditional guidance pass (cheap CFG), e.g. 0.0625")
    autoguidance: bool = opt(False, "ELIT: the low-budget guidance pass keeps the real label (autoguidance)")
    budget_schedule: Optional[str] = opt(
        None, "ELIT budget as a function of t: 'T1:B1,T2:B2,...' uses B_i while t >= T_i (first match)")
    dfm_steps_per_stage: Optional[list[int]] = opt(None, "DFM: Euler steps per stage (default: num_steps split 80/20)")
    dfm_stage_thresholds: Optional[list[float]] = opt(None, "DFM: time at which each stage but the last stops (default 0.1)")
    precision: Literal["bf16", "fp32"] = opt("bf16", "model precision for sampling on GPU (CPU: fp32)")
    fast: bool = opt(True, "GPU: bf16 weights, regional torch.compile and CUDA-graph replay (models/graphs.py)")


@dataclass
class OutputOptions:
    ckpt: Optional[str] = opt(None, "checkpoint written by train.py or models.convert")
    weights: Literal["ema", "model"] = opt("ema", "which weights of the checkpoint to sample")
    vae: Optional[str] = opt(None, "AutoencoderKL hub id or local folder for latent models (default: the "
                             "checkpoint's dataset VAE; stabilityai/sd-vae-ft-ema for converted checkpoints)")
    seed: int = opt(0, "image i uses seed + i for its noise and label")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda:LOCAL_RANK when a GPU is visible, else cpu)")


# ----------------------------------------------------------------------------------------------------------
# Script schemas.

@dataclass
class TrainConfig(ModelOptions, DataOptions, LossOptions, OptimOptions, RunOptions):
    """train.py"""
    sample_num_steps: int = opt(50, "Euler steps of the periodic sample grids")
    sample_cfg_scale: float = opt(4.0, "guidance scale of the periodic sample grids")


@dataclass
class GenerateConfig(SamplingOptions, OutputOptions):
    """generate.py"""
    sample_dir: str = opt("samples", "parent folder of the output folder (its name encodes every sampling knob)")
    num_samples: int = opt(50_000, "number of images")
    per_proc_batch_size: int = opt(32, "images per forward on each process")
    num_classes_sampled: Optional[int] = opt(None, "draw labels from the first N classes (default: all)")
    write_png: bool = opt(True, "write one PNG per image besides the .npz")


@dataclass
class InferenceConfig(SamplingOptions, OutputOptions):
    """elit_multibudget_inference.py"""
    model: Optional[str] = opt(None, "model name; checked against the checkpoint, or a random-init model without --ckpt")
    resolution: Optional[int] = opt(None, "image resolution in pixels: of the random-init model without --ckpt "
                                    "(default 256; SD-VAE latents, 1/8 the size); checked against a checkpoint")
    class_label: int = opt(207, "class of every image")
    num_images: int = opt(4, "images per budget (same noise for every budget)")
    guidance_scale: float = opt(4.0, "scale of the guidance rows (CFG, cheap CFG, autoguidance); the budget rows "
                                "use cfg_scale")
    budgets: Optional[list[float]] = opt(None, "budgets to run (default: every valid level)")
    latency_batch_size: int = opt(64, "batch size of the latency measurement")
    latency_repeats: int = opt(5, "timed forwards per budget (after warm-up)")
    output_dir: str = opt("multibudget", "where results.json, plots and the grid go")


@dataclass
class ConvertConfig:
    """dataset_tools.py convert: class-folder tree or zip of images -> resized PNGs + dataset.json"""
    source: Optional[str] = opt(None, "folder with one subfolder per class (e.g. ImageNet train), or a zip of such")
    dest: Optional[str] = opt(None, "output folder")
    resolution: str = opt("256x256", "output size WxH")
    transform: Literal["center-crop-dhariwal", "center-crop", "center-crop-wide"] = opt(
        "center-crop-dhariwal", "resize/crop: ADM's (Dhariwal & Nichol), plain center crop, or wide crop")
    max_images: Optional[int] = opt(None, "keep this many images, taken round-robin over the classes")
    num_workers: Optional[int] = opt(None, "decode/resize processes (default: all CPU cores)")


@dataclass
class EncodeConfig:
    """dataset_tools.py encode: images -> SD-VAE latents (posterior mean and std) + metadata"""
    source: Optional[str] = opt(None, "folder written by `convert`")
    dest: Optional[str] = opt(None, "output folder")
    vae: str = opt("stabilityai/sd-vae-ft-ema", "AutoencoderKL: hub id (from the local cache when offline) or local folder")
    batch_size: int = opt(64, "images per VAE forward")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")
    precision: Literal["fp32", "bf16"] = opt("fp32", "VAE encoder precision: fp32 (faithful latents) or bf16 (faster)")
    num_workers: int = opt(4, "image-decoding worker processes")


@dataclass
class DemoConfig:
    """dataset_tools.py demo: a small class-conditional image dataset generated deterministically (no download)"""
    dest: str = opt("data/demo", "output folder")
    num_images: int = opt(2000, "number of images")
    resolution: int = opt(32, "image side in pixels")
    seed: int = opt(0, "generator seed")


@dataclass
class FashionMnistConfig:
    """dataset_tools.py fashion-mnist: import the idx files of Fashion-MNIST as a pixel dataset"""
    source: str = opt("/usr/share/datasets/fashion-mnist", "folder with the four idx(.gz) files")
    dest: str = opt("data/fashion-mnist", "output folder (a subfolder per split is written)")
    split: Literal["train", "test"] = opt("train", "which split")
    resolution: int = opt(32, "pad (28 -> 32) or resize to this side")
    channels: int = opt(1, "1 (grey) or 3 (grey replicated to RGB)")


@dataclass
class EvalConfig:
    """evaluate.py: FID, sFID, IS, precision, recall of a sample batch against a reference batch (ADM protocol)"""
    samples: Optional[str] = opt(None, "sample batch: .npz with arr_0 uint8 (N, H, W, 3), as generate.py writes")
    ref: Optional[str] = opt(None, "reference batch in ADM format (.npz; stored mu/sigma(_s) are used when present)")
    inception_weights: Optional[str] = opt(
        None, "pt_inception-2015-12-05 state dict (default: $ELIT_INCEPTION_WEIGHTS, then torch.hub's checkpoints folder)")
    feature_network: Optional[str] = opt(None, "TorchScript feature network to use instead of Inception (small datasets)")
    batch_size: int = opt(100, "images per Inception forward")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")
    cache_ref: bool = opt(False, "keep the reference batch's computed features beside it (REF.<network>.features.npz) and reuse them")
    out: Optional[str] = opt(None, "write the metrics as JSON here (default: SAMPLES_vs_REF[_NETWORK].json beside the samples)")


@dataclass
class ClassifierConfig:
    """studies/classifier.py: a small CNN on Fashion-MNIST, saved as an evaluator feature network (TorchScript)"""
    data: Optional[str] = opt(None, "folder holding train/ and test/ pixel datasets (`dataset_tools.py fashion-mnist --dest DIR`)")
    out: str = opt("fashion_mnist_classifier.pt", "where the TorchScript feature network goes")
    epochs: int = opt(4, "training epochs")
    batch_size: int = opt(256, "images per step")
    learning_rate: float = opt(2e-3, "peak AdamW learning rate (one-cycle schedule)")
    width: int = opt(32, "channels of the first conv stage (then 2x, 4x)")
    feature_dim: int = opt(128, "width of the penultimate layer: the features of the Frechet distance")
    max_train_items: Optional[int] = opt(None, "train on the first N training images only (smoke tests)")
    seed: int = opt(0, "initialisation and batch-order seed")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")


@dataclass
class FashionMnistStudyConfig:
    """studies/fashion_mnist.py: SiT-S/2 vs multibudget ELIT-SiT-S/2 on Fashion-MNIST, data to report in one command.
    Options left at None take the preset of the mode (full GPU run or --smoke): see PRESETS in the script."""
    source: str = opt("/usr/share/datasets/fashion-mnist", "folder with the four Fashion-MNIST idx(.gz) files")
    work: str = opt("fm-work", "scratch folder: datasets, checkpoints, classifier, sample batches")
    out: str = opt("fm-results", "results folder (at most 8 files): results.json, report.md, plots, log")
    smoke: bool = opt(False, "tiny models and settings on the CPU (tests); presets otherwise the full run's")
    steps: Optional[int] = opt(None, "training steps of each model (full: 3000; smoke: 6)")
    global_batch_size: Optional[int] = opt(None, "training batch of each model (full: 256; smoke: 8)")
    learning_rate: Optional[float] = opt(None, "AdamW learning rate of both models (full: 0.0002; smoke: 0.001)")
    warmup_steps: Optional[int] = opt(None, "linear learning-rate warm-up steps of both models (full: 100; smoke: 0)")
    ema_decay: Optional[float] = opt(None, "EMA decay of both models (full: 0.99, a ~100-step horizon: the time "
                                     "guard may cut the run to a few hundred steps; smoke: 0.5)")
    label_dropout: float = opt(0.1, "label dropout of both models (classifier-free guidance)")
    weighting: Literal["uniform", "lognormal"] = opt("uniform", "training time distribution of both models")
    time_budget_minutes: float = opt(7.0, "wall-clock budget of the whole command: training steps (equal for both "
                                     "models) and then the sample count are capped to fit it")
    probe_steps: Optional[int] = opt(None, "steps per model timed before the step cap is set (full: 60; smoke: 3)")
    log_every: Optional[int] = opt(None, "training log interval in steps (full: 20; smoke: 1)")
    num_workers: Optional[int] = opt(None, "data-loader workers of training (full: 4; smoke: 0)")
    compile: bool = opt(False, "torch.compile training (off: 16 ELIT budget levels would recompile)")
    budgets: list[float] = opt([1.0, 0.5, 0.25, 0.125, 0.0625], "ELIT budgets evaluated without guidance")
    guidance_scale: float = opt(1.5, "scale of the CFG / cheap CFG / autoguidance rows")
    guidance_budget: float = opt(0.0625, "budget of the cheap pass of cheap CFG and autoguidance")
    num_samples: Optional[int] = opt(None, "images per configuration, labels balanced (full: 2000; smoke: 20)")
    sample_batch_size: Optional[int] = opt(None, "images per sampler call (full: 500; smoke: 20)")
    sampling_steps: Optional[int] = opt(None, "Euler ODE steps (full: 50; smoke: 4)")
    heldout_items: Optional[int] = opt(None, "test images of the held-out loss (full: 2000; smoke: 16)")
    num_reference: Optional[int] = opt(None, "test images of the reference statistics (full: all 10000; smoke: 200)")
    latency_batch_size: Optional[int] = opt(None, "batch of the latency measurement (full: 256; smoke: 4)")
    latency_repeats: Optional[int] = opt(None, "timed calls per configuration, after warm-up (full: 10; smoke: 2)")
    cuda_graphs: bool = opt(True, "GPU: time latency with bf16 weights and CUDA-graph replay (models/graphs.py)")
    classifier_epochs: Optional[int] = opt(None, "classifier epochs (full: ClassifierConfig's, 4; smoke: 2)")
    classifier_items: Optional[int] = opt(None, "classifier training images (full: all; smoke: 512)")
    seed: int = opt(0, "seed of training, held-out draws and per-image sampling seeds")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available; smoke: cpu)")


# ----------------------------------------------------------------------------------------------------------
# Parsing.

def _base_type(tp):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _check_value(name: str, value, tp):
    """Validate (and lightly coerce: int -> float) a YAML/CLI value against the field type."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{name}' may not be null")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise UserError(f"config key '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_check_value(name, v, item) for v in value]
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{name}' must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):                          # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{name}' must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{name}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")


def _parse_scalar(text: str, tp, name: str):
    """A CLI token -> a value of the field's type."""
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is Literal:
        return text
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} expects {base.__name__}, got {text!r}") from None
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):                               # one line, exit 2 (argparse prints usage first)
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(schema: type, description: str = "") -> argparse.ArgumentParser:
    parser = _Parser(description=description or schema.__doc__, argument_default=argparse.SUPPRESS,
                     allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of options (CLI flags override it)")
    parser.add_argument("--print-config", "--print_config", action="store_true", help="print the resolved config and exit")
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        base, optional = _base_type(tp)
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        kw = dict(dest=f.name, help=f.metadata.get("help", ""))
        if base is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is list:
            parser.add_argument(*names, nargs="+", metavar="V", **kw)
        else:
            metavar = "{" + ",".join(typing.get_args(base)) + "}" if typing.get_origin(base) is Literal else None
            parser.add_argument(*names, metavar=metavar, **kw)
    return parser


def parse_config(schema: type, argv=None, description: str = ""):
    """defaults < YAML (--config) < CLI flags -> a validated `schema` instance."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser(schema, description).parse_args(argv))
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    values = {}
    path = args.pop("config", None)
    show = args.pop("print_config", False)
    if path:
        values.update(load_yaml(path, names))
    for name, raw in args.items():
        tp = hints[name]
        base, _ = _base_type(tp)
        if typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            if len(raw) == 1 and raw[0].lower() in ("none", "null"):
                raw = None
            else:
                raw = [_parse_scalar(tok, item, name) for tok in raw]
        elif base is not bool:
            raw = _parse_scalar(raw, tp, name)
        values[name] = raw
    checked = {name: _check_value(name, value, hints[name]) for name, value in values.items()}
    cfg = schema(**checked)
    if show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        sys.exit(0)
    return cfg


def load_yaml(path: str, names) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value")
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{key}' in {path}{hint}")
    return data


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from atomic import write_text
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------
# From options to a model.

MODEL_SETTINGS = ("qk_norm", "elit_group_size", "elit_head_depth", "elit_tail_depth", "elit_write_depth",
                  "elit_write_dropped_latents", "dfm_stages")


def model_overrides(cfg, **data_settings) -> dict:
    """build_model kwargs from the model options of `cfg` plus data-derived settings (input_size, in_channels,
    num_classes, repa_*). Family-specific options set for another family are an error."""
    from models import parse_model_name
    try:
        family, _, _ = parse_model_name(cfg.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = dict(data_settings)
    for name in MODEL_SETTINGS:
        value = getattr(cfg, name)
        if name.startswith("elit_") and family != "ELIT-SiT" or name.startswith("dfm_") and family != "DFM-SiT":
            if value is not None:
                raise UserError(f"config key '{name}' applies to {name.split('_')[0].upper()} models, not {cfg.model}")
            continue
        if value is not None:
            out[name] = value
    return out


def parse_budget_schedule(text: Optional[str]) -> Optional[list[tuple[float, float]]]:
    """'0.7:0.25,0:1' -> [(0.7, 0.25), (0.0, 1.0)]: budget 0.25 while t >= 0.7, then 1."""
    if text is None:
        return None
    try:
        pairs = [tuple(float(v) for v in item.split(":")) for item in text.split(",") if item.strip()]
        assert pairs and all(len(p) == 2 for p in pairs)
    except (ValueError, AssertionError):
        raise UserError(f"budget_schedule must look like 'T1:B1,T2:B2,...', got {text!r}") from None
    pairs.sort(key=lambda p: -p[0])
    if pairs[-1][0] > 0:
        raise UserError(f"budget_schedule must cover t = 0 (add '0:B'), got {text!r}")
    return pairs
