"""Options of the dataset_tools.py subcommands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from utils.cli import opt
from utils.device import check_device_name


@dataclass
class ConvertConfig:
    """dataset_tools.py convert: class-folder tree or zip of images -> resized PNGs + dataset.json"""
    source: Optional[str] = opt(None, "folder with one subfolder per class (e.g. ImageNet train), or a zip of such")
    dest: Optional[str] = opt(None, "output folder")
    resolution: str = opt("256x256", "output size WxH")
    transform: Literal["center-crop-dhariwal", "center-crop", "center-crop-wide"] = opt(
        "center-crop-dhariwal", "resize/crop: ADM's (Dhariwal & Nichol), plain center crop, or wide crop")
    max_images: Optional[int] = opt(None, "keep this many images, taken round-robin over the classes", ge=1)
    num_workers: Optional[int] = opt(None, "decode/resize processes (default: all CPU cores; 0 = in this process)", ge=0)


@dataclass
class EncodeConfig:
    """dataset_tools.py encode: images -> SD-VAE latents (posterior mean and std) + metadata"""
    source: Optional[str] = opt(None, "folder written by `convert`")
    dest: Optional[str] = opt(None, "output folder")
    vae: str = opt("stabilityai/sd-vae-ft-ema", "AutoencoderKL: hub id (from the local cache when offline) or local folder")
    batch_size: int = opt(64, "images per VAE forward", ge=1)
    device: Optional[str] = opt(None, "cuda / cpu (default: cuda when available)")
    precision: Literal["fp32", "bf16"] = opt("fp32", "VAE encoder precision: fp32 (faithful latents) or bf16 (faster)")
    num_workers: int = opt(4, "image-decoding worker processes", ge=0)
    channels_last: bool = opt(True, "CUDA: run the VAE in channels-last layout (faster convolutions)")

    def __post_init__(self):
        check_device_name(self.device)


@dataclass
class DemoConfig:
    """dataset_tools.py demo: a small class-conditional image dataset generated deterministically (no download)"""
    dest: str = opt("data/demo", "output folder")
    num_images: int = opt(2000, "number of images", ge=1)
    resolution: int = opt(16, "image side in pixels", ge=1)
    seed: int = opt(0, "generator seed", ge=0)


@dataclass
class FashionMnistConfig:
    """dataset_tools.py fashion-mnist: import the idx files of Fashion-MNIST as a pixel dataset"""
    source: str = opt("/usr/share/datasets/fashion-mnist", "folder with the four idx(.gz) files")
    dest: str = opt("data/fashion-mnist", "output folder (a subfolder per split is written)")
    split: Literal["train", "test"] = opt("train", "which split")
    resolution: int = opt(32, "pad (28 -> 32) or resize to this side", ge=1)
    channels: int = opt(1, "1 (grey) or 3 (grey replicated to RGB)", ge=1, le=3)
