"""DINOv2 ViT-L/14 features for FDD (Frechet distance in DINOv2 space), with EDM2's protocol.

Protocol (NVlabs/edm2 `calculate_metrics.py`, `DINOv2Detector`, its default resize_mode='torch'; modelled there on
layer6ai-labs/dgm-eval):
- network: facebookresearch/dinov2 `dinov2_vitl14` (ViT-L/14, no registers, trained at 518 px), in eval mode,
  float32; its output = the final LayerNorm's CLS token, (B, 1024);
- resize: uint8 images -> float32, `interpolate(size=(224, 224), mode='bicubic', antialias=True)` (always, whatever
  the input size), then / 255, minus ImageNet mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225);
- the 37 x 37 position embedding is brought to the 16 x 16 grid of a 224 px input as DINOv2's own
  `interpolate_pos_encoding` does it at every forward: float32, bicubic without antialias, scale factor
  (16 + 0.1) / 37 (its "interpolate_offset" kludge). We do it once at load time: same result, less work;
- statistics: mean and unbiased covariance in float64; the distance is the usual Frechet formula (`metrics.py`).
Deviation, deliberate: convolutions and matmuls run in exact fp32 (TF32 off), as for Inception; EDM2 leaves
PyTorch's default (TF32 cuDNN convolutions). Grey images are replicated to RGB.

The architecture is timm's `vit_large_patch14_dinov2` built at img_size 224 (no pretrained weights: timm never
downloads here). Weights come from a local file only (`find_dinov2_weights`), in either layout:
- torch.hub / facebookresearch/dinov2: `dinov2_vitl14_pretrain.pth` (`cls_token`, `pos_embed` (1, 1370, 1024),
  `mask_token`, `patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,
  ls2.gamma}.*`, `norm.*`); training checkpoints with FSDP block chunks (`blocks.C.N.*`) are accepted too;
- timm: `vit_large_patch14_dinov2.lvd142m` (`model.safetensors`): the same names without `mask_token`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EvalInputError
from .features import FeatureNetwork, _one_line, _sha256_of_file, _to_device_nchw, exact_fp32

DINOV2_ENV = "ELIT_DINOV2_WEIGHTS"
DINOV2_FILENAME = "dinov2_vitl14_pretrain.pth"         # torch.hub's name for facebookresearch/dinov2's file
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
TIMM_NAME = "vit_large_patch14_dinov2.lvd142m"
# EDM2's DINOv2Detector: 224 px input, ImageNet normalisation.
RESOLUTION = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ViT-L/14 as facebookresearch/dinov2 `vit_large` builds it: 24 blocks, width 1024, 16 heads, MLP 4096.
PATCH, WIDTH, DEPTH = 14, 1024, 24
INTERPOLATE_OFFSET = 0.1                                 # dinov2's `interpolate_offset` default
FEATURE_DIM = WIDTH

# Test hook, for tests only: build (and expect weights for) only the first N blocks, so that CPU tests stay
# small. None (always, outside tests) = the real 24-block ViT-L/14. A network built this way says so in its
# tag and info(), so its numbers can never pass for FDD.
_TEST_DEPTH: Optional[int] = None


def default_dinov2_locations() -> list[str]:
    """Where the weights are looked for when neither a path nor $ELIT_DINOV2_WEIGHTS is given: torch.hub's
    checkpoint folder (where `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')` puts the file), then
    timm's file in the Hugging Face cache."""
    hf_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    timm_files = sorted(glob.glob(os.path.join(hf_cache, f"models--timm--{TIMM_NAME}", "snapshots", "*",
                                               "model.safetensors")))
    return [os.path.join(torch.hub.get_dir(), "checkpoints", DINOV2_FILENAME), *timm_files]


def _where_from() -> str:
    return (f"the file is facebookresearch/dinov2's ViT-L/14 ({DINOV2_URL}) or timm's {TIMM_NAME} "
            "model.safetensors, fetched on a connected machine; nothing is downloaded here")


def find_dinov2_weights(path: Optional[str] = None, required: bool = True) -> Optional[str]:
    """The DINOv2 weights file: `path`, else $ELIT_DINOV2_WEIGHTS, else the default locations. A path given (or
    set in the environment) that does not exist is an error; when nothing is configured and no default file
    exists: an error if `required`, else None (the caller skips FDD)."""
    for given, where in ((path, "--dinov2-weights"), (os.environ.get(DINOV2_ENV), f"from ${DINOV2_ENV}")):
        if given:
            if not os.path.isfile(given):
                raise EvalInputError(f"DINOv2 weights file not found: {given} ({where}); {_where_from()}")
            return given
    for candidate in default_dinov2_locations():
        if os.path.isfile(candidate):
            return candidate
    if not required:
        return None
    raise EvalInputError(
        f"DINOv2 weights not found: pass --dinov2-weights PATH (Python: dinov2_weights=PATH), set "
        f"${DINOV2_ENV}=PATH, or put {DINOV2_FILENAME} at {default_dinov2_locations()[0]}; {_where_from()}")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A flat state dict from a .safetensors file or a torch file loaded with weights_only=True (no code runs)."""
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch                         # only for timm's file format
            state_dict = safetensors.torch.load_file(path, device="cpu")
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                  # corrupt file, pickled code, not a weights file
        raise EvalInputError(f"cannot read DINOv2 weights {path}: {_one_line(e).split(' Please ')[0]}") from None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise EvalInputError(f"{path} is not a state dict (a mapping of names to tensors); {_where_from()}")
    return dict(state_dict)


def resample_position_embedding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M*M, D) -> (1, 1 + grid*grid, D) exactly as dinov2's `interpolate_pos_encoding` does for a square
    input of grid x grid patches: the CLS entry kept, the M x M patch entries resized in float32 by bicubic
    interpolation (no antialias) with scale factor (grid + 0.1) / M. M == grid: unchanged (as dinov2)."""
    m = math.isqrt(pos_embed.shape[1] - 1)
    if m * m != pos_embed.shape[1] - 1:
        raise EvalInputError(f"DINOv2 pos_embed {tuple(pos_embed.shape)} is not a CLS entry plus a square grid")
    if m == grid:
        return pos_embed
    pe = pos_embed.float()
    patches = pe[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)                       # (1, D, M, M)
    scale = (grid + INTERPOLATE_OFFSET) / m
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)  # (1, D, g, g)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([pe[:, :1], patches], dim=1).to(pos_embed.dtype)


def to_timm_layout(state_dict: Mapping[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """A hub- or timm-layout DINOv2 state dict -> timm's ViT at `grid` x `grid` patches: drops the hub's
    `mask_token` (masked-image-modelling token, unused at inference), un-chunks FSDP block keys
    (`blocks.C.N.x` -> `blocks.N.x`) and resamples the position embedding (`resample_position_embedding`)."""
    if "register_tokens" in state_dict or "reg_token" in state_dict:
        raise EvalInputError("these DINOv2 weights have register tokens (dinov2_vitl14_reg); FDD uses "
                             f"dinov2_vitl14 without registers ({DINOV2_FILENAME})")
    out = {}
    for key, value in state_dict.items():
        if key == "mask_token":
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+\.)", r"blocks.\1", key)
        value = value.float() if value.is_floating_point() else value      # the protocol runs in float32
        out[key] = resample_position_embedding(value, grid) if key == "pos_embed" else value
    return out


def build_vit_l14(depth: int = DEPTH) -> torch.nn.Module:
    """timm's DINOv2 ViT-L/14 at 224 px, CLS-token output (B, 1024), parameters on the meta device (no
    initialisation work: the weights are assigned by `load_state_dict(assign=True)`)."""
    import timm                                             # heavy; only needed for FDD

    with torch.device("meta"):
        return timm.create_model(TIMM_NAME, pretrained=False, img_size=RESOLUTION, num_classes=0, depth=depth)


def dinov2_preprocess(x: torch.Tensor) -> torch.Tensor:
    """EDM2's DINOv2 input: uint8 (B, 3, H, W) -> float32 (B, 3, 224, 224): bicubic antialiased resize of the
    0..255 values, then / 255 and ImageNet normalisation."""
    x = F.interpolate(x.to(torch.float32), size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, -1, 1, 1)
    return (x / 255 - mean) / std


class DINOv2Features(FeatureNetwork):
    """DINOv2 ViT-L/14 CLS features (B, 1024) of uint8 images, EDM2's protocol (see the module docstring).
    `pool` only: no logits, no spatial features; its reference statistics are always computed from the
    reference images (ADM's stored statistics are Inception's), and its features serve FDD only."""

    precision_recall = False

    def __init__(self, weights: Optional[str] = None, device=None):
        super().__init__(device)
        self.weights_path = find_dinov2_weights(weights)
        self.sha256 = _sha256_of_file(self.weights_path)
        self.depth = _TEST_DEPTH or DEPTH
        state_dict = to_timm_layout(read_state_dict(self.weights_path), RESOLUTION // PATCH)
        model = build_vit_l14(self.depth)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as e:                           # wrong keys or shapes: another model or layout
            reason = _one_line(e).replace("Error(s) in loading state_dict for VisionTransformer: ", "")
            raise EvalInputError(f"{self.weights_path} is not DINOv2 ViT-L/14 ({DINOV2_FILENAME} or timm's "
                                 f"{TIMM_NAME}): {reason}") from None
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, Optional[torch.Tensor]]:
        x = _to_device_nchw(images, self.device)           # (B, C, H, W) uint8
        if x.shape[1] == 1:                                 # grey: replicate to RGB
            x = x.expand(-1, 3, -1, -1)
        with exact_fp32(self.device):
            features = self.model(dinov2_preprocess(x))     # (B, 1024): final-norm CLS token
        return {"pool": features.float(), "logits": None, "spatial": None}

    @property
    def tag(self) -> str:
        return f"dinov2-vitl14-{self.sha256[:8]}" + (f"-depth{self.depth}" if self.depth != DEPTH else "")

    def info(self) -> dict:
        return {"kind": "dinov2-vitl14", "weights": os.path.abspath(self.weights_path), "sha256": self.sha256,
                "depth": self.depth, "protocol": "EDM2 calculate_metrics.py (bicubic antialiased resize to 224, "
                                                 "ImageNet mean/std, CLS token)"}


def load_dinov2(weights: Optional[str] = None, device=None) -> DINOv2Features:
    """The FDD feature network (weights located by `find_dinov2_weights`)."""
    return DINOv2Features(weights, device)
