"""The building blocks every family shares: embedders, the adaLN-Zero transformer block, the output head.

The architecture is DiT's (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers") as used by
SiT (Ma et al., 2024) and REPA (Yu et al., 2025): patch embedding + fixed 2-D sin-cos positions, adaLN-Zero
blocks conditioned on c = t_emb + y_emb, and a modulated linear head. SiT (`models/sit.py`), ELIT-SiT
(`models/elit.py`) and DFM-SiT (`models/dfm.py`) compose them. Parameter names follow the public reference
so that checkpoint conversion (`models/convert.py`) is a plain key rename.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------
# Fixed embeddings.

def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) as [sin | cos] with frequencies 1e4^(-i/(dim/2)) (Vaswani et al.)."""
    assert dim % 2 == 0
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.double()[:, None] * omega[None]                       # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Raster-order 2-D sin-cos table (grid_h * grid_w, dim) in float32.

    Same layout as DiT's `get_2d_sincos_pos_embed`: the first half of the channels encodes the column
    index, the second half the row index.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return table.float()


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) raw times -> (B, dim) sinusoid, cos half first (as SiT/REPA)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): 256-d sinusoid of the raw time, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_frequencies(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class LabelEmbedder(nn.Module):
    """y (B,) -> (B, D). Row `num_classes` is the null label used for guidance."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p, W/p, D): a linear map of each p x p patch (with bias).

    The weight is stored as a strided convolution's (D, C, p, p), as in DiT, but applied as one matmul over
    the unfolded patches: the same function, with no cuDNN algorithm search for these odd shapes (C = 4)
    and a layout torch.compile fuses freely.
    """

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        patches = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, H // p, W // p, C * p * p)
        return F.linear(patches, self.proj.weight.view(self.proj.out_channels, -1), self.proj.bias)


# ----------------------------------------------------------------------------------------------------------
# Transformer blocks.

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) * (1 + scale) + shift, with (B, D) modulation."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Mlp(nn.Module):
    """Linear - GELU(tanh) - Linear."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through `F.scaled_dot_product_attention`.

    `qk_norm` applies a per-head LayerNorm (eps 1e-6) to queries and keys (as timm's Attention).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(dim // num_heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // num_heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                        # (B, H, N, hd) each
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block: 6 modulation chunks (shift/scale/gate for attention and for the MLP)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """LayerNorm + adaLN shift/scale + Linear to patch_size^2 * out_channels values per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _projector_mlp(hidden_size: int, z_dim: int, projector_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


class MultiProjector(nn.Module):
    """One REPA projector per target encoder: (B, N, D) -> (B, N, sum z_k), the unit-normalised projections
    concatenated.

    REPA averages the negative cosine similarity over its encoders. With every part unit-normalised (here, and
    the targets in `training/repa.py`), the cosine of the concatenations is exactly that average:
    cos([a/|a|, b/|b|], [c/|c|, d/|d|]) = (cos(a, c) + cos(b, d)) / 2, so the one loss term
    (`loss.repa_projection_loss`) serves any number of encoders.
    """

    def __init__(self, hidden_size: int, z_dims, projector_dim: int = 2048):
        super().__init__()
        self.z_dims = [int(z) for z in z_dims]
        self.heads = nn.ModuleList(_projector_mlp(hidden_size, z, projector_dim) for z in self.z_dims)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(head(h), dim=-1) for head in self.heads], dim=-1)   # (B, N, sum z_k)


def repa_projector(hidden_size: int, z_dim, projector_dim: int = 2048) -> nn.Module:
    """REPA's 3-layer projector D -> 2048 -> 2048 -> z_dim with SiLU (Yu et al., 2025).

    z_dim an int (one encoder): the plain MLP (keys `projector.{0,2,4}.*`, the reference's `projectors.0.*`);
    a list of widths (several encoders, `--enc-type A,B`): a `MultiProjector` (keys `projector.heads.K.*`).
    A one-element list is the plain MLP too, so one encoder has the same keys however it was named.
    """
    if isinstance(z_dim, (list, tuple)):
        if len(z_dim) != 1:
            return MultiProjector(hidden_size, z_dim, projector_dim)
        z_dim = z_dim[0]
    return _projector_mlp(hidden_size, int(z_dim), projector_dim)


def unpatchify(x: torch.Tensor, grid_h: int, grid_w: int, patch: int, channels: int) -> torch.Tensor:
    """Raster-order tokens (B, h*w, p*p*C) -> image (B, C, h*p, w*p)."""
    B = x.shape[0]
    x = x.view(B, grid_h, grid_w, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, grid_h * patch, grid_w * patch)
