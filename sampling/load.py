"""A checkpoint -> the model to sample, its identity for folder names, and the decoding of its samples.

The model (architecture and weights) comes from the checkpoint alone; so does the decoding: the training
dataset's record stored in the checkpoint builds the codec (`dataio/codec.py`: pixels in [-1, 1] or VAE
latents with their VAE and normalisation). A checkpoint without one (converted from the reference) gets the
explicit SD-VAE record (`checkpoint_record`), decoded with `--vae` and that VAE's own scaling factor.
Nothing in sampling/ asks "pixels or latents": `Decoder` asks the codec.
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

from dataio.codec import Codec, checkpoint_record
from models.checkpoint import model_from_checkpoint
from models.export import read_checkpoint
from utils.errors import UserError, user_errors


@dataclass
class SamplingCheckpoint:
    """A model rebuilt from a checkpoint plus what sampling and decoding need from the checkpoint."""
    model: torch.nn.Module
    dataset_meta: dict                  # the training dataset's record (a converted checkpoint: the SD-VAE one)
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
    """Load a checkpoint (UserError when missing/corrupt), rebuild its model in eval mode on `device`.

    `path` may also be an export (safetensors, models/export.py) or a public SiT/REPA state dict."""
    ckpt = read_checkpoint(path)
    with user_errors(f"cannot rebuild the model of {path}: "):
        try:
            model = model_from_checkpoint(ckpt, weights)
        except RuntimeError as e:                         # strict load_state_dict: missing/unexpected/mis-shaped
            raise UserError(f"{path}: its '{weights}' weights do not fit its architecture "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else 'load_state_dict failed'})")
    meta = checkpoint_record(ckpt.get("dataset"), model)
    with user_errors(f"{path}: "):
        Codec.from_record(meta).check_fits(model.input_size, model.in_channels, model.arch["name"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    fingerprint = weights_fingerprint(ckpt[weights], ckpt["arch"])
    step = ckpt.get("step", 0)
    return SamplingCheckpoint(
        model=model.to(device).requires_grad_(False), dataset_meta=meta,
        path_type=str(config.get("path_type", "linear")), step=int(step) if isinstance(step, int) else 0,
        label=checkpoint_label(os.path.normpath(path), config), fingerprint=fingerprint, path=os.path.abspath(path))


# ----------------------------------------------------------------------------------------------------------
# Decoding: the codec of the checkpoint's record, with the user's `--vae` override.

class Decoder:
    """Model samples (n, C, h, w) -> uint8 images (n, H, W, 3), rounded; grey replicated to RGB.

    The codec of `dataset_meta` (a checkpoint's record; None: the SD-VAE record of the model given to
    `load`) decodes: pixel models are rescaled from [-1, 1], latent models decoded by their VAE (`override`,
    else the record's) with the record's normalisation (the SD-VAE record: the VAE's own). Nothing is loaded
    until `load` (a run that finds its .npz complete needs no VAE).
    """

    def __init__(self, dataset_meta: Optional[dict], override: Optional[str] = None, vae=None):
        self.meta, self.override, self.vae = dataset_meta, override or None, vae
        self.codec = None
        if dataset_meta is not None:
            self.codec = self._codec(dataset_meta)

    def _codec(self, record: dict) -> Codec:
        codec = Codec.from_record(record, vae=self.vae if self.vae is not None else self.override)
        own = Codec.from_record(record).vae_source
        self.source = codec.vae_source
        self.tag = os.path.basename(os.path.normpath(self.source)) if self.source != own else None
        self.ignores_override = bool(self.override) and own is None
        return codec

    def record(self) -> dict:
        """What the images depend on besides the model's samples (saved beside them, compared on resume)."""
        return dict(self.codec.output_settings(), vae=self.source)

    def load(self, model, device) -> "Decoder":
        """Load the decoder of `model`'s samples now; UserError if it is missing or does not fit `model`."""
        if self.codec is None:
            self.codec = self._codec(checkpoint_record(None, model))
        self.codec.device = device
        self.codec.load_vae()
        return self

    def __call__(self, x: torch.Tensor, batch_size: Optional[int] = None) -> np.ndarray:
        return self.codec.decode(x, batch_size or len(x)).cpu().numpy()


def image_resolution(model, dataset_meta: Optional[dict]) -> int:
    """The side in pixels of the images a model's samples decode to."""
    return Codec.from_record(checkpoint_record(dataset_meta, model)).image_resolution
