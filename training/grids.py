"""The periodic EMA sample grids of a training run: fixed noise and labels, so grids of one run compare over time.

Every grid samples the same noise (seeded by the run's seed) at the full budget; a model with budget levels also
gets a grid at the run's low budget (`..._budget0.25.png`). A model of at most CLASS_ROWS classes gets one row
per class (PER_CLASS images each), others `n` images of labels 0, 1, ... mod num_classes. Small images are
enlarged by pixel repetition to about GRID_SIDE pixels a side, so a 32x32 sample can be seen.

The low budget is checked against the model before training starts (`grid_low_budget`): a fraction below the
model's lowest level (e.g. the default 0.25 with 9 latents per window is fine, with 1 it keeps none) is raised
to that level, a model whose only level is the full budget gets no low grid, and either is said in one log
line; a value that is no budget fraction at all (<= 0 or > 1) is refused then, not after the last step.

    paths = write_sample_grids(ema, folder, step, decode, seed=0, low_budget=0.25, device=device,
                               num_steps=50, cfg_scale=4.0, path_type="linear", autocast_dtype=None)

`judge(path, images, labels)`, when given, sees each grid's uint8 samples: the class check
(`sample_class_check`, `class_check_line`) scores them with a tiny classifier fitted on the real images.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch.utils.data import default_collate

from dataio.writers import save_grid
from evaluation.classifier import agreement, fit_classifier
from samplers import sample_model
from utils.errors import UserError


def grid_low_budget(model, low_budget: float) -> tuple[Optional[float], Optional[str]]:
    """(the low budget the grids use, or None for no low grid; a note for the log, or None).

    `low_budget` is the run's sample_low_budget, a fraction of each window's latents; models without budget
    levels have no low grid (and no note)."""
    levels = list(model.budget_levels)
    if not levels:
        return None, None
    if not 0 < low_budget <= 1:
        raise UserError(f"sample_low_budget must be a fraction in (0, 1] of the latents, got {low_budget:g}")
    lowest = levels[0]
    if low_budget >= lowest - 1e-9:
        return low_budget, None
    what = f"sample_low_budget {low_budget:g} keeps no latent of a window of {len(levels)}"
    if lowest >= 1:
        return None, f"{what}: the model has only the full budget, so no low-budget sample grid is written"
    return lowest, f"{what}: the low-budget sample grids use the lowest level, {lowest:g} (1/{len(levels)})"

CLASS_ROWS = 8                  # up to this many classes (the demo's six), a grid has one row per class
PER_CLASS = 8                   # images per class row
GRID_SIDE = 128                 # images smaller than this are enlarged (nearest) by GRID_SIDE // side
CHECK_IMAGES = 2000             # real images the class check's classifier sees (every 5th held out)


def grid_noise(model, n: int, seed: int) -> list[torch.Tensor]:
    """The grids' fixed noise, one (n, *shape) CPU tensor per `model.noise_shapes()` entry.

    The full-size draw comes first for every model, and a model with several inputs (DFM stages) then draws
    each of them independently: the order the grids have always used, so a run's grids stay reproducible.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = model.noise_shapes()
    full = torch.randn(n, *shapes[-1], generator=g)
    return [full] if len(shapes) == 1 else [torch.randn(n, *shape, generator=g) for shape in shapes]


def grid_labels(num_classes: int, n: int) -> tuple[torch.Tensor, Optional[int]]:
    """The grids' labels (N,) and images per row (None: a square): a row per class for small label sets."""
    if num_classes <= CLASS_ROWS:
        return torch.arange(num_classes).repeat_interleave(PER_CLASS), PER_CLASS
    return torch.arange(n) % num_classes, None


@torch.no_grad()
def write_sample_grids(ema, folder: str, step: int, decode: Callable[[torch.Tensor], torch.Tensor], *,
                       seed: int, low_budget: Optional[float], device, n: int = 16, num_steps: int,
                       cfg_scale: float, path_type: str, autocast_dtype: Optional[torch.dtype],
                       judge: Optional[Callable[[str, torch.Tensor, torch.Tensor], None]] = None) -> list[str]:
    """Sample the grids of `step` with the EMA model, `decode` them to uint8 (N, H, W, 3), save folder/NNNNNNN*.png.

    `low_budget`: the budget of the second grid (`grid_low_budget`'s choice), None for none; `judge(path, images,
    labels)`: called on each grid (the class check)."""
    y, nrow = grid_labels(ema.num_classes, n)
    noise = [x.to(device) for x in grid_noise(ema, len(y), seed)]
    y = y.to(device)
    paths = []
    for budget in [None] + ([low_budget] if low_budget is not None and ema.budget_levels else []):
        x = sample_model(ema, noise, y, num_steps=num_steps, cfg_scale=cfg_scale, path_type=path_type,
                         budget=budget, autocast_dtype=autocast_dtype)
        name = f"{step:07d}" + ("" if budget is None else f"_budget{budget:g}") + ".png"
        path = os.path.join(folder, name)
        images = decode(x)                                                      # uint8 (N, H, W, 3)
        save_grid(images, path, nrow=nrow, scale=max(1, GRID_SIDE // images.shape[1]))
        if judge is not None:
            judge(path, images, y)
        paths.append(path)
    return paths


def fit_class_check(dataset, to_images: Callable[[dict], torch.Tensor], num_classes: int, seed: int):
    """The class check's classifier, fitted on the first CHECK_IMAGES real images of `dataset` but every 5th
    (`to_images`: a collated batch -> uint8 (B, H, W, C)); -> (classifier, its accuracy on the held-out fifth)."""
    batch = default_collate(dataset.__getitems__(list(range(min(len(dataset), CHECK_IMAGES)))))
    images, labels = to_images(batch).cpu(), batch["y"]
    held = torch.arange(len(labels)) % 5 == 4                          # image 0 is always in the fitted part
    clf = fit_classifier(images[~held], labels[~held], num_classes, seed=seed)
    return clf, agreement(clf, images[held], labels[held]) if held.any() else float("nan")


def class_check_line(clf, held_out_accuracy: float, path: str, images: torch.Tensor, labels: torch.Tensor) -> str:
    """'PATH: class agreement 92% (chance 17%; ...)': how often the classifier names the class a sample was drawn for."""
    return (f"{path}: class agreement {agreement(clf, images, labels):.0%} (chance {1 / clf.num_classes:.0%}; "
            f"the classifier is right on {held_out_accuracy:.0%} of held-out real images)")
