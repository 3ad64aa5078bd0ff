"""The configurations the study compares (its rows), and how their numbers are written."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Optional

from sampling.options import GenerateConfig
from studies.fmnist.options import GROUP_SIZE, FashionMnistStudyConfig


def fraction(b: Optional[float]) -> str:
    """A budget as a fraction: 0.0625 -> '1/16'; None (no budget) -> '1'."""
    return "1" if b is None else str(Fraction(b).limit_denominator(256))


def fmt(v, spec: str = ".3f") -> str:
    """A number of a table or sentence; 'n/a' when it is missing."""
    return "n/a" if v is None else format(v, spec)


def level(budget: float) -> float:
    """A budget fraction -> the ELIT level the model uses (k / K, K = GROUP_SIZE^2 slots per window)."""
    slots = GROUP_SIZE ** 2
    return math.floor(budget * slots + 1e-6) / slots


def define_rows(cfg: FashionMnistStudyConfig, sampling_steps: int) -> list[dict]:
    """Every configuration: its record (results.json) and its sampling options (a GenerateConfig).

    SiT; the ELIT model at each of cfg.budgets without guidance; then, with cfg.guidance_scale and the
    conditional pass at full budget, CFG, cheap CFG and autoguidance (guiding pass at cfg.guidance_budget)."""
    base = GenerateConfig(num_steps=sampling_steps, precision="bf16", fast=False, seed=cfg.seed)
    rows = [dict(record=dict(key="sit", label="SiT-S/2", model="sit", budget=None, guidance=None),
                 gen=base)]
    for b in cfg.budgets:
        rows.append(dict(record=dict(key=f"elit_b{b:g}", label=f"ELIT-SiT-S/2 b={fraction(b)}", model="elit",
                                     budget=b, guidance=None),
                         gen=dataclasses.replace(base, inference_budget=b)))
    s, gb = cfg.guidance_scale, cfg.guidance_budget
    guided = dataclasses.replace(base, cfg_scale=s, inference_budget=1.0)
    for key, label, extra in (
            ("cfg", f"CFG {s:g}", {}),
            ("cheap_cfg", f"cheap CFG {s:g} (uncond. b={fraction(gb)})", dict(unconditional_inference_budget=gb)),
            ("autoguidance", f"autoguidance {s:g} (guide b={fraction(gb)})",
             dict(unconditional_inference_budget=gb, autoguidance=True))):
        rows.append(dict(record=dict(key=key, label=label, model="elit", budget=1.0, guidance=key,
                                     guidance_scale=s, guidance_budget=None if key == "cfg" else gb),
                         gen=dataclasses.replace(guided, **extra)))
    for r in rows:
        r["record"].update(gflops=None, gflops_per=("guided step" if r["record"]["guidance"] else "forward"),
                           gflops_per_sample=None, latency_ms_per_image=None, latency_path=None,
                           heldout_loss=None, fd=None, precision=None, recall=None, accuracy=None,
                           inception_score=None, num_samples=None, sampling_seconds=None, error=None)
    return rows
