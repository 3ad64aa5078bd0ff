"""Training objectives: flow matching (+ the REPA term), budget and stage draws, the DFM objective, and the one
table `OBJECTIVES` that picks a model family's objective.

Flow matching (Lipman et al. 2023; SiT, Ma et al. 2024): x_t = alpha(t) x0 + sigma(t) eps on the path of
`paths.py` (t = 0 data, t = 1 noise); the model regresses the velocity v = alpha' x0 + sigma' eps; the loss
is the per-sample mean squared error. Times are uniform or logit-normal(0, 1) ("lognormal", Esser et al.
2024, SD3 Sec. 3.1).

Randomness is explicit. `draw(...)` returns every random quantity of one step (noise, times, label-dropout
mask) and `__call__(..., draws=...)` consumes them. The training loop draws for the GLOBAL micro-batch from a
generator seeded by (seed, step) and keeps its rank's rows (`slice_draws`), so a run's results do not depend
on the number of processes. Budget (ELIT) and stage (DFM) draws are pure-Python functions of (seed, step):
identical on every rank with no communication, no torch RNG state touched.

REPA (Yu et al. 2025, "Representation Alignment for Generation", Eq. 4): the projector output of an early
block is aligned with frozen DINOv2 patch features by negative cosine similarity per token, averaged over
tokens; the training loop adds `proj_coeff * proj.mean()`. The target encoder lives in `training/repa.py`.

DFM (Haji-Ali et al. 2025, "Improving Progressive Generation with Decomposable Flow Matching"): x0 is split
into an S-stage Laplacian pyramid (`models.dfm.decompose`); a drawn highest active stage s* gets the run's
time distribution, coarser stages logit-normal(-2, 1) times (mostly nearly clean), finer stages t = 1 (pure
noise) and are inactive; the loss sums the per-stage velocity errors over the active stages.

The trainer asks the objective of its model's family, `OBJECTIVES[model.family].from_options(cfg, model)`,
three questions and compares no family name: are the options valid for this model (`from_options`), what is
the step's condition (`step_condition(seed, step)`: {}, a budget or a stage), and what are the step's random
draws for a batch of model inputs of one shape (`draw_step`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models.dfm import decompose
from paths import get_path
from utils.errors import UserError, user_errors

WEIGHTINGS = ("uniform", "lognormal")


@dataclass
class LossOutput:
    """Per-sample terms; the training loop reduces them: loss.mean() + proj_coeff * proj.mean()."""
    loss: torch.Tensor                    # (B,) mean squared velocity error (DFM: summed over active stages)
    proj: Optional[torch.Tensor] = None   # (B,) REPA negative cosine similarity, or None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, for its attributes."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def slice_draws(draws: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of every drawn tensor (lists of per-stage tensors too): one rank's share."""
    return {k: [part[start:stop] for part in d] if isinstance(d, (list, tuple)) else d[start:stop]
            for k, d in draws.items()}


def repa_projection_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-cos(h_n, y_n) averaged over tokens n: features, target (B, N, z) -> (B,)  (REPA Eq. 4)."""
    if features.shape != target.shape:
        raise ValueError(f"REPA projector features {tuple(features.shape)} do not match the encoder's target "
                         f"features {tuple(target.shape)} (token count or z_dim)")
    cos = (F.normalize(features.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1)   # (B, N)
    return -cos.mean(dim=1)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) mean squared error over every non-batch dim, in float32."""
    return (pred.float() - target.float()).square().flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------
# Flow matching.

class FlowMatchingObjective:
    """What the plain and the DFM objectives share: the path, the time distribution, label dropout."""

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", label_dropout: float = 0.1):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{weighting}'; valid: {', '.join(WEIGHTINGS)}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.path = get_path(path_type)
        self.weighting = weighting
        self.label_dropout = label_dropout

    @staticmethod
    def _device(generator: Optional[torch.Generator], device) -> torch.device:
        """Draw on the generator's device (a CPU generator cannot fill a CUDA tensor); move afterwards."""
        if generator is not None:
            return generator.device
        return torch.device(device) if device is not None else torch.device("cpu")

    def sample_times(self, batch: int, generator=None, device=None, location: float = 0.0,
                     weighting: Optional[str] = None) -> torch.Tensor:
        """(B,) times: uniform on [0, 1), or logit-normal(location, 1) = sigmoid(N(location, 1))."""
        weighting = weighting or self.weighting
        if weighting == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device) + location)

    def draw_drop(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """(B,) bool: which labels are replaced by the null label (always drawn, so streams stay aligned)."""
        return torch.rand(batch, generator=generator, device=device) < self.label_dropout

    @staticmethod
    def drop_labels(model, y: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """y where not dropped, else the null label `model.num_classes` (classifier-free guidance training)."""
        return torch.where(drop, torch.full_like(y, unwrap(model).num_classes), y)

    # What the trainer asks (see the module docstring). `options` are train.py's (training.options): the loss
    # options and `model`, the registry name the error messages quote.
    @staticmethod
    def reject_budget_range(options) -> None:
        if options.elit_min_mask_prob is not None or options.elit_max_mask_prob is not None:
            raise UserError(f"elit_min_mask_prob / elit_max_mask_prob apply to ELIT models, not {options.model}")

    @staticmethod
    def reject_stage_weights(options) -> None:
        if options.dfm_stage_weights is not None:
            raise UserError(f"dfm_stage_weights applies to DFM models, not {options.model}")

    def step_condition(self, seed: int, step: int) -> dict:
        """Keyword arguments of `__call__` shared by the whole step ({} here), a pure function of (seed, step)."""
        return {}


class FlowMatchingLoss(FlowMatchingObjective):
    """Per-sample flow-matching loss for SiT and ELIT-SiT (+ the optional REPA term).

        draws = loss_fn.draw(B, x0.shape[1:], generator=g)                        # explicit randomness
        out = loss_fn(model, x0, y, budget=0.5, draws=draws, target_features=z)   # LossOutput
    """

    def draw(self, batch: int, shape: Sequence[int], generator: Optional[torch.Generator] = None,
             device=None) -> dict:
        """noise (B, *shape), t (B,), drop (B,) bool; drawn on the generator's device, returned on `device`.

        A generator on the training device (torch.Generator(device="cuda")) draws there directly, without a
        blocking host-to-device copy; a CPU generator's draws are copied to `device`.
        """
        at = self._device(generator, device)
        draws = dict(noise=torch.randn(batch, *shape, generator=generator, device=at),
                     t=self.sample_times(batch, generator, at),
                     drop=self.draw_drop(batch, generator, at))
        return {k: v.to(device) for k, v in draws.items()} if device is not None else draws

    @classmethod
    def from_options(cls, options, model) -> "FlowMatchingLoss":
        """The objective of a model without budgets or stages; budget or stage options are an error."""
        cls.reject_budget_range(options)
        cls.reject_stage_weights(options)
        return cls(options.path_type, options.weighting, options.label_dropout)

    def draw_step(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> dict:
        """Every random tensor of one step for `batch` model inputs of shape `shape` (C, H, W)."""
        return self.draw(batch, shape, generator=generator)

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, budget=None, draws: Optional[dict] = None,
                 target_features: Optional[torch.Tensor] = None) -> LossOutput:
        if draws is None:
            draws = self.draw(x0.shape[0], x0.shape[1:], device=x0.device)
        noise = draws["noise"].to(device=x0.device, dtype=x0.dtype)   # (B, C, H, W)
        t = draws["t"].to(x0.device)                                   # (B,)
        y = self.drop_labels(model, y, draws["drop"].to(x0.device))    # (B,)
        x_t = self.path.interpolate(x0, noise, t)                      # (B, C, H, W)
        target = self.path.velocity(x0, noise, t)                      # (B, C, H, W)
        if target_features is None:
            return LossOutput(per_sample_mse(model(x_t, t, y, budget=budget), target))
        pred, feats = model(x_t, t, y, budget=budget, return_features=True)   # feats (B, N, z)
        return LossOutput(per_sample_mse(pred, target), repa_projection_loss(feats, target_features))


# ----------------------------------------------------------------------------------------------------------
# Budget (ELIT) and stage (DFM) draws: the same on every rank, from (seed, step) alone.

def _step_rng(kind: str, seed: int, step: int) -> random.Random:
    """A private Python RNG for (kind, seed, step); str seeds are hashed with SHA-512, stable across processes."""
    return random.Random(f"{kind}/{int(seed)}/{int(step)}")


def allowed_budgets(levels: Sequence[float], min_mask_prob: Optional[float] = None,
                    max_mask_prob: Optional[float] = None, tol: float = 1e-6) -> list[float]:
    """Levels whose mask probability 1 - b lies in [min, max] (SPEC 2.3, the public README's table).

    Neither set: full budget only (max 0). Min set, max not: max = 1 - 1/K (every level down to one latent per
    window). Max set, min not: the single level at max.
    """
    levels = list(levels)
    if not levels:
        raise ValueError("no budget levels given")
    if max_mask_prob is None:
        max_mask_prob = 0.0 if min_mask_prob is None else 1.0 - 1.0 / len(levels)
    hi = max_mask_prob
    lo = hi if min_mask_prob is None else min_mask_prob
    allowed = [b for b in levels if lo - tol <= 1.0 - b <= hi + tol]
    if not allowed:
        valid = ", ".join(f"{1.0 - b:g}" for b in levels)
        raise ValueError(f"no budget level has a mask probability in [{lo:g}, {hi:g}] "
                         f"(elit_min_mask_prob / elit_max_mask_prob); valid mask probabilities are {valid}")
    return allowed


def draw_budget(levels: Sequence[float], min_mask_prob: Optional[float], max_mask_prob: Optional[float],
                seed: int, step: int) -> float:
    """The ELIT training budget of `step`: uniform over the allowed levels (SPEC 2.3), a pure function."""
    return _step_rng("elit-budget", seed, step).choice(allowed_budgets(levels, min_mask_prob, max_mask_prob))


def draw_stage(weights: Sequence[float], seed: int, step: int) -> int:
    """The DFM highest active stage of `step`, with probabilities proportional to `weights`."""
    weights = [float(w) for w in weights]
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"stage weights must be non-negative with a positive sum, got {weights}")
    return _step_rng("dfm-stage", seed, step).choices(range(len(weights)), weights=weights)[0]


class BudgetFlowMatchingLoss(FlowMatchingLoss):
    """Flow matching for a model with compute budgets (ELIT-SiT): each step trains one drawn budget.

    `levels` are the model's `budget_levels`; the step's budget is uniform over those whose mask probability
    1 - b lies in [min_mask_prob, max_mask_prob] (`allowed_budgets`: the defaults of the public README's table).
    """

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", label_dropout: float = 0.1, *,
                 levels: Sequence[float], min_mask_prob: Optional[float] = None,
                 max_mask_prob: Optional[float] = None):
        super().__init__(path_type, weighting, label_dropout)
        self.levels = list(levels)
        self.min_mask_prob, self.max_mask_prob = min_mask_prob, max_mask_prob

    @classmethod
    def from_options(cls, options, model) -> "BudgetFlowMatchingLoss":
        with user_errors():
            allowed_budgets(model.budget_levels, options.elit_min_mask_prob, options.elit_max_mask_prob)
        cls.reject_stage_weights(options)
        return cls(options.path_type, options.weighting, options.label_dropout, levels=model.budget_levels,
                   min_mask_prob=options.elit_min_mask_prob, max_mask_prob=options.elit_max_mask_prob)

    def step_condition(self, seed: int, step: int) -> dict:
        return dict(budget=draw_budget(self.levels, self.min_mask_prob, self.max_mask_prob, seed, step))


# ----------------------------------------------------------------------------------------------------------
# DFM.

def pyramid_shapes(shape: Sequence[int], stages: int) -> list[tuple[int, ...]]:
    """(C, H, W) -> per-stage (C, H_s, W_s), coarsest first, exactly as `decompose` produces them."""
    return [tuple(x.shape[1:]) for x in decompose(torch.empty(1, *shape, device="meta"), stages)]


class DFMLoss(FlowMatchingObjective):
    """Decomposable flow matching over the model's S pyramid stages (SPEC 2.4).

        stage = loss_fn.draw_stage(model.stages, seed, step)          # same on every rank
        draws = loss_fn.draw(B, pyramid_shapes(x0.shape[1:], S), generator=g)
        out = loss_fn(model, x0, y, stage, draws=draws)                # LossOutput, loss (B,)

    `stage_weights` are the probabilities of each highest active stage; (0.9, 0.1) is the default for 2
    stages, other S need S weights. `stages` (the model's S) is what `step_condition` and `draw_step` use.
    """

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", label_dropout: float = 0.1,
                 stage_weights: Optional[Sequence[float]] = (0.9, 0.1), low_stage_location: float = -2.0,
                 stages: int = 2):
        super().__init__(path_type, weighting, label_dropout)
        self.stage_weights = None if stage_weights is None else tuple(float(w) for w in stage_weights)
        self.low_stage_location = low_stage_location
        self.stages = stages

    @classmethod
    def from_options(cls, options, model) -> "DFMLoss":
        cls.reject_budget_range(options)
        objective = cls(options.path_type, options.weighting, options.label_dropout,
                        stage_weights=options.dfm_stage_weights, low_stage_location=options.dfm_low_stage_location,
                        stages=model.stages)
        with user_errors():
            objective.weights_for(model.stages)
        return objective

    def step_condition(self, seed: int, step: int) -> dict:
        """The step's highest active stage, the same on every rank."""
        return dict(stage=self.draw_stage(self.stages, seed, step))

    def draw_step(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> dict:
        """The draws of one step: independent noise for each pyramid stage of a (C, H, W) model input."""
        return self.draw(batch, pyramid_shapes(shape, self.stages), generator=generator)

    def weights_for(self, stages: int) -> tuple[float, ...]:
        weights = self.stage_weights or ((0.9, 0.1) if stages == 2 else None)
        if weights is None or len(weights) != stages:
            raise ValueError(f"dfm_stage_weights must have one weight per stage ({stages}), got {weights}")
        return weights

    def draw_stage(self, stages: int, seed: int, step: int) -> int:
        return draw_stage(self.weights_for(stages), seed, step)

    def draw(self, batch: int, shapes: Sequence[Sequence[int]], generator: Optional[torch.Generator] = None,
             device=None) -> dict:
        """noise: S tensors (B, *shapes[s]); t (B,) run's distribution; t_low (B, S) logit-normal(loc, 1);
        drop (B,). Independent of the stage, so the random stream does not depend on the stage draw."""
        at = self._device(generator, device)
        S = len(shapes)
        noise = [torch.randn(batch, *shape, generator=generator, device=at) for shape in shapes]
        t = self.sample_times(batch, generator, at)
        t_low = self.sample_times(batch * S, generator, at, self.low_stage_location, "lognormal").view(batch, S)
        draws = dict(noise=noise, t=t, t_low=t_low, drop=self.draw_drop(batch, generator, at))
        if device is not None:
            draws = {k: [n.to(device) for n in v] if isinstance(v, list) else v.to(device) for k, v in draws.items()}
        return draws

    def stage_times(self, draws: dict, stage: int, stages: int, device) -> torch.Tensor:
        """(B, S): logit-normal(-2) below `stage`, the run's t at `stage`, 1 (pure noise) above."""
        t, t_low = draws["t"].to(device), draws["t_low"].to(device)
        above = torch.ones(t.shape[0], stages - stage - 1, device=device, dtype=t.dtype)
        return torch.cat([t_low[:, :stage], t[:, None], above], dim=1)

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, stage: int, draws: Optional[dict] = None,
                 target_features: Optional[torch.Tensor] = None) -> LossOutput:
        S = unwrap(model).stages
        if not 0 <= stage < S:
            raise ValueError(f"stage must be in [0, {S - 1}], got {stage}")
        xs = decompose(x0, S)                                          # S tensors, coarsest first
        if draws is None:
            draws = self.draw(x0.shape[0], [x.shape[1:] for x in xs], device=x0.device)
        noise = [n.to(device=x0.device, dtype=x0.dtype) for n in draws["noise"]]
        t = self.stage_times(draws, stage, S, x0.device)               # (B, S)
        y = self.drop_labels(model, y, draws["drop"].to(x0.device))
        x_t = [self.path.interpolate(x, n, t[:, s]) for s, (x, n) in enumerate(zip(xs, noise))]
        active = stage + 1
        if target_features is None:
            preds, proj = model(x_t, t, y, active=active), None
        else:
            preds, feats = model(x_t, t, y, active=active, return_features=True)
            proj = repa_projection_loss(feats, target_features)
        loss = sum(per_sample_mse(preds[s], self.path.velocity(xs[s], noise[s], t[:, s])) for s in range(active))
        return LossOutput(loss, proj)


# ----------------------------------------------------------------------------------------------------------
# The one family table of training (`models.FAMILIES` names the families). A new family adds its row here.

OBJECTIVES = {"SiT": FlowMatchingLoss, "ELIT-SiT": BudgetFlowMatchingLoss, "DFM-SiT": DFMLoss}
