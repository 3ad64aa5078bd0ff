"""Writing uint8 images: a pixel dataset folder, a PNG, a grid of images (all atomic).

Images arrive here already uint8 (HWC); turning model outputs into them is `Codec.decode`'s job.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from dataio.format import begin_dataset, finish_dataset
from utils.atomic import atomic_write
from utils.errors import UserError


def write_pixel_dataset(dest: str, make, class_names: list[str], recipe: dict, created_by: str, **extra) -> bool:
    """Save the pixel dataset `make()` -> (uint8 images (N, H, W, C), labels (N,)) atomically at `dest`.
    Returns False (without calling `make`) when the same dataset is already there."""
    tmp = begin_dataset(dest, recipe)
    if tmp is None:
        return False
    images, labels = make()
    n, h, w, c = images.shape
    assert images.dtype == np.uint8 and labels.shape == (n,)
    if n == 0:
        raise UserError("no images to write")
    # through atomic_write: a full disk is one line naming the file (the finished dataset at `dest` is untouched)
    atomic_write(os.path.join(tmp, "images.npy"), lambda f: np.save(f, images))
    atomic_write(os.path.join(tmp, "labels.npy"), lambda f: np.save(f, labels.astype(np.int64)))
    meta = dict(kind="pixels", count=n, num_classes=len(class_names), class_names=list(class_names),
                resolution=[h, w], channels=c, files={"images": "images.npy", "labels": "labels.npy"},
                created_by=created_by, **extra)
    finish_dataset(tmp, dest, meta, recipe)
    return True


def save_png(image: np.ndarray, path: str) -> None:
    """Save one uint8 image (H, W, 3) as a PNG (atomically: temp file + rename)."""
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"), ".png")


def save_grid(images, path: str, nrow: int | None = None, pad: int = 2, scale: int = 1) -> None:
    """Save uint8 images (N, H, W, C) as one PNG grid, `nrow` images a row (default: a square), each enlarged
    `scale` times by pixel repetition (nearest neighbour: small images stay sharp). Atomic: temp file + rename."""
    images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)                  # (N, sH, sW, C)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    atomic_write(path, lambda f: Image.fromarray(grid[..., 0] if c == 1 else grid).save(f, format="PNG"))
