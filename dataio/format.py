"""The on-disk dataset format: `dataset.json` metadata, the array files of each kind, atomic resumable writing.

A dataset is a folder written by `dataset_tools.py`, described by its `dataset.json` (data carries its own
metadata: the model's input size, channels, classes and the latent normalisation all come from here):

    kind "latents"   (`encode`)  mean.npy, std.npy float32 (N, C, h, w): the VAE posterior of each image;
                                 labels.npy int64 (N,). Fields: image_resolution [H, W], latent_shape [C, h, w],
                                 vae (hub id or folder), latent_scale, latent_shift (from the VAE's config),
                                 precision (of the encoder forward), source (the folder of the images).
    kind "pixels"    (`demo`, `fashion-mnist`)  images.npy uint8 (N, H, W, C); labels.npy int64 (N,).
                                 Fields: resolution [H, W], channels.
    kind "images"    (`convert`)  PNG files in subfolders; fields resolution [H, W], transform and
                                 labels [[relative path, label], ...]. Input of `encode`, not of training.

Every kind also has: format (1), count, num_classes, class_names (label i is class_names[i]), files
(array name -> file name), created_by, and recipe (the settings that made it: a finished dataset is
never overwritten by a different one, and rerunning the same command is a no-op).

Writing: `begin_dataset` opens DEST.partial (resumable: `progress.json` says how far a run got),
`finish_dataset` writes dataset.json into it and renames it to DEST, so a dataset.json in DEST always means
a finished dataset. What a model sees of the data (pixels or latents) is `dataio.codec`'s business.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import numpy as np

from utils.atomic import writable_dir, write_json
from utils.errors import UserError

FORMAT_VERSION = 1
META_FILE = "dataset.json"
PARTIAL_MARK = ".dataset-tools-partial"
ARRAYS = {  # kind -> array name -> (file, dtype)
    "latents": {"mean": ("mean.npy", np.float32), "std": ("std.npy", np.float32), "labels": ("labels.npy", np.int64)},
    "pixels": {"images": ("images.npy", np.uint8), "labels": ("labels.npy", np.int64)},
}
ITEM_SHAPES = {  # kind -> array name -> the shape of one item, from the metadata
    "latents": {"mean": lambda m: m["latent_shape"], "std": lambda m: m["latent_shape"], "labels": lambda m: []},
    "pixels": {"images": lambda m: [*m["resolution"], m["channels"]], "labels": lambda m: []},
}
TRAINABLE_KINDS = tuple(ARRAYS)


def _int_list(n: int):
    return lambda v: isinstance(v, list) and len(v) == n and all(isinstance(i, int) for i in v)


def _number(v) -> bool:
    return isinstance(v, (int, float))


COMMON_FIELDS = {"count": lambda v: isinstance(v, int), "num_classes": lambda v: isinstance(v, int),
                 "class_names": lambda v: isinstance(v, list)}
KIND_FIELDS = {  # kind -> required field -> check of its value (None: any value)
    "latents": {"latent_shape": _int_list(3), "image_resolution": _int_list(2), "latent_scale": _number,
                "latent_shift": _number},
    "pixels": {"resolution": _int_list(2), "channels": None},
    "images": {"resolution": _int_list(2), "labels": None},
}
OTHER_FIELDS = {"resolution": _int_list(2)}  # checked, when present, in metadata of any other kind


# ----------------------------------------------------------------------------------------------------------
# Reading.

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
    fields = KIND_FIELDS.get(meta["kind"], {})
    missing = sorted((set(COMMON_FIELDS) | set(fields)) - set(meta))
    if missing:
        raise UserError(f"corrupt {path}: missing {', '.join(missing)}")
    checks = {**COMMON_FIELDS, **(fields if meta["kind"] in KIND_FIELDS else OTHER_FIELDS)}
    bad = [k for k, ok in checks.items() if ok is not None and k in meta and not ok(meta[k])]
    if bad:
        raise UserError(f"corrupt {path}: bad value of {', '.join(bad)}")
    return meta


def not_trainable(meta) -> str:
    """Why a model cannot train on (or decode to) data described by `meta`."""
    if not isinstance(meta, dict):
        return f"not a dataset description: {type(meta).__name__}"
    if meta.get("kind") == "images":
        return ("this folder holds images written by `convert`; encode them first: "
                "python dataset_tools.py encode --source DIR --dest LATENT_DIR")
    return f"unknown dataset kind {meta.get('kind')!r} (expected one of {', '.join(TRAINABLE_KINDS)})"


def array_files(meta: dict) -> dict:
    """Array name -> file name, from the metadata's `files` (defaults: ARRAYS)."""
    files = {name: file for name, (file, _) in ARRAYS[meta["kind"]].items()}
    files.update({k: v for k, v in (meta.get("files") or {}).items() if k in files})
    return files


def array_shapes(meta: dict) -> dict:
    """Array name -> the full shape (count, *item shape) the metadata promises."""
    return {name: (meta["count"], *shape(meta)) for name, shape in ITEM_SHAPES[meta["kind"]].items()}


# ----------------------------------------------------------------------------------------------------------
# Writing: into DEST.partial, renamed to DEST when complete.

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
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise UserError(f"output folder {dest} is a file, not a folder")
    if dataset_done(dest, recipe):
        return None
    dest = os.path.abspath(dest)
    writable_dir(os.path.dirname(dest), "the output folder's parent")   # a read-only place: refused now
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
    """The progress point of an unfinished dataset folder: {"recipe": ..., "done": items written}, or {}."""
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
