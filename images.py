"""Temporary shim (floor-plan renovation): uint8 decoding lives in dataio/codec.py (`Codec.decode`), grids
in dataio/writers.py."""
from __future__ import annotations

import torch

from dataio.codec import Codec, pixels_to_uint8, sd_vae_record  # noqa: F401
from dataio.writers import save_grid  # noqa: F401


def to_uint8(x: torch.Tensor, dataset_meta: dict | None, vae=None, vae_batch_size: int = 32) -> torch.Tensor:
    """Old API: model output -> uint8 (B, H, W, 3); dataset_meta None = an SD-VAE latent model."""
    record = dataset_meta if dataset_meta is not None else sd_vae_record(latent_size=x.shape[-1])
    codec = Codec.from_record(record, vae=vae)
    if codec.vae_source is not None and vae is None:
        raise ValueError("a latent model needs a VAE to decode its samples")
    return codec.decode(x, vae_batch_size)
