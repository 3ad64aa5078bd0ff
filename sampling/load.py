"""A checkpoint -> the model to sample, its identity for folder names, and the decoding of its samples.

The model (architecture and weights) comes from the checkpoint alone; so does the decoding: the training
dataset's metadata stored in the checkpoint says pixels in [-1, 1] or VAE latents (with their VAE and
normalisation). A checkpoint without it (converted from the reference) is an SD-VAE latent model decoded
with `--vae` and that VAE's own scaling factor.

`Decoder` (with `image_resolution` and the SD-VAE constants below it) is the only code in sampling/ that
asks "pixels or latents": the seam where the dataio codec takes over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from data import check_model_fits
from images import to_uint8
from utils.errors import UserError, user_errors
from vae import DEFAULT_VAE, load_vae


@dataclass
class SamplingCheckpoint:
    """A model rebuilt from a checkpoint plus what sampling and decoding need from the checkpoint."""
    model: torch.nn.Module
    dataset_meta: Optional[dict]        # the training dataset's dataset.json; None: an SD-VAE latent model
    path_type: str                      # interpolation path of training (matters for the SDE's score)
    step: int
    label: str                          # a readable name for output folders
    fingerprint: str                    # 8 hex digits of the weights' SHA-256: the folder name follows the weights
    path: str


def weights_fingerprint(state_dict: dict, arch: dict) -> str:
    """SHA-256 of the architecture and every tensor (name, dtype, shape, bytes), first 8 hex digits."""
    h = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:8]


def checkpoint_label(path: str, config) -> str:
    """The checkpoint file's stem, unless it is only a step number: then the run's exp_name or its folder."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isdigit():
        label = stem
    elif isinstance(config, dict) and isinstance(config.get("exp_name"), str) and config["exp_name"]:
        label = config["exp_name"]
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.basename(parent) == "checkpoints":
            parent = os.path.dirname(parent)
        label = os.path.basename(parent) or "ckpt"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label)


def load_for_sampling(path: str, weights: str = "ema", device="cpu") -> SamplingCheckpoint:
    """Load a checkpoint (UserError when missing/corrupt), rebuild its model in eval mode on `device`."""
    ckpt = load_checkpoint(path)
    with user_errors(f"cannot rebuild the model of {path}: "):
        try:
            model = model_from_checkpoint(ckpt, weights)
        except RuntimeError as e:                         # strict load_state_dict: missing/unexpected/mis-shaped
            raise UserError(f"{path}: its '{weights}' weights do not fit its architecture "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else 'load_state_dict failed'})")
    meta = ckpt.get("dataset")
    if meta is not None:
        if not isinstance(meta, dict) or meta.get("kind") not in ("latents", "pixels"):
            raise UserError(f"{path}: its dataset metadata is not of a latent or pixel dataset")
        check_model_fits(meta, model.input_size, model.in_channels, model.arch["name"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    fingerprint = weights_fingerprint(ckpt[weights], ckpt["arch"])
    step = ckpt.get("step", 0)
    return SamplingCheckpoint(
        model=model.to(device).requires_grad_(False), dataset_meta=meta,
        path_type=str(config.get("path_type", "linear")), step=int(step) if isinstance(step, int) else 0,
        label=checkpoint_label(path, config), fingerprint=fingerprint, path=os.path.abspath(path))


# ----------------------------------------------------------------------------------------------------------
# Decoding (the seam for the dataio codec).

def _vae_source(dataset_meta: Optional[dict], override: Optional[str]) -> Optional[str]:
    """The VAE that decodes this model's samples: None for pixel models, else `override` or the dataset's
    (a checkpoint without dataset metadata: the SD VAE); a local folder as an absolute path."""
    if dataset_meta is not None and dataset_meta["kind"] == "pixels":
        return None
    if override:
        source = override
    elif dataset_meta is not None and dataset_meta.get("vae"):
        source = dataset_meta["vae"]
    else:
        source = DEFAULT_VAE
    local = os.path.expanduser(source)
    return os.path.abspath(local) if os.path.isdir(local) else source


class Decoder:
    """Model samples (n, C, h, w) -> uint8 images (n, H, W, 3), rounded; grey replicated to RGB.

    Pixel models are rescaled from [-1, 1]; latent models decoded by their VAE (`override`, else the
    dataset's, else the SD VAE) with the dataset's normalisation (converted checkpoints: the VAE's own).
    Nothing is loaded until `load` (a run that finds its .npz complete needs no VAE).
    """

    def __init__(self, dataset_meta: Optional[dict], override: Optional[str] = None, vae=None):
        self.meta = dataset_meta
        self.source = _vae_source(dataset_meta, override)
        own = _vae_source(dataset_meta, None)
        self.tag = os.path.basename(os.path.normpath(self.source)) if self.source != own else None
        self.ignores_override = bool(override) and dataset_meta is not None and dataset_meta["kind"] == "pixels"
        self.vae = vae

    def record(self) -> dict:
        """What the images depend on besides the model's samples (saved beside them, compared on resume)."""
        meta = self.meta
        return dict(output=meta["kind"] if meta else "latents", vae=self.source,
                    latent_scale=meta.get("latent_scale") if meta else None,
                    latent_shift=meta.get("latent_shift") if meta else None)

    def load(self, model, device) -> "Decoder":
        """Load the VAE (fp32, eval) of a latent model; UserError if it is missing or does not fit `model`."""
        if self.source is not None and self.vae is None:
            vae = load_vae(self.source, device)
            channels = getattr(vae.config, "latent_channels", None)
            if channels != model.in_channels:
                raise UserError(f"VAE {self.source} has {channels} latent channels but the model has "
                                f"{model.in_channels}")
            self.vae = vae
        return self

    def __call__(self, x: torch.Tensor, batch_size: Optional[int] = None) -> np.ndarray:
        return to_uint8(x, self.meta, self.vae, batch_size or len(x)).cpu().numpy()


SD_VAE_FACTOR, SD_VAE_CHANNELS = 8, 4     # SD-VAE latents (converted and random-init models): 1/8 the side, 4 channels


def image_resolution(model, dataset_meta: Optional[dict]) -> int:
    """The side in pixels of the images a model's samples decode to."""
    if dataset_meta is None:
        return model.input_size * SD_VAE_FACTOR
    if dataset_meta["kind"] == "pixels":
        return int(dataset_meta["resolution"][0])
    return int(dataset_meta["image_resolution"][0])
