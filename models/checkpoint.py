"""Checkpoints: atomic writes, safe loading, and rebuilding a model from the checkpoint alone.

`models/__init__.py` does not import this module (it needs `utils`, and `import models` imports nothing
else of ours): import it as `models.checkpoint`.

A checkpoint is a plain dict, loadable with `torch.load(..., weights_only=True)`:
    arch        model name + every constructor argument (`model.arch`), so the file rebuilds its model
    model, ema  state dicts (loaded with strict=True)
    optimizer   optimizer state dict            step   optimizer steps taken
    rng         RNG states (torch CPU, CUDA, numpy, python) for exact resume
    data        data-loader position            config the full resolved run config (plain data)
"""

from __future__ import annotations

import glob
import os
import pickle
import zipfile

import torch

from utils.atomic import atomic_write
from utils.errors import UserError

from . import build_from_arch


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, then rename: readers never see a partial file."""
    atomic_write(path, lambda f: torch.save(obj, f), ".pt")


def read_torch_file(path: str, what: str = "checkpoint", noun: str = "checkpoint of this repository",
                    allow=(), zip_only: bool = True, map_location="cpu"):
    """torch.load(weights_only=True) of `path` after its CRC check (`verify_zip`), with the classes in `allow`
    also unpickled (e.g. the reference's argparse.Namespace); a missing, truncated or corrupt file is one
    UserError naming `what`. The one read of a file: callers decide what the object is."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    if zipfile.is_zipfile(path):
        verify_zip(path, what)
    elif zip_only:
        raise UserError(f"cannot read {what} {path}: corrupt, truncated or not a {noun}")
    try:   # mmap: tensors are paged in when used, so a sampler does not hold the optimizer state in memory
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot read {what} {path}: corrupt, truncated or not a {noun} ({first})") from None


def not_ours(path: str) -> UserError:
    """The error for a readable file that is not one of our checkpoints."""
    return UserError(f"{path} is not a checkpoint of this repository (no 'arch' entry; convert reference "
                     "checkpoints with `python -m models.convert`)")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one of our checkpoints with weights_only=True; a missing or corrupt file is a UserError."""
    ckpt = read_torch_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "arch" not in ckpt:
        raise not_ours(path)
    return ckpt


def verify_zip(path: str, what: str = "file") -> None:
    """Check every member's CRC-32 (torch.save writes them; torch.load does not check them): a bit flipped on
    disk or in a copy is refused here instead of being sampled from. Reads the file once (~1 s per GB)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: corrupt or truncated ({str(e).splitlines()[0][:200]})") from None
    if bad is not None:
        raise UserError(f"{what} {path} is corrupt: the checksum (CRC-32) of its entry '{bad}' does not match; "
                        f"copy it again or use another checkpoint")


def model_from_checkpoint(ckpt: dict | str, weights: str = "ema") -> torch.nn.Module:
    """Rebuild the model described by a checkpoint and load `weights` ('ema' or 'model') strictly, in eval mode."""
    if isinstance(ckpt, str):
        ckpt = load_checkpoint(ckpt)
    if weights not in ckpt:
        raise UserError(f"checkpoint has no '{weights}' weights")
    model = build_from_arch(ckpt["arch"])
    model.load_state_dict(ckpt[weights], strict=True)
    return model.eval()


def latest_checkpoint(folder: str) -> str | None:
    """Path of the highest-step `NNNNNNN.pt` in `folder`, or None."""
    paths = sorted(glob.glob(os.path.join(folder, "[0-9]" * 7 + ".pt")))
    return paths[-1] if paths else None
