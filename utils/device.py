"""The device a script runs on: an explicit request, else this process's GPU (torchrun's LOCAL_RANK), else CPU."""

from __future__ import annotations

import contextlib
import re
from typing import Literal, Optional

import torch

from utils.errors import UserError


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: Optional[str], key: str = "device") -> None:
    """A UserError now for a device string torch would refuse later ('banana'); None is the default device."""
    if name is not None and not _DEVICE.match(name):
        raise UserError(f"config key '{key}' must be cpu, cuda or cuda:N, got {name!r}")


def pick_device(requested: Optional[str], local_rank: int = 0) -> torch.device:
    """`requested` ('cuda', 'cuda:1', 'cpu', None); a bare 'cuda' means this process's GPU."""
    if requested is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    check_device_name(requested)
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but no GPU is visible")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def allow_tf32(device: torch.device) -> None:
    """On CUDA, fp32 matmuls and convolutions (precision fp32, the VAE) may run on TF32 cores."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# F.scaled_dot_product_attention's kernels in priority order, per choice (None: torch's own order, on Hopper
# flash attention first). Every choice keeps the others as fallbacks for inputs its first kernel does not take
# (cuDNN's attention takes no fp32, for instance), so a choice changes speed and rounding, never what runs.
ATTENTION_BACKENDS = {
    "auto": None,
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"),
    "efficient": ("EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION", "MATH"),
    "math": ("MATH",),
}
AttentionBackend = Literal[tuple(ATTENTION_BACKENDS)]           # the option's type in train.py and the samplers
ATTENTION_HELP = "attention kernel tried first (utils/device.py; auto = torch's order; cudnn changes rounding)"
_attention = contextlib.ExitStack()


def use_attention_backend(name: str) -> None:
    """Process-wide kernel order of attention (ATTENTION_BACKENDS); 'auto' restores torch's. Call it before
    compiling: a compiled graph keeps the kernel it was traced with."""
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    _attention.close()                                           # back to torch's order (and any earlier choice)
    order = ATTENTION_BACKENDS[name]
    if order is not None:
        _attention.enter_context(sdpa_kernel([getattr(SDPBackend, b) for b in order], set_priority=True))
