"""Fashion-MNIST (Xiao et al., 2017): idx files, as in LeCun's MNIST distribution, -> a pixel dataset.

    python dataset_tools.py fashion-mnist --dest data/fashion-mnist --split train   # -> data/fashion-mnist/train
"""

from __future__ import annotations

import gzip
import os
import struct
import time

import numpy as np
from PIL import Image

from dataio.options import FashionMnistConfig
from dataio.writers import write_pixel_dataset
from utils.errors import UserError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An idx file (raw or .gz) -> array: magic 0 0 <dtype> <ndim>, ndim big-endian uint32 sizes, data."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = 4 + 4 * ndim
    if len(data) - body != int(np.prod(dims)) * dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt: header says {dims}, data has {len(data) - body} bytes")
    return np.frombuffer(data, dtype, offset=body).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(source: str, prefix: str, kind: str) -> str:
    dims = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]
    for name in names:
        for path in (os.path.join(source, name), os.path.join(source, name + ".gz")):
            if os.path.isfile(path):
                return path
    raise UserError(f"no {names[0]}[.gz] in {source} (install the files with `apt-get install dataset-fashion-mnist` "
                    "or pass --source DIR)")


def fashion_mnist_pixels(source: str, split: str = "train", resolution: int = 32, channels: int = 1):
    """Fashion-MNIST split -> (uint8 (N, R, R, channels), int64 labels (N,)).

    28 -> 32 is a zero pad of 2 pixels per side (the background is black, so pixels stay exact); other
    sizes are a Lanczos resize of the 28x28 images. channels 3 replicates the grey channel.
    """
    if not os.path.isdir(source):
        raise UserError(f"Fashion-MNIST folder not found: {source} (`apt-get install dataset-fashion-mnist` "
                        "puts it in /usr/share/datasets/fashion-mnist)")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if resolution < 8:
        raise UserError(f"resolution must be >= 8, got {resolution}")
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find_idx(source, prefix, "images"))
    labels = read_idx(_find_idx(source, prefix, "labels"))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise UserError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise UserError(f"Fashion-MNIST {split} labels out of range 0..9")
    h = images.shape[1]
    if resolution == h + 4:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    elif resolution != h:
        images = np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.LANCZOS))
                           for im in images]) if len(images) else np.zeros((0, resolution, resolution), np.uint8)
    images = np.repeat(images[..., None], channels, axis=-1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def fashion_mnist(cfg: FashionMnistConfig) -> None:
    """`dataset_tools.py fashion-mnist`: import one split into DEST/SPLIT (a no-op when it is there already)."""
    start = time.time()
    dest = os.path.join(cfg.dest, cfg.split)
    source = os.path.abspath(cfg.source)
    recipe = dict(command="fashion-mnist", source=source, split=cfg.split, resolution=cfg.resolution,
                  channels=cfg.channels)
    made = {}

    def make():
        made["arrays"] = fashion_mnist_pixels(source, cfg.split, cfg.resolution, cfg.channels)
        return made["arrays"]

    if not os.path.isdir(source):                           # a clear error before touching the destination
        fashion_mnist_pixels(source, cfg.split, cfg.resolution, cfg.channels)
    if not write_pixel_dataset(dest, make, FASHION_MNIST_CLASSES, recipe, "dataset_tools.py fashion-mnist",
                               split=cfg.split, source=source):
        print(f"{dest} already holds this dataset; nothing to do")
        return
    n = len(made["arrays"][1])
    print(f"wrote {n} Fashion-MNIST {cfg.split} images ({cfg.resolution}x{cfg.resolution}x{cfg.channels}) "
          f"to {dest} in {time.time() - start:.1f} s")
