"""The files of a sample folder: global batches, per-batch shards and PNGs, and the final ADM .npz.

Global batch j holds images [j*b, (j+1)*b) (the last one padded with images N.. and cut); a finished batch
is marked by its shard `batches/{j:06d}.npy` (uint8 (n, H, W, 3)), written after its PNGs. At the end the
shards are streamed, in index order, into one uncompressed `.npz` (arr_0) without holding them all.
Every file is written atomically (utils/atomic.py): a reader never sees a partial file.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from typing import Optional

import numpy as np
from PIL import Image

from utils.atomic import atomic_write
from utils.errors import UserError

SHARD_DIR = "batches"


def save_png(image: np.ndarray, path: str) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"), ".png")


def read_npz_shape(path: str) -> Optional[tuple]:
    """(shape, dtype) of arr_0 in an .npz, read from its header (no data); None if unreadable."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
            return tuple(shape), np.dtype(dtype)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def write_npz_from_shards(path: str, shard_paths: list[str], shape: tuple) -> None:
    """Stream uint8 shards into `path` (an uncompressed .npz with arr_0 of `shape`) without holding them all."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(
                    member, dict(descr=np.lib.format.dtype_to_descr(np.dtype(np.uint8)), fortran_order=False,
                                 shape=tuple(shape)))
                count = 0
                for shard in shard_paths:
                    arr = np.load(shard)
                    if arr.dtype != np.uint8 or arr.shape[1:] != tuple(shape[1:]):
                        raise UserError(f"corrupt shard {shard}: {arr.dtype} {arr.shape}; delete it and rerun")
                    member.write(np.ascontiguousarray(arr).tobytes())
                    count += len(arr)
                if count != shape[0]:
                    raise UserError(f"the shards hold {count} images, expected {shape[0]}")
    atomic_write(path, write, ".npz")


class Batches:
    """Global batch j = images [j*b, (j+1)*b) cut to num_samples; files of the folder that hold them."""

    def __init__(self, folder: str, num_samples: int, batch_size: int):
        self.folder, self.n, self.b = folder, num_samples, batch_size
        self.count = math.ceil(num_samples / batch_size)
        self.shard_dir = os.path.join(folder, SHARD_DIR)

    def indices(self, j: int) -> range:
        """The b indices of batch j, padding included (images >= num_samples are drawn and discarded)."""
        return range(j * self.b, (j + 1) * self.b)

    def valid(self, j: int) -> int:
        return min(self.b, self.n - j * self.b)

    def shard(self, j: int) -> str:
        return os.path.join(self.shard_dir, f"{j:06d}.npy")

    def png(self, i: int) -> str:
        return os.path.join(self.folder, f"{i:06d}.png")

    def pngs(self, j: int) -> list[str]:
        return [self.png(i) for i in self.indices(j)[:self.valid(j)]]

    def recover(self, j: int, write_png: bool) -> bool:
        """True if batch j is finished: its shard exists, or all its PNGs do (the shard is then rebuilt from
        them: PNG is lossless). With `write_png`, PNGs missing beside a shard are written from it."""
        if os.path.isfile(self.shard(j)):
            if write_png:
                missing = [(k, p) for k, p in enumerate(self.pngs(j)) if not os.path.isfile(p)]
                if missing:
                    arr = np.load(self.shard(j))
                    for k, p in missing:
                        save_png(arr[k], p)
            return True
        pngs = self.pngs(j)
        if all(os.path.isfile(p) for p in pngs):
            arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
            atomic_write(self.shard(j), lambda f: np.save(f, arr), ".npy")
            return True
        return False

    def save(self, j: int, images: np.ndarray, write_png: bool) -> None:
        """PNGs first, then the shard: a shard marks a finished batch."""
        images = images[:self.valid(j)]
        if write_png:
            for i, img in zip(self.indices(j), images):
                save_png(img, self.png(i))
        atomic_write(self.shard(j), lambda f: np.save(f, images), ".npy")

    def merge(self, npz_path: str) -> None:
        """Every shard -> `npz_path`; then the shards (the .npz holds them) and stale temp files are removed."""
        shards = [self.shard(j) for j in range(self.count)]
        missing = [p for p in shards if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{len(missing)} batches are missing after generation (e.g. {missing[0]})")
        shape = (self.n,) + np.load(shards[0], mmap_mode="r").shape[1:]
        write_npz_from_shards(npz_path, shards, shape)
        shutil.rmtree(self.shard_dir)                         # the .npz holds every shard
        for stale in os.listdir(self.folder):                 # temp files of interrupted runs
            if stale.startswith(".tmp-"):
                os.unlink(os.path.join(self.folder, stale))
