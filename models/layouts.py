"""State-dict layouts of the public SiT-family code bases, and how each maps onto ours.

Key names and shapes, with D = hidden_size, C = in_channels, p = patch_size, N = (input_size / p)^2 tokens:

| key (theirs)                        | willisma/SiT (`models.py`)   | sihyun-yu/REPA (`models/sit.py`) | ours                |
|-------------------------------------|------------------------------|----------------------------------|---------------------|
| x_embedder.proj.weight / .bias      | (D, C, p, p) / (D,)          | same                             | same                |
| t_embedder.mlp.{0,2}.weight / .bias | (D, 256), (D, D)             | same                             | same (time flipped) |
| y_embedder.embedding_table.weight   | (classes + 1, D) (null last) | same                             | same                |
| pos_embed                           | (1, N, D) frozen sin-cos     | same                             | not stored (buffer) |
| blocks.i.attn.qkv / attn.proj       | timm Attention, qkv_bias     | same (+ attn.{q,k}_norm if qk)   | same                |
| blocks.i.mlp.fc1 / fc2              | timm Mlp, (r D, D), (D, r D) | same                             | same                |
| blocks.i.adaLN_modulation.1         | (6 D, D)                     | same                             | same                |
| final_layer.adaLN_modulation.1      | (2 D, D)                     | same                             | same                |
| final_layer.linear.weight           | (p p 2C, D): learn_sigma     | (p p C, D)                       | (p p C, D)          |
| projectors.0.{0,2,4}                | -                            | (2048, D), (2048, 2048), (z, 2048) | projector.{0,2,4} |

Two facts beyond the names (willisma/SiT `transport/path.py` and `models.py`):
- Time runs the other way: SiT's linear path is x_t = t x_data + (1 - t) x_noise with velocity target
  x_data - x_noise, ours (and REPA's) x_t = (1 - t) x_data + t x_noise with target x_noise - x_data. So
  v_ours(x, t) = -v_SiT(x, 1 - t): the head is negated, and the time flip is folded into the first time-MLP
  layer, because the sinusoid of 1 - t is a fixed rotation of the sinusoid of t (see `flip_time`).
- learn_sigma: the head emits 2C channels per pixel, channel index fastest within each patch position (its
  unpatchify reshapes to (h, w, p, p, 2C)). SiT inherits this from DiT, whose second half is the variance of
  the reverse step; SiT's forward splits the output in two channel halves and returns only the first
  (the velocity), so the second half never reaches the loss or the sampler and is dropped here.

`detect_layout` tells them apart from the keys (`pos_embed` present: SiT or REPA; head of 2C channels:
SiT); `infer_settings` reads our model settings from the shapes; `to_reference` rewrites SiT's layout into
REPA's, which `models/convert.py` then loads like every reference layout (pos_embed checked and dropped,
projectors.0 -> projector).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from . import SIZES
from .blocks import timestep_frequencies

REPA_PROJECTOR_WIDTH = 2048        # REPA's projector_dim default (models/sit.py), the width of ours


@dataclass(frozen=True)
class Layout:
    """One code base's state-dict layout."""

    source: str                    # where the key names come from
    stores_pos_embed: bool         # the sin-cos table is a (frozen) parameter in the state dict
    learn_sigma: bool              # the head has 2C outputs (velocity | unused sigma)
    time_reversed: bool            # t = 0 is noise, t = 1 data; the velocity points towards data
    projector_prefix: str          # REPA projector keys


LAYOUTS = {
    "sit": Layout("willisma/SiT models.py (public SiT-XL/2)", True, True, True, "projectors.0."),
    "repa": Layout("sihyun-yu/REPA models/sit.py (public REPA SiT-XL/2)", True, False, False, "projectors.0."),
    "ours": Layout("this repository (a bare state dict: ckpt['ema'])", False, False, False, "projector."),
}


def is_state_dict(obj) -> bool:
    """A plain {name: tensor} dict (what the public SiT and REPA releases are)."""
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def detect_layout(sd: dict) -> str:
    """'sit', 'repa' or 'ours' from the keys and the head's shape."""
    if "pos_embed" not in sd:
        return "ours"
    return "sit" if _head_channels(sd) == 2 * _patch_embed(sd)[1] else "repa"


def _patch_embed(sd: dict) -> tuple[int, int, int]:
    """(hidden_size, in_channels, patch_size) of a single-stage SiT trunk."""
    key = "x_embedder.proj.weight"
    if key not in sd or sd[key].ndim != 4:
        raise ValueError(f"not a SiT-family state dict: no {key} of shape (D, C, p, p) "
                         f"(first keys: {', '.join(list(sd)[:5])})")
    D, C, p, _ = sd[key].shape
    return int(D), int(C), int(p)


def _head_channels(sd: dict) -> int:
    """Output channels per pixel of the head."""
    D, C, p = _patch_embed(sd)
    rows = sd["final_layer.linear.weight"].shape[0]
    if rows % (p * p):
        raise ValueError(f"final_layer.linear has {rows} outputs, not a multiple of patch_size^2 = {p * p}")
    return rows // (p * p)


def infer_settings(sd: dict) -> dict:
    """Our model settings of a SiT-trunk state dict (any layout), read from its shapes.

    input_size comes from pos_embed (SiT/REPA; ours does not store it); num_heads, which leaves no trace in
    the shapes, from the DiT size of that width (S/B/L/XL), else it must be given.
    """
    D, C, p = _patch_embed(sd)
    depth = len({int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    table = sd["y_embedder.embedding_table.weight"].shape[0]
    out = dict(hidden_size=D, in_channels=C, patch_size=p, depth=depth, num_classes=int(table) - 1,
               mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / D, qk_norm="blocks.0.attn.q_norm.weight" in sd)
    heads = [dims["num_heads"] for dims in SIZES.values() if dims["hidden_size"] == D]
    if heads:
        out["num_heads"] = heads[0]
    if "pos_embed" in sd:
        grid = round(sd["pos_embed"].shape[1] ** 0.5)
        if grid * grid != sd["pos_embed"].shape[1]:
            raise ValueError(f"pos_embed has {sd['pos_embed'].shape[1]} tokens, not a square grid")
        out["input_size"] = grid * p
    projector = [k for k in sd if k.startswith(("projectors.", "projector."))]
    if projector:
        prefix = "projector." if "projector.4.weight" in sd else "projectors.0."
        if any(k.startswith("projectors.") and not k.startswith("projectors.0.") for k in projector):
            raise ValueError("the checkpoint has several REPA projectors; this repository has one (projectors.0)")
        if sd[prefix + "0.weight"].shape[0] != REPA_PROJECTOR_WIDTH:
            raise ValueError(f"the REPA projector is {sd[prefix + '0.weight'].shape[0]} wide; ours is "
                             f"{REPA_PROJECTOR_WIDTH}")
        out["repa_z_dim"] = int(sd[prefix + "4.weight"].shape[0])
    return out


def flip_time(first_time_layer: torch.Tensor) -> torch.Tensor:
    """The first time-MLP weight (D, 256) of a model fed 1 - t -> the weight of the same map fed t.

    The features are [cos(t f), sin(t f)] (f the 128 frequencies); with angle-difference identities
        cos((1 - t) f) =  cos f cos(t f) + sin f sin(t f)
        sin((1 - t) f) =  sin f cos(t f) - cos f sin(t f)
    the features of 1 - t are R @ features(t) for a fixed (256, 256) R, so W features(1 - t) = (W R) features(t).
    """
    dim = first_time_layer.shape[1]
    half = dim // 2
    at_one = timestep_frequencies(torch.ones(1), dim)[0].double()    # [cos f, sin f]
    cos, sin = torch.diag(at_one[:half]), torch.diag(at_one[half:])
    rotation = torch.cat([torch.cat([cos, sin], 1), torch.cat([sin, -cos], 1)], 0)
    return (first_time_layer.double() @ rotation).to(first_time_layer.dtype)


def to_reference(sd: dict, layout: str) -> dict:
    """A state dict in `layout` -> the reference (REPA) key layout and conventions that convert.py loads."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    out = dict(sd)
    if spec.learn_sigma:
        D, C, p = _patch_embed(sd)
        if _head_channels(sd) != 2 * C:
            raise ValueError(f"a learn_sigma head has 2 x {C} channels, this one {_head_channels(sd)}")
        # Keep the velocity half: rows are (patch row, patch col, channel) with the channel fastest.
        w, b = sd["final_layer.linear.weight"], sd["final_layer.linear.bias"]
        out["final_layer.linear.weight"] = w.reshape(p * p, 2 * C, -1)[:, :C].reshape(p * p * C, -1)
        out["final_layer.linear.bias"] = b.reshape(p * p, 2 * C)[:, :C].reshape(-1)
    if spec.time_reversed:
        out["t_embedder.mlp.0.weight"] = flip_time(sd["t_embedder.mlp.0.weight"])
        out["final_layer.linear.weight"] = -out["final_layer.linear.weight"]      # velocity towards noise
        out["final_layer.linear.bias"] = -out["final_layer.linear.bias"]
    return out


def drop_projector(sd: dict) -> dict:
    """The state dict without its REPA projector (sampling never uses it)."""
    return {k: v for k, v in sd.items() if not k.startswith(("projectors.", "projector."))}
