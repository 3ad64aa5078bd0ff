"""What sampling costs: GFLOPs per step and per sample of a plan, and wall-clock timing of device work.

FLOPs come from a table {budget fraction (None: no budgets) -> GFLOPs per image of one forward}
(`models.flops.gflops_per_image` on the meta device); a plan's model evaluations
(`SamplingPlan.model_evaluations`) say which steps run the guiding pass too.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from samplers import guided_velocity
from sampling.plan import SamplingPlan


def step_gflops(plan: SamplingPlan, flops: dict) -> float:
    """GFLOPs per image of one (guided) step of `plan`; `flops` maps a budget fraction to GFLOPs per forward.
    Guided: the conditional pass at the plan's budget plus the guiding pass (CFG: the same budget, batched;
    cheap CFG / autoguidance: the unconditional budget)."""
    cond = flops[plan.budget]
    if plan.cfg_scale == 1.0:
        return cond
    ub = plan.unconditional_budget
    return cond + flops[plan.budget if ub is None else ub]


def sample_gflops(plan: SamplingPlan, flops: dict) -> float:
    """GFLOPs per image of one whole sample: every model evaluation, guided only inside the interval."""
    guided, unguided = step_gflops(plan, flops), step_gflops(plan.replace(cfg_scale=1.0), flops)
    return sum(guided if g else unguided for _, g in plan.model_evaluations())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable, device, repeats: int = 1) -> tuple[float, object]:
    """(median seconds of `repeats` calls of fn, device work included; the last call's result).

    Wall clock between two device synchronisations, so queued kernels are waited for before and after.
    """
    device = torch.device(device)
    seconds, result = [], None
    for _ in range(max(repeats, 1)):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def guided_step_fn(model, plan: SamplingPlan, batch: int, device) -> Callable:
    """One guided (or plain) velocity evaluation of `plan` at t = 0.5 on a random batch, as the sampler runs it."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g).to(device)
    y = torch.randint(model.num_classes, (batch,), generator=g).to(device)
    t = torch.full((batch,), 0.5, device=device)
    dtype = plan.autocast_dtype(device)

    def forward(xs, t_, y_, budget):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return [model(xs[0], t_, y_, budget=budget).float()]

    @torch.no_grad()
    def step():
        return guided_velocity(forward, [x], t, y, scales=[plan.cfg_scale], null_label=model.num_classes,
                               budget=plan.budget, unconditional_budget=plan.unconditional_budget,
                               autoguidance=plan.autoguidance)
    return step
