"""The study's one door to the sampling library (plans as plain dicts, as the study's rows hold them)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from dataio.options import FashionMnistConfig
from dataio.sources.fashion_mnist import fashion_mnist
from sampling import cost
from sampling.load import Decoder, load_for_sampling  # noqa: F401  (re-exported for stages.py)
from sampling.plan import SamplingPlan, resolve_plan
from sampling.run import sample_latents
from utils.plots import plot_grid, savefig  # noqa: F401  (re-exported for report.py)


def _plan(plan) -> SamplingPlan:
    return plan if isinstance(plan, SamplingPlan) else SamplingPlan.from_dict(plan)


def median_time(fn, device, repeats: int) -> float:
    return cost.measure(fn, device, repeats)[0]


def guided_step_fn(model, plan, batch: int, device):
    return cost.guided_step_fn(model, _plan(plan), batch, device)


def step_gflops(plan, flops: dict) -> float:
    return cost.step_gflops(_plan(plan), flops)


def sample_gflops(plan, flops: dict) -> float:
    return cost.sample_gflops(_plan(plan), flops)


def sampling_plan(model, gen, device, warn: Callable[[str], None]) -> dict:
    """The sampling plan of one row's options as a dict, with the budget keys every family reads here."""
    plan = resolve_plan(model, gen, device, "linear", warn=warn).to_dict()
    plan.setdefault("budget", None)
    plan.setdefault("unconditional_budget", None)
    plan.setdefault("autoguidance", False)
    return plan


def generate_images(model, indices, cfg, device, dataset_meta: Optional[dict] = None, vae=None, *,
                    path_type: str = "linear", labels=None, plan=None) -> np.ndarray:
    """uint8 images (n, H, W, 3) of image `indices` under `plan` (seed cfg.seed + i per image)."""
    plan = _plan(plan) if plan is not None else resolve_plan(model, cfg, device, path_type)
    x = sample_latents(model, plan, indices, seed=cfg.seed, num_classes=getattr(cfg, "num_classes_sampled", None),
                       labels=labels, device=device)
    return Decoder(dataset_meta, vae=vae).load(model, device)(x, len(indices))


def import_fashion_mnist(source: str, dest: str, split: str) -> None:
    """`dataset_tools.py fashion-mnist` at 32x32, 1 channel: DEST/split (idempotent)."""
    fashion_mnist(FashionMnistConfig(source=source, dest=dest, split=split, resolution=32, channels=1))
