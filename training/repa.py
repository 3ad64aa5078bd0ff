"""The frozen REPA target encoder (DINOv2, Oquab et al. 2024) and the features training aligns with.

REPA (Yu et al. 2025, "Representation Alignment for Generation") aligns the projector output of an early block
with the encoder's patch tokens; the loss term itself is `loss.repa_projection_loss`. DINOv2 cuts images into
14 x 14 patches, so images are resized to `model.grid * 14` pixels and the encoder yields one token per model
token (224 px for a 16 x 16 token grid).

    encoder = load_repa_encoder("dinov2_vitb14", path=None, device="cuda")
    z = target_features(encoder, batch, model.grid)       # (B, grid * grid, encoder.embed_dim)
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from utils.errors import UserError

DINOV2_REPO = "facebookresearch/dinov2"
DINOV2_PATCH = 14                       # pixels per patch side of every DINOv2 /14 model
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision / DINOv2 preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    x = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = F.interpolate((x - mean) / std, size=(size, size), mode="bicubic", align_corners=False)
    return encoder.forward_features(x)["x_norm_patchtokens"]


def encoder_size(grid: int) -> int:
    """The encoder's input side in pixels for a model with a grid x grid token grid: one /14 patch per token."""
    return grid * DINOV2_PATCH


def target_features(encoder: torch.nn.Module, batch: dict, grid: int) -> torch.Tensor:
    """A collated batch -> the encoder's tokens (B, grid * grid, z) that REPA aligns the projector with.

    The encoder sees the source images (stored beside latents as `image`), or the pixels themselves; grey
    images are repeated to the three channels DINOv2 takes.
    """
    images = batch["image"] if "image" in batch else batch["x"].expand(-1, 3, -1, -1)
    return encoder_features(encoder, images, size=encoder_size(grid))
