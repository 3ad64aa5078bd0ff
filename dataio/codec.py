"""The one pixel/latent codec: what the network sees versus what the user sees (after EDM2's
`training/encoders.py`). It is the only code that knows whether a model works on pixels or on VAE latents.

    codec = Codec.from_record(record, vae=None, device="cpu")
        record: a dataset.json dict (a checkpoint carries its training data's as ckpt["dataset"]; a converted
        reference checkpoint, which carries none, gets `sd_vae_record`: see `checkpoint_record`);
        vae: overrides the record's VAE (hub id or local folder), or an AutoencoderKL already loaded.
    codec.kind                          'pixels' | 'latents'
    codec.model_settings()              dict(input_size, in_channels, num_classes) of a model that fits the data
    codec.check_fits(size, channels, name, num_classes=None)    UserError naming both shapes when it does not
    codec.model_input_size(px)          the model's input side for images of side `px`
    codec.image_resolution              the side of the images, in pixels
    codec.read(arrays, idx)             stored arrays -> the batched item tensors (the dataset's items)
    codec.encode_noise(shape, g, dev)   the noise `encode` takes (latents: a posterior sample), or None
    codec.encode(batch, noise=None)     a collated batch -> the model input x (B, C, h, w)
    codec.source_images(batch)          the images behind a batch, for REPA's image encoder
    codec.vae_source                    the VAE that decodes (resolved: local folders absolute), or None
    codec.load_vae()                    load it now (fails early, e.g. offline); None for pixels
    codec.norm()                        (scale, shift) of the latents: the record's, else the VAE config's
    codec.decode(x, batch_size=32)      model output x (B, C, h, w) -> uint8 (B, H, W, 3), rounded
    codec.output_settings()             what a sample folder records about decoding (output, latent_scale/shift)

Pixels: the model sees x in [-1, 1]; decoding rescales and rounds (grey replicated to RGB). Latents: the
model sees x = (z - shift) * scale with the VAE's own constants, stored in the record (Rombach et al.,
2022, sec. 3.1; SD3/FLUX VAEs add the shift); `encode` draws z from the stored posterior, `decode` runs
the VAE (loaded lazily, fp32) in batches. Rounding, not truncation, as ADM's evaluation batches expect.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from dataio import vae as vae_io
from dataio.format import not_trainable
from utils.errors import UserError

SD_VAE_FACTOR = 8                   # the SD VAE's image side / latent side (3 downsamplings)
SD_VAE_CHANNELS = 4
SD_VAE_CLASSES = 1000               # the reference checkpoints are ImageNet models


def pixels_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, 3) (grey replicated to RGB), rounded."""
    img = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return img.expand(-1, -1, -1, 3).contiguous() if img.shape[-1] == 1 else img.contiguous()


@torch.no_grad()
def decode_latents(vae, x: torch.Tensor, scale: float, shift: float = 0.0,
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """Normalised latents x = (z - shift) * scale, (B, C, h, w) -> uint8 images (B, H, W, 3) on the VAE's
    device, decoded `batch_size` at a time (the uint8 conversion per batch bounds memory)."""
    return torch.cat([pixels_to_uint8(vae_io.decode(vae, x[sl].float() / scale + shift))
                      for sl in vae_io.batches(len(x), batch_size)])


class Codec:
    """Encode for training, decode to uint8 for outputs; built from a dataset record (`from_record`)."""

    kind = ""

    def __init__(self, record: dict, vae=None, device="cpu"):
        self.record, self.device = record, device
        self._override = vae if isinstance(vae, str) and vae else None
        self._vae = None if isinstance(vae, str) or vae is None else vae       # an AutoencoderKL given loaded

    @staticmethod
    def from_record(record: dict, vae=None, device="cpu") -> "Codec":
        """The codec of data described by `record`; UserError for records of other kinds (e.g. `convert`'s
        images) or no record at all."""
        if not isinstance(record, dict) or record.get("kind") not in KINDS:
            raise UserError(not_trainable(record))
        return KINDS[record["kind"]](record, vae, device)

    # What the model looks like.
    def model_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        raise NotImplementedError

    def model_settings(self) -> dict:
        """Model settings implied by the data: dict(input_size, in_channels, num_classes)."""
        c, h, w = self.model_shape()
        if h != w:
            raise UserError(f"the dataset's {self.kind} are {h}x{w}; the models take square inputs")
        return dict(input_size=int(h), in_channels=int(c), num_classes=int(self.record["num_classes"]))

    def check_fits(self, model_input_size: int, in_channels: int, model_name: str = "the model",
                   num_classes: Optional[int] = None) -> None:
        """UserError naming both shapes when a model cannot train/sample on this data."""
        info = self.model_settings()
        if (info["input_size"], info["in_channels"]) != (model_input_size, in_channels):
            raise UserError(f"{self.kind} are {info['input_size']}x{info['input_size']}x{info['in_channels']}"
                            f"{self._of_images()} but {model_name} at this config expects "
                            f"{model_input_size}x{model_input_size}x{in_channels}")
        if num_classes is not None and info["num_classes"] > num_classes:
            raise UserError(f"the dataset has {info['num_classes']} classes but {model_name} has {num_classes}")

    def _of_images(self) -> str:
        return ""

    @property
    def image_resolution(self) -> int:
        raise NotImplementedError

    def model_input_size(self, resolution_px: int) -> int:
        """The model's input side for images of side `resolution_px`."""
        raise NotImplementedError

    # Training.
    needs_source_images = False     # do items need the images they were made from beside them (REPA)?

    def read(self, arrays: dict, idx: np.ndarray) -> dict:
        """Memory-mapped arrays (dataio.format.ARRAYS names) at indices `idx` -> batched item tensors."""
        raise NotImplementedError

    def encode_noise(self, shape, generator: Optional[torch.Generator] = None, device=None) -> Optional[torch.Tensor]:
        """The `noise` argument of `encode` for a batch of model inputs of `shape` (B, C, h, w), or None."""
        return None

    def encode(self, batch: dict, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A collated batch -> the model input x (B, C, h, w), on the batch's device."""
        raise NotImplementedError

    def source_images(self, batch: dict) -> torch.Tensor:
        """The images behind a batch, for REPA's encoder: uint8 (B, 3, H, W), or floats in [-1, 1]."""
        raise NotImplementedError

    # Outputs.
    @property
    def vae_source(self) -> Optional[str]:
        return None

    def load_vae(self):
        """The decoder, loaded now (None when there is none): so that a missing VAE fails before sampling."""
        return None

    def norm(self) -> tuple[float, float]:
        raise NotImplementedError

    def decode(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Model output (B, C, h, w) -> uint8 images (B, H, W, 3), rounded."""
        raise NotImplementedError

    def output_settings(self) -> dict:
        """What a folder of samples records about how they were decoded."""
        return dict(output=self.kind, latent_scale=self.record.get("latent_scale"),
                    latent_shift=self.record.get("latent_shift"))


class PixelCodec(Codec):
    """Pixels stored as uint8 (N, H, W, C); the model sees (C, H, W) in [-1, 1]."""

    kind = "pixels"

    def model_shape(self):
        (h, w), c = self.record["resolution"], self.record["channels"]
        return c, h, w

    @property
    def image_resolution(self) -> int:
        return int(self.record["resolution"][0])

    def model_input_size(self, resolution_px: int) -> int:
        return resolution_px

    def read(self, arrays, idx):
        img = torch.from_numpy(np.ascontiguousarray(arrays["images"][idx]))            # (B, H, W, C) uint8
        return dict(x=img.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0))           # (B, C, H, W) in [-1, 1]

    def encode(self, batch, noise=None):
        return batch["x"]

    def source_images(self, batch):
        return batch["x"].expand(-1, 3, -1, -1)

    def decode(self, x, batch_size=32):
        return pixels_to_uint8(x)


class LatentCodec(Codec):
    """VAE posteriors stored as float32 mean and std (N, C, h, w); the model sees normalised samples."""

    kind = "latents"
    needs_source_images = True

    def __init__(self, record, vae=None, device="cpu"):
        super().__init__(record, vae, device)
        self._scale, self._shift = record.get("latent_scale"), record.get("latent_shift")

    def model_shape(self):
        return tuple(self.record["latent_shape"])

    def _of_images(self) -> str:
        h, w = self.record["image_resolution"]
        return f" (of {w}x{h} images)"

    @property
    def image_resolution(self) -> int:
        return int(self.record["image_resolution"][0])

    @property
    def factor(self) -> int:
        """The VAE's downsampling factor: image side / latent side."""
        return self.record["image_resolution"][0] // self.record["latent_shape"][1]

    def model_input_size(self, resolution_px: int) -> int:
        return resolution_px // self.factor

    def read(self, arrays, idx):
        return dict(x=torch.from_numpy(np.ascontiguousarray(arrays["mean"][idx])),      # (B, C, h, w)
                    std=torch.from_numpy(np.ascontiguousarray(arrays["std"][idx])))

    def encode_noise(self, shape, generator=None, device=None):
        return torch.randn(*shape, generator=generator, device=device)

    def encode(self, batch, noise=None):
        """z = mean + std * noise (a posterior sample; `noise` ~ N(0, I) drawn by the caller so that runs are
        reproducible; None = the mean), then x = (z - shift) * scale."""
        x = batch["x"]
        if noise is not None:
            x = x + batch["std"] * noise
        scale, shift = self.norm()
        return (x - shift) * scale

    def source_images(self, batch):
        return batch["image"]

    @property
    def vae_source(self) -> str:
        source = self._override or self.record.get("vae") or vae_io.DEFAULT_VAE
        local = os.path.expanduser(source)
        return os.path.abspath(local) if os.path.isdir(local) else source

    def load_vae(self):
        """The VAE (fp32, eval) on the codec's device; UserError when missing or of other latent channels."""
        if self._vae is None:
            source = self.vae_source
            vae = vae_io.load_vae(source, self.device)
            channels = getattr(vae.config, "latent_channels", None)
            if channels != self.model_shape()[0]:
                raise UserError(f"VAE {source} has {channels} latent channels but the model has "
                                f"{self.model_shape()[0]}")
            self._vae = vae
        return self._vae

    def norm(self):
        if self._scale is None:                             # an SD-VAE record: the VAE's own config
            return vae_io.latent_norm(self.load_vae())
        return self._scale, self._shift

    def decode(self, x, batch_size=32):
        scale, shift = self.norm()
        return decode_latents(self.load_vae(), x, scale, shift, batch_size=batch_size)


KINDS = {"pixels": PixelCodec, "latents": LatentCodec}


def sd_vae_record(image_resolution: Optional[int] = None, vae_id: str = vae_io.DEFAULT_VAE,
                  num_classes: int = SD_VAE_CLASSES, *, latent_size: Optional[int] = None) -> dict:
    """The record of a model on SD-VAE latents of images of side `image_resolution` (or of latents of side
    `latent_size`), as the reference checkpoints are: 4 channels, 1/8 the side, normalised with the decoding
    VAE's own scaling factor (latent_scale / latent_shift None: read from the VAE's config)."""
    if latent_size is None:
        if image_resolution is None or image_resolution <= 0 or image_resolution % SD_VAE_FACTOR:
            raise UserError(f"resolution must be a multiple of {SD_VAE_FACTOR} (SD-VAE latents), "
                            f"got {image_resolution}")
        latent_size = image_resolution // SD_VAE_FACTOR
    side = latent_size * SD_VAE_FACTOR
    return dict(kind="latents", num_classes=int(num_classes), image_resolution=[side, side],
                latent_shape=[SD_VAE_CHANNELS, latent_size, latent_size], vae=vae_id, vae_class="AutoencoderKL",
                latent_scale=None, latent_shift=None, created_by="dataio.codec.sd_vae_record")


def checkpoint_record(record: Optional[dict], model) -> dict:
    """The dataset record of a checkpoint: the one it carries, or, for a converted reference checkpoint
    (none), the SD-VAE record of its model's input size and classes."""
    if record is None:
        return sd_vae_record(latent_size=model.input_size, num_classes=model.num_classes)
    return record
