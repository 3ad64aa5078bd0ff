"""The training dataset: items of a latent or pixel dataset folder, and the source images behind them.

Training items are dicts (collated by the default collate into batches):
    image uint8 (3, H, W): the source image (latents loaded with_images=True, for REPA)
    x    float32 (C, h, w): the latent posterior mean, or the pixels scaled to [-1, 1]
    std  float32 (C, h, w): the latent posterior std (latents only; pixel items have no `std` key)
    y    int64 (): the class label
`Codec.encode` (dataio.codec) turns a batch into the model's input; the codec also decides which tensors an
item holds, so nothing here depends on the kind of data.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dataio.codec import KINDS, Codec
from dataio.format import ARRAYS, META_FILE, array_files, array_shapes, not_trainable, read_meta
from utils.errors import UserError


class SourceImages:
    """uint8 (H, W, 3) images of a `convert` folder (PNGs) or of a 3-channel pixel dataset, by index: the input
    of `encode`, and the REPA encoder's input when training on latents (latent i was encoded from image i)."""

    READERS = {"images": ("_read_png", "_labels_of_meta"),      # kind -> how its images and labels are stored
               "pixels": ("_read_array", "_labels_file")}

    def __init__(self, folder: str, meta: dict):
        self.folder, self.meta, self._images = folder, meta, None

    def __len__(self) -> int:
        return self.meta["count"]

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def _read_png(self, i: int) -> np.ndarray:
        path = os.path.join(self.folder, self.meta["labels"][i][0])
        try:
            with Image.open(path) as img:
                return np.array(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:     # truncated or corrupt (PIL: OSError, SyntaxError)
            raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                            f"(a truncated or corrupt file: convert the source again or remove it)") from None

    def _read_array(self, i: int) -> np.ndarray:
        if self._images is None:
            self._images = np.load(os.path.join(self.folder, "images.npy"), mmap_mode="r")
        return np.array(self._images[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = getattr(self, self.READERS[self.meta["kind"]][0])(i)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def _labels_of_meta(self) -> np.ndarray:
        return np.array([label for _, label in self.meta["labels"]], dtype=np.int64)

    def _labels_file(self) -> np.ndarray:
        return np.load(os.path.join(self.folder, "labels.npy")).astype(np.int64)

    def labels(self) -> np.ndarray:
        """int64 (N,): the label of each image."""
        return getattr(self, self.READERS[self.meta["kind"]][1])()


class ArrayDataset(Dataset):
    """Items of a latent or pixel dataset, read from memory-mapped .npy files.

    The arrays are opened lazily, in the process that reads them (so DataLoader workers each map the files
    themselves, and a dataset pickled or forked after use reopens them). `__getitems__` reads a whole
    micro-batch with one fancy index per array.
    """

    def __init__(self, data_dir: str, meta: dict, images: Optional[SourceImages] = None):
        self.data_dir, self.meta, self.kind = data_dir, meta, meta["kind"]
        self.codec = Codec.from_record(meta)
        self.paths = {name: os.path.join(data_dir, file) for name, file in array_files(meta).items()}
        self._arrays, self._pid = None, None
        self.images = images                     # latents only: the source images, for REPA

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None, "_pid": None}

    def arrays(self) -> dict:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {name: np.load(path, mmap_mode="r") for name, path in self.paths.items()}
            self._pid = os.getpid()
        return self._arrays

    def __getitems__(self, indices) -> list[dict]:
        a = self.arrays()
        idx = np.asarray(indices, dtype=np.int64)
        columns = self.codec.read(a, idx)                                               # (B, ...) each
        columns["y"] = torch.from_numpy(np.asarray(a["labels"][idx], dtype=np.int64))
        items = [{k: v[i] for k, v in columns.items()} for i in range(len(idx))]
        if self.images is not None:                                                      # (3, H, W) uint8
            for item, i in zip(items, indices):
                item["image"] = self.images[int(i)].permute(2, 0, 1)
        return items

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def resolve_data_dir(data_dir: str) -> str:
    """The dataset folder `data_dir` names: itself if it holds a dataset.json, else its one trainable subfolder.

    The public reference's README passes TARGET_PATH, the folder holding `images/` (written by `convert`) and
    `vae-sd/` (written by `encode`), as the data folder: its one latent or pixel subfolder is the dataset then.
    Several trainable subfolders are ambiguous and refused, naming them; a folder with none is left to
    `read_meta`'s error (with a hint when it holds only `convert` images).
    """
    if not os.path.isdir(data_dir) or os.path.isfile(os.path.join(data_dir, META_FILE)):
        return data_dir
    trainable, images = [], []
    for name in sorted(os.listdir(data_dir)):
        sub = os.path.join(data_dir, name)
        if not os.path.isfile(os.path.join(sub, META_FILE)):
            continue
        try:
            kind = read_meta(sub)["kind"]
        except UserError:
            continue
        (trainable if kind in KINDS else images).append(name)
    if len(trainable) == 1:
        return os.path.join(data_dir, trainable[0])
    if trainable:
        raise UserError(f"{data_dir} holds several datasets ({', '.join(trainable)}): pass one of them as data_dir")
    if images:
        raise UserError(f"{data_dir} holds only images written by `convert` ({', '.join(images)}), no latents: "
                        f"python dataset_tools.py encode --source {os.path.join(data_dir, images[0])} "
                        f"--dest {os.path.join(data_dir, 'vae-sd')}")
    return data_dir


def load_dataset(data_dir: str, with_images: bool = False) -> ArrayDataset:
    """The dataset in `data_dir` (latents or pixels; or a folder holding one, see `resolve_data_dir`); checks
    metadata and array files up front.

    `with_images` (REPA): latent items also carry `image`, uint8 (3, H, W), read from the `convert` folder the
    latents were encoded from (the metadata's `source`); pixel items are images already.
    """
    data_dir = resolve_data_dir(data_dir)
    meta = read_meta(data_dir)
    if meta["kind"] not in KINDS:
        raise UserError(f"{data_dir}: {not_trainable(meta)}")
    count = meta["count"]
    if not isinstance(count, int) or count <= 0:
        raise UserError(f"{data_dir} holds no items (count {count!r})")
    expected = array_shapes(meta)
    for name, file in array_files(meta).items():
        dtype = ARRAYS[meta["kind"]][name][1]
        path = os.path.join(data_dir, file)
        if not os.path.isfile(path):
            raise UserError(f"{data_dir} is incomplete: {file} is missing")
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"corrupt {path}: {e}") from None
        if tuple(arr.shape) != tuple(expected[name]) or arr.dtype != dtype:
            raise UserError(f"corrupt {path}: {arr.dtype} {tuple(arr.shape)} where {META_FILE} says "
                            f"{np.dtype(dtype)} {tuple(expected[name])}")
        if name == "labels" and (arr.min() < 0 or arr.max() >= meta["num_classes"]):
            raise UserError(f"corrupt {path}: labels outside 0..{meta['num_classes'] - 1}")
        del arr
    images = None
    if with_images and Codec.from_record(meta).needs_source_images:
        source = meta.get("source")
        if not source or not os.path.isfile(os.path.join(source, META_FILE)):
            raise UserError(f"REPA needs the images the latents of {data_dir} were encoded from, but their folder "
                            f"{source!r} is missing; restore it or train without REPA (proj_coeff 0)")
        src = read_meta(source)
        if src["count"] != count:
            raise UserError(f"{source} holds {src['count']} images but {data_dir} holds {count} latents")
        images = SourceImages(source, src)
    return ArrayDataset(data_dir, meta, images)
