"""Options of evaluate.py (the only file of this package that imports from outside it: the generic CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from utils.cli import opt


@dataclass
class EvalConfig:
    """evaluate.py: FID, sFID, IS, precision, recall of a sample batch against a reference batch (ADM protocol)"""
    samples: Optional[str] = opt(None, "sample batch: .npz with arr_0 uint8 (N, H, W, 3), as generate.py writes")
    ref: Optional[str] = opt(None, "reference batch in ADM format (.npz; stored mu/sigma(_s) are used when present)")
    inception_weights: Optional[str] = opt(
        None, "pt_inception-2015-12-05 state dict (default: $ELIT_INCEPTION_WEIGHTS, then torch.hub's checkpoints folder)")
    feature_network: Optional[str] = opt(None, "TorchScript feature network to use instead of Inception (small datasets)")
    batch_size: int = opt(100, "images per Inception forward")
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")
    cache_ref: bool = opt(False, "keep the reference batch's computed features beside it (REF.<network>.features.npz) and reuse them")
    out: Optional[str] = opt(None, "write the metrics as JSON here (default: SAMPLES_vs_REF[_NETWORK].json beside the samples)")
