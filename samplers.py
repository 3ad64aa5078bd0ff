"""Samplers: pure functions over a model call. Euler / Heun ODE, Euler-Maruyama SDE, and the DFM sampler.

Time runs from t = 1 (noise) to t = 0 (data) on the path of `paths.py`; the model predicts the velocity
v = dx_t/dt. Every time grid and every guidance decision is computed on the host from Python floats, so the
step loops contain no host syncs (no `.item()`, no data-dependent branches).

Guidance is one helper, `guided_velocity`, used by every sampler, applied to ALL channels (DiT's sampler
guided only 3 of 4 latent channels), active when guidance_low <= t <= guidance_high and cfg_scale != 1:
- CFG (Ho & Salimans 2022): conditional and null-label (`model.num_classes`) passes at the same budget, in
  ONE forward of the two halves concatenated along the batch; v = u + s (c - u);
- cheap CFG (ELIT): the unconditional pass runs at `unconditional_budget` (a separate, cheaper forward);
- autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): the
  low-budget pass keeps the real label, the weak model being the same network at a low budget.
Outside the interval only the conditional pass runs.

A `budget_schedule` [(t_threshold, budget), ...] sorted by descending threshold makes the conditional budget
a function of t: the first pair whose threshold <= t applies (e.g. [(0.7, 0.25), (0.0, 1.0)]: a quarter of the
latents at high noise); if t is below every threshold, `budget` applies.

`SAMPLERS` (at the bottom) is the one table keyed by family: what each family's sampler reads from the
options, how its steps are resolved, named and counted, and the call that samples; `sample_model` is its
simple entry point (the trainer's sample grids).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from models.dfm import recompose
from paths import get_path
from utils.errors import UserError, user_errors

# forward(xs: list of tensors, t, y, budget) -> list of velocities (one per stage; one tensor for SiT/ELIT)
Forward = Callable[[list, torch.Tensor, torch.Tensor, object], list]

SDE_LAST_T = 0.04   # Euler-Maruyama stops its stochastic steps here, then one deterministic step to 0 (REPA)


# ----------------------------------------------------------------------------------------------------------
# Host-side decisions.

def guidance_scale(t: float, cfg_scale: float, guidance_low: float = 0.0, guidance_high: float = 1.0) -> float:
    """The guidance scale at time t: cfg_scale inside [guidance_low, guidance_high], else 1 (no guidance)."""
    return cfg_scale if guidance_low <= t <= guidance_high else 1.0


def check_budget_schedule(schedule) -> Optional[list[tuple[float, object]]]:
    if schedule is None:
        return None
    schedule = [(float(thr), budget) for thr, budget in schedule]
    if not schedule or any(a[0] < b[0] for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"budget_schedule must be a non-empty list of (t_threshold, budget) pairs sorted by "
                         f"descending threshold, got {schedule}")
    return schedule


def budget_at(t: float, budget=None, schedule=None):
    """The conditional pass's budget at time t: the first scheduled budget whose threshold <= t, else `budget`."""
    for threshold, scheduled in schedule or ():
        if threshold <= t:
            return scheduled
    return budget


def ode_grid(num_steps: int) -> list[float]:
    """linspace(1, 0, num_steps + 1) as Python floats."""
    return [1.0 - i / num_steps for i in range(num_steps + 1)]


def sde_grid(num_steps: int) -> list[float]:
    """linspace(1, 0.04, num_steps) followed by 0: num_steps - 1 stochastic steps and a deterministic last one."""
    if num_steps == 1:
        return [1.0, 0.0]
    return [1.0 - (1.0 - SDE_LAST_T) * i / (num_steps - 1) for i in range(num_steps)] + [0.0]


# ----------------------------------------------------------------------------------------------------------
# Guidance: one helper for every sampler.

def guided_velocity(forward: Forward, xs: list, t: torch.Tensor, y: torch.Tensor, *, scales: Sequence[float],
                    null_label: int, budget=None, unconditional_budget=None, autoguidance: bool = False) -> list:
    """Guided velocities, one per output: output s is u + scales[s] (c - u), or c where scales[s] == 1.

    xs: list of (B, ...) states; t: (B,) or (B, S); y: (B,). With every scale 1 only the conditional pass runs.
    Standard CFG batches the conditional and null-label halves into one forward of 2B; with an
    `unconditional_budget` the second pass is a separate forward at that budget, with the null label
    (cheap CFG) or the real label (autoguidance).
    """
    if all(s == 1 for s in scales):
        return forward(xs, t, y, budget)
    if unconditional_budget is None:
        y_null = torch.full_like(y, null_label)
        out = forward([torch.cat([x, x]) for x in xs], torch.cat([t, t]), torch.cat([y, y_null]), budget)
        cond, uncond = zip(*(o.chunk(2) for o in out))                 # each (B, ...)
    else:
        cond = forward(xs, t, y, budget)
        uncond = forward(xs, t, y if autoguidance else torch.full_like(y, null_label), unconditional_budget)
    return [c if s == 1 else u + s * (c - u) for c, u, s in zip(cond, uncond, scales)]


def check_guidance(unconditional_budget, autoguidance: bool) -> None:
    if autoguidance and unconditional_budget is None:
        raise ValueError("autoguidance needs unconditional_budget (the budget of the weak, guiding pass)")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _float_outputs(call: Callable, autocast_dtype, device) -> Forward:
    """Run `call` under autocast (if asked) and return float32 velocities: the sampler state stays float32."""
    def forward(xs, t, y, budget):
        with _autocast(device, autocast_dtype):
            out = call(xs, t, y, budget)
        return [o.float() for o in out]
    return forward


# ----------------------------------------------------------------------------------------------------------
# SiT / ELIT-SiT.

@torch.no_grad()
def sample(model, noise: torch.Tensor, y: torch.Tensor, *, mode: str = "ode", num_steps: int = 50,
           heun: bool = False, cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
           path_type: str = "linear", budget=None, unconditional_budget=None, autoguidance: bool = False,
           budget_schedule=None, sde_noise: Optional[torch.Tensor] = None,
           autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Integrate noise (B, C, H, W) at t = 1 to a clean sample at t = 0 (float32).

    mode 'ode': Euler on linspace(1, 0, num_steps + 1); `heun` adds Heun's correction on every step but the
      last (EDM, Karras et al. 2022, Alg. 1): 2 num_steps - 1 evaluations.
    mode 'sde': Euler-Maruyama on linspace(1, 0.04, num_steps) with diffusion w(t) = 2t and drift
      v - w/2 * score (the reverse SDE of SiT Eq. 8 with REPA's w(t)), then one deterministic drift step
      0.04 -> 0: num_steps evaluations. `sde_noise` (B, >= num_steps - 1, C, H, W): the Gaussian increments of
      each step, so a caller can give every image its own seed; default randn_like.
    The path (`path_type`) matters only for the SDE's score; the ODE integrates v directly.
    Guidance: see the module docstring; with a `budget_schedule` and standard CFG both halves of the batched
    forward run at the scheduled budget, with cheap CFG / autoguidance the weak pass keeps
    `unconditional_budget`. `autocast_dtype` (e.g. torch.bfloat16) autocasts the model calls only.
    """
    if (getattr(model, "stages", None) or 1) > 1:                    # a list of pyramid stages, not one tensor
        raise ValueError(f"{model.family} models sample scale by scale: use sample_dfm")
    if mode not in ("ode", "sde"):
        raise ValueError(f"unknown sampler mode '{mode}'; valid: ode, sde")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if heun and mode != "ode":
        raise ValueError("heun applies to the ODE sampler only")
    check_guidance(unconditional_budget, autoguidance)
    schedule = check_budget_schedule(budget_schedule)
    if sde_noise is not None and (sde_noise.ndim != noise.ndim + 1 or sde_noise.shape[0] != noise.shape[0]
                                  or sde_noise.shape[1] < num_steps - 1 or sde_noise.shape[2:] != noise.shape[1:]):
        raise ValueError(f"sde_noise must have shape (B, num_steps, ...) = ({noise.shape[0]}, {num_steps}, "
                         f"{', '.join(map(str, noise.shape[1:]))}), got {tuple(sde_noise.shape)}")
    path = get_path(path_type)
    B = noise.shape[0]
    forward = _float_outputs(lambda xs, t, y_, b: [model(xs[0], t, y_, budget=b)], autocast_dtype, noise.device)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        """Guided v at the host time t, (B, C, H, W) float32."""
        t_vec = torch.full((B,), t, device=x.device, dtype=torch.float32)         # (B,)
        scale = guidance_scale(t, cfg_scale, guidance_low, guidance_high)
        return guided_velocity(forward, [x], t_vec, y, scales=[scale], null_label=model.num_classes,
                               budget=budget_at(t, budget, schedule), unconditional_budget=unconditional_budget,
                               autoguidance=autoguidance)[0]

    x = noise.float()                                                  # (B, C, H, W), float32 state
    if mode == "ode":
        grid = ode_grid(num_steps)
        for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
            d_cur = velocity(x, t_cur)
            x_next = x + (t_next - t_cur) * d_cur
            if heun and i < num_steps - 1:                             # trapezoidal correction
                x_next = x + (t_next - t_cur) * 0.5 * (d_cur + velocity(x_next, t_next))
            x = x_next
        return x

    grid = sde_grid(num_steps)
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        v = velocity(x, t_cur)
        w = 2.0 * t_cur                                                # diffusion coefficient w(t) = 2t
        drift = v - 0.5 * w * path.score_from_velocity(x, v, t_cur)
        x = x + (t_next - t_cur) * drift                               # dt < 0
        if i < len(grid) - 2:                                          # every step but the last is stochastic
            z = torch.randn_like(x) if sde_noise is None else sde_noise[:, i].to(x)
            x = x + (w * (t_cur - t_next)) ** 0.5 * z                  # sqrt(w |dt|) N(0, I)
    return x


# ----------------------------------------------------------------------------------------------------------
# DFM-SiT.

def dfm_schedule(steps_per_stage: Sequence[int], thresholds: Sequence[float]) -> list[tuple[list, list, int]]:
    """Per model call: (t_start (S,), t_end (S,), active) as Python floats, for an S-stage DFM sampler.

    Phase i (steps_per_stage[i] Euler steps) moves stage i linearly from 1 to thresholds[i] (the last stage's
    threshold is 0). A coarser stage j < i that reached its threshold at the end of phase j then moves linearly
    from thresholds[j] to 0 over ALL remaining steps (phases j+1 .. S-1), so every stage ends at 0 on the last
    step. Finer stages wait at t = 1 with their noise. A stage is active from the first step on which its time
    decreases: `active` = i + 1 during phase i.
    """
    steps = [int(n) for n in steps_per_stage]
    S = len(steps)
    if S < 1 or any(n < 1 for n in steps) or any(n != m for n, m in zip(steps, steps_per_stage)):
        raise ValueError(f"steps_per_stage must be positive integers, one per stage, got {list(steps_per_stage)}")
    thr = [float(v) for v in thresholds]
    if len(thr) != S - 1:
        raise ValueError(f"{S} stages need {S - 1} stage thresholds (the last stage ends at 0), got {len(thr)}")
    if any(not 0.0 < v < 1.0 for v in thr) or any(a <= b for a, b in zip(thr, thr[1:])):
        raise ValueError(f"stage thresholds must be strictly decreasing and inside (0, 1), got {thr}")
    thr.append(0.0)
    starts = [sum(steps[:j]) for j in range(S + 1)]                   # phase j spans steps [starts[j], starts[j+1])
    total = starts[-1]

    def stage_time(j: int, m: int) -> float:
        """Time of stage j after m steps."""
        if m <= starts[j]:
            return 1.0
        if m <= starts[j + 1]:
            return 1.0 - (1.0 - thr[j]) * (m - starts[j]) / steps[j]
        return thr[j] * (1.0 - (m - starts[j + 1]) / (total - starts[j + 1]))

    schedule = []
    for m in range(total):
        t0 = [stage_time(j, m) for j in range(S)]
        t1 = [stage_time(j, m + 1) for j in range(S)]
        active = 1 + max(j for j in range(S) if t1[j] < t0[j])       # the stage of the current phase
        schedule.append((t0, t1, active))
    return schedule


def default_dfm_schedule(num_steps: int, stages: int) -> tuple[list[int], list[float]]:
    """Default DFM steps and thresholds for a total of `num_steps`: 80% of the steps for stage 0, the rest split
    evenly over the finer stages; thresholds evenly spaced in (0, 0.1] (0.1 for two stages, as the reference)."""
    if stages < 1 or num_steps < stages:
        raise ValueError(f"{stages} DFM stages need at least {stages} steps, got {num_steps}")
    first = min(max(1, round(0.8 * num_steps)), num_steps - (stages - 1))
    rest, extra = divmod(num_steps - first, stages - 1) if stages > 1 else (0, 0)
    steps = [first] + [rest + (1 if i < extra else 0) for i in range(stages - 1)]
    thresholds = [0.1 * (stages - 1 - i) / (stages - 1) for i in range(stages - 1)]
    return steps, thresholds


@torch.no_grad()
def sample_dfm(model, noise: Sequence[torch.Tensor], y: torch.Tensor, *, steps_per_stage=(40, 10),
               thresholds=(0.1,), cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
               path_type: str = "linear", autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """DFM sampler (SPEC 2.4): noise is S tensors coarsest first (`models.dfm.decompose` shapes); returns the
    recomposed full-resolution sample (B, C, H, W) float32.

    Euler steps on `dfm_schedule(steps_per_stage, thresholds)`; the model sees `active` stages. Each stage's
    velocity is guided iff that stage's current time is inside [guidance_low, guidance_high] (one batched
    forward serves every guided stage). `path_type` is accepted for symmetry with `sample`: the ODE integrates
    v directly, so the path does not enter.
    """
    get_path(path_type)                                                # validates the name
    S = model.stages
    if len(noise) != S:
        raise ValueError(f"{model.family} has {S} stages, got {len(noise)} noise tensors")
    if len(steps_per_stage) != S:
        raise ValueError(f"steps_per_stage must have one entry per stage ({S}), got {list(steps_per_stage)}")
    schedule = dfm_schedule(steps_per_stage, thresholds)
    xs = [n.float() for n in noise]
    B, device = xs[0].shape[0], xs[0].device
    # Every step's stage times in one host->device copy before the loop (a copy per step would sync).
    times = torch.tensor([t_start for t_start, _, _ in schedule], device=device, dtype=torch.float32)  # (M, S)
    for m, (t_start, t_end, active) in enumerate(schedule):
        t = times[m].expand(B, S)                                      # (B, S)
        forward = _float_outputs(lambda x_, t_, y_, b, a=active: model(x_, t_, y_, active=a), autocast_dtype, device)
        scales = [guidance_scale(t_start[s], cfg_scale, guidance_low, guidance_high) if s < active else 1.0
                  for s in range(S)]
        v = guided_velocity(forward, xs, t, y, scales=scales, null_label=model.num_classes)
        xs = [x + (t1 - t0) * vs if t1 != t0 else x for x, vs, t0, t1 in zip(xs, v, t_start, t_end)]
    return recompose(xs)


# ----------------------------------------------------------------------------------------------------------
# The sampler table: sampling/plan.py resolves a plan's steps through it, sampling/run.py samples through it.

BUDGET_OPTIONS = ("inference_budget", "budget_schedule", "unconditional_inference_budget", "autoguidance")
DFM_OPTIONS = ("dfm_steps_per_stage", "dfm_stage_thresholds")


def _num(x) -> str:
    """Compact, exact-enough number for folder names: 4.0 -> '4', 0.0625 -> '0.0625'."""
    return format(float(x), "g")


@dataclass(frozen=True)
class FlowSteps:
    """The integrator of `sample`: Euler (/ Heun) ODE or Euler-Maruyama SDE of `num_steps` steps."""
    mode: str
    num_steps: int
    heun: bool

    @property
    def sde_steps(self) -> int:
        """Gaussian increments per image the SDE draws (0 for the ODE)."""
        return self.num_steps - 1 if self.mode == "sde" else 0

    def name_parts(self) -> list[str]:
        return [f"{self.mode}{self.num_steps}" + ("heun" if self.heun else "")]

    def evaluation_times(self) -> list[tuple[float, ...]]:
        """(t,) of every model evaluation of one sample, in order: n (Euler, SDE) or 2n - 1 (Heun)."""
        if self.mode == "sde":
            return [(t,) for t in sde_grid(self.num_steps)[:-1]]
        grid, times = ode_grid(self.num_steps), []
        for i, t in enumerate(grid[:-1]):                              # Heun's correction evaluates at t_next
            times += [(t,), (grid[i + 1],)] if self.heun and i < self.num_steps - 1 else [(t,)]
        return times


@dataclass(frozen=True)
class DFMSteps:
    """The DFM sampler's schedule: Euler steps per pyramid stage and the times at which stages stop."""
    dfm_steps_per_stage: tuple[int, ...]
    dfm_stage_thresholds: tuple[float, ...]
    sde_steps = 0                                                      # ODE only (a class constant)

    def name_parts(self) -> list[str]:
        return ["dfm" + "+".join(str(s) for s in self.dfm_steps_per_stage),
                "thr" + "+".join(_num(t) for t in self.dfm_stage_thresholds)]

    def evaluation_times(self) -> list[tuple[float, ...]]:
        """Per model evaluation, the current times of the active stages (coarsest first)."""
        return [tuple(t0[:active]) for t0, _, active in dfm_schedule(self.dfm_steps_per_stage,
                                                                     self.dfm_stage_thresholds)]


class FlowSampler:
    """SiT and ELIT-SiT: `sample` on the one noise tensor. `options`: the SamplingOptions fields only this
    family reads (ELIT: the budgets, resolved by sampling/plan.py against `model.budget_levels`)."""

    def __init__(self, options: Sequence[str] = ()):
        self.options = tuple(options)

    def resolve(self, model, opts) -> FlowSteps:
        given = [k for k in DFM_OPTIONS if getattr(opts, k) is not None]
        if given:
            name = model.arch["name"] if hasattr(model, "arch") else model.family
            raise UserError(f"{given[0]} applies to {owner(given[0])} models, not {name}")
        return FlowSteps(mode=opts.mode, num_steps=int(opts.num_steps), heun=bool(opts.heun))

    def run(self, model, plan, noise: list, labels: torch.Tensor, sde_noise=None, autocast_dtype=None):
        """`plan` (a sampling.plan.SamplingPlan) on noise [(n, C, H, W)] -> (n, C, H, W) float32."""
        return sample(model, noise[0], labels, mode=plan.steps.mode, num_steps=plan.steps.num_steps,
                      heun=plan.steps.heun, cfg_scale=plan.cfg_scale, guidance_low=plan.guidance_low,
                      guidance_high=plan.guidance_high, path_type=plan.path_type, budget=plan.budget,
                      unconditional_budget=plan.unconditional_budget, autoguidance=plan.autoguidance,
                      budget_schedule=plan.budget_schedule, sde_noise=sde_noise, autocast_dtype=autocast_dtype)

    def sample_default(self, model, noise: list, labels, *, num_steps, cfg_scale, budget, path_type, autocast_dtype):
        return sample(model, noise[0], labels, num_steps=num_steps, cfg_scale=cfg_scale, path_type=path_type,
                      budget=budget, autocast_dtype=autocast_dtype)


class DFMSampler:
    """DFM-SiT: `sample_dfm` on one noise tensor per stage, with its own Euler schedule."""
    options = DFM_OPTIONS

    def resolve(self, model, opts) -> DFMSteps:
        if opts.mode != "ode" or opts.heun:
            raise UserError(f"{model.family} samples with its own Euler schedule: use mode ode without heun")
        with user_errors("DFM schedule: "):
            steps, thresholds = default_dfm_schedule(opts.num_steps, model.stages)
            steps = list(opts.dfm_steps_per_stage) if opts.dfm_steps_per_stage is not None else steps
            thresholds = list(opts.dfm_stage_thresholds) if opts.dfm_stage_thresholds is not None else thresholds
            if len(steps) != model.stages:
                raise ValueError(f"dfm_steps_per_stage needs one entry per stage ({model.stages}), got {steps}")
            dfm_schedule(steps, thresholds)
        return DFMSteps(tuple(int(s) for s in steps), tuple(float(t) for t in thresholds))

    def run(self, model, plan, noise: list, labels: torch.Tensor, sde_noise=None, autocast_dtype=None):
        return sample_dfm(model, noise, labels, steps_per_stage=list(plan.steps.dfm_steps_per_stage),
                          thresholds=list(plan.steps.dfm_stage_thresholds), cfg_scale=plan.cfg_scale,
                          guidance_low=plan.guidance_low, guidance_high=plan.guidance_high,
                          path_type=plan.path_type, autocast_dtype=autocast_dtype)

    def sample_default(self, model, noise: list, labels, *, num_steps, cfg_scale, budget, path_type, autocast_dtype):
        model.check_budget(budget)                                     # no compute budgets
        steps, thresholds = default_dfm_schedule(num_steps, model.stages)
        return sample_dfm(model, noise, labels, steps_per_stage=steps, thresholds=thresholds, cfg_scale=cfg_scale,
                          path_type=path_type, autocast_dtype=autocast_dtype)


SAMPLERS = {"SiT": FlowSampler(), "ELIT-SiT": FlowSampler(options=BUDGET_OPTIONS), "DFM-SiT": DFMSampler()}


def owner(option: str) -> str:
    """The family whose sampler reads `option` (named in the error when another family is given it)."""
    return next(family for family, entry in SAMPLERS.items() if option in entry.options)


def sample_model(model, noise: list, labels: torch.Tensor, *, num_steps: int, cfg_scale: float = 1.0, budget=None,
                 path_type: str = "linear", autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The family's default sampler: noise is one (n, *shape) tensor per `model.noise_shapes()` entry; Euler
    ODE of `num_steps` steps (DFM: `default_dfm_schedule(num_steps)`), CFG over all t -> (n, C, H, W) float32."""
    return SAMPLERS[model.family].sample_default(model, noise, labels, num_steps=num_steps, cfg_scale=cfg_scale,
                                                 budget=budget, path_type=path_type, autocast_dtype=autocast_dtype)
