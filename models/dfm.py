"""DFM-SiT: Decomposable Flow Matching over a Laplacian pyramid (Haji-Ali et al., 2025, "Improving
Progressive Generation with Decomposable Flow Matching").

The image is split into S stages, coarsest first, by the Laplacian pyramid of `models/pyramid.py`. Each
stage gets its own patch embedding (patch sizes chosen so that every stage yields the same token grid), its
own timestep embedder and its own output head; the transformer trunk is shared. Stage s has its own flow time t[:, s].
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import FinalLayer, PatchEmbed, TimestepEmbedder, unpatchify
from .pyramid import decompose, recompose, stage_patch_sizes
from .sit import SiT

# decompose / recompose are re-exported: the loss, the samplers and the tests import them from here.
__all__ = ["DFMSiT", "decompose", "recompose"]


class DFMSiT(SiT):
    """SiT over an S-stage Laplacian pyramid.

    forward(xs: list of S tensors coarsest first, t (B, S), y (B,), active=None) -> list of S velocities.
    Stages `active..S-1` are inactive: their input is zeroed (their patch embedding contributes only its
    bias), as in the reference; their time embedding is still added (their t is 1 in training and sampling).
    """

    family = "DFM-SiT"
    may_leave_parameters_unused = True

    def noise_shapes(self) -> list[tuple[int, ...]]:
        """One (C, H_s, W_s) per stage, coarsest first, as `decompose` makes them."""
        C, H = self.in_channels, self.input_size
        return [(C, H >> (self.stages - 1 - s), H >> (self.stages - 1 - s)) for s in range(self.stages)]

    def __init__(self, *args, dfm_stages: int = 2, **kwargs):
        if dfm_stages < 1:
            raise ValueError(f"dfm_stages must be >= 1, got {dfm_stages}")
        self.stages = dfm_stages
        super().__init__(*args, **kwargs)
        if self.input_size % 2 ** (self.stages - 1):
            raise ValueError(f"input_size {self.input_size} cannot be halved {self.stages - 1} times")

    def build_io(self) -> None:
        self.stage_patch_sizes = stage_patch_sizes(self.patch_size, self.stages)
        D, C = self.hidden_size, self.in_channels
        self.x_embedder = nn.ModuleList(PatchEmbed(p, C, D) for p in self.stage_patch_sizes)
        self.t_embedder = nn.ModuleList(TimestepEmbedder(D) for _ in self.stage_patch_sizes)
        self.final_layer = nn.ModuleList(FinalLayer(D, p, C) for p in self.stage_patch_sizes)

    def example_inputs(self, batch: int = 1, device=None) -> tuple:
        x, _, y = super().example_inputs(batch, device)
        return decompose(x, self.stages), torch.rand(batch, self.stages, device=device), y

    def check_active(self, active) -> int:
        if active is None:
            return self.stages
        if not 1 <= active <= self.stages:
            raise ValueError(f"active must be in [1, {self.stages}], got {active}")
        return active

    def forward(self, xs, t, y, active=None, budget=None, return_features: bool = False):
        self.check_budget(budget)
        active = self.check_active(active)
        if len(xs) != self.stages:
            raise ValueError(f"{self.family} expects {self.stages} pyramid stages, got {len(xs)}")
        c = self.y_embedder(y)                                         # (B, D)
        for s, embedder in enumerate(self.t_embedder):
            c = c + embedder(t[:, s])
        h = self.pos_embed.to(xs[-1].dtype)
        for s, embedder in enumerate(self.x_embedder):
            if s < active:
                h = h + embedder(xs[s]).flatten(1, 2)                  # (B, N, D)
            else:                                                      # conv of a zeroed input = its bias
                h = h + embedder.proj.bias.to(h.dtype)
        h, feats = self.run_blocks(self.residual(h), c, 0, self.depth, return_features)
        outs = [unpatchify(head(h, c), self.grid, self.grid, p, self.out_channels)
                for head, p in zip(self.final_layer, self.stage_patch_sizes)]
        return (outs, feats) if return_features else outs
