"""Model outputs -> uint8 images, and image grids.

A model trained on latents outputs normalised latents x = (z - shift) * scale (data carries the constants,
see `data.py`); one trained on pixels outputs x in [-1, 1]. `to_uint8` turns either into uint8 NHWC images,
rounding (not truncating) as the ADM evaluation suite expects.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from atomic import atomic_write


def pixels_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, 3) (grey replicated to RGB), rounded."""
    img = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return img.expand(-1, -1, -1, 3).contiguous() if img.shape[-1] == 1 else img.contiguous()


def to_uint8(x: torch.Tensor, dataset_meta: dict | None, vae=None, vae_batch_size: int = 32) -> torch.Tensor:
    """Model output (B, C, h, w) -> uint8 (B, H, W, 3): VAE decoding for latent models, rescaling for pixels.

    `dataset_meta` is the training dataset's dataset.json (kind 'latents' or 'pixels'); None means an SD-VAE
    latent model (a converted reference checkpoint), normalised with the VAE's own scaling factor.
    """
    if dataset_meta is not None and dataset_meta.get("kind") == "pixels":
        return pixels_to_uint8(x)
    from vae import decode_latents, latent_norm
    if vae is None:
        raise ValueError("a latent model needs a VAE to decode its samples")
    if dataset_meta is None:
        scale, shift = latent_norm(vae)
    else:
        scale, shift = dataset_meta["latent_scale"], dataset_meta["latent_shift"]
    return decode_latents(vae, x, scale, shift, batch_size=vae_batch_size)


def save_grid(images, path: str, nrow: int | None = None, pad: int = 2) -> None:
    """Save uint8 images (N, H, W, C) as one PNG grid (atomically: temp file + rename)."""
    images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    atomic_write(path, lambda f: Image.fromarray(grid[..., 0] if c == 1 else grid).save(f, format="PNG"))
