"""Image batches in ADM's .npz format, read in pieces, and atomic writers for what the evaluator produces.

An ADM batch is an .npz whose `arr_0` is uint8 images (N, H, W, 3); reference batches may also hold the
Inception statistics `mu` (2048,), `sigma` (2048, 2048), `mu_s` (2023,), `sigma_s` (2023, 2023), and sample
batches written for class-conditional models may hold their labels in `arr_1` (N,). A 50k batch at 512 px is
39 GB, so `arr_0` is streamed from the zip member in batches instead of loaded whole (`NpzImages`).
Grey images, (N, H, W, 1) or (N, H, W), are accepted for small-dataset evaluation.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import torch

from .errors import EvalInputError

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_image_shape(shape, dtype, where: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) of a valid image array, else EvalInputError naming `where`."""
    if np.dtype(dtype) != np.uint8:
        raise EvalInputError(f"{where} must hold uint8 images (N, H, W, 3), got dtype {np.dtype(dtype)}")
    if len(shape) == 3:                                     # (N, H, W): grey
        shape = (*shape, 1)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise EvalInputError(f"{where} must hold images of shape (N, H, W, 3) (or (N, H, W, 1) grey), got {tuple(shape)}")
    if min(shape) < 1:
        raise EvalInputError(f"{where} holds no images (shape {tuple(shape)})")
    return tuple(int(s) for s in shape)


class ArrayImages:
    """In-memory uint8 images (N, H, W, C) (numpy or torch) with the same interface as `NpzImages`."""

    def __init__(self, images, where: str = "images"):
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        images = np.asarray(images)
        self.shape = _check_image_shape(images.shape, images.dtype, where)
        self.array = images.reshape(self.shape)
        self.where = where

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self.array[start:start + batch_size]


class NpzImages:
    """`arr_0` of an ADM .npz, streamed from the zip member in batches of (b, H, W, C) uint8 (no full load)."""

    def __init__(self, path: str, key: str = "arr_0"):
        self.path, self.key, self.where = path, key, f"{path}:{key}"
        if not os.path.isfile(path):
            raise EvalInputError(f"file not found: {path}")
        try:
            with zipfile.ZipFile(path) as zf, zf.open(self._member(zf)) as f:
                shape, self.fortran_order, dtype = self._read_header(f)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            if isinstance(e, EvalInputError):
                raise
            raise EvalInputError(f"cannot read {path} as an .npz batch: {e}") from None
        self.shape = _check_image_shape(shape, dtype, self.where)

    def _member(self, zf: zipfile.ZipFile) -> str:
        name = f"{self.key}.npy"
        if name not in zf.namelist():
            keys = ", ".join(n[:-4] for n in zf.namelist() if n.endswith(".npy")) or "none"
            raise EvalInputError(f"{self.path} has no '{self.key}' array (it holds: {keys}); ADM batches store images in arr_0")
        return name

    @staticmethod
    def _read_header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):                    # 3.0 only changes the header's text encoding
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        n, h, w, c = self.shape
        if self.fortran_order:                              # rare (a transposed array was saved): load whole
            with np.load(self.path) as z:
                yield from ArrayImages(np.ascontiguousarray(z[self.key]), self.where).batches(batch_size)
            return
        row = h * w * c
        with zipfile.ZipFile(self.path) as zf, zf.open(self._member(zf)) as f:
            self._read_header(f)
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                buf = bytearray(b * row)
                view, got = memoryview(buf), 0
                while got < len(buf):                       # ZipExtFile.read may return fewer bytes than asked
                    chunk = f.read(len(buf) - got)
                    if not chunk:
                        raise EvalInputError(f"{self.where} is truncated: expected {n} images, file ends at {start + got // row}")
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)
                yield np.frombuffer(buf, np.uint8).reshape(b, h, w, c)


def as_images(images, where: str = "samples"):
    """A path to an ADM .npz, or a uint8 array/tensor (N, H, W, C) -> an object with `shape`, `batches(b)`."""
    if isinstance(images, (str, os.PathLike)):
        return NpzImages(os.fspath(images))
    if isinstance(images, (ArrayImages, NpzImages)):
        return images
    return ArrayImages(images, where)


def prefetch(iterator: Iterator, depth: int = 1) -> Iterator:
    """Advance `iterator` (e.g. zip reading) in a background thread, `depth` items ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(next, iterator, None) for _ in range(depth)]   # one worker: calls run in order
        while True:
            item = pending.pop(0).result()
            if item is None:
                return
            pending.append(pool.submit(next, iterator, None))
            yield item


def read_arrays(path: str, keys) -> dict[str, np.ndarray]:
    """The small arrays among `keys` that the .npz holds (absent keys are left out)."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in keys if k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise EvalInputError(f"cannot read {path}: {e}") from None


def read_stored_statistics(path: str) -> dict[str, np.ndarray]:
    """ADM's stored reference statistics: mu/sigma (pool features) and mu_s/sigma_s (spatial), when present.
    A mean without its covariance (or the reverse) is an error, not silently ignored."""
    stats = read_arrays(path, STAT_KEYS)
    for mu, sigma in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if (mu in stats) != (sigma in stats):
            raise EvalInputError(f"{path} holds '{mu if mu in stats else sigma}' without '{sigma if mu in stats else mu}'")
        if mu in stats:
            m, s = stats[mu], stats[sigma]
            if m.ndim != 1 or s.shape != (m.shape[0], m.shape[0]) or not np.issubdtype(m.dtype, np.floating):
                raise EvalInputError(f"{path}: '{mu}' {m.shape} and '{sigma}' {s.shape} must be a float (F,) mean and (F, F) covariance")
    return {k: v.astype(np.float64) for k, v in stats.items()}


def read_labels(path: str, num_images: int) -> Optional[np.ndarray]:
    """`arr_1` of a sample batch (class labels, as ADM's sampler writes them), or None when absent."""
    labels = read_arrays(path, ("arr_1",)).get("arr_1")
    if labels is None:
        return None
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
        raise EvalInputError(f"{path}: arr_1 must be integer labels of shape ({num_images},), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def sorted_by_class(labels) -> bool:
    """True when the labels form one contiguous run per class (e.g. 0,0,..,1,1,..), with >= 2 classes and some
    class repeated: a batch ordered like that gives each of IS's consecutive splits only a few classes."""
    y = np.asarray(labels).reshape(-1)
    if len(y) < 3:
        return False
    runs = 1 + int(np.count_nonzero(y[1:] != y[:-1]))
    classes = len(np.unique(y))
    return 2 <= classes == runs < len(y)


def _atomic_write(path: str, write, suffix: str) -> None:
    """Write through `write(file_object)` to a temporary file in the target folder, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=_json_default) + "\n").encode()), ".json")


def write_npz(path: str, **arrays) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays), ".npz")


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
