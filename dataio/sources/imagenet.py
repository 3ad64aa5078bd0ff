"""Image folders (e.g. ImageNet's train set) -> resized PNGs + dataset.json: the `convert` subcommand.

    python dataset_tools.py convert --source imagenet/train --dest data/in256 --resolution 256x256

The source is a folder with one subfolder per class, or a zip of such (common leading folders are
skipped); images are decoded and resized in worker processes, written as PNGs numbered in the sorted order
of the source files, 1000 per subfolder. Unreadable images are skipped and reported; with --max-images,
the first images are taken one class at a time, stand-ins replacing skipped ones.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import zipfile

import numpy as np
from PIL import Image

from dataio.format import begin_dataset, finish_dataset
from dataio.options import ConvertConfig
from dataio.sources import progress
from utils.errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
IMAGES_PER_FOLDER = 1000


def _resize_dhariwal(img, w: int, h: int) -> np.ndarray:
    """ADM's `center_crop_arr` (Dhariwal & Nichol, 2021): halve with a box filter while the short side is
    >= 2x the target, bicubic-resize the short side to the target, then center crop."""
    if w != h:
        raise UserError("--transform center-crop-dhariwal needs a square --resolution")
    while min(img.size) >= 2 * w:
        img = img.resize((img.width // 2, img.height // 2), Image.BOX)
    s = w / min(img.size)
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    return arr[top:top + h, left:left + w]


def _resize_center_crop(img, w: int, h: int) -> np.ndarray:
    """The largest centred crop with the output's aspect ratio, Lanczos-resized to w x h (EDM2's
    `center-crop` for square outputs)."""
    W, H = img.size
    cw, ch = (round(H * w / h), H) if W * h > H * w else (W, round(W * h / w))
    left, top = (W - cw) // 2, (H - ch) // 2
    return np.asarray(img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.LANCZOS))


def _resize_center_crop_wide(img, w: int, h: int) -> np.ndarray:
    """Keep the full width: Lanczos-resize to width w, then center-crop the height to h, or pad it to h
    with black (letterbox) when the image is wider than w:h (EDM2's `center-crop-wide` idea; no image is
    dropped)."""
    W, H = img.size
    nh = max(1, round(H * w / W))
    arr = np.asarray(img.resize((w, nh), Image.LANCZOS))
    if nh >= h:
        top = (nh - h) // 2
        return arr[top:top + h]
    out = np.zeros((h, w, 3), dtype=np.uint8)
    top = (h - nh) // 2
    out[top:top + nh] = arr
    return out


TRANSFORMS = {"center-crop-dhariwal": _resize_dhariwal, "center-crop": _resize_center_crop,
              "center-crop-wide": _resize_center_crop_wide}


def parse_resolution(text: str) -> tuple[int, int]:
    """'256x256' or '256' -> (width, height)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
        assert len(parts) in (1, 2) and min(parts) > 0
    except (ValueError, AssertionError):
        raise UserError(f"--resolution must look like 256x256 (WxH) or 256, got {text!r}") from None
    return (parts[0], parts[-1])


class ImageSource:
    """The image files of a folder or a zip, as sorted '/'-separated relative names. Picklable: the zip is
    opened lazily by each process that reads from it."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise UserError(f"source not found: {path}")
        self.path = os.path.abspath(path)
        self.is_zip = os.path.isfile(path)
        if self.is_zip and not zipfile.is_zipfile(path):
            raise UserError(f"source {path} is neither a folder nor a zip file")
        if self.is_zip:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
        else:
            names = []
            for root, dirs, files in os.walk(self.path, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(root, self.path)
                names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        self.names = sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                            and not any(p.startswith(".") or p == "__MACOSX" for p in n.split("/")))
        self._zip = None

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}

    def open(self, name: str):
        """The RGB PIL image `name`."""
        if self.is_zip:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            with self._zip.open(name) as f:
                img = Image.open(f)
                img.load()
        else:
            img = Image.open(os.path.join(self.path, name))
            img.load()
        return img.convert("RGB")

    def classes(self) -> tuple[list[str], list[int]]:
        """Class names (sorted folder names) and the label of each image. Common leading folders shared by
        every image (e.g. `train/` inside a zip) are skipped; every image must sit inside a class folder."""
        parts = [n.split("/") for n in self.names]
        depth = 0
        while all(len(p) - depth >= 3 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        loose = [n for n, p in zip(self.names, parts) if len(p) - depth < 2]
        if loose:
            raise UserError(f"{self.path}: images must be in one subfolder per class, but {loose[0]!r} is not")
        class_names = sorted({p[depth] for p in parts})
        index = {c: i for i, c in enumerate(class_names)}
        return class_names, [index[p[depth]] for p in parts]


_JOB: dict = {}


def _convert_init(source: ImageSource, out_dir: str, transform: str, size: tuple[int, int]) -> None:
    _JOB.update(source=source, out_dir=out_dir, transform=TRANSFORMS[transform], size=size)


def _convert_one(item: tuple[int, str]) -> tuple[int, str | None, str | None]:
    """Image `name` -> PNG number `index`; returns (index, relative path or None, error or None)."""
    index, name = item
    try:
        arr = _JOB["transform"](_JOB["source"].open(name), *_JOB["size"])
    except Exception as e:  # noqa: BLE001  (an unreadable image is skipped and reported)
        return index, None, f"{name}: {e}"
    rel = f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"
    os.makedirs(os.path.join(_JOB["out_dir"], os.path.dirname(rel)), exist_ok=True)
    Image.fromarray(arr).save(os.path.join(_JOB["out_dir"], rel), compress_level=1)
    return index, rel, None


def _select(labels: list[int], count: int | None, failed: set[int]) -> list[int]:
    """Indices of the images to keep, skipping unreadable ones: all of them, or the first `count` taking one
    per class in turn (so that a --max-images subset covers every class)."""
    usable = [i for i in range(len(labels)) if i not in failed]
    if count is None:
        return usable
    rank, seen = {}, {}
    for i in usable:
        rank[i] = seen.get(labels[i], 0)
        seen[labels[i]] = rank[i] + 1
    return sorted(sorted(usable, key=lambda i: (rank[i], labels[i]))[:count])


def convert(cfg: ConvertConfig) -> None:
    """`dataset_tools.py convert`: write the images dataset of `cfg` (a no-op when it is there already)."""
    if not cfg.source or not cfg.dest:
        raise UserError("convert needs --source (class folders or a zip) and --dest")
    w, h = parse_resolution(cfg.resolution)
    if cfg.transform == "center-crop-dhariwal" and w != h:
        raise UserError("--transform center-crop-dhariwal needs a square --resolution")
    if cfg.max_images is not None and cfg.max_images <= 0:
        raise UserError(f"--max-images must be positive, got {cfg.max_images}")
    source = ImageSource(cfg.source)
    if not source.names:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {cfg.source}")
    class_names, labels = source.classes()
    recipe = dict(command="convert", source=source.path, resolution=[w, h], transform=cfg.transform,
                  max_images=cfg.max_images)
    tmp = begin_dataset(cfg.dest, recipe)
    if tmp is None:
        print(f"{cfg.dest} already holds this dataset; nothing to do")
        return
    workers = cfg.num_workers if cfg.num_workers is not None else (os.cpu_count() or 1)
    args = (source, tmp, cfg.transform, (w, h))
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_convert_init, initargs=args)
    else:
        _convert_init(*args)
    start, written, failed, errors = time.time(), {}, set(), []
    try:
        bar = progress(None, total=len(_select(labels, cfg.max_images, failed)), desc="convert", unit="img")
        while True:                                         # more rounds only when unreadable images need stand-ins
            jobs = [(i, source.names[i]) for i in _select(labels, cfg.max_images, failed)
                    if i not in written]
            if not jobs:
                break
            stream = pool.imap_unordered(_convert_one, jobs, chunksize=16) if pool else map(_convert_one, jobs)
            for index, rel, err in stream:                 # PNG number = index in the sorted file list
                if err:
                    failed.add(index)
                    errors.append(err)
                else:
                    written[index] = rel
                    bar.update(1)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
    keep = _select(labels, cfg.max_images, failed)
    for i in set(written) - set(keep):                      # stand-ins made redundant by a later round
        os.unlink(os.path.join(tmp, written[i]))
    for err in errors:
        print(f"warning: skipped unreadable image {err}", file=sys.stderr)
    entries = [[written[i], labels[i]] for i in keep]
    if not entries:
        raise UserError(f"none of the images in {cfg.source} could be read")
    meta = dict(kind="images", count=len(entries), num_classes=len(class_names), class_names=class_names,
                resolution=[h, w], channels=3, transform=cfg.transform, source=source.path, skipped=len(errors),
                labels=entries, created_by="dataset_tools.py convert")
    finish_dataset(tmp, cfg.dest, meta, recipe)
    print(f"wrote {len(entries)} images ({w}x{h}, {len(class_names)} classes) to {cfg.dest} "
          f"in {time.time() - start:.1f} s")

