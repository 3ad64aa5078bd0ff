"""Options of generate.py (`GenerateConfig`) and elit_multibudget_inference.py (`InferenceConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from sampling.reference_keys import REFERENCE_KEYS
from utils.cli import opt
from utils.device import ATTENTION_HELP, AttentionBackend, check_device_name
from utils.errors import UserError


@dataclass
class SamplingOptions:
    mode: Literal["ode", "sde"] = opt("ode", "sampler: Euler(/Heun) ODE or Euler-Maruyama SDE")
    num_steps: int = opt(50, "sampling steps (DFM: see dfm_steps_per_stage)", ge=1)
    heun: bool = opt(False, "Heun's 2nd-order correction (ODE only; 2n-1 model calls)")
    cfg_scale: float = opt(1.0, "classifier-free guidance scale (1 = no guidance)", ge=0)
    guidance_low: float = opt(0.0, "guidance is applied for guidance_low <= t <= guidance_high", ge=0, le=1)
    guidance_high: float = opt(1.0, "see guidance_low", ge=0, le=1)
    inference_budget: Optional[float] = opt(None, "ELIT budget of the (conditional) pass (None = full)", gt=0)
    unconditional_inference_budget: Optional[float] = opt(
        None, "ELIT: budget of the unconditional guidance pass (cheap CFG), e.g. 0.0625", gt=0)
    autoguidance: bool = opt(False, "ELIT: the low-budget guidance pass keeps the real label (autoguidance)")
    budget_schedule: Optional[str] = opt(
        None, "ELIT budget as a function of t: 'T1:B1,T2:B2,...' uses B_i while t >= T_i (first match)")
    dfm_steps_per_stage: Optional[list[int]] = opt(None, "DFM: Euler steps per stage (default: num_steps split 80/20)", ge=1)
    dfm_stage_thresholds: Optional[list[float]] = opt(None, "DFM: time at which each stage but the last stops (default 0.1)", gt=0, lt=1)
    precision: Literal["bf16", "fp32"] = opt("bf16", "model precision for sampling on GPU (CPU: fp32)")
    fast: bool = opt(True, "GPU: bf16 weights, regional torch.compile and CUDA-graph replay (models/graphs.py)")
    attention_backend: AttentionBackend = opt("auto", ATTENTION_HELP)


@dataclass
class OutputOptions:
    ckpt: Optional[str] = opt(None, "checkpoint written by train.py or models.convert")
    weights: Literal["ema", "model"] = opt("ema", "which weights of the checkpoint to sample")
    vae: Optional[str] = opt(None, "AutoencoderKL hub id or local folder for latent models (default: the "
                             "checkpoint's dataset VAE; stabilityai/sd-vae-ft-ema for converted checkpoints)")
    seed: int = opt(0, "image i uses seed + i for its noise and label", ge=0)
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda:LOCAL_RANK when a GPU is visible, else cpu)")

    def __post_init__(self):                # GenerateConfig and InferenceConfig: checks across fields, at parse time
        check_device_name(self.device)
        if self.guidance_low > self.guidance_high:
            raise UserError(f"guidance interval [{self.guidance_low}, {self.guidance_high}] is empty: "
                            f"guidance_low must be <= guidance_high")


@dataclass
class GenerateConfig(SamplingOptions, OutputOptions):
    """generate.py"""
    sample_dir: str = opt("samples", "parent folder of the output folder (its name encodes every sampling knob)")
    num_samples: int = opt(50_000, "number of images", ge=1)
    per_proc_batch_size: int = opt(32, "images per forward on each process", ge=1)
    num_classes_sampled: Optional[int] = opt(None, "draw labels from the first N classes (default: all)", ge=1)
    labels: Literal["random", "balanced"] = opt(
        "random", "class labels: random = drawn uniformly per image from its own seed (the default, as before); "
        "balanced = image i gets class i mod K (K = num_classes_sampled or all classes; e.g. 50 per class for 50k "
        "ImageNet samples, as several FID protocols use), fixed by the image index, so sharding and resume agree")
    write_png: bool = opt(True, "write one PNG per image besides the .npz")
    reference_keys = REFERENCE_KEYS     # the public reference's option names (not a field): sampling/reference_keys.py


@dataclass
class InferenceConfig(SamplingOptions, OutputOptions):
    """elit_multibudget_inference.py"""
    model: Optional[str] = opt(None, "model name; checked against the checkpoint, or a random-init model without --ckpt")
    resolution: Optional[int] = opt(None, "image resolution in pixels: of the random-init model without --ckpt "
                                    "(default 256; SD-VAE latents, 1/8 the size); checked against a checkpoint", ge=1)
    class_label: int = opt(207, "class of every image", ge=0)
    num_images: int = opt(4, "images per budget (same noise for every budget)", ge=1)
    guidance_scale: float = opt(4.0, "scale of the guidance rows (CFG, cheap CFG, autoguidance); the budget rows "
                                "use cfg_scale", ge=0)
    budgets: Optional[list[float]] = opt(None, "budgets to run (default: every valid level)", gt=0)
    latency_batch_size: int = opt(64, "batch size of the latency measurement", ge=1)
    latency_repeats: int = opt(5, "timed forwards per budget (after warm-up)", ge=1)
    output_dir: str = opt("multibudget", "where results.json, plots and the grid go")
    reference_keys = REFERENCE_KEYS     # the public reference's option names (not a field): sampling/reference_keys.py


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
