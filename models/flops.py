"""FLOPs of one forward pass, counted by `torch.utils.flop_counter` on the meta device.

Counting on meta tensors costs no memory or time, and counts attention too (on CPU tensors the flop counter
does not see the fused SDPA kernels). FLOPs here are multiply-adds x 2, as the flop counter reports.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import build_from_arch


def forward_flops(model: torch.nn.Module, batch: int = 1, **forward_kwargs) -> int:
    """FLOPs of model(*example_inputs(batch), **forward_kwargs), e.g. budget=0.25 or active=1."""
    with torch.device("meta"):
        meta = build_from_arch(model.arch).requires_grad_(False)
        inputs = meta.example_inputs(batch, device="meta")
        with FlopCounterMode(display=False) as counter:
            meta(*inputs, **forward_kwargs)
    return counter.get_total_flops()


def gflops_per_image(model: torch.nn.Module, **forward_kwargs) -> float:
    """GFLOPs of one image's forward pass."""
    return forward_flops(model, batch=1, **forward_kwargs) / 1e9
