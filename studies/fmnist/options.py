"""Options of the Fashion-MNIST study and its classifier, with the study's presets: the schema and the values
its None-means-preset options take, in one place (tests/test_study.py checks that the help texts quote them)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal, Optional

from utils.cli import opt
from utils.errors import UserError

MODELS = {"sit": "SiT-S/2", "elit": "ELIT-SiT-S/2"}            # study key -> registry name
GROUP_SIZE = 4                                                  # 16x16 tokens -> 16 windows of 4x4
PRESETS = {  # values of the options left at None, per mode
    "full": dict(steps=3000, global_batch_size=256, learning_rate=2e-4, warmup_steps=100, ema_decay=0.99,
                 probe_steps=60, log_every=20, num_workers=4, num_samples=2000, sample_batch_size=500,
                 sampling_steps=50, heldout_items=2000, num_reference=None, latency_batch_size=256,
                 latency_repeats=10, classifier_epochs=None, classifier_items=None),
    "smoke": dict(steps=6, global_batch_size=8, learning_rate=1e-3, warmup_steps=0, ema_decay=0.5, probe_steps=3,
                  log_every=1, num_workers=0, num_samples=20, sample_batch_size=20, sampling_steps=4,
                  heldout_items=16, num_reference=200, latency_batch_size=4, latency_repeats=2, classifier_epochs=2,
                  classifier_items=512),
}
SMOKE_MODEL = dict(hidden_size=32, depth=4, num_heads=2)       # registry sizes overridden (Trainer model_kwargs)
SMOKE_ELIT = dict(elit_head_depth=1, elit_tail_depth=1)        # ... and, for the ELIT model, its head/tail depth
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
    """studies/fashion_mnist.py: SiT-S/2 vs multibudget ELIT-SiT-S/2 on Fashion-MNIST, data to report in one command.
    Options left at None take the preset of the mode (full GPU run or --smoke): see PRESETS above."""
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


def mode(cfg: FashionMnistStudyConfig) -> str:
    return "smoke" if cfg.smoke else "full"


def resolve_presets(cfg: FashionMnistStudyConfig) -> SimpleNamespace:
    """The settings of the preset options: the value given, else the mode's preset."""
    return SimpleNamespace(**{k: getattr(cfg, k) if getattr(cfg, k) is not None else v
                              for k, v in PRESETS[mode(cfg)].items()})


def check(cfg: FashionMnistStudyConfig) -> None:
    """UserError for values no run can use."""
    if cfg.time_budget_minutes <= 0:
        raise UserError("time_budget_minutes must be > 0")
    if not 0 < cfg.guidance_budget <= 1 or any(not 0 < b <= 1 for b in cfg.budgets):
        raise UserError("budgets and guidance_budget are fractions in (0, 1]")
