"""SiT: the flow-matching diffusion transformer every family here builds on (Ma et al., 2024).

DiT's architecture (Peebles & Xie, 2023) with the shared blocks of `models/blocks.py`. The timestep is the
raw flow time t in [0, 1] (t = 0 data, t = 1 noise), not DiT's 0..999 index. ELIT-SiT (`models/elit.py`) and
DFM-SiT (`models/dfm.py`) subclass it and reuse `run_blocks`, the one place that records REPA features.

Label dropout for classifier-free guidance is *not* done here: the model is a pure function of
(x, t, y); the loss replaces labels by the null label `num_classes` (see `loss.py`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .blocks import (FinalLayer, LabelEmbedder, PatchEmbed, SiTBlock, TimestepEmbedder, repa_projector, sincos_2d,
                     unpatchify)


class SiT(nn.Module):
    """Class-conditional flow-matching transformer (Ma et al., 2024).

    forward(x (B, C, H, W), t (B,), y (B,), budget=None) -> velocity (B, C, H, W).
    With `return_features=True` it returns (velocity, repa_projection (B, N, z_dim)).
    """

    family = "SiT"

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        qk_norm: bool = False,
        repa_depth: int = 0,
        repa_z_dim: int = 768,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if not 0 <= repa_depth <= depth:
            raise ValueError(f"repa_depth must be in [0, depth={depth}] (0 = no REPA projector), got {repa_depth}")
        self.input_size, self.patch_size = input_size, patch_size
        self.in_channels = self.out_channels = in_channels
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.num_classes = num_classes
        self.repa_depth = repa_depth
        self.grid = input_size // patch_size

        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.projector = repa_projector(hidden_size, repa_z_dim) if repa_depth else None
        self.build_io()
        self.initialize_weights()

    # The parts DFM-SiT replaces (one patch embedding / time embedding / head per pyramid stage).
    def build_io(self) -> None:
        self.x_embedder = PatchEmbed(self.patch_size, self.in_channels, self.hidden_size)
        self.t_embedder = TimestepEmbedder(self.hidden_size)
        self.final_layer = FinalLayer(self.hidden_size, self.patch_size, self.out_channels)

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier Linears, zeroed adaLN outputs and output layers."""
        def xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(xavier)
        for m in self.modules():
            if isinstance(m, PatchEmbed):                       # like nn.Linear on the flattened patch
                w = m.proj.weight
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
                nn.init.zeros_(m.proj.bias)
            elif isinstance(m, (TimestepEmbedder,)):
                nn.init.normal_(m.mlp[0].weight, std=0.02)
                nn.init.normal_(m.mlp[2].weight, std=0.02)
            elif isinstance(m, LabelEmbedder):
                nn.init.normal_(m.embedding_table.weight, std=0.02)
            elif isinstance(m, (SiTBlock, FinalLayer)):
                nn.init.zeros_(m.adaLN_modulation[-1].weight)
                nn.init.zeros_(m.adaLN_modulation[-1].bias)
            if isinstance(m, FinalLayer):
                nn.init.zeros_(m.linear.weight)
                nn.init.zeros_(m.linear.bias)

    def compile_regions(self, **compile_kwargs) -> "SiT":
        """torch.compile every repeated region (blocks, head) in place; the glue between them stays eager.

        Regional compilation compiles one block graph that all blocks reuse, so warm-up is seconds, and a new
        token count (an ELIT budget) recompiles only that small graph. Returns self.
        """
        compile_kwargs.setdefault("dynamic", False)
        for module in self.compiled_regions():
            module.compile(**compile_kwargs)
        return self

    def compiled_regions(self) -> list[nn.Module]:
        heads = list(self.final_layer) if isinstance(self.final_layer, nn.ModuleList) else [self.final_layer]
        return list(self.blocks) + heads

    def example_inputs(self, batch: int = 1, device=None) -> tuple:
        """Random (x, t, y) of the right shapes, for FLOP counting, benchmarks and tests."""
        x = torch.randn(batch, self.in_channels, self.input_size, self.input_size, device=device)
        return x, torch.rand(batch, device=device), torch.randint(0, self.num_classes, (batch,), device=device)

    # ------------------------------------------------------------------------------------------------------
    # What callers ask a model instead of comparing family names.
    budget_levels: list = []              # ELIT: the valid budget fractions; empty = no compute budgets
    stages: int = 1                       # DFM: pyramid stages (inputs are a list of `stages` tensors)
    may_leave_parameters_unused = False   # DDP needs find_unused_parameters (DFM: inactive stages)
    # A run-time switch, not an architecture setting (not in `arch`): train.py --gradient-checkpointing sets it.
    # When on (and autograd is recording), each block's activations are recomputed in the backward pass
    # instead of stored: activation memory drops from O(depth) blocks to about one, for ~1/3 more compute.
    gradient_checkpointing = False

    # Opt-in speed/numerics trade (train.py --bf16-residual): the token stream between blocks in this dtype.
    # None keeps the reference's precision (fp32 under autocast, as the fp32 positional table promotes it).
    residual_dtype = None

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        """The embedded tokens in the residual stream's dtype (unchanged unless `residual_dtype` is set)."""
        return h if self.residual_dtype is None else h.to(self.residual_dtype)

    def noise_shapes(self) -> list[tuple[int, ...]]:
        """Per-image shapes of the model's inputs (and of the noise a sampler draws), one per stage."""
        return [(self.in_channels, self.input_size, self.input_size)]

    def check_budget(self, budget) -> None:
        if budget is not None and budget != 1:
            raise ValueError(f"{self.family} has no compute budgets: budget must be None or 1, got {budget}")

    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """c = t_emb + y_emb, (B, D)."""
        return self.t_embedder(t) + self.y_embedder(y)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> raster-order tokens with positions, (B, N, D)."""
        return self.residual(self.x_embedder(x).flatten(1, 2) + self.pos_embed.to(x.dtype))

    def run_blocks(self, h: torch.Tensor, c: torch.Tensor, first: int, last: int, return_features: bool = False):
        """Blocks first+1..last (1-indexed, as `repa_depth`) on tokens h (B, N, D) -> (h, feats).

        feats is the REPA projection (B, N, z_dim) of the tokens after block `repa_depth` when
        `return_features` and that block lies in first+1..last; otherwise None.
        """
        if return_features and self.projector is None:
            raise ValueError("return_features needs a REPA projector (build the model with repa_depth > 0)")
        feats = None
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for i in range(first, last):
            if recompute:    # non-reentrant: works with keyword args, compile and inputs that need no grad
                h = checkpoint(self.blocks[i], h, c, use_reentrant=False)
            else:
                h = self.blocks[i](h, c)
            if return_features and i + 1 == self.repa_depth:
                feats = self.projector(h)
        return h, feats

    def forward(self, x, t, y, budget=None, return_features: bool = False):
        self.check_budget(budget)
        c = self.condition(t, y)                                       # (B, D)
        h = self.embed(x)                                              # (B, N, D)
        h, feats = self.run_blocks(h, c, 0, self.depth, return_features)
        out = unpatchify(self.final_layer(h, c), self.grid, self.grid, self.patch_size, self.out_channels)
        return (out, feats) if return_features else out
