"""Compute accounting and the time guard of the study: FLOP tables, training and sampling FLOPs, the step cap
that fits both trainings into the time budget, and the sample count that fits sampling.

A model's FLOP table maps a budget fraction to GFLOPs per image and forward ({None: F} for a model without
compute budgets, `model.budget_levels` empty); every cost below reads it, never the family name."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import torch

from loss import draw_budget
from models import build_from_arch
from models.flops import gflops_per_image
from studies.fmnist.options import GROUP_SIZE, MODELS
from studies.fmnist.rows import level
from studies.fmnist.state import Study
from studies.fmnist.tools import sample_gflops, step_gflops

SAMPLING_SAFETY = 1.25         # sampling FLOPs run at most this much slower than training FLOPs (small budgets)
POST_TRAINING_S = 45.0         # loading, held-out loss, latency, metrics, plots (sampling: estimated)
POST_SAMPLING_S = 40.0         # latency, metrics, plots
TRAINER_OVERHEAD_S = 10.0      # per continued run: Trainer construction, checkpoint load/save, sample grid
HARD_DEADLINE_S = 60.0         # rows not started this long after the budget are skipped


def flop_table(arch: dict) -> dict:
    """GFLOPs per image of one forward: {None: F} without budgets (SiT); {b: F(b)} for every level (ELIT)."""
    with torch.device("meta"):
        levels = build_from_arch(arch).budget_levels
    if not levels:
        return {None: gflops_per_image(SimpleNamespace(arch=arch))}
    return {b: gflops_per_image(SimpleNamespace(arch=arch), budget=b) for b in levels}


def row_gflops(table: dict, plan: dict) -> tuple[float, float]:
    """(GFLOPs per image of one forward / guided step, GFLOPs per sample) of a row's plan from its FLOP table."""
    if None in table:                                           # no budgets: the one cost at "full budget"
        table, plan = {1.0: table[None]}, dict(plan, budget=1.0)
    return step_gflops(plan, table), sample_gflops(plan, table)


def training_gflops(study: Study, name: str, steps: int) -> float:
    """Training GFLOPs of `steps` steps: 3 x forward (forward + backward) x batch, summed over the steps'
    ELIT budgets as the Trainer draws them (loss.draw_budget: a pure function of seed and step)."""
    B, table = study.p.global_batch_size, study.flops[name]
    if None in table:
        return 3.0 * B * steps * table[None]
    levels = sorted(table)
    return 3.0 * B * sum(table[draw_budget(levels, 0.0, 1.0 - 1.0 / GROUP_SIZE**2, study.cfg.seed, s)]
                         for s in range(steps))


def sampling_gflops(study: Study, num_samples: int) -> float:
    """Forward GFLOPs of sampling every row (guided rows: every step guided, interval [0, 1])."""
    total = 0.0
    for row in study.rows:
        m = row["record"]["model"]
        if m not in study.flops:
            continue
        table = study.flops[m]
        if None in table:
            per = table[None]
        else:
            per = table[level(row["gen"].inference_budget or 1.0)]
            if row["record"]["guidance"]:
                per += table[level(row["gen"].unconditional_inference_budget or 1.0)]
        total += per * num_samples * study.p.sampling_steps
    return total


def flop_rate(study: Study) -> Optional[float]:
    """Training FLOP/s measured by the probes (SiT's if known): sets the time estimates."""
    for name in MODELS:
        t = study.step_seconds.get(name)
        if t and name in study.flops:
            steps = study.p.probe_steps
            per_step = training_gflops(study, name, steps) / steps
            return per_step * 1e9 / t
    return None


def set_step_cap(study: Study) -> None:
    """After the probes: the common step count that fits the time budget (never above `steps`)."""
    p = study.p
    known = [t for t in study.step_seconds.values() if t]
    info = dict(requested=p.steps, probe_steps=p.probe_steps, step_seconds=dict(study.step_seconds))
    if not known:
        study.steps_cap = p.steps
        info.update(cap=p.steps, reason="no step time measured: no cap")
    else:
        pair = sum(study.step_seconds.get(n) or max(known) for n in MODELS)
        rate = flop_rate(study)
        sampling = SAMPLING_SAFETY * sampling_gflops(study, study.num_samples) * 1e9 / rate if rate else 0.0
        available = study.deadline - study.elapsed() - POST_TRAINING_S - sampling - TRAINER_OVERHEAD_S * len(MODELS)
        cap = p.probe_steps + max(0, math.floor(available / pair))
        study.steps_cap = int(max(min(p.steps, cap), min(p.probe_steps, p.steps)))
        info.update(cap=study.steps_cap, seconds_per_step_pair=pair, estimated_sampling_s=round(sampling, 1),
                    available_training_s=round(available, 1), flop_rate_tflops=rate / 1e12 if rate else None,
                    reason="time budget" if study.steps_cap < p.steps else "requested steps fit")
    study.results["training"]["step_cap"] = info
    study.say(f"step cap: {study.steps_cap} steps for both models ({info['reason']})")


def decide_num_samples(study: Study) -> None:
    """Reduce the per-row sample count (equally for every row) when sampling would overrun the budget."""
    rate = flop_rate(study)
    n = study.p.num_samples
    if rate:
        estimate = SAMPLING_SAFETY * sampling_gflops(study, n) * 1e9 / rate
        remaining = study.deadline - study.elapsed() - POST_SAMPLING_S
        if estimate > remaining:
            n = max(100, int(n * max(remaining, 0) / estimate) // 100 * 100)
            n = min(n, study.p.num_samples)
            study.say(f"sampling: estimated {estimate:.0f} s for {study.p.num_samples} images per row, "
                      f"{remaining:.0f} s left: {n} images per row")
        study.results["settings"]["sampling_estimate_s"] = round(estimate, 1)
    study.num_samples = n
    study.results["settings"]["num_samples_used"] = n
