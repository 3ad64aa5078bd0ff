"""The configurations the study samples at the end (its rows), in priority order (the time guard skips from
the end), and how their numbers are written."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

from sampling.options import SamplingOptions
from studies.fmnist.options import LEVELS, MODELS, FashionMnistStudyConfig

FULL_ROW = {"sit": "sit", "elit_single": "single_b1", "elit_multi": "multi_b1"}   # each model's curve row
RECORD_FIELDS = ("gflops", "gflops_per_sample", "latency_ms_per_image", "latency_path", "heldout_loss", "fd",
                 "precision", "recall", "accuracy", "num_samples", "sampling_seconds", "error")


def fraction(b: Optional[float]) -> str:
    """A budget as a fraction: 0.0625 -> '1/16'; None (no budget) -> '1'."""
    return "1" if b is None else str(Fraction(b).limit_denominator(256))


def fmt(v, spec: str = ".3f") -> str:
    """A number of a table or sentence; 'n/a' when it is missing."""
    return "n/a" if v is None else format(v, spec)


def level(budget: float) -> float:
    """A budget fraction -> the ELIT level the model uses (k / K, K = LEVELS slots per window)."""
    return math.floor(budget * LEVELS + 1e-6) / LEVELS


def _row(key: str, label: str, model: str, budget, guidance=None, **opts) -> dict:
    record = dict(key=key, label=label, model=model, budget=budget, guidance=guidance,
                  gflops_per=("guided step" if guidance else "forward"), **{f: None for f in RECORD_FIELDS})
    return dict(record=record, opts=SamplingOptions(precision="bf16", fast=False, **opts))


def define_rows(cfg: FashionMnistStudyConfig, sampling_steps: int) -> list[dict]:
    """Every final configuration: its record (results.json) and its SamplingOptions.

    The three models unguided at full budget (the curves' last points); the multibudget model at each of
    cfg.budgets; then guidance at cfg.guidance_scale with the conditional pass at full budget: CFG (null-label
    pass at full budget), cheap CFG (null-label pass at cfg.guidance_budget) and autoguidance (guiding pass at
    cfg.guidance_budget, real label) on the multibudget model, and CFG / cheap CFG on the single-budget one
    (does cheap CFG need multibudget training?)."""
    n = dict(num_steps=sampling_steps)
    s, gb = cfg.guidance_scale, cfg.guidance_budget
    single, multi = MODELS["elit_single"]["label"], MODELS["elit_multi"]["label"]
    rows = [_row("sit", MODELS["sit"]["label"], "sit", None, **n),
            _row("single_b1", f"{single} b=1", "elit_single", 1.0, inference_budget=1.0, **n)]
    budgets = [1.0] + [b for b in cfg.budgets if b != 1.0]
    rows += [_row(f"multi_b{b:g}", f"{multi} b={fraction(b)}", "elit_multi", b, inference_budget=b, **n)
             for b in budgets]
    guided = dict(cfg_scale=s, inference_budget=1.0, **n)
    for model, prefix, name, kinds in (("elit_multi", "multi", multi, ("cfg", "cheap_cfg", "autoguidance")),
                                       ("elit_single", "single", single, ("cfg", "cheap_cfg"))):
        for kind in kinds:
            extra = {} if kind == "cfg" else dict(unconditional_inference_budget=gb,
                                                  autoguidance=kind == "autoguidance")
            label = {"cfg": f"CFG {s:g}", "cheap_cfg": f"cheap CFG {s:g} (uncond. b={fraction(gb)})",
                     "autoguidance": f"autoguidance {s:g} (guide b={fraction(gb)})"}[kind]
            row = _row(f"{prefix}_{kind}", f"{name}: {label}", model, 1.0, kind, **guided, **extra)
            row["record"].update(guidance_scale=s, guidance_budget=None if kind == "cfg" else gb)
            rows.append(row)
    return rows
