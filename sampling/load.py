"""A checkpoint -> the model to sample, its identity for folder names, and the decoding of its samples.

The model (architecture and weights) comes from the checkpoint alone; so does the decoding: the training
dataset's record stored in the checkpoint builds the codec (`dataio/codec.py`: pixels in [-1, 1] or VAE
latents with their VAE and normalisation). A checkpoint without one (converted from the reference) gets the
explicit SD-VAE record (`checkpoint_record`), decoded with `--vae` and that VAE's own scaling factor.
Nothing in sampling/ asks "pixels or latents": `Decoder` asks the codec.

Reference checkpoints (the public reference's `{model, ema, opt, args, steps}`, its argparse Namespace loaded
through models.convert's allow-list, never weights_only=False) are converted on load, as
`python -m models.convert` would: the architecture from their args (or the `--model` / `--resolution` the user
gave, when the args lack them), ELIT head/tail depths inferred from the state dict when the args lack them;
one line says so. One that cannot be converted is one line pointing to the converter's `--set`, never "corrupt".

Expectations. Architecture values the user gave in the reference's vocabulary (generate's `--model`,
`path_type` or `resolution` of a reference YAML, ...: `utils.cli.reference_expectations(cfg)`) are checked
against the loaded checkpoint (`check_checkpoint_expectations`): a mismatch is one line, before any sampling.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dataio.codec import Codec, checkpoint_record
from models.checkpoint import model_from_checkpoint, not_ours, read_torch_file
from models.convert import REFERENCE_GLOBALS, checkpoint_from_reference
from models.export import is_export, load_export, ours_from_object
from sampling.distributed import dist_env
from sampling.reference_keys import check_checkpoint_expectations
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


def _is_reference(obj) -> bool:
    """Whether a loaded file is one of the public reference's checkpoints (its layout, no `arch`)."""
    if not isinstance(obj, dict) or "arch" in obj:
        return False
    state = next((obj[k] for k in ("ema", "model") if isinstance(obj.get(k), dict)), None)
    return state is not None and any(k == "pos_embed" or k.startswith("x_embedder.") for k in state)


def read_checkpoint(path: str, weights: str = "ema", model: Optional[str] = None,
                    resolution: Optional[int] = None) -> tuple[dict, Optional[str]]:
    """(our checkpoint at `path`, or a reference checkpoint converted on load (its `weights` entry); a note saying
    it was converted, or None). `model` / `resolution` (pixels): what to convert a reference checkpoint as when
    its args do not say. The file is read (and CRC-checked) once, whatever it holds."""
    if is_export(path):
        return load_export(path), None
    obj = read_torch_file(path, allow=REFERENCE_GLOBALS)
    ours = ours_from_object(obj, path)          # ours, or a public SiT/REPA state dict
    if ours is not None:
        return ours, None
    if not _is_reference(obj):
        raise not_ours(path)
    args = obj.get("args")
    name = getattr(args, "model", None) or model
    pixels = getattr(args, "resolution", None) or resolution
    try:
        ckpt, inferred = checkpoint_from_reference(obj, path, weights, name, pixels)
    except UserError as e:
        raise UserError(f"{e} (a reference checkpoint: convert it with `python -m models.convert --ckpt {path} "
                        f"--out CONVERTED.pt --model NAME --set KEY=VALUE ...`)") from None
    guessed = f"; inferred {', '.join(f'{k}={v}' for k, v in inferred.items())}" if inferred else ""
    return ckpt, (f"{path} is a reference checkpoint, converted on load to {ckpt['arch']['name']}{guessed} "
                  "(python -m models.convert saves the conversion)")


def load_for_sampling(path: str, weights: str = "ema", device="cpu", expected: Optional[dict] = None,
                      model: Optional[str] = None, resolution: Optional[int] = None) -> SamplingCheckpoint:
    """Load a checkpoint (ours, an export, a public SiT/REPA state dict, or a reference one converted on load;
    UserError when missing/corrupt), rebuild its model in eval mode on `device`, and check the user's `expected`
    architecture values against it.

    `expected`: `reference_expectations(cfg)` (None: nothing to check); `model` / `resolution`: what a reference
    checkpoint whose args lack them is converted as (defaults: `expected`'s model and resolution)."""
    expected = dict(expected or {})
    ckpt, converted = read_checkpoint(path, weights, model or expected.get("model"),
                                      resolution or expected.get("resolution"))
    with user_errors(f"cannot rebuild the model of {path}: "):
        try:
            net = model_from_checkpoint(ckpt, weights)
        except RuntimeError as e:                         # strict load_state_dict: missing/unexpected/mis-shaped
            raise UserError(f"{path}: its '{weights}' weights do not fit its architecture "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else 'load_state_dict failed'})")
    meta = checkpoint_record(ckpt.get("dataset"), net)
    with user_errors(f"{path}: "):
        Codec.from_record(meta).check_fits(net.input_size, net.in_channels, net.arch["name"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    path_type = str(config.get("path_type", "linear"))
    with user_errors(f"{path}: "):
        check_checkpoint_expectations(expected, net, path_type, image_resolution(net, meta))
    if converted and dist_env().rank == 0:                  # after the checks: an error stays one line
        print(f"note: {converted}", file=sys.stderr, flush=True)
    fingerprint = weights_fingerprint(ckpt[weights], ckpt["arch"])
    step = ckpt.get("step", 0)
    return SamplingCheckpoint(
        model=net.to(device).requires_grad_(False), dataset_meta=meta,
        path_type=path_type, step=int(step) if isinstance(step, int) else 0,
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
