"""Options of the Fashion-MNIST study and its classifier, with the study's presets and the three models: the
schema and the values its None-means-preset options take, in one place (tests/test_study.py checks that the
help texts quote them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal, Optional

from utils.cli import opt
from utils.errors import UserError

GROUP_SIZE = 4                                                  # 16x16 tokens -> 16 windows of 4x4
LEVELS = GROUP_SIZE ** 2                                        # latent slots per window: 16 budget levels
# The paper's three rows (study key -> registry name, label, ELIT mask-probability range of training; None: the
# model has no budgets). Identical data, batch, steps, optimiser, schedule and seed for all three.
MODELS = {
    "sit": dict(model="SiT-S/2", label="SiT-S/2", mask=None),
    "elit_single": dict(model="ELIT-SiT-S/2", label="ELIT-SiT-S/2 single budget", mask=(0.0, 0.0),
                        kwargs=dict(elit_group_size=GROUP_SIZE)),
    "elit_multi": dict(model="ELIT-SiT-S/2", label="ELIT-SiT-S/2 multibudget", mask=(0.0, 1.0 - 1.0 / LEVELS),
                       kwargs=dict(elit_group_size=GROUP_SIZE)),
}
PRESETS = {  # values of the options left at None, per mode
    "full": dict(steps=None, global_batch_size=256, learning_rate=2e-4, warmup_steps=100, ema_decay=0.999,
                 log_every=250, curve_samples=1000, num_samples=2000, sample_batch_size=500, sampling_steps=50,
                 heldout_items=2000, num_reference=None, latency_repeats=10, classifier_epochs=4,
                 classifier_items=None),
    "smoke": dict(steps=10, global_batch_size=8, learning_rate=1e-3, warmup_steps=0, ema_decay=0.5, log_every=2,
                  curve_samples=20, num_samples=40, sample_batch_size=20, sampling_steps=2, heldout_items=16,
                  num_reference=200, latency_repeats=1, classifier_epochs=1, classifier_items=512),
}
SMOKE_MODEL = dict(hidden_size=32, depth=4, num_heads=2)       # registry sizes overridden in smoke mode
SMOKE_ELIT = dict(elit_head_depth=1, elit_tail_depth=1)        # ... and, for the ELIT models, head/tail depth
SMOKE_CLASSIFIER = dict(width=4, feature_dim=16, batch_size=64)


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
    """studies/fashion_mnist.py: SiT-S/2 vs ELIT-SiT-S/2 (single budget and multibudget) on Fashion-MNIST, data to
    report in one command. Options left at None take the preset of the mode (full GPU run or --smoke): PRESETS."""
    source: str = opt("/usr/share/datasets/fashion-mnist", "folder with the four Fashion-MNIST idx(.gz) files")
    work: str = opt("fm-work", "scratch folder: classifier, reference images, final EMA weights")
    out: str = opt("fm-results", "results folder: OUT/fashion_mnist_study.md and OUT/fashion_mnist_study/ "
                   "(results.json, curves.png, quality_vs_gflops.png, grids.png, study.log)")
    smoke: bool = opt(False, "tiny models and settings on the CPU (tests); presets otherwise the full run's")
    time_budget_minutes: float = opt(8.0, "planned wall clock of the whole command (from process start): the "
                                     "common step count of the three models is set to fit it")
    max_minutes: Optional[float] = opt(None, "hard wall-clock limit: past it (minus a reserve for the report) "
                                       "training stops at the last completed curve point and rows are skipped "
                                       "(default: time_budget_minutes + 0.5)")
    steps: Optional[int] = opt(None, "upper limit of training steps per model (full: as many as fit; smoke: 10)")
    global_batch_size: Optional[int] = opt(None, "training batch of every model (full: 256; smoke: 8)")
    learning_rate: Optional[float] = opt(None, "AdamW learning rate, constant after warm-up (full: 0.0002; smoke: 0.001)")
    warmup_steps: Optional[int] = opt(None, "linear learning-rate warm-up steps (full: 100; smoke: 0)")
    ema_decay: Optional[float] = opt(None, "EMA decay, warmed up as min(decay, (1 + s) / (10 + s)) at step s "
                                     "(full: 0.999; smoke: 0.5)")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)")
    label_dropout: float = opt(0.1, "label dropout of every model (classifier-free guidance)")
    weighting: Literal["uniform", "lognormal"] = opt("uniform", "training time distribution of every model")
    log_every: Optional[int] = opt(None, "steps between reads of the device-side loss sum (full: 250; smoke: 2)")
    compile: bool = opt(True, "GPU: torch.compile the repeated blocks for training (eager fallback on failure)")
    cuda_graphs: bool = opt(True, "GPU: sample and time with bf16 EMA weights and CUDA-graph replay")
    eval_points: int = opt(5, "learning-curve points per model, evenly spaced in steps (the last at the end)")
    curve_samples: Optional[int] = opt(None, "images per curve point but the last (full: 1000; smoke: 20)")
    num_samples: Optional[int] = opt(None, "images per final configuration and final curve point (full: 2000; smoke: 40)")
    sample_batch_size: Optional[int] = opt(None, "images per sampler call and latency batch (full: 500; smoke: 20)")
    sampling_steps: Optional[int] = opt(None, "Euler ODE steps (full: 50; smoke: 2)")
    heldout_items: Optional[int] = opt(None, "test images of the held-out loss (full: 2000; smoke: 16)")
    num_reference: Optional[int] = opt(None, "test images of the reference statistics (full: all 10000; smoke: 200)")
    latency_repeats: Optional[int] = opt(None, "timed calls per configuration, after warm-up (full: 10; smoke: 1)")
    budgets: list[float] = opt([1.0, 0.5, 0.25, 0.125, 0.0625], "budgets of the multibudget model, no guidance")
    guidance_scale: float = opt(1.5, "scale of the CFG / cheap CFG / autoguidance rows")
    guidance_budget: float = opt(0.0625, "budget of the cheap pass of cheap CFG and autoguidance")
    classifier_epochs: Optional[int] = opt(None, "classifier epochs (full: 4; smoke: 1)")
    classifier_items: Optional[int] = opt(None, "classifier training images (full: all; smoke: 512)")
    seed: int = opt(0, "seed of initialisation, batches, noise, held-out draws and per-image sampling seeds")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available; smoke: cpu)")


def mode(cfg: FashionMnistStudyConfig) -> str:
    return "smoke" if cfg.smoke else "full"


def resolve_presets(cfg: FashionMnistStudyConfig) -> SimpleNamespace:
    """The settings of the preset options: the value given, else the mode's preset."""
    return SimpleNamespace(**{k: getattr(cfg, k) if getattr(cfg, k) is not None else v
                              for k, v in PRESETS[mode(cfg)].items()})


def check(cfg: FashionMnistStudyConfig) -> None:
    """UserError for values no run can use."""
    if not os.path.isdir(cfg.source):
        raise UserError(f"Fashion-MNIST folder not found: {cfg.source} (the four idx(.gz) files; "
                        "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist)")
    if cfg.time_budget_minutes <= 0 or (cfg.max_minutes is not None and cfg.max_minutes <= 0):
        raise UserError("time_budget_minutes and max_minutes must be > 0")
    if not 0 < cfg.guidance_budget <= 1 or any(not 0 < b <= 1 for b in cfg.budgets):
        raise UserError("budgets and guidance_budget are fractions in (0, 1]")
    if cfg.eval_points < 2:
        raise UserError("eval_points must be >= 2 (a curve)")
    for key in ("steps", "global_batch_size", "curve_samples", "num_samples", "sample_batch_size", "sampling_steps"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"{key} must be >= 1")
