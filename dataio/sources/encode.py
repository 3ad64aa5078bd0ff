"""Images -> VAE latents (posterior mean and std) + metadata: the `encode` subcommand, the latent writer.

    python dataset_tools.py encode --source data/in256 --dest data/in256-sdvae      # GPU when present
    torchrun --nproc_per_node 8 dataset_tools.py encode --source data/in256 --dest data/in256-sdvae
    accelerate launch dataset_tools.py encode ...                                  # the same, sharded

The source is a folder written by `convert` (or a 3-channel pixel dataset). The posterior of every image is
written into preallocated memory-mapped .npy files in DEST.partial, with a progress point every
PROGRESS_EVERY_S seconds: an interrupted run resumes there, with any number of processes.

Sharding: under torchrun / accelerate launch (WORLD_SIZE > 1) every process takes one contiguous slice of the
batches still to do and writes its rows straight into the one shared output (no merge pass); process 0
prepares the folder and finishes it. The batches are cut from the image index alone (fixed `batch_size`
pieces of the ranges not yet done), never from the process count, so each image goes through the same
batch, and the latents are byte-identical for 1 and N processes on the same kind of device. Progress:
each process records the image ranges it completed (`done-RANK.json`, after flushing its rows); on a
(re)start process 0 merges every record into `done.json`, so a resume may use another process count.

The metadata records the VAE and its normalisation constants (from the VAE's config), which `dataio.codec`
applies when training and decoding.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np
import torch
from numpy.lib.format import open_memmap

from dataio import vae as vae_io
from dataio.dataset import SourceImages
from dataio.format import begin_dataset, dataset_done, finish_dataset, read_meta, read_progress
from dataio.options import EncodeConfig
from dataio.sources import progress
from utils.atomic import write_json
from utils.errors import UserError

PROGRESS_EVERY_S = 60.0             # how often a resumable progress point is written


def _device(name, local_rank: int = 0) -> torch.device:
    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())     # one GPU per process
    return device


def _worker_errors(batches):
    """A UserError raised in a DataLoader worker (an unreadable image) comes back with the worker's traceback in
    its message: keep its one line."""
    try:
        yield from batches
    except UserError as e:
        raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


class Processes:
    """The encode processes of a torchrun / accelerate launch (rank, world, barrier); one process without."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started = False
        if self.world > 1 and not torch.distributed.is_initialized():
            # gloo: only barriers travel (the rows go to the shared files), so no GPU communicator is needed
            torch.distributed.init_process_group("gloo", rank=self.rank, world_size=self.world)
            self.started = True

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Progress as half-open image ranges [lo, hi).

def _merge(ranges) -> list[list[int]]:
    out = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def _read_ranges(path: str) -> list:
    try:
        with open(path) as f:
            return json.load(f)["done"]
    except (OSError, ValueError, KeyError, TypeError):
        return []                                       # a record torn by a kill: its rows are redone


def collect_done(tmp: str) -> list[list[int]]:
    """Merge every record of completed images in `tmp` into done.json (and drop the per-process files)."""
    legacy = int(read_progress(tmp).get("done", 0))      # a single-process run of an older version: a prefix
    files = sorted(glob.glob(os.path.join(tmp, "done-*.json")))
    ranges = [[0, legacy]] + _read_ranges(os.path.join(tmp, "done.json"))
    for path in files:
        ranges += _read_ranges(path)
    done = _merge(ranges)
    write_json(os.path.join(tmp, "done.json"), {"done": done})
    for path in files:
        os.unlink(path)
    return done


def todo_batches(n: int, done: list, batch_size: int) -> list[list[int]]:
    """Index lists of the images not in `done`, in pieces of at most `batch_size` cut from each gap's start."""
    out, start = [], 0
    for lo, hi in _merge(done) + [[n, n]]:
        for s in range(start, min(lo, n), batch_size):
            out.append(list(range(s, min(s + batch_size, lo, n))))
        start = max(start, hi)
    return out


def my_slice(batches: list, rank: int, world: int) -> list:
    """Process `rank`'s contiguous share of `batches`."""
    return batches[rank * len(batches) // world:(rank + 1) * len(batches) // world]


# ----------------------------------------------------------------------------------------------------------
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
    procs = Processes()
    try:
        _encode(cfg, src, n, procs)
    finally:
        procs.close()


def _encode(cfg: EncodeConfig, src: dict, n: int, procs: Processes) -> None:
    main = procs.rank == 0
    images = SourceImages(cfg.source, src)
    device = _device(cfg.device, procs.local_rank)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.precision]
    vae_id = os.path.abspath(cfg.vae) if os.path.isdir(os.path.expanduser(cfg.vae)) else cfg.vae
    recipe = dict(command="encode", source=os.path.abspath(cfg.source), source_count=n, vae=vae_id,
                  precision=cfg.precision)
    if dataset_done(cfg.dest, recipe):                              # checked before loading the VAE
        if main:
            print(f"{cfg.dest} already holds this dataset; nothing to do")
        return
    model = vae_io.load_vae(cfg.vae, device, dtype)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)         # cuDNN's fast layout (encode_images follows)
    scale, shift = vae_io.latent_norm(model)
    h, w = src["resolution"]
    shape = (n, *vae_io.latent_shape(model, h, w))
    tmp = os.path.abspath(cfg.dest) + ".partial"
    mean_path, std_path = os.path.join(tmp, "mean.npy"), os.path.join(tmp, "std.npy")
    if main:                                                        # prepare the folder, merge the progress
        tmp = begin_dataset(cfg.dest, recipe, resume=True)
        done = collect_done(tmp)
        if not (os.path.isfile(mean_path) and os.path.isfile(std_path)):
            done = []                                               # nothing on disk counts as done
            write_json(os.path.join(tmp, "done.json"), {"done": done})
        for path in (mean_path, std_path):
            if not done:
                open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        if done:
            print(f"resuming {cfg.dest}: {sum(b - a for a, b in done)} of {n} images done", file=sys.stderr)
    procs.barrier()
    done = _read_ranges(os.path.join(tmp, "done.json"))
    mine = my_slice(todo_batches(n, done, cfg.batch_size), procs.rank, procs.world)
    mean_mm, std_mm = open_memmap(mean_path, mode="r+"), open_memmap(std_path, mode="r+")
    if mean_mm.shape != shape:
        raise UserError(f"{mean_path} holds {mean_mm.shape}, expected {shape}: remove {tmp} and rerun")
    record, completed = os.path.join(tmp, f"done-{procs.rank}.json"), []

    def save_progress():
        mean_mm.flush(), std_mm.flush()                             # rows on disk before they count as done
        write_json(record, {"done": _merge(completed)})

    loader = torch.utils.data.DataLoader(images, batch_sampler=mine, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    start = last_save = time.time()
    bar = progress(_worker_errors(loader), total=len(mine), desc="encode", unit="batch", disable=not main)
    for batch, pixels in zip(mine, bar):
        mean, std = vae_io.encode_images(model, pixels)                          # (b, C, h, w) float32
        mean_mm[batch[0]:batch[-1] + 1] = mean.cpu().numpy()
        std_mm[batch[0]:batch[-1] + 1] = std.cpu().numpy()
        completed.append([batch[0], batch[-1] + 1])
        if time.time() - last_save >= PROGRESS_EVERY_S:
            save_progress()
            last_save = time.time()
    save_progress()
    del mean_mm, std_mm
    procs.barrier()                                                 # every slice written
    if not main:
        return
    done = collect_done(tmp)
    if done != [[0, n]]:
        raise UserError(f"encode finished with images missing ({done} of [0, {n})): rerun the same command")
    np.save(os.path.join(tmp, "labels.npy"), images.labels())
    os.unlink(os.path.join(tmp, "done.json"))
    meta = dict(kind="latents", count=n, num_classes=src["num_classes"], class_names=src["class_names"],
                image_resolution=src["resolution"], latent_shape=list(shape[1:]), vae=vae_id,
                vae_class="AutoencoderKL", latent_scale=scale, latent_shift=shift, precision=cfg.precision,
                files={"mean": "mean.npy", "std": "std.npy", "labels": "labels.npy"},
                source=os.path.abspath(cfg.source), image_transform=src.get("transform"),
                created_by="dataset_tools.py encode")
    finish_dataset(tmp, cfg.dest, meta, recipe)
    c, lh, lw = shape[1:]
    print(f"wrote {n} latents ({c}x{lh}x{lw}, scale {scale:g}, shift {shift:g}) to {cfg.dest} "
          f"in {time.time() - start:.1f} s" + (f" with {procs.world} processes" if procs.world > 1 else ""))
