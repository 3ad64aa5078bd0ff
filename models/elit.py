"""ELIT-SiT: SiT with an Elastic Latent Interface ("one model, many budgets").

The token grid is cut into G non-overlapping g x g windows. A lightweight grouped cross-attention (**Read**)
writes each window's K = g^2 spatial tokens into up to K latent slots; the expensive **core** blocks run on
the first k slots of every window only (tail dropping: slot order is importance order, so k is the compute
knob); a second cross-attention (**Write**) reads the latents back into the spatial tokens of the same
window, and a few **tail** blocks finish on the spatial tokens.

    patches -> head blocks -> Read -> keep k of K slots -> core blocks (G*k tokens) -> Write -> tail blocks

Layout: this implementation keeps every token tensor in *window order* (window-major, row-major inside a
window) from the patch embedding to the output head, so a window is a reshape, never a gather:
spatial tokens are (B, G, K, D) and kept latents (B, G, k, D). The head and tail blocks are permutation
equivariant (positions are added at the input), so the order costs nothing there.

Budgets: `b <= 1` is a fraction of the latents, k = floor(b * K + 1e-6); `b > 1` is a total number of latent
tokens (a multiple of G), as in the reference; `None` is the full budget. The model never draws budgets:
the training loop passes one per step.

Differences from the public reference, all deliberate (see `models/convert.py` for the mapping):
- by default Read computes only the kept queries and Write attends only to the kept latents, so compute
  falls with the budget everywhere; `elit_write_dropped_latents=True` restores the reference behaviour
  (Write also attends to the dropped slots, which carry their Read output). Both agree at full budget.
- the reference's Read modulation has a 7th chunk it never uses; ours has the 6 it uses.
- the reference's latent positional table has 4096 rows indexed by raster position; ours holds one vector
  per (window, slot) of this grid, which is the same set of rows.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Mlp, sincos_2d
from .sit import SiT


class RMSNorm(nn.Module):
    """x / (rms(x) + eps) * scale over the last dim, computed in float32.

    The eps sits outside the square root, as in the public reference (its fixtures only match this form).
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rms = xf.pow(2).mean(dim=-1, keepdim=True).sqrt()
        return (xf / (rms + self.eps) * self.scale.float()).to(x.dtype)


class WindowCrossAttention(nn.Module):
    """Cross-attention inside each window: queries of window w attend to keys/values of window w only.

    q/k are RMS-normalised over the full width before the head split. One batched SDPA call over
    (B*G) windows, no masks.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=True)
        self.q_norm = RMSNorm(dim)
        self.k_norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, dim, bias=True)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) -> (..., H, N, D/H)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-2, -3)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q: (B, G, Nq, D), or (Nq, D) shared by every window; kv: (B, G, Nk, D) -> (B, G, Nq, D)."""
        B, G, Nk, D = kv.shape
        q = self.heads(self.q_norm(self.q_proj(q)))                    # (..., H, Nq, hd)
        k, v = self.kv_proj(kv).chunk(2, dim=-1)
        k, v = self.heads(self.k_norm(k)), self.heads(v)               # (B, G, H, Nk, hd)
        q = q.expand(B, G, *q.shape[-3:])
        out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
        out = out.transpose(-2, -3).flatten(-2)                        # (B*G, Nq, D)
        return self.proj(out).view(B, G, -1, D)


class Read(nn.Module):
    """Latents of each window (learned queries shared by all windows) read their window's spatial tokens.

    lat = queries + gate_a * CA(q=lat, kv=LN(x)(1+scale)+shift); lat += gate_m * MLP(LN(lat)(1+scale_m)+shift_m);
    then the (window, slot) latent positional embedding is added. Modulation from c, zero-initialised.
    """

    def __init__(self, dim: int, num_heads: int, windows: int, slots: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(slots, dim))           # (K, D), shared by all windows
        self.window_pos = nn.Parameter(torch.zeros(slots, dim))        # (K, D), added to spatial tokens
        self.latent_pos = nn.Parameter(torch.zeros(windows, slots, dim))  # one vector per (window, slot)
        self.norm_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_lat = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = WindowCrossAttention(dim, num_heads)
        self.mlp = Mlp(dim, dim, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, n: int) -> torch.Tensor:
        """x: spatial tokens with `window_pos` (B, G, K, D); c: (B, D); n: slots to compute -> (B, G, n, D)."""
        shift_x, scale_x, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None, None].chunk(6, -1)
        kv = self.norm_x(x) * (1 + scale_x) + shift_x
        queries = self.queries[:n].to(x.dtype)
        lat = queries + gate_a * self.attn(queries, kv)                # (B, G, n, D)
        lat = lat + gate_m * self.mlp(self.norm_lat(lat) * (1 + scale_m) + shift_m)
        return lat + self.latent_pos[:, :n].to(x.dtype)


class WriteLayer(nn.Module):
    """p += CA(q=p, kv=latents of the same window); p += MLP(p). No norm, no adaLN."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = WindowCrossAttention(dim, num_heads)
        self.mlp = Mlp(dim, dim, bias=False)

    def forward(self, p: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        p = p + self.attn(p, lat)
        return p + self.mlp(p)


class Write(nn.Module):
    """Spatial tokens (B, G, K, D) + a second window positional embedding, then `depth` WriteLayers."""

    def __init__(self, dim: int, num_heads: int, slots: int, depth: int = 1):
        super().__init__()
        self.window_pos = nn.Parameter(torch.zeros(slots, dim))
        self.layers = nn.ModuleList(WriteLayer(dim, num_heads) for _ in range(depth))

    def forward(self, x: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        p = x + self.window_pos.to(x.dtype)
        for layer in self.layers:
            p = layer(p, lat)
        return p


class ELITSiT(SiT):
    """SiT whose middle blocks run on a budget-sized set of window latents (see module docstring).

    forward(x (B, C, H, W), t (B,), y (B,), budget=None) -> (B, C, H, W).
    Depth split: elit_head_depth + core + elit_tail_depth = depth.
    """

    family = "ELIT-SiT"

    def __init__(
        self,
        *args,
        elit_group_size: int | None = None,
        elit_head_depth: int | None = None,
        elit_tail_depth: int | None = None,
        elit_write_depth: int = 1,
        elit_write_dropped_latents: bool = False,
        **kwargs,
    ):
        self.elit_config = dict(
            group_size=elit_group_size, head=elit_head_depth, tail=elit_tail_depth,
            write_depth=elit_write_depth, write_dropped=elit_write_dropped_latents)
        super().__init__(*args, **kwargs)

    @staticmethod
    def default_group_size(grid: int) -> int:
        """16 windows: g = 4 for a 16x16 token grid (256 px, /2), 8 for 32x32 (512 px, /2)."""
        return max(grid // 4, 1)

    @staticmethod
    def default_edge_depth(depth: int) -> int:
        """Head and tail depth: 2 for S/B (12 blocks), 4 for L/XL."""
        return 2 if depth <= 12 else 4

    def build_io(self) -> None:
        super().build_io()
        cfg = self.elit_config
        g = cfg["group_size"] or self.default_group_size(self.grid)
        if self.grid % g:
            raise ValueError(f"elit_group_size {g} does not divide the {self.grid}x{self.grid} token grid")
        self.group_size, self.slots, self.windows = g, g * g, (self.grid // g) ** 2
        self.head_depth = self.default_edge_depth(self.depth) if cfg["head"] is None else cfg["head"]
        self.tail_depth = self.default_edge_depth(self.depth) if cfg["tail"] is None else cfg["tail"]
        if self.head_depth < 0 or self.tail_depth < 0 or self.head_depth + self.tail_depth >= self.depth:
            raise ValueError(f"elit_head_depth {self.head_depth} + elit_tail_depth {self.tail_depth} must leave at "
                             f"least one core block of depth {self.depth}")
        if self.head_depth < self.repa_depth <= self.depth - self.tail_depth:
            raise ValueError(f"repa_depth {self.repa_depth} falls in the latent core (blocks {self.head_depth + 1}.."
                             f"{self.depth - self.tail_depth}); pick a head or tail block")
        if cfg["write_depth"] < 1:
            raise ValueError(f"elit_write_depth must be >= 1, got {cfg['write_depth']}")
        self.write_dropped_latents = cfg["write_dropped"]
        self.read = Read(self.hidden_size, self.num_heads, self.windows, self.slots)
        self.write = Write(self.hidden_size, self.num_heads, self.slots, cfg["write_depth"])
        # Window-order positions and the permutation back to raster order (for REPA features).
        raster = torch.arange(self.grid * self.grid).view(1, self.grid, self.grid, 1)
        order = self.to_windows(raster).flatten()
        self.pos_embed = sincos_2d(self.hidden_size, self.grid, self.grid)[order][None]
        self.register_buffer("raster_index", torch.argsort(order), persistent=False)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for p in (self.read.queries, self.read.window_pos, self.read.latent_pos, self.write.window_pos):
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.read.adaLN_modulation[-1].weight)          # gates 0: latents start as the queries
        nn.init.zeros_(self.read.adaLN_modulation[-1].bias)
        for layer in self.write.layers:                                 # Write starts as the identity
            for lin in (layer.attn.proj, layer.mlp.fc2):
                nn.init.zeros_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def compiled_regions(self) -> list[nn.Module]:
        return super().compiled_regions() + [self.read, self.write]

    # ------------------------------------------------------------------------------------------------------
    # Budgets.
    @property
    def budget_levels(self) -> list[float]:
        """The valid budget fractions j / K, ascending."""
        return [j / self.slots for j in range(1, self.slots + 1)]

    def latents_per_window(self, budget) -> int:
        """Budget (fraction <= 1, total latent count > 1, or None) -> kept latents per window k in [1, K]."""
        K, G = self.slots, self.windows
        if budget is None:
            return K
        if isinstance(budget, torch.Tensor) or not isinstance(budget, (int, float)) or isinstance(budget, bool):
            raise TypeError(f"budget must be a Python number or None, got {type(budget).__name__}")
        if budget > 1:
            k = int(budget) // G if float(budget).is_integer() and int(budget) % G == 0 else 0
        else:
            k = int(budget * K + 1e-6) if budget > 0 else 0
        if not 1 <= k <= K:
            levels = ", ".join(f"{j}/{K}" for j in range(1, K + 1))
            raise ValueError(f"invalid budget {budget} for {self.family} with {G} windows of {K} latents: valid "
                             f"fractions are {levels}; or a total latent count in {G}, {2 * G}, ..., {K * G}")
        return k

    # ------------------------------------------------------------------------------------------------------
    def to_windows(self, h: torch.Tensor) -> torch.Tensor:
        """Grid (B, H', W', D) -> window-order tokens (B, G*K, D)."""
        B, Hp, Wp, D = h.shape
        g = self.group_size
        h = h.view(B, Hp // g, g, Wp // g, g, D).permute(0, 1, 3, 2, 4, 5)
        return h.reshape(B, Hp * Wp, D)

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """Window-order tokens (B, N, p*p*C) -> image (B, C, H, W)."""
        B = h.shape[0]
        g, p, C, n = self.group_size, self.patch_size, self.out_channels, self.grid // self.group_size
        h = h.view(B, n, n, g, g, p, p, C).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return h.reshape(B, C, self.input_size, self.input_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.to_windows(self.x_embedder(x)) + self.pos_embed.to(x.dtype))

    def forward(self, x, t, y, budget=None, return_features: bool = False):
        k = self.latents_per_window(budget)
        G, K, D = self.windows, self.slots, self.hidden_size
        core_end = self.depth - self.tail_depth                        # REPA reads a head or tail block (build_io)
        c = self.condition(t, y)                                       # (B, D)
        h = self.embed(x)                                              # (B, N, D), window order
        B = h.shape[0]
        h, feats = self.run_blocks(h, c, 0, self.head_depth, return_features)
        h = h.view(B, G, K, D) + self.read.window_pos.to(h.dtype)       # (B, G, K, D)
        lat = self.read(h, c, K if self.write_dropped_latents else k)  # (B, G, K or k, D)
        z = lat[:, :, :k].reshape(B, G * k, D)                         # (B, G*k, D): the budget
        z, _ = self.run_blocks(z, c, self.head_depth, core_end)
        z = z.view(B, G, k, D)
        if self.write_dropped_latents and k < K:
            z = torch.cat([z, lat[:, :, k:]], dim=2)                   # dropped slots carry their Read output
        h = self.write(h, z).view(B, G * K, D)
        h, tail_feats = self.run_blocks(h, c, core_end, self.depth, return_features)
        out = self.unpatchify(self.final_layer(h, c))
        if return_features:
            feats = tail_feats if feats is None else feats
            return out, feats[:, self.raster_index]                    # REPA features in raster order
        return out
