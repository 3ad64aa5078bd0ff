"""The REPA target encoders by name (`--enc-type`), built with timm from a local weights file.

REPA (Yu et al. 2025) and the public ELIT reference name encoders `TYPE-vit-SIZE` (`dinov2-vit-b`,
`dinov2-vit-b-reg`, `dinov1-vit-b`, `clip-vit-L`, `mocov3-vit-b`, `mae-vit-l`, `jepa-vit-h`, ...) and take a
comma-separated list for several encoders (`dinov2-vit-b,clip-vit-L`: one projector per encoder, the loss
averaged over encoders). Each row of `ENCODERS` says which timm architecture the name is, what it expects and
what REPA aligns with:

    arch        the timm architecture (built with pretrained=False: nothing downloads)
    img_size    the side its position embedding was trained at (the weights file's pos_embed fits it)
    patch       pixels per patch side; the encoder sees images resized to grid * patch pixels, so it yields one
                token per model token (224 px for /14 and 256 px for /16 encoders at a 16 x 16 grid, as REPA's
                `preprocess_raw_image`: 224 * res/256 for DINOv2, CLIP and I-JEPA, the raw 256 px for MAE/MoCo v3)
    mean, std   input normalisation of images in [0, 1] (ImageNet, or OpenAI CLIP's for CLIP)
    prefix      class + register tokens in front of the patch tokens, dropped from the features
    embed_dim   feature width (sets the projector's output width)
    kwargs      architecture settings that differ from timm's registered model

Features are the patch tokens of timm's `forward_features` (after the final LayerNorm; DINOv2's
`x_norm_patchtokens`). Position embeddings are interpolated to the input's grid at run time
(`dynamic_img_size`), as REPA resamples them to 16 x 16. The weights file is a state dict in timm's layout or
in the original release's (DINOv2 / OpenAI CLIP / I-JEPA `encoder` / MAE `model` / MoCo v3 `state_dict` with
`module.base_encoder.`): timm's own converter for ViTs maps the originals.

The torch.hub DINOv2 names (`dinov2_vitb14`, ...) are this repository's first REPA path and keep working
(`training/repa.py` loads them through torch.hub); they may be mixed into a list.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from utils.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)     # OpenAI CLIP's preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_NAME = re.compile(r"^dinov2_vit[sblg]14(_reg)?$")  # facebookresearch/dinov2 hubconf names (torch.hub path)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class EncoderSpec:
    """One `--enc-type` name: the timm architecture and how its input and output are handled."""
    name: str
    arch: str
    img_size: int
    patch: int
    embed_dim: int
    prefix: int = 1
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    kwargs: dict = field(default_factory=dict)

    def input_size(self, grid: int) -> int:
        """Input side in pixels for a grid x grid model: one encoder patch per model token."""
        return grid * self.patch


def _rows() -> dict:
    rows = []
    # DINOv2 (Oquab et al. 2024), /14 at 518 px; the -reg variants add 4 register tokens (Darcet et al. 2024).
    for size, arch, dim in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536)):
        rows.append(EncoderSpec(f"dinov2-vit-{size}", f"vit_{arch}_patch14_dinov2", 518, 14, dim))
        rows.append(EncoderSpec(f"dinov2-vit-{size}-reg", f"vit_{arch}_patch14_reg4_dinov2", 518, 14, dim, prefix=5))
    # DINOv1 (Caron et al. 2021), ViT-S/16 and ViT-B/16 (timm's `.dino` weights use these architectures).
    rows.append(EncoderSpec("dinov1-vit-s", "vit_small_patch16_224", 224, 16, 384))
    rows.append(EncoderSpec("dinov1-vit-b", "vit_base_patch16_224", 224, 16, 768))
    # OpenAI CLIP ViT-L/14 (Radford et al. 2021): pre-norm, QuickGELU, CLIP's normalisation.
    rows.append(EncoderSpec("clip-vit-l", "vit_large_patch14_clip_quickgelu_224", 224, 14, 1024,
                            mean=CLIP_MEAN, std=CLIP_STD))
    # MoCo v3 (Chen et al. 2021): plain ViTs with a class token; its ViT-S has 12 heads (REPA's mocov3_vit.py,
    # MoCo v3's vits.py), not timm's 6.
    rows.append(EncoderSpec("mocov3-vit-s", "vit_small_patch16_224", 224, 16, 384, kwargs={"num_heads": 12}))
    rows.append(EncoderSpec("mocov3-vit-b", "vit_base_patch16_224", 224, 16, 768))
    rows.append(EncoderSpec("mocov3-vit-l", "vit_large_patch16_224", 224, 16, 1024))
    # MAE (He et al. 2022) encoders: ViT-B/16, ViT-L/16, ViT-H/14 (timm's `.mae` weights use these).
    rows.append(EncoderSpec("mae-vit-b", "vit_base_patch16_224", 224, 16, 768))
    rows.append(EncoderSpec("mae-vit-l", "vit_large_patch16_224", 224, 16, 1024))
    rows.append(EncoderSpec("mae-vit-h", "vit_huge_patch14_224", 224, 14, 1280))
    # I-JEPA (Assran et al. 2023) ViT-H/14: no class token (average-pool head).
    rows.append(EncoderSpec("jepa-vit-h", "vit_huge_patch14_gap_224", 224, 14, 1280, prefix=0))
    return {r.name: r for r in rows}


ENCODERS = _rows()


def encoder_names(text: str) -> list[str]:
    """'dinov2-vit-b, clip-vit-L' -> ['dinov2-vit-b', 'clip-vit-l'], every name checked (nothing is loaded).

    Names are case-insensitive (the reference writes `clip-vit-L`); torch.hub DINOv2 names pass as they are.
    A name twice, an empty list or an unknown name is a one-line UserError listing the known names.
    """
    names = [n.strip() for n in str(text).split(",")]
    if not any(names) or not all(names):
        raise UserError(f"REPA encoder list {text!r} has an empty name: write NAME or NAME1,NAME2")
    out = []
    for name in names:
        key = name if HUB_NAME.match(name) else name.lower()
        if key not in ENCODERS and not HUB_NAME.match(key):
            raise UserError(f"unknown REPA encoder '{name}': choose from {', '.join(ENCODERS)} (timm, local weights) "
                            "or a torch.hub DINOv2 name such as dinov2_vitb14")
        if key in out:
            raise UserError(f"REPA encoder '{name}' is listed twice in {text!r}")
        out.append(key)
    return out


def is_hub_name(name: str) -> bool:
    return bool(HUB_NAME.match(name))


def weight_paths(names: list[str], path: Optional[str]) -> list[Optional[str]]:
    """One weights path per encoder from `repa_encoder_path`: a comma list (one per encoder, in order), one
    path for a single encoder, or a folder holding NAME.safetensors / .pth / .pt / .bin for each timm name.

    torch.hub names keep their own meaning of the path (a hub repo folder or weights file; None = the hub cache).
    A timm name without a file, or a file that does not exist, is a one-line UserError (checked before any load).
    """
    parts = [p.strip() for p in path.split(",")] if path else []
    if len(parts) > 1 and len(parts) != len(names):
        raise UserError(f"repa_encoder_path lists {len(parts)} paths for {len(names)} encoders ({','.join(names)}): "
                        "give one per encoder, in order, or a folder of NAME.safetensors files")
    out = []
    for i, name in enumerate(names):
        given = parts[i] if len(parts) > 1 else (parts[0] if parts else None)
        if is_hub_name(name):
            out.append(given)
            continue
        if given is not None and os.path.isdir(given):
            found = [f for f in (os.path.join(given, name + s) for s in WEIGHT_SUFFIXES) if os.path.isfile(f)]
            if not found:
                raise UserError(f"no weights for REPA encoder '{name}' in {given}: expected {name}.safetensors "
                                f"(or .pth/.pt/.bin); nothing is downloaded")
            given = found[0]
        if given is None:
            raise UserError(f"REPA encoder '{name}' needs a local weights file ({ENCODERS[name].arch} state dict): "
                            "set repa_encoder_path to the file (or to a folder of NAME.safetensors files); nothing is "
                            "downloaded")
        if not os.path.isfile(given):
            raise UserError(f"REPA encoder '{name}': weights file not found: {given}")
        out.append(given)
    return out


def build_timm_encoder(spec: EncoderSpec, device="cpu") -> torch.nn.Module:
    """The bare architecture of `spec` (random init, no download); device 'meta' builds it at no cost."""
    import timm  # optional heavy dependency: only REPA with a timm encoder needs it
    with torch.device(device):
        return timm.create_model(spec.arch, pretrained=False, num_classes=0, img_size=spec.img_size,
                                 dynamic_img_size=True, **spec.kwargs)


def read_state_dict(path: str) -> dict:
    """A state dict from .safetensors or a torch file (weights_only), unwrapped from {'state_dict'|'model'|...}."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # optional dependency (installed with timm)
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):                             # MoCo v3 / MAE release containers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state                                                    # I-JEPA's {'encoder': ...}: timm's converter


def _timm_layout(state: dict, model: torch.nn.Module) -> dict:
    """Original release layouts -> timm's: MoCo v3's `module.base_encoder.` prefix here, the rest (DINOv2,
    OpenAI CLIP, I-JEPA's 'encoder', position-embedding resampling) through timm's ViT converter."""
    from timm.models.vision_transformer import checkpoint_filter_fn  # optional heavy dependency (see above)
    if any(k.startswith("module.base_encoder.") for k in state):
        state = {k[len("module.base_encoder."):]: v for k, v in state.items() if k.startswith("module.base_encoder.")}
    elif state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = checkpoint_filter_fn(dict(state), model)
    return {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "fc."))
            or k in model.state_dict()}


def load_timm_encoder(name: str, path: str) -> torch.nn.Module:
    """The frozen encoder `name` with the weights of `path` (strict: every tensor must fit), in eval mode."""
    spec = ENCODERS[name]
    model = build_timm_encoder(spec, device="meta")     # no random init (seconds per ViT on a CPU): the file fills it
    try:
        state = _timm_layout(read_state_dict(path), model)
        model.load_state_dict(state, strict=True, assign=True)
        left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if left:
            raise ValueError(f"the weights leave {left[0]} unset")
    except Exception as e:  # unreadable files and mismatched state dicts alike: the user must fix the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load REPA encoder '{name}' ({spec.arch}) from {path}: {first[:300]}") from None
    return model.eval().requires_grad_(False)
