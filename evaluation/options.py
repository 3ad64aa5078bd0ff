"""Options of evaluate.py (the package's only file that imports from outside it: the CLI, the device check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from utils.cli import opt
from utils.device import check_device_name


@dataclass
class EvalConfig:
    """evaluate.py: FID, sFID, FDD, IS, precision, recall of a sample batch against a reference batch (ADM protocol;
    FDD as EDM2 computes it)"""
    samples: Optional[str] = opt(None, "sample batch: .npz with arr_0 uint8 (N, H, W, 3), as generate.py writes")
    ref: Optional[str] = opt(None, "reference batch in ADM format (.npz; stored mu/sigma(_s) are used when present)")
    inception_weights: Optional[str] = opt(
        None, "pt_inception-2015-12-05 state dict (default: $ELIT_INCEPTION_WEIGHTS, then torch.hub's checkpoints folder)")
    feature_network: Optional[str] = opt(None, "TorchScript feature network to use instead of Inception (small datasets)")
    dinov2_weights: Optional[str] = opt(
        None, "DINOv2 ViT-L/14 weights for FDD: dinov2_vitl14_pretrain.pth or timm's model.safetensors (default: "
              "$ELIT_DINOV2_WEIGHTS, then torch.hub's checkpoints folder, then the Hugging Face cache)")
    fdd: Optional[bool] = opt(None, "FDD: --fdd = required (a missing DINOv2 file is an error), --no-fdd = skip; "
                                    "default: computed when the DINOv2 weights are found, else skipped with a note")
    batch_size: int = opt(100, "images per Inception (and DINOv2) forward", ge=1)
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")
    cache_ref: bool = opt(False, "keep the reference batch's computed features beside it (REF.<network>.features.npz) and reuse them")
    check: bool = opt(False, "only locate and load the networks (Inception or --feature-network, DINOv2), say which "
                             "files they use and exit: eval.sh runs this before generating samples")
    out: Optional[str] = opt(None, "write the metrics as JSON here (default: SAMPLES_vs_REF[_NETWORK].json beside the samples)")

    def __post_init__(self):
        check_device_name(self.device)
