"""What makes a resumed run replay an uninterrupted one: the per-step seeds, the RNG state and the checkpoint.

A training checkpoint holds the model and its EMA with the `arch` that rebuilds them, the optimizer and
learning-rate scheduler states, the step, the data position (micro-batches consumed), every RNG of the process
as plain data (loadable with weights_only=True), the run's options and the dataset record.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from utils.errors import UserError


def step_seed(seed: int, step: int, micro: int) -> int:
    """A 63-bit seed for the random draws of (seed, step, micro-batch), the same on every process."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def rng_state() -> dict:
    """Every RNG the process owns, as plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), gauss=float(gauss)),
                python=random.getstate())


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_state(model, ema, optimizer, scheduler, step: int, accumulation: int, config: dict,
                     dataset: dict) -> dict:
    """The checkpoint of a run after `step` optimizer steps of `accumulation` micro-batches each."""
    return dict(arch=model.arch, model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), step=step, data_position=step * accumulation, rng=rng_state(),
                config=config, dataset=dataset)


def restore_state(path: str, model, ema, optimizer, scheduler, accumulation: int, ckpt: dict | None = None) -> int:
    """Load the checkpoint at `path` into the run's objects and this process's RNGs; returns its step.

    The checkpoint must hold the very model the config builds (same `arch`, strict loading) and come from a run
    with the same gradient accumulation (its data position must be the step's), else a one-line UserError.
    `ckpt`: the checkpoint at `path` when the caller has loaded it already.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if ckpt["arch"] != model.arch:
        diff = sorted(k for k in set(ckpt["arch"]) | set(model.arch) if ckpt["arch"].get(k) != model.arch.get(k))
        raise UserError(f"{path} holds a different model ({', '.join(diff)} differ) than this config builds")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
        ema.load_state_dict(ckpt["ema"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    step = int(ckpt["step"])
    if ckpt["data_position"] != step * accumulation:
        raise UserError(f"{path} was written with another gradient_accumulation_steps; resume with the same one")
    set_rng_state(ckpt["rng"])
    return step
