"""Model registry: sizes are data, families are classes, every `Family-Size/Patch` name is generated.

    model = build_model("ELIT-SiT-XL/2", input_size=32)
    model.arch        # every constructor argument + the name: a checkpoint stores it to rebuild the model
    build_from_arch(model.arch)

Sizes (depth, width, heads) follow DiT/SiT: S (12, 384, 6), B (12, 768, 12), L (24, 1024, 16), XL (28, 1152, 16).

This module imports only the model classes: `models.checkpoint` (save/load), `models.convert` (reference
checkpoints), `models.flops` and `models.graphs` import it, never the other way round.
"""

from __future__ import annotations

import inspect
import re

import torch.nn as nn

from .dfm import DFMSiT
from .elit import ELITSiT
from .sit import SiT

SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
FAMILIES = {"SiT": SiT, "ELIT-SiT": ELITSiT, "DFM-SiT": DFMSiT}
PATCH_SIZES = (2, 4, 8)
MODEL_NAMES = [f"{family}-{size}/{patch}" for family in FAMILIES for size in SIZES for patch in PATCH_SIZES]

# The public reference's ELIT-SiT-XL layout, with which its published numbers were made.
ELIT_REFERENCE_LAYOUT = dict(elit_head_depth=8, elit_tail_depth=4, elit_write_dropped_latents=True)

_NAME = re.compile(r"^(?P<family>.+)-(?P<size>S|B|L|XL)/(?P<patch>\d+)$")


def parse_model_name(name: str) -> tuple[str, str, int]:
    """'ELIT-SiT-XL/2' -> ('ELIT-SiT', 'XL', 2); unknown names raise a ValueError listing the valid ones."""
    m = _NAME.match(name or "")
    if not m or m["family"] not in FAMILIES or int(m["patch"]) not in PATCH_SIZES:
        raise ValueError(f"unknown model '{name}'; valid names are {', '.join(MODEL_NAMES)}")
    return m["family"], m["size"], int(m["patch"])


def constructor_defaults(cls: type) -> dict:
    """Keyword defaults of `cls.__init__` and of every parent it forwards **kwargs to."""
    defaults = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, nn.Module) and klass is not nn.Module and "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    defaults[p.name] = p.default
    return defaults


def model_kwargs(name: str, **overrides) -> dict:
    """Every constructor argument of `name`, with `overrides` applied (unknown settings raise)."""
    family, size, patch = parse_model_name(name)
    kwargs = constructor_defaults(FAMILIES[family])
    unknown = sorted(set(overrides) - set(kwargs))
    if unknown:
        raise ValueError(f"unknown model setting(s) {', '.join(unknown)} for {family}; valid: {', '.join(sorted(kwargs))}")
    kwargs.update(SIZES[size], patch_size=patch)
    kwargs.update({k: v for k, v in overrides.items()})
    return kwargs


def build_model(name: str, **overrides) -> nn.Module:
    """The one builder every script uses. `model.arch` records the name and every constructor argument."""
    kwargs = model_kwargs(name, **overrides)
    model = FAMILIES[parse_model_name(name)[0]](**kwargs)
    model.arch = {"name": name, **kwargs}
    return model


def build_from_arch(arch: dict) -> nn.Module:
    """Rebuild a model from the `arch` dict stored in a checkpoint."""
    arch = dict(arch)
    return build_model(arch.pop("name"), **arch)


__all__ = ["SIZES", "FAMILIES", "MODEL_NAMES", "ELIT_REFERENCE_LAYOUT", "build_model", "build_from_arch",
           "model_kwargs", "parse_model_name", "SiT", "ELITSiT", "DFMSiT"]
