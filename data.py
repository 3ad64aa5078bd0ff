"""Datasets for training: loading, the resumable batch sampler, demo data and importers.

A dataset is a folder written by `dataset_tools.py`, described by its `dataset.json` (data carries its own
metadata: the model's input size, channels, classes and the latent normalisation all come from here):

    kind "latents"   (`encode`)  mean.npy, std.npy float32 (N, C, h, w): the SD-VAE posterior of each image;
                                 labels.npy int64 (N,). Fields: image_resolution [H, W], latent_shape [C, h, w],
                                 vae (hub id or folder), latent_scale, latent_shift (from the VAE's config),
                                 precision (of the encoder forward).
    kind "pixels"    (`demo`, `fashion-mnist`)  images.npy uint8 (N, H, W, C); labels.npy int64 (N,).
                                 Fields: resolution [H, W], channels.
    kind "images"    (`convert`)  PNG files in subfolders; fields resolution [H, W], transform and
                                 labels [[relative path, label], ...]. Input of `encode`, not of training.

Every kind also has: format (1), count, num_classes, class_names (label i is class_names[i]), files
(array name -> file name), created_by, and recipe (the settings that made it: a finished dataset is
never overwritten by a different one, and rerunning the same command is a no-op).

Training items are dicts (collated by the default collate into batches):
    image uint8 (3, H, W): the source image (latents loaded with_images=True, for REPA)
    x    float32 (C, h, w): the latent posterior mean, or the pixels scaled to [-1, 1]
    std  float32 (C, h, w): the latent posterior std (latents only; pixel items have no `std` key)
    y    int64 (): the class label
`to_model_input` turns a batch into the model's input (a posterior sample, normalised by the metadata).

Batches come from `StepBatchSampler`, a stream of indices that depends only on (seed, global micro-batch
size): independent of the number of processes, and resumable at any micro-batch.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from atomic import write_json
from errors import UserError

FORMAT_VERSION = 1
META_FILE = "dataset.json"
TRAINABLE_KINDS = ("latents", "pixels")
ARRAYS = {  # kind -> array name -> (file, dtype)
    "latents": {"mean": ("mean.npy", np.float32), "std": ("std.npy", np.float32), "labels": ("labels.npy", np.int64)},
    "pixels": {"images": ("images.npy", np.uint8), "labels": ("labels.npy", np.int64)},
}


# ----------------------------------------------------------------------------------------------------------
# Metadata.

def read_meta(data_dir: str) -> dict:
    """dataset.json of `data_dir`; a missing folder or a missing/corrupt file is a UserError."""
    partial = os.path.abspath(data_dir) + ".partial"
    hint = (f" (an unfinished dataset_tools.py run left {partial}: rerun the same command to finish it)"
            if os.path.isdir(partial) else " (write one with `python dataset_tools.py demo|fashion-mnist|encode`)")
    if not os.path.isdir(data_dir):
        raise UserError(f"dataset folder not found: {data_dir}{hint}")
    path = os.path.join(data_dir, META_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{data_dir} is not a dataset: no {META_FILE}{hint}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise UserError(f"corrupt {path}: not a dataset description (no 'kind')")
    required = {"count", "num_classes", "class_names"}
    required |= {"latents": {"latent_shape", "latent_scale", "latent_shift", "image_resolution"},
                 "pixels": {"resolution", "channels"}, "images": {"resolution", "labels"}}.get(meta["kind"], set())
    missing = sorted(required - set(meta))
    if missing:
        raise UserError(f"corrupt {path}: missing {', '.join(missing)}")
    def int_list(v, n):
        return isinstance(v, list) and len(v) == n and all(isinstance(i, int) for i in v)

    checks = dict(count=isinstance(meta["count"], int), num_classes=isinstance(meta["num_classes"], int),
                  class_names=isinstance(meta["class_names"], list))
    if meta["kind"] == "latents":
        checks.update(latent_shape=int_list(meta["latent_shape"], 3),
                      image_resolution=int_list(meta["image_resolution"], 2),
                      latent_scale=isinstance(meta["latent_scale"], (int, float)),
                      latent_shift=isinstance(meta["latent_shift"], (int, float)))
    elif "resolution" in meta:
        checks.update(resolution=int_list(meta["resolution"], 2))
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise UserError(f"corrupt {path}: bad value of {', '.join(bad)}")
    return meta


def dataset_info(meta: dict) -> dict:
    """Model settings implied by a dataset: dict(input_size, in_channels, num_classes)."""
    if meta["kind"] == "latents":
        c, h, w = meta["latent_shape"]
    elif meta["kind"] == "pixels":
        (h, w), c = meta["resolution"], meta["channels"]
    else:
        raise UserError(_not_trainable(meta))
    if h != w:
        raise UserError(f"the dataset's {meta['kind']} are {h}x{w}; the models take square inputs")
    return dict(input_size=int(h), in_channels=int(c), num_classes=int(meta["num_classes"]))


def check_model_fits(meta: dict, model_input_size: int, in_channels: int, model_name: str = "the model",
                     num_classes: Optional[int] = None) -> None:
    """UserError naming both shapes when a model cannot train/sample on this dataset."""
    info = dataset_info(meta)
    if (info["input_size"], info["in_channels"]) != (model_input_size, in_channels):
        have = f"{meta['kind']} are {info['input_size']}x{info['input_size']}x{info['in_channels']}"
        if meta["kind"] == "latents":
            h, w = meta["image_resolution"]
            have += f" (of {w}x{h} images)"
        raise UserError(f"{have} but {model_name} at this config expects "
                        f"{model_input_size}x{model_input_size}x{in_channels}")
    if num_classes is not None and info["num_classes"] > num_classes:
        raise UserError(f"the dataset has {info['num_classes']} classes but {model_name} has {num_classes}")


def _not_trainable(meta: dict) -> str:
    if meta.get("kind") == "images":
        return ("this folder holds images written by `convert`; encode them first: "
                "python dataset_tools.py encode --source DIR --dest LATENT_DIR")
    return f"unknown dataset kind {meta.get('kind')!r} (expected one of {', '.join(TRAINABLE_KINDS)})"


# ----------------------------------------------------------------------------------------------------------
# The training dataset.

class SourceImages:
    """uint8 (H, W, 3) images of a `convert` folder (PNGs) or of a 3-channel pixel dataset, by index: the input
    of `encode`, and the REPA encoder's input when training on latents (latent i was encoded from image i)."""

    def __init__(self, folder: str, meta: dict):
        self.folder, self.meta, self._images = folder, meta, None

    def __len__(self) -> int:
        return self.meta["count"]

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def __getitem__(self, i: int):
        from PIL import Image
        if self.meta["kind"] == "images":
            with Image.open(os.path.join(self.folder, self.meta["labels"][i][0])) as img:
                arr = np.array(img.convert("RGB"))
        else:
            if self._images is None:
                self._images = np.load(os.path.join(self.folder, "images.npy"), mmap_mode="r")
            arr = np.array(self._images[i])
        return torch.from_numpy(np.ascontiguousarray(arr))


class ArrayDataset(Dataset):
    """Items of a latent or pixel dataset, read from memory-mapped .npy files.

    The arrays are opened lazily, in the process that reads them (so DataLoader workers each map the files
    themselves, and a dataset pickled or forked after use reopens them). `__getitems__` reads a whole
    micro-batch with one fancy index per array.
    """

    def __init__(self, data_dir: str, meta: dict, images: Optional[SourceImages] = None):
        self.data_dir, self.meta, self.kind = data_dir, meta, meta["kind"]
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
        y = torch.from_numpy(np.asarray(a["labels"][idx], dtype=np.int64))
        if self.kind == "latents":
            x = torch.from_numpy(np.ascontiguousarray(a["mean"][idx]))                 # (B, C, h, w)
            std = torch.from_numpy(np.ascontiguousarray(a["std"][idx]))
            items = [dict(x=x[i], std=std[i], y=y[i]) for i in range(len(idx))]
            if self.images is not None:                                                  # (3, H, W) uint8
                for item, i in zip(items, indices):
                    item["image"] = self.images[int(i)].permute(2, 0, 1)
            return items
        img = torch.from_numpy(np.ascontiguousarray(a["images"][idx]))                   # (B, H, W, C) uint8
        x = img.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)                        # (B, C, H, W) in [-1, 1]
        return [dict(x=x[i], y=y[i]) for i in range(len(idx))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def load_dataset(data_dir: str, with_images: bool = False) -> ArrayDataset:
    """The dataset in `data_dir` (latents or pixels); checks metadata and array files up front.

    `with_images` (REPA): latent items also carry `image`, uint8 (3, H, W), read from the `convert` folder the
    latents were encoded from (the metadata's `source`); pixel items are images already.
    """
    meta = read_meta(data_dir)
    if meta["kind"] not in TRAINABLE_KINDS:
        raise UserError(f"{data_dir}: {_not_trainable(meta)}")
    count = meta["count"]
    if not isinstance(count, int) or count <= 0:
        raise UserError(f"{data_dir} holds no items (count {count!r})")
    if meta["kind"] == "latents":
        expected = {"mean": (count, *meta["latent_shape"]), "std": (count, *meta["latent_shape"])}
    else:
        expected = {"images": (count, *meta["resolution"], meta["channels"])}
    expected["labels"] = (count,)
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
    if with_images and meta["kind"] == "latents":
        source = meta.get("source")
        if not source or not os.path.isfile(os.path.join(source, META_FILE)):
            raise UserError(f"REPA needs the images the latents of {data_dir} were encoded from, but their folder "
                            f"{source!r} is missing; restore it or train without REPA (proj_coeff 0)")
        src = read_meta(source)
        if src["count"] != count:
            raise UserError(f"{source} holds {src['count']} images but {data_dir} holds {count} latents")
        images = SourceImages(source, src)
    return ArrayDataset(data_dir, meta, images)


def array_files(meta: dict) -> dict:
    """Array name -> file name, from the metadata's `files` (defaults: ARRAYS)."""
    files = {name: file for name, (file, _) in ARRAYS[meta["kind"]].items()}
    files.update({k: v for k, v in (meta.get("files") or {}).items() if k in files})
    return files


def to_model_input(batch: dict, meta: dict, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A collated batch -> the model input x (B, C, h, w), on the batch's device.

    Latents: z = mean + std * noise (a posterior sample; `noise` ~ N(0, I) drawn by the caller so runs are
    reproducible; None = the mean), then x = (z - latent_shift) * latent_scale with the VAE's own constants
    from the metadata (Rombach et al., 2022, sec. 3.1; SD3/FLUX VAEs add the shift). Pixels: as stored, in [-1, 1].
    """
    x = batch["x"]
    if meta["kind"] != "latents":
        return x
    if noise is not None:
        x = x + batch["std"] * noise
    return (x - meta["latent_shift"]) * meta["latent_scale"]


# ----------------------------------------------------------------------------------------------------------
# Batches: one global index stream, sliced by micro-batch and rank.

class StepBatchSampler(Sampler):
    """Micro-batches of indices for one rank, from a global stream that ignores how it is split.

    The global stream is the concatenation of per-epoch permutations of range(num_items), epoch e drawn by
    a torch.Generator seeded with seed + e. Global micro-batch p is stream[p*M : (p+1)*M] with
    M = micro_batch_per_rank * world_size, and rank r takes its r-th slice of length micro_batch_per_rank.
    So one process with micro-batch 2L sees exactly the union of what two processes with L see, and a
    sampler started at `start_micro_batch=p` continues the stream of an uninterrupted run (positions count
    global micro-batches; a resumed run must keep M, but not world_size). Batches may straddle epochs; all
    are full.

    Iterating yields micro-batches p = start, start + 1, ... forever, or `num_micro_batches` of them. The
    position to store in a checkpoint is the number of micro-batches *consumed*, which a DataLoader's
    prefetching hides from the sampler: read it from the loader (`make_loader(...).data_position`).
    """

    def __init__(self, num_items: int, micro_batch_per_rank: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start_micro_batch: int = 0, num_micro_batches: Optional[int] = None):
        if num_items <= 0:
            raise UserError("cannot sample batches from an empty dataset")
        if micro_batch_per_rank <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler shape: micro_batch_per_rank={micro_batch_per_rank}, "
                             f"world_size={world_size}, rank={rank}")
        if start_micro_batch < 0:
            raise ValueError(f"start_micro_batch must be >= 0, got {start_micro_batch}")
        self.num_items, self.micro_batch, self.world_size, self.rank = num_items, micro_batch_per_rank, world_size, rank
        self.seed, self.start_micro_batch, self.num_micro_batches = seed, start_micro_batch, num_micro_batches
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch * self.world_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch` (cached: the current and the next epoch)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.num_items, generator=g)
        return self._perms[epoch]

    def stream(self, start: int, stop: int) -> torch.Tensor:
        """Global stream positions [start, stop) -> dataset indices (int64)."""
        parts = []
        while start < stop:
            epoch, offset = divmod(start, self.num_items)
            take = min(stop - start, self.num_items - offset)
            parts.append(self.permutation(epoch)[offset:offset + take])
            start += take
        return torch.cat(parts)

    def indices(self, position: int) -> list[int]:
        """This rank's indices of global micro-batch `position`."""
        start = position * self.global_micro_batch + self.rank * self.micro_batch
        return self.stream(start, start + self.micro_batch).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        p, stop = self.start_micro_batch, self.num_micro_batches
        end = None if stop is None else self.start_micro_batch + stop
        while end is None or p < end:
            yield self.indices(p)
            p += 1

    def __len__(self) -> int:
        if self.num_micro_batches is None:
            raise TypeError("StepBatchSampler without num_micro_batches is infinite")
        return self.num_micro_batches


class StepLoader(DataLoader):
    """A DataLoader over a StepBatchSampler that counts the micro-batches handed out.

    `data_position` is the global micro-batch the next `next()` returns: after training on a batch, it is
    what a checkpoint stores, and `StepBatchSampler(..., start_micro_batch=data_position)` resumes there.
    The sampler already splits the stream by rank: do not wrap this loader with `accelerator.prepare`.
    """

    def __init__(self, dataset, batch_sampler: StepBatchSampler, **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.data_position = batch_sampler.start_micro_batch

    def __iter__(self):
        self.data_position = self.batch_sampler.start_micro_batch
        for batch in super().__iter__():
            self.data_position += 1
            yield batch


def make_loader(dataset, sampler: StepBatchSampler, num_workers: int = 0, pin_memory: bool = False) -> StepLoader:
    """A DataLoader yielding collated micro-batches (dicts of tensors); workers persist across iterations."""
    kwargs = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    return StepLoader(dataset, sampler, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Writing datasets: into DEST.partial, renamed to DEST when complete.

PARTIAL_MARK = ".dataset-tools-partial"


def _canonical(obj):
    return json.loads(json.dumps(obj))


def dataset_done(dest: str, recipe: dict) -> bool:
    """True when `dest` holds a finished dataset made by `recipe`; a UserError when it holds anything else
    (a different dataset, or a non-empty folder that is not a dataset); False when it is absent or empty."""
    dest = os.path.abspath(dest)
    if not os.path.exists(dest):
        return False
    if os.path.isfile(os.path.join(dest, META_FILE)):
        try:
            with open(os.path.join(dest, META_FILE)) as f:
                old = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{dest} holds a corrupt {META_FILE}; delete the folder or choose another --dest") from None
        if isinstance(old, dict) and old.get("recipe") == _canonical(recipe):
            return True
        raise UserError(f"{dest} already holds a different dataset; delete it or choose another --dest")
    if not os.path.isdir(dest) or os.listdir(dest):
        raise UserError(f"{dest} exists and is not a dataset; delete it or choose another --dest")
    return False


def begin_dataset(dest: str, recipe: dict, resume: bool = False) -> Optional[str]:
    """Start writing a dataset made by `recipe` at `dest`.

    Returns the temporary folder to write into (`dest.partial`), or None when `dest` already holds a finished
    dataset with the same recipe (nothing to do). A different finished dataset, or a non-empty folder that
    is not a dataset, is never overwritten. With `resume`, an unfinished `dest.partial` of the same recipe
    is kept (its `progress.json` says how far it got); otherwise it is started afresh.
    """
    if dataset_done(dest, recipe):
        return None
    dest = os.path.abspath(dest)
    recipe = _canonical(recipe)
    tmp = dest + ".partial"
    if os.path.exists(tmp):
        if not os.path.isfile(os.path.join(tmp, PARTIAL_MARK)):
            raise UserError(f"{tmp} exists and was not written by dataset_tools.py; move it away")
        if resume and read_progress(tmp).get("recipe") == recipe:
            return tmp
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    open(os.path.join(tmp, PARTIAL_MARK), "w").close()
    write_progress(tmp, recipe, 0)
    return tmp


def read_progress(tmp: str) -> dict:
    try:
        with open(os.path.join(tmp, "progress.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def write_progress(tmp: str, recipe: dict, done: int) -> None:
    write_json(os.path.join(tmp, "progress.json"), {"recipe": _canonical(recipe), "done": done})


def finish_dataset(tmp: str, dest: str, meta: dict, recipe: dict) -> None:
    """Write dataset.json into `tmp` and rename it to `dest`: a dataset.json at `dest` means complete."""
    dest = os.path.abspath(dest)
    for name in (PARTIAL_MARK, "progress.json"):
        if os.path.exists(os.path.join(tmp, name)):
            os.unlink(os.path.join(tmp, name))
    meta = dict(format=FORMAT_VERSION, **meta, recipe=_canonical(recipe))
    write_json(os.path.join(tmp, META_FILE), meta)
    if os.path.isdir(dest):
        os.rmdir(dest)                                      # begin_dataset checked it is empty
    os.replace(tmp, dest)


def write_pixel_dataset(dest: str, make, class_names: list[str], recipe: dict, created_by: str, **extra) -> bool:
    """Save the pixel dataset `make()` -> (uint8 images (N, H, W, C), labels (N,)) atomically at `dest`.
    Returns False (without calling `make`) when the same dataset is already there."""
    tmp = begin_dataset(dest, recipe)
    if tmp is None:
        return False
    images, labels = make()
    n, h, w, c = images.shape
    assert images.dtype == np.uint8 and labels.shape == (n,)
    if n == 0:
        raise UserError("no images to write")
    np.save(os.path.join(tmp, "images.npy"), images)
    np.save(os.path.join(tmp, "labels.npy"), labels.astype(np.int64))
    meta = dict(kind="pixels", count=n, num_classes=len(class_names), class_names=list(class_names),
                resolution=[h, w], channels=c, files={"images": "images.npy", "labels": "labels.npy"},
                created_by=created_by, **extra)
    finish_dataset(tmp, dest, meta, recipe)
    return True


# ----------------------------------------------------------------------------------------------------------
# Demo data: ten classes of coloured shapes and textures, drawn from a seed (no download).

DEMO_CLASSES = [  # (name, RGB in [0, 1]); shape and colour both identify the class
    ("red-disc", (0.90, 0.15, 0.10)),
    ("green-square", (0.10, 0.80, 0.20)),
    ("blue-triangle", (0.15, 0.30, 0.95)),
    ("yellow-ring", (0.95, 0.90, 0.10)),
    ("magenta-plus", (0.90, 0.10, 0.85)),
    ("cyan-horizontal-stripes", (0.10, 0.85, 0.90)),
    ("orange-vertical-stripes", (1.00, 0.55, 0.05)),
    ("white-checkerboard", (0.95, 0.95, 0.95)),
    ("purple-diamond", (0.55, 0.20, 0.90)),
    ("pink-x", (1.00, 0.55, 0.70)),
]


def _box(u, v, half_u, half_v):
    """Signed distance to an axis-aligned box centred at 0 (Quilez's formula)."""
    du, dv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
    return outside + np.minimum(np.maximum(du, dv), 0)


def _demo_sdf(k: int, u, v, r, freq, phase):
    """Class k's shape as (signed distance, texture in [0, 1]) at centred, rotated coordinates (u, v)."""
    one = np.ones_like(u)
    if k == 0:
        return np.hypot(u, v) - r, one
    if k == 1:
        return _box(u, v, 0.8 * r, 0.8 * r), one
    if k == 2:                                              # equilateral triangle, apex up, inradius r/2
        n = [(0.0, 1.0), (0.866, -0.5), (-0.866, -0.5)]     # edge normals; v grows downwards
        return np.max([a * u + b * v for a, b in n], axis=0) - 0.5 * r, one
    if k == 3:
        return np.abs(np.hypot(u, v) - 0.8 * r) - 0.18 * r, one
    if k == 4:
        return np.minimum(_box(u, v, r, 0.3 * r), _box(u, v, 0.3 * r, r)), one
    stripes = lambda s: np.clip(0.5 + 2.0 * np.sin(freq * s + phase), 0, 1)  # noqa: E731
    if k == 5:
        return _box(u, v, r, r), stripes(v)
    if k == 6:
        return _box(u, v, r, r), stripes(u)
    if k == 7:
        return _box(u, v, r, r), np.clip(0.5 + 2.0 * np.sin(freq * u + phase) * np.sin(freq * v + phase), 0, 1)
    if k == 8:
        return (np.abs(u) + np.abs(v) - r) / np.sqrt(2), one
    if k == 9:
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return np.minimum(_box(a, b, r, 0.25 * r), _box(a, b, 0.25 * r, r)), one
    raise ValueError(k)


def make_demo_images(num_images: int, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Deterministic class-conditional toy images: (uint8 (N, R, R, 3), int64 labels (N,), class names).

    Each image is one shape of its class on a dark random background, with jittered position, size,
    rotation (+-15 degrees), colour, texture frequency/phase and faint pixel noise. Labels are balanced and
    shuffled. Drawn with numpy's PCG64 from `seed`: same seed, same bytes.
    """
    if num_images <= 0 or resolution < 8:
        raise UserError(f"demo needs num_images >= 1 and resolution >= 8, got {num_images}, {resolution}")
    rng = np.random.Generator(np.random.PCG64(seed))
    n, k = num_images, len(DEMO_CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    cx, cy = rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n)
    r = rng.uniform(0.35, 0.6, n)
    angle = rng.uniform(-np.pi / 12, np.pi / 12, n)
    freq = rng.uniform(2.5, 3.5, n) * np.pi / r             # about 3 periods across the shape
    phase = rng.uniform(0, 2 * np.pi, n)
    base = np.array([c for _, c in DEMO_CLASSES], dtype=np.float64)
    colour = np.clip(base[labels] + rng.normal(0, 0.06, (n, 3)), 0, 1)
    background = rng.uniform(0.0, 0.3, (n, 3))
    grid = (np.arange(resolution) + 0.5) / resolution * 2 - 1    # pixel centres in [-1, 1]
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    chunk = max(1, 2 ** 22 // resolution ** 2)                 # bounded memory at large resolutions
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        sl = slice(s, e)
        col = lambda a: a[sl, None, None]                   # noqa: E731  (b,) -> (b, 1, 1)
        dx, dy = grid[None, None, :] - col(cx), grid[None, :, None] - col(cy)          # (b, 1, R), (b, R, 1)
        ca, sa = np.cos(col(angle)), np.sin(col(angle))
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy                                    # (b, R, R)
        mask = np.zeros((e - s, resolution, resolution))
        for c in range(k):                                  # a loop over classes, not images
            m = labels[sl] == c
            if m.any():
                sdf, tex = _demo_sdf(c, u[m], v[m], col(r)[m], col(freq)[m], col(phase)[m])
                mask[m] = np.clip(0.5 - sdf * resolution / 2, 0, 1) * tex   # 1-pixel anti-aliased edge
        noise = rng.normal(0, 0.02, (e - s, resolution, resolution, 3))
        img = background[sl, None, None] * (1 - mask[..., None]) + colour[sl, None, None] * mask[..., None] + noise
        images[sl] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, labels, [name for name, _ in DEMO_CLASSES]


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao et al., 2017): idx files, as in LeCun's MNIST distribution.

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
        from PIL import Image
        images = np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.LANCZOS))
                           for im in images]) if len(images) else np.zeros((0, resolution, resolution), np.uint8)
    images = np.repeat(images[..., None], channels, axis=-1)
    return np.ascontiguousarray(images), labels.astype(np.int64)
