"""Images -> VAE latents (posterior mean and std) + metadata: the `encode` subcommand, the latent writer.

    python dataset_tools.py encode --source data/in256 --dest data/in256-sdvae      # GPU when present

The source is a folder written by `convert` (or a 3-channel pixel dataset). The posterior of every image is
written into preallocated .npy files in DEST.partial, with a progress point every PROGRESS_EVERY_S seconds:
an interrupted run resumes there. The metadata records the VAE and its normalisation constants (from the
VAE's config), which `dataio.codec` applies when training and decoding.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from numpy.lib.format import open_memmap

from dataio import vae as vae_io
from dataio.dataset import SourceImages
from dataio.format import begin_dataset, dataset_done, finish_dataset, read_meta, read_progress, write_progress
from dataio.options import EncodeConfig
from dataio.sources import progress
from utils.errors import UserError

PROGRESS_EVERY_S = 60.0             # how often a resumable progress point is written


def _device(name) -> torch.device:
    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is available")
    return device


def _worker_errors(batches):
    """A UserError raised in a DataLoader worker (an unreadable image) comes back with the worker's traceback in
    its message: keep its one line."""
    try:
        yield from batches
    except UserError as e:
        raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


def encode(cfg: EncodeConfig) -> None:
    """`dataset_tools.py encode`: write (or finish) the latent dataset of `cfg`; a no-op when it is there."""
    if not cfg.source or not cfg.dest:
        raise UserError("encode needs --source (a folder written by `convert`) and --dest")
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {cfg.batch_size}")
    src = read_meta(cfg.source)
    if src["kind"] not in SourceImages.READERS:
        raise UserError(f"{cfg.source} holds {src['kind']}, not images: pass a folder written by `convert`")
    if src.get("channels", 3) != 3:
        raise UserError(f"{cfg.source} holds {src['channels']}-channel images; the VAE needs RGB")
    n = src["count"]
    if n <= 0:
        raise UserError(f"{cfg.source} holds no images")
    images = SourceImages(cfg.source, src)
    labels = images.labels()
    device = _device(cfg.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.precision]
    vae_id = os.path.abspath(cfg.vae) if os.path.isdir(os.path.expanduser(cfg.vae)) else cfg.vae
    recipe = dict(command="encode", source=os.path.abspath(cfg.source), source_count=n, vae=vae_id,
                  precision=cfg.precision)
    if dataset_done(cfg.dest, recipe):                              # checked before loading the VAE
        print(f"{cfg.dest} already holds this dataset; nothing to do")
        return
    model = vae_io.load_vae(cfg.vae, device, dtype)
    scale, shift = vae_io.latent_norm(model)
    tmp = begin_dataset(cfg.dest, recipe, resume=True)
    done = int(read_progress(tmp).get("done", 0))
    mean_path, std_path = os.path.join(tmp, "mean.npy"), os.path.join(tmp, "std.npy")
    mean_mm = std_mm = None
    if done > 0:
        mean_mm, std_mm = open_memmap(mean_path, mode="r+"), open_memmap(std_path, mode="r+")
        print(f"resuming {cfg.dest} at image {done} of {n}", file=sys.stderr)
    batches = [list(range(s, min(s + cfg.batch_size, n))) for s in range(done, n, cfg.batch_size)]
    loader = torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    start = last_save = time.time()
    stream = progress(_worker_errors(loader), total=len(batches), desc="encode", unit="batch")
    for batch, pixels in zip(batches, stream):
        mean, std = vae_io.encode_images(model, pixels)                          # (b, C, h, w) float32
        if mean_mm is None:
            shape = (n, *mean.shape[1:])
            mean_mm = open_memmap(mean_path, mode="w+", dtype=np.float32, shape=shape)
            std_mm = open_memmap(std_path, mode="w+", dtype=np.float32, shape=shape)
        mean_mm[batch[0]:batch[-1] + 1] = mean.cpu().numpy()
        std_mm[batch[0]:batch[-1] + 1] = std.cpu().numpy()
        if time.time() - last_save >= PROGRESS_EVERY_S:
            mean_mm.flush(), std_mm.flush()
            write_progress(tmp, recipe, batch[-1] + 1)
            last_save = time.time()
    mean_mm.flush(), std_mm.flush()
    latent_shape = list(mean_mm.shape[1:])
    del mean_mm, std_mm
    np.save(os.path.join(tmp, "labels.npy"), labels)
    meta = dict(kind="latents", count=n, num_classes=src["num_classes"], class_names=src["class_names"],
                image_resolution=src["resolution"], latent_shape=latent_shape, vae=vae_id, vae_class="AutoencoderKL",
                latent_scale=scale, latent_shift=shift, precision=cfg.precision,
                files={"mean": "mean.npy", "std": "std.npy", "labels": "labels.npy"},
                source=os.path.abspath(cfg.source), image_transform=src.get("transform"),
                created_by="dataset_tools.py encode")
    finish_dataset(tmp, cfg.dest, meta, recipe)
    c, lh, lw = latent_shape
    print(f"wrote {n} latents ({c}x{lh}x{lw}, scale {scale:g}, shift {shift:g}) to {cfg.dest} "
          f"in {time.time() - start:.1f} s")
