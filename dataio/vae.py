"""The image autoencoder: load an `AutoencoderKL` (hub id or local folder), encode images, decode latents.

Everything here returns floats: posterior (mean, std) of images, and decoded images in about [-1, 1].
Normalising latents for the model and converting images to uint8 is `dataio.codec`'s job; this module
imports nothing that does either (it sits below the codec).

Latent normalisation follows the VAE's own config (never a literal): the model sees
    x = (z - shift) * scale,     z = x / scale + shift,
with scale = `scaling_factor` (0.18215 for the SD VAEs, Rombach et al., 2022) and shift = `shift_factor`
(SD3/FLUX VAEs; 0 when absent). `dataset_tools.py encode` stores both in the dataset's metadata.

Offline machines: a hub id is loaded from the local Hugging Face cache; when it is not there and the hub
cannot be reached, loading fails with one line saying how to fix it (download once, or pass a folder).
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Optional
from urllib.parse import urlparse

import numpy as np
import torch

from utils.errors import UserError

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails at once, not after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(source: str, **kwargs):
    from diffusers import AutoencoderKL                     # heavy, and only needed for latent data
    with warnings.catch_warnings():                         # deprecation chatter from diffusers/hub internals
        warnings.simplefilter("ignore")
        return AutoencoderKL.from_pretrained(source, **kwargs)


def load_vae(name_or_path: str = DEFAULT_VAE, device="cpu", dtype: torch.dtype = torch.float32):
    """An `AutoencoderKL` in eval mode without gradients, on `device` in `dtype`.

    `name_or_path`: a local folder (saved with `save_pretrained`, or a pipeline folder with a `vae/`
    subfolder), or a hub id `org/name` (or `org/name/subfolder`, e.g.
    `stabilityai/stable-diffusion-3-medium-diffusers/vae`) read from the local Hugging Face cache, downloaded
    when missing and the hub is reachable.
    """
    source, kwargs = name_or_path, {}
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            if not os.path.isfile(os.path.join(path, "vae", "config.json")):
                raise UserError(f"VAE folder {name_or_path} has no config.json (expected a folder written by "
                                "AutoencoderKL.save_pretrained, or a pipeline folder with a vae/ subfolder)")
            kwargs["subfolder"] = "vae"
        try:
            vae = _from_pretrained(path, torch_dtype=dtype, **kwargs)
        except Exception as e:  # noqa: BLE001  (corrupt weights, a config of another model class, ...)
            raise UserError(f"cannot load the VAE in {name_or_path}: {_first_line(e)}") from None
    elif path.startswith((".", "/", "~")) or os.path.exists(path) or name_or_path.count("/") > 2:
        raise UserError(f"VAE folder not found: {name_or_path}")
    else:
        parts = name_or_path.split("/")
        if len(parts) == 3:
            source, kwargs["subfolder"] = "/".join(parts[:2]), parts[2]
        try:
            vae = _from_pretrained(source, local_files_only=True, torch_dtype=dtype, **kwargs)
        except Exception:  # noqa: BLE001  (not in the cache)
            fix = (f"download it once where the hub is reachable (`hf download {source}`, or any "
                   f"from_pretrained call), or pass a local folder with --vae DIR")
            if not _hub_reachable():
                raise UserError(f"VAE '{name_or_path}' is neither a local folder nor in the local Hugging Face cache, "
                                f"and the hub cannot be reached: {fix}") from None
            try:
                vae = _from_pretrained(source, torch_dtype=dtype, **kwargs)
            except Exception as e:  # noqa: BLE001  (network errors, unknown repo, gated repo, ...)
                raise UserError(f"cannot load VAE '{name_or_path}' from the hub ({_first_line(e)}): {fix}") from None
    if type(vae).__name__ != "AutoencoderKL":
        raise UserError(f"{name_or_path} is a {type(vae).__name__}, not an AutoencoderKL")
    return vae.to(device).eval().requires_grad_(False)


def latent_norm(vae) -> tuple[float, float]:
    """(scale, shift) of the VAE's latents: config.scaling_factor and config.shift_factor (0 when absent)."""
    scale = getattr(vae.config, "scaling_factor", None)
    if scale is None:
        raise UserError("the VAE's config has no scaling_factor")
    shift = getattr(vae.config, "shift_factor", None)
    return float(scale), float(shift or 0.0)


def latent_shape(vae, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of the posterior of height x width images: config.latent_channels, and one halving per down
    block but the last (AutoencoderKL's encoder), e.g. 4 x 32 x 32 for the SD VAE at 256 px."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.latent_channels), height // factor, width // factor


def images_to_float(images) -> torch.Tensor:
    """uint8 (B, H, W, C) or (B, C, H, W), numpy or torch, C in {1, 3} -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 images (B, H, W, C) or (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got images of shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1).float().div(127.5).sub(1.0)


def batches(n: int, batch_size: Optional[int]) -> list[slice]:
    """Slices of range(n) of at most `batch_size` (None or 0: one slice of all)."""
    step = n if not batch_size else batch_size
    return [slice(s, min(s + step, n)) for s in range(0, n, max(step, 1))]


@torch.no_grad()
def encode_images(vae, images, batch_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, H, W, 3) or (B, 3, H, W) (grey: 1 channel) -> posterior (mean, std), float32
    (B, C, h, w) on the VAE's device. The forward runs in the VAE's dtype and in its weights' memory layout
    (`encode` makes it channels-last on CUDA, cuDNN's fast layout); `batch_size` bounds memory."""
    x = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    conv_in = vae.encoder.conv_in.weight                    # the input follows the weights' layout
    layout = torch.channels_last if conv_in.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    means, stds = [], []
    for sl in batches(len(x), batch_size):
        # uint8 goes to the device (4x fewer bytes than floats), the same exact scaling runs there
        pixels = images_to_float(x[sl].to(vae.device, non_blocking=True))
        dist = vae.encode(pixels.to(dtype=vae.dtype, memory_format=layout)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Un-normalised latents z (b, C, h, w) -> images float32 (b, 3, H, W), about [-1, 1], on the VAE's device.
    One forward in the VAE's dtype; batching, normalisation and uint8 conversion are `dataio.codec`'s."""
    return vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample.float()
