"""The Laplacian pyramid of DFM-SiT (Haji-Ali et al., 2025, "Improving Progressive Generation with
Decomposable Flow Matching").

S stages, coarsest first: stage 0 is the low-pass image downsampled S-1 times by bilinear x1/2
(align_corners=False), stage s > 0 the residual `low_s - up2(low_{s-1})`; `recompose` inverts `decompose`.
The loss and the DFM sampler work on these stages; the model (`models/dfm.py`) embeds each one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def down2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2), bilinear, align_corners=False."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def up2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), bilinear, align_corners=False."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def decompose(x: torch.Tensor, stages: int) -> list[torch.Tensor]:
    """Image (B, C, H, W) -> [coarsest low-pass (H / 2^(S-1)), residual, ..., finest residual (H)]."""
    lows = [x]
    for _ in range(stages - 1):
        lows.insert(0, down2(lows[0]))
    return [lows[0]] + [lows[s] - up2(lows[s - 1]) for s in range(1, stages)]


def recompose(xs: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `decompose` (exact up to float rounding)."""
    x = xs[0]
    for residual in xs[1:]:
        x = up2(x) + residual
    return x


def stage_patch_sizes(patch_size: int, stages: int) -> list[int]:
    """Patch size per stage, coarsest first, so that every stage yields the same token grid."""
    sizes = [patch_size // 2 ** (stages - 1 - s) for s in range(stages)]
    if patch_size % 2 ** (stages - 1):
        raise ValueError(
            f"DFM with {stages} stages needs a patch size divisible by {2 ** (stages - 1)} so that every stage "
            f"reaches the common token grid; got patch size {patch_size} (use /4 or /8 models for 3 stages)")
    return sizes
