"""The sampling plan: every knob of a sampler call resolved once, typed and frozen.

`resolve_plan(model, options)` validates the SamplingOptions fields against the model and keeps only the
knobs that matter: without guidance (cfg_scale 1) the guidance interval, unconditional budget and
autoguidance are dropped; budgets become the fractions k / K the model uses (64 tokens of 16 windows ->
0.25; full -> 1), only for models with `budget_levels`; the steps come from the family's entry of
`samplers.SAMPLERS` (SiT / ELIT: mode, num_steps, heun; DFM: steps per stage and thresholds, defaults of
`samplers.default_dfm_schedule`). The plan names the output folder (`name_parts`), is saved beside the samples
and compared on resume (`to_dict`), and lists the model evaluations of one sample (`model_evaluations`).

`GenerationPlan` is generate.py's whole job: a plan applied to images 0..N-1 of one checkpoint's weights,
with the folder name and the settings that resume compares.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from samplers import BUDGET_OPTIONS, SAMPLERS, DFMSteps, FlowSteps, guidance_scale, owner
from sampling.load import Decoder, SamplingCheckpoint
from sampling.options import parse_budget_schedule
from utils.errors import UserError, user_errors

Steps = Union[FlowSteps, DFMSteps]


def _num(x) -> str:
    """Compact, exact-enough number for names: 4.0 -> '4', 0.0625 -> '0.0625'."""
    return format(float(x), "g")


def _plain(obj):
    """Tuples -> lists, recursively: the plan as the plain data that JSON stores."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Budgets:
    """Compute budgets (ELIT) as fractions k / K of the latents per window."""
    budget: Optional[float]                                     # the conditional pass; None under a schedule
    budget_schedule: Optional[tuple[tuple[float, float], ...]]  # ((t_threshold, fraction), ...), descending t
    unconditional_budget: Optional[float]                       # the guiding pass: cheap CFG / autoguidance
    autoguidance: bool                                          # the guiding pass keeps the real label


@dataclass(frozen=True)
class SamplingPlan:
    """The resolved knobs of one sampler: what decides the samples' bytes, given the noise and labels."""
    family: str                         # the key into samplers.SAMPLERS
    path_type: str                      # interpolation path of training (the SDE's score)
    cfg_scale: float
    guidance_low: float
    guidance_high: float
    precision: str                      # bf16fast (CUDA graphs) | bf16 (autocast) | fp32
    steps: Steps                        # from the family's sampler entry
    budgets: Optional[Budgets] = None   # models with compute budgets only

    @property
    def sampler(self):
        return SAMPLERS[self.family]

    @property
    def budget(self) -> Optional[float]:
        return self.budgets.budget if self.budgets else None

    @property
    def budget_schedule(self) -> Optional[tuple]:
        return self.budgets.budget_schedule if self.budgets else None

    @property
    def unconditional_budget(self) -> Optional[float]:
        return self.budgets.unconditional_budget if self.budgets else None

    @property
    def autoguidance(self) -> bool:
        return self.budgets.autoguidance if self.budgets else False

    def replace(self, **changes) -> "SamplingPlan":
        """A copy with `changes` (derived plans for cost accounting; no re-validation)."""
        return dataclasses.replace(self, **changes)

    def autocast_dtype(self, device) -> Optional[torch.dtype]:
        return torch.bfloat16 if self.precision.startswith("bf16") and torch.device(device).type == "cuda" else None

    def model_evaluations(self) -> list[tuple[float, bool]]:
        """(t, guided) of every model evaluation of one sample, for cost accounting. A guided evaluation
        runs the guiding pass too (CFG: one forward of 2B). DFM: t of the finest active stage; guided when
        any active stage's time is inside the guidance interval."""
        return [(times[-1], any(guidance_scale(t, self.cfg_scale, self.guidance_low, self.guidance_high) != 1.0
                                for t in times))
                for times in self.steps.evaluation_times()]

    def name_parts(self) -> list[str]:
        """The sampler (`ode50`, `ode50heun`, `sde250`; DFM `dfm40+10-thr0.1`); guidance (`cfg1`, or
        `cfg4-gi{low}to{high}` plus `ucb{B}` for cheap CFG / `ag{B}` for autoguidance); the budget
        (`b{fraction}` or `sched` + `t{T}b{B}`...); the precision."""
        parts = self.steps.name_parts()
        if self.cfg_scale == 1.0:
            parts.append("cfg1")
        else:
            parts += [f"cfg{_num(self.cfg_scale)}", f"gi{_num(self.guidance_low)}to{_num(self.guidance_high)}"]
            if self.unconditional_budget is not None:
                parts.append(("ag" if self.autoguidance else "ucb") + _num(self.unconditional_budget))
        if self.budgets is not None:
            if self.budget_schedule:
                parts.append("sched" + "".join(f"t{_num(t)}b{_num(b)}" for t, b in self.budget_schedule))
            else:
                parts.append(f"b{_num(self.budget)}")
        return parts + [self.precision]

    def to_dict(self) -> dict:
        """Plain data, flat: the common knobs, then the budgets' and the steps' fields (as generation.json holds)."""
        d = dict(family=self.family, path_type=self.path_type, cfg_scale=self.cfg_scale,
                 guidance_low=self.guidance_low, guidance_high=self.guidance_high, precision=self.precision)
        if self.budgets is not None:
            d.update(dataclasses.asdict(self.budgets))
        d.update(dataclasses.asdict(self.steps))
        return _plain(d)

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingPlan":
        """Inverse of `to_dict` (budget keys present -> budgets; `mode` -> flow steps, else DFM steps)."""
        if "mode" in d:
            steps = FlowSteps(mode=d["mode"], num_steps=int(d["num_steps"]), heun=bool(d["heun"]))
        else:
            steps = DFMSteps(tuple(d["dfm_steps_per_stage"]), tuple(d["dfm_stage_thresholds"]))
        budgets = None
        if "budget" in d:
            schedule = d.get("budget_schedule")
            budgets = Budgets(budget=d["budget"], budget_schedule=tuple(map(tuple, schedule)) if schedule else None,
                              unconditional_budget=d.get("unconditional_budget"),
                              autoguidance=bool(d.get("autoguidance", False)))
        return cls(family=d["family"], path_type=d["path_type"], cfg_scale=d["cfg_scale"],
                   guidance_low=d["guidance_low"], guidance_high=d["guidance_high"], precision=d["precision"],
                   steps=steps, budgets=budgets)


def _budget_fraction(model, budget, key: str, warn: Callable[[str], None]) -> float:
    """A budget (fraction or total latent count) -> its canonical fraction k / K; UserError naming the levels."""
    with user_errors(f"{key}: "):
        k = model.latents_per_window(budget)
    if budget is not None and budget <= 1 and abs(budget - k / model.slots) > 1e-9:
        warn(f"{key} {_num(budget)} keeps {k} of {model.slots} latents per window (budget {_num(k / model.slots)})")
    return k / model.slots


def _resolve_budgets(model, opts, guided: bool, name: str, warn) -> Optional[Budgets]:
    values = dict(inference_budget=opts.inference_budget, budget_schedule=opts.budget_schedule,
                  unconditional_inference_budget=opts.unconditional_inference_budget,
                  autoguidance=opts.autoguidance or None)
    if not model.budget_levels:
        given = [k for k in BUDGET_OPTIONS if values[k] is not None]
        if given:
            raise UserError(f"{given[0]} applies to {owner(given[0])} models; {name} has no compute budgets")
        return None
    if opts.autoguidance and opts.unconditional_inference_budget is None and guided:
        raise UserError("autoguidance needs unconditional_inference_budget (the budget of the guiding pass)")
    if opts.budget_schedule is not None and opts.inference_budget is not None:
        raise UserError("inference_budget and budget_schedule exclude each other (the schedule covers every t)")
    schedule = parse_budget_schedule(opts.budget_schedule)
    ub = opts.unconditional_inference_budget
    return Budgets(
        budget=None if schedule else _budget_fraction(model, opts.inference_budget, "inference_budget", warn),
        budget_schedule=tuple((t, _budget_fraction(model, b, "budget_schedule", warn)) for t, b in schedule)
        if schedule else None,
        unconditional_budget=_budget_fraction(model, ub, "unconditional_inference_budget", warn)
        if guided and ub is not None else None,
        autoguidance=bool(opts.autoguidance) and guided)


def resolve_plan(model, opts, device=None, path_type: str = "linear",
                 warn: Optional[Callable[[str], None]] = None) -> SamplingPlan:
    """Validate the sampling options `opts` (SamplingOptions fields) against `model` -> its plan.

    UserError on invalid knobs; `warn` is told of knobs that have no effect and of rounded budgets.
    precision: bf16 on CUDA ('bf16fast' with `fast`), fp32 otherwise.
    """
    warn = warn or (lambda message: None)
    name = model.arch["name"] if hasattr(model, "arch") else model.family
    device = torch.device(device if device is not None else "cpu")
    if opts.num_steps < 1:
        raise UserError(f"num_steps must be >= 1, got {opts.num_steps}")
    if opts.guidance_low > opts.guidance_high:
        raise UserError(f"guidance_low ({opts.guidance_low}) must not exceed guidance_high ({opts.guidance_high})")
    if opts.heun and opts.mode == "sde":
        raise UserError("heun applies to the ODE sampler only (mode: ode)")
    guided = opts.cfg_scale != 1.0
    if not guided and (opts.unconditional_inference_budget is not None or opts.autoguidance
                       or (opts.guidance_low, opts.guidance_high) != (0.0, 1.0)):
        warn("cfg_scale is 1 (no guidance): guidance_low/high, unconditional_inference_budget and autoguidance "
             "have no effect and are ignored")
    budgets = _resolve_budgets(model, opts, guided, name, warn)
    steps = SAMPLERS[model.family].resolve(model, opts)
    precision = (("bf16fast" if getattr(opts, "fast", False) else "bf16")
                 if opts.precision == "bf16" and device.type == "cuda" else "fp32")
    return SamplingPlan(family=model.family, path_type=path_type, cfg_scale=float(opts.cfg_scale),
                        guidance_low=float(opts.guidance_low) if guided else 0.0,
                        guidance_high=float(opts.guidance_high) if guided else 1.0,
                        precision=precision, steps=steps, budgets=budgets)


# ----------------------------------------------------------------------------------------------------------
# generate.py: a plan over a numbered set of images.

@dataclass(frozen=True)
class GenerationPlan:
    """`sampling` applied to images 0..N-1 (image i seeded with seed + i) of one checkpoint's weights."""
    sampling: SamplingPlan
    model: str
    arch: dict = field(hash=False)
    label: str                          # checkpoint: a readable name, its step and weights' fingerprint
    step: int
    fingerprint: str
    weights: str                        # ema | model
    seed: int
    num_samples: int
    batch_size: int                     # per forward: the batch composition fixes the bytes
    num_classes: int                    # labels from the first num_classes classes
    classes_restricted: bool            # num_classes < the model's
    decoding: dict = field(hash=False)  # Decoder.record(): output kind, VAE, normalisation
    vae_tag: Optional[str] = None       # the VAE when not the checkpoint's own
    labels: str = "random"              # random (drawn per image) | balanced (image i: class i mod num_classes)

    @property
    def folder_name(self) -> str:
        """`{label}-step{S}-{fingerprint}-{weights}`, the sampling plan's parts, `seed{S}-n{N}-batch{b}`,
        `cls{K}` when labels come from the first K classes, `balanced` for class-balanced labels, `vae-{name}` when the VAE is not the checkpoint's,
        e.g. elit-xl-step400000-3fa4c21b-ema-ode50-cfg4-gi0to1-ucb0.0625-b1-bf16-seed0-n50000-batch32."""
        parts = [self.label, f"step{self.step}", self.fingerprint, self.weights, *self.sampling.name_parts(),
                 f"seed{self.seed}", f"n{self.num_samples}", f"batch{self.batch_size}"]
        if self.classes_restricted:
            parts.append(f"cls{self.num_classes}")
        if self.labels != "random":
            parts.append(self.labels)
        if self.vae_tag:
            parts.append("vae-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", self.vae_tag))
        return "-".join(parts)

    def settings(self) -> dict:
        """What generation.json stores and a resumed run must match (plain JSON data, sorted keys).

        `labels` is recorded only when not the default, so folders written before the option still resume."""
        extra = {} if self.labels == "random" else dict(labels=self.labels)
        return json.loads(json.dumps(dict(
            self.sampling.to_dict(), model=self.model, arch=self.arch, weights=self.weights,
            weights_sha256=self.fingerprint, step=self.step, seed=self.seed, num_samples=self.num_samples,
            per_proc_batch_size=self.batch_size, num_classes=self.num_classes, **extra, **self.decoding),
            sort_keys=True))


def resolve_generation(cfg, ck: SamplingCheckpoint, decoder: Decoder, device=None,
                       warn: Optional[Callable[[str], None]] = None) -> GenerationPlan:
    """generate.py's options (GenerateConfig) for checkpoint `ck`, decoded by `decoder` -> its plan."""
    warn = warn or (lambda message: None)
    model = ck.model
    if cfg.num_classes_sampled is not None and not 1 <= cfg.num_classes_sampled <= model.num_classes:
        raise UserError(f"num_classes_sampled must be in [1, {model.num_classes}], got {cfg.num_classes_sampled}")
    sampling = resolve_plan(model, cfg, device, ck.path_type, warn=warn)
    if decoder.ignores_override:
        warn(f"{model.arch['name']} was trained on pixels: --vae is ignored")
    num_classes = cfg.num_classes_sampled or model.num_classes
    return GenerationPlan(
        sampling=sampling, model=model.arch["name"], arch=model.arch, label=ck.label, step=ck.step,
        fingerprint=ck.fingerprint, weights=cfg.weights, seed=cfg.seed, num_samples=cfg.num_samples,
        batch_size=cfg.per_proc_batch_size, num_classes=num_classes,
        classes_restricted=num_classes != model.num_classes, decoding=decoder.record(), vae_tag=decoder.tag,
        labels=cfg.labels)
