"""The periodic EMA sample grids of a training run: fixed noise and labels, so grids of one run compare over time.

Every grid samples the same noise (seeded by the run's seed) and labels 0, 1, ... mod num_classes at the full
budget; a model with budget levels also gets a grid at the run's low budget (`..._budget0.25.png`).

    paths = write_sample_grids(ema, folder, step, decode, seed=0, low_budget=0.25, device=device,
                               num_steps=50, cfg_scale=4.0, path_type="linear", autocast_dtype=None)
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from dataio.writers import save_grid
from samplers import sample_model


def grid_noise(model, n: int, seed: int) -> list[torch.Tensor]:
    """The grids' fixed noise, one (n, *shape) CPU tensor per `model.noise_shapes()` entry.

    The full-size draw comes first for every model, and a model with several inputs (DFM stages) then draws
    each of them independently: the order the grids have always used, so a run's grids stay reproducible.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = model.noise_shapes()
    full = torch.randn(n, *shapes[-1], generator=g)
    return [full] if len(shapes) == 1 else [torch.randn(n, *shape, generator=g) for shape in shapes]


@torch.no_grad()
def write_sample_grids(ema, folder: str, step: int, decode: Callable[[torch.Tensor], torch.Tensor], *,
                       seed: int, low_budget: float, device, n: int = 16, num_steps: int, cfg_scale: float,
                       path_type: str, autocast_dtype: Optional[torch.dtype]) -> list[str]:
    """Sample the grids of `step` with the EMA model, `decode` them to uint8 (N, H, W, 3), save folder/NNNNNNN*.png."""
    noise = [x.to(device) for x in grid_noise(ema, n, seed)]
    y = (torch.arange(n) % ema.num_classes).to(device)
    paths = []
    for budget in [None, low_budget] if ema.budget_levels else [None]:
        x = sample_model(ema, noise, y, num_steps=num_steps, cfg_scale=cfg_scale, path_type=path_type,
                         budget=budget, autocast_dtype=autocast_dtype)
        name = f"{step:07d}" + ("" if budget is None else f"_budget{budget:g}") + ".png"
        path = os.path.join(folder, name)
        save_grid(decode(x), path)
        paths.append(path)
    return paths
