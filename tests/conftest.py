import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

from models import build_model  # noqa: E402

# Tiny settings: every family at a few thousand parameters, 8x8 inputs (4x4 token grid).
TINY = dict(input_size=8, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=10)
TINY_ELIT = dict(elit_group_size=2, elit_head_depth=1, elit_tail_depth=1)


def tiny_model(family: str = "SiT", patch: int = 2, seed: int = 0, randomize: bool = True, **overrides):
    """A tiny model of `family` with random (non-zero) weights everywhere, so every path matters."""
    torch.manual_seed(seed)
    kwargs = dict(TINY, **(TINY_ELIT if family == "ELIT-SiT" else {}))
    kwargs.update(overrides)
    model = build_model(f"{family}-S/{patch}", **kwargs)
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def require_cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
