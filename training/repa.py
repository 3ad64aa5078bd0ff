"""The frozen REPA target encoders and the features training aligns with.

REPA (Yu et al. 2025, "Representation Alignment for Generation") aligns the projector output of an early block
with a frozen encoder's patch tokens; the loss term itself is `loss.repa_projection_loss`. Encoders come by
name (`repa_encoder`, the reference's `enc_type`; `training/encoders.py` holds the table): a torch.hub DINOv2
name (`dinov2_vitb14`, this repository's first path, below) or a timm one from a local weights file
(`dinov2-vit-b`, `clip-vit-L`, `mae-vit-l`, ...), or a comma list of several. Every encoder sees the images
resized to `model.grid * patch` pixels and yields one token per model token (224 px for /14 at a 16 x 16 grid).

    encoders = load_repa_encoders("dinov2-vit-b,clip-vit-L", path="weights/", device="cuda")
    z = target_features(encoders, batch, model.grid)      # (B, grid * grid, sum of the encoders' widths)

With several encoders each encoder's tokens are unit-normalised and concatenated, as the model's
`MultiProjector` output, so the one cosine term is REPA's average over encoders (models/blocks.py says why).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from training.encoders import (ENCODERS, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, encoder_names, is_hub_name,
                               load_timm_encoder, weight_paths)
from utils.errors import UserError

DINOV2_REPO = "facebookresearch/dinov2"
DINOV2_PATCH = 14                       # pixels per patch side of every DINOv2 /14 model


def _hub_cache_repo() -> str:
    """Where torch.hub keeps the DINOv2 code once downloaded ($TORCH_HOME/hub/facebookresearch_dinov2_main)."""
    return os.path.join(torch.hub.get_dir(), DINOV2_REPO.replace("/", "_") + "_main")


def load_repa_encoder(name: str = "dinov2_vitb14", path: Optional[str] = None, device="cpu") -> torch.nn.Module:
    """A frozen DINOv2 encoder (Oquab et al. 2024) for REPA, in eval mode.

    path None:      torch.hub's cached repo (no network) or `facebookresearch/dinov2` from GitHub; weights from
                    the hub checkpoint cache or downloaded.
    path a folder:  a local torch.hub repo (source='local'), e.g. a clone of facebookresearch/dinov2.
    path a file:    a state dict for `name`; the architecture comes from the hub repo (cached or GitHub).
    Failure (offline with nothing cached, a missing file, a mismatched state dict) raises a one-line UserError.
    """
    try:
        if path is not None and os.path.isdir(path):
            encoder = torch.hub.load(path, name, source="local")
        elif path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file or folder: {path}")
            encoder = _hub_model(name, pretrained=False)
            state = torch.load(path, map_location="cpu", weights_only=True)
            encoder.load_state_dict(state, strict=True)
        else:
            encoder = _hub_model(name, pretrained=True)
    except Exception as e:  # network, file and state-dict errors all mean: the user must provide the encoder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"cannot load REPA encoder '{name}' ({type(e).__name__}: {first}); run once online to fill the "
            f"torch.hub cache ({torch.hub.get_dir()}) or set repa_encoder_path to a local dinov2 hub folder or "
            f"weights file") from e
    return encoder.to(device).eval().requires_grad_(False)


def _hub_model(name: str, pretrained: bool) -> torch.nn.Module:
    cached = _hub_cache_repo()
    if os.path.isdir(cached):
        return torch.hub.load(cached, name, source="local", pretrained=pretrained)
    return torch.hub.load(DINOV2_REPO, name, pretrained=pretrained, trust_repo=True)


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images (B, 3, H, W), uint8 in [0, 255] or float in [-1, 1] -> DINOv2 patch tokens (B, N, z).

    As REPA's preprocessing: [0, 1] range, ImageNet mean/std, bicubic resize to `size` (224 gives 16x16 patch
    tokens for /14 models, matching a 256 px /2 model; REPA uses 448 at 512 px).
    """
    return encoder.forward_features(encoder_input(images, IMAGENET_MEAN, IMAGENET_STD, size))["x_norm_patchtokens"]


def encoder_input(images: torch.Tensor, mean, std, size: int) -> torch.Tensor:
    """Images (B, 3, H, W), uint8 in [0, 255] or float in [-1, 1] -> [0, 1], (x - mean) / std, bicubic to size."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return F.interpolate((x - mean) / std, size=(size, size), mode="bicubic", align_corners=False)


@torch.no_grad()
def timm_features(encoder: torch.nn.Module, spec: EncoderSpec, images: torch.Tensor, grid: int) -> torch.Tensor:
    """Images -> the patch tokens (B, grid * grid, spec.embed_dim) of a timm encoder of `training/encoders.py`.

    Input at grid * patch pixels (position embeddings interpolated by timm); class and register tokens dropped.
    """
    x = encoder_input(images, spec.mean, spec.std, spec.input_size(grid))
    tokens = encoder.forward_features(x)[:, spec.prefix:]                  # (B, grid^2, z)
    if tokens.shape[1] != grid * grid:
        raise ValueError(f"REPA encoder {spec.name} gave {tokens.shape[1]} patch tokens for a {grid}x{grid} grid")
    return tokens


class RepaEncoders(torch.nn.Module):
    """The frozen target encoder(s) of a run, by name; `embed_dim` is the projector's z_dim (a list for several).

    `targets(images, grid)` -> (B, grid^2, z): one encoder's tokens as they are, or several encoders' tokens
    unit-normalised and concatenated (the layout `models.blocks.MultiProjector` produces).
    """

    def __init__(self, names: list[str], encoders: list[torch.nn.Module]):
        super().__init__()
        self.names = list(names)
        self.encoders = torch.nn.ModuleList(encoders)
        dims = [ENCODERS[n].embed_dim if n in ENCODERS else int(e.embed_dim) for n, e in zip(names, encoders)]
        self.embed_dim = dims[0] if len(dims) == 1 else dims

    @torch.no_grad()
    def targets(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        feats = [encoder_features(e, images, size=encoder_size(grid)) if is_hub_name(n)
                 else timm_features(e, ENCODERS[n], images, grid) for n, e in zip(self.names, self.encoders)]
        if len(feats) == 1:
            return feats[0]
        return torch.cat([F.normalize(f.float(), dim=-1) for f in feats], dim=-1)


def load_repa_encoders(names: str, path: Optional[str] = None, device="cpu") -> RepaEncoders:
    """The encoders of `names` ('dinov2-vit-b' or 'dinov2-vit-b,clip-vit-L'; see training/encoders.py).

    Every name and every weights path is checked before the first encoder is built (one-line UserErrors);
    `path` is one path, a comma list (one per encoder) or a folder of NAME.safetensors files.
    """
    names_ = encoder_names(names)
    paths = weight_paths(names_, path)
    encoders = [load_repa_encoder(n, p, "cpu") if is_hub_name(n) else load_timm_encoder(n, p)
                for n, p in zip(names_, paths)]
    return RepaEncoders(names_, encoders).to(device).eval().requires_grad_(False)


def encoder_size(grid: int) -> int:
    """The encoder's input side in pixels for a model with a grid x grid token grid: one /14 patch per token."""
    return grid * DINOV2_PATCH


def target_features(encoder: torch.nn.Module, batch: dict, grid: int) -> torch.Tensor:
    """A collated batch -> the encoder's tokens (B, grid * grid, z) that REPA aligns the projector with.

    `encoder` is a `RepaEncoders` (or a bare torch.hub DINOv2 module). The encoder sees the source images
    (stored beside latents as `image`), or the pixels themselves; grey images are repeated to three channels.
    """
    images = batch["image"] if "image" in batch else batch["x"].expand(-1, 3, -1, -1)
    if isinstance(encoder, RepaEncoders):
        return encoder.targets(images, grid)
    return encoder_features(encoder, images, size=encoder_size(grid))
