"""Training objectives: flow matching (+ the REPA term), budget and stage draws, and the DFM objective.

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
tokens; the training loop adds `proj_coeff * proj.mean()`.

DFM (Haji-Ali et al. 2025, "Improving Progressive Generation with Decomposable Flow Matching"): x0 is split
into an S-stage Laplacian pyramid (`models.dfm.decompose`); a drawn highest active stage s* gets the run's
time distribution, coarser stages logit-normal(-2, 1) times (mostly nearly clean), finer stages t = 1 (pure
noise) and are inactive; the loss sums the per-stage velocity errors over the active stages.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from errors import UserError
from models.dfm import decompose
from paths import get_path

WEIGHTINGS = ("uniform", "lognormal")
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision / DINOv2 preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    stages, other S need S weights.
    """

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", label_dropout: float = 0.1,
                 stage_weights: Optional[Sequence[float]] = (0.9, 0.1), low_stage_location: float = -2.0):
        super().__init__(path_type, weighting, label_dropout)
        self.stage_weights = None if stage_weights is None else tuple(float(w) for w in stage_weights)
        self.low_stage_location = low_stage_location

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
# The REPA target encoder.

DINOV2_REPO = "facebookresearch/dinov2"


def _hub_cache_repo() -> str:
    """Where torch.hub keeps the DINOv2 code once downloaded ($TORCH_HOME/hub/facebookresearch_dinov2_main)."""
    return os.path.join(torch.hub.get_dir(), DINOV2_REPO.replace("/", "_") + "_main")


def load_repa_encoder(name: str = "dinov2_vitb14", path: Optional[str] = None, device="cpu") -> torch.nn.Module:
    """A frozen DINOv2 encoder (Oquab et al. 2024) for REPA, in eval mode.

    path None:      torch.hub's cached repo (no network) or `facebookresearch/dinov2` from GitHub; weights from
                    the hub checkpoint cache or downloaded.
    path a folder:  a local torch.hub repo (source='local'), e.g. a clone of facebookresearch/dinov2.
    path a file:    a state dict for `name`; the architecture comes from the hub repo (cached or GitHub).
    Failure (offline with nothing cached, a missing file, a mismatched state dict) raises a one-line UserError.
    """
    try:
        if path is not None and os.path.isdir(path):
            encoder = torch.hub.load(path, name, source="local")
        elif path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file or folder: {path}")
            encoder = _hub_model(name, pretrained=False)
            state = torch.load(path, map_location="cpu", weights_only=True)
            encoder.load_state_dict(state, strict=True)
        else:
            encoder = _hub_model(name, pretrained=True)
    except Exception as e:  # network, file and state-dict errors all mean: the user must provide the encoder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"cannot load REPA encoder '{name}' ({type(e).__name__}: {first}); run once online to fill the "
            f"torch.hub cache ({torch.hub.get_dir()}) or set repa_encoder_path to a local dinov2 hub folder or "
            f"weights file") from e
    return encoder.to(device).eval().requires_grad_(False)


def _hub_model(name: str, pretrained: bool) -> torch.nn.Module:
    cached = _hub_cache_repo()
    if os.path.isdir(cached):
        return torch.hub.load(cached, name, source="local", pretrained=pretrained)
    return torch.hub.load(DINOV2_REPO, name, pretrained=pretrained, trust_repo=True)


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images (B, 3, H, W), uint8 in [0, 255] or float in [-1, 1] -> DINOv2 patch tokens (B, N, z).

    As REPA's preprocessing: [0, 1] range, ImageNet mean/std, bicubic resize to `size` (224 gives 16x16 patch
    tokens for /14 models, matching a 256 px /2 model; REPA uses 448 at 512 px).
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = F.interpolate((x - mean) / std, size=(size, size), mode="bicubic", align_corners=False)
    return encoder.forward_features(x)["x_norm_patchtokens"]
