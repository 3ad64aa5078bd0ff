"""Temporary shim (floor-plan renovation): datasets live in dataio/ (format.py, dataset.py, loader.py,
codec.py, writers.py, sources/demo.py, sources/fashion_mnist.py). The three functions below are the old
API on top of `dataio.codec.Codec`."""
from __future__ import annotations

from typing import Optional

import torch

from dataio.codec import Codec
from dataio.dataset import ArrayDataset, SourceImages, load_dataset  # noqa: F401
from dataio.format import (ARRAYS, FORMAT_VERSION, META_FILE, PARTIAL_MARK, TRAINABLE_KINDS,  # noqa: F401
                           array_files, begin_dataset, dataset_done, finish_dataset, read_meta, read_progress,
                           write_progress)
from dataio.loader import StepBatchSampler, StepLoader, make_loader  # noqa: F401
from dataio.sources.demo import DEMO_CLASSES, make_demo_images  # noqa: F401
from dataio.sources.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_pixels, read_idx  # noqa: F401
from dataio.writers import write_pixel_dataset  # noqa: F401


def dataset_info(meta: dict) -> dict:
    """Old API: `Codec.from_record(meta).model_settings()`."""
    return Codec.from_record(meta).model_settings()


def check_model_fits(meta: dict, model_input_size: int, in_channels: int, model_name: str = "the model",
                     num_classes: Optional[int] = None) -> None:
    """Old API: `Codec.from_record(meta).check_fits(...)`."""
    Codec.from_record(meta).check_fits(model_input_size, in_channels, model_name, num_classes)


def to_model_input(batch: dict, meta: dict, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Old API: `Codec.from_record(meta).encode(batch, noise)`."""
    return Codec.from_record(meta).encode(batch, noise)
