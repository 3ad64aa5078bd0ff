"""A small Fashion-MNIST classifier, saved as a feature network of the evaluator (`evaluate.py --feature-network`);
the command is studies/classifier.py, the study trains it as one of its stages.

Inception features mean little on 32x32 grey clothing, so sample quality on Fashion-MNIST is measured in the
feature space of a classifier trained on its training set: the Frechet distance of its penultimate features
(as FID is of Inception's pool_3), precision/recall in the same space, and the accuracy of its predictions
against the labels the samples were drawn for.

The network (`FashionClassifier`) follows the interface documented in `evaluation/__init__.py`:

    forward(x float32 (B, C, H, W) in [0, 255]) -> (features (B, feature_dim), logits (B, 10))

C may be 1 or 3 (grey replicated to RGB, as generate.py writes grey samples): channels are averaged. Inputs of
another size are resized to the training resolution (bilinear). Architecture: three conv stages (3x3 conv, BN,
ReLU; widths w, 2w, 4w; 2x2 max-pool after each), a 4x4 average pool, dropout, Linear -> ReLU (the features),
Linear -> logits. Trained with AdamW, a one-cycle learning rate and random horizontal flips; the BatchNorm statistics are
then recomputed exactly for the final weights (`recalibrate_batchnorm`, on up to 10k training images), and the
run reports the accuracy on the full test set. The saved file is `torch.jit.script` of the model in eval mode (CPU), written
atomically.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataio.dataset import load_dataset
from studies.fmnist.options import ClassifierConfig
from utils.atomic import atomic_write
from utils.errors import UserError

SPLITS = ("train", "test")


class FashionClassifier(nn.Module):
    """Small VGG-style CNN: (B, C, H, W) in [0, 255] -> (features (B, feature_dim), logits (B, num_classes))."""

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10, resolution: int = 32):
        super().__init__()
        if resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {resolution}")

        def stage(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(convs):
                layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            return layers + [nn.MaxPool2d(2)]

        self.resolution = resolution
        self.body = nn.Sequential(*stage(1, width, 2), *stage(width, 2 * width, 2), *stage(2 * width, 4 * width, 1),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.25),
                                  nn.Linear(4 * width * 16, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != 1:                                     # grey replicated to RGB -> grey
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2] != self.resolution or x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=[self.resolution, self.resolution], mode="bilinear", align_corners=False)
        h = self.body(x / 127.5 - 1.0)                          # (B, feature_dim)
        return h, self.head(h)                                  # features, logits (B, K)


def load_split(data: str, split: str, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """uint8 images (N, H, W, C), int64 labels (N,) and metadata of DATA/split (a pixel dataset)."""
    ds = load_dataset(os.path.join(data, split))
    arrays = ds.arrays()
    if "images" not in arrays:                              # a latent dataset: the classifier reads pixels
        raise UserError(f"{os.path.join(data, split)} holds no images (a {ds.meta['kind']} dataset), not pixels")
    n = len(ds) if limit is None else min(limit, len(ds))
    return np.array(arrays["images"][:n]), np.array(arrays["labels"][:n]), ds.meta


def _nchw(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W) on `device` (the float conversion happens per batch)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` (eval mode) on uint8 (N, C, H, W) images."""
    model.eval()
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].float())[1]
        correct += (logits.argmax(1) == labels[start:start + batch_size]).sum()
    return correct.item() / len(images)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> None:
    """Set every BatchNorm's running statistics to the exact mean/variance of the final weights' activations
    over `images` (uint8 (N, C, H, W)): eval-mode features then match the trained network even after a short
    run, where the momentum-averaged statistics still carry the early weights' (or the initial) values."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                       # cumulative average over the pass
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size].float())
    for m in norms:
        m.momentum = 0.1
    model.eval()


def save_torchscript(model: nn.Module, path: str) -> None:
    """torch.jit.script of the model (eval mode, CPU), written atomically."""
    with warnings.catch_warnings():                             # TorchScript is the evaluator's documented
        warnings.simplefilter("ignore", FutureWarning)          # interface, deprecation notwithstanding
        scripted = torch.jit.script(model.cpu().eval())
        atomic_write(path, lambda f: torch.jit.save(scripted, f))


def train_classifier(cfg: ClassifierConfig, log: Callable[[str], None] = print) -> dict:
    """Train on DATA/train, report the accuracy on DATA/test, save the TorchScript network to cfg.out
    (`fit_classifier` on the arrays of the two splits)."""
    if not cfg.data:
        raise UserError("pass --data DIR (a folder holding train/ and test/ written by dataset_tools.py fashion-mnist)")
    train_x, train_y, meta = load_split(cfg.data, "train", cfg.max_train_items)
    test_x, test_y, test_meta = load_split(cfg.data, "test")
    if meta["resolution"] != test_meta["resolution"] or meta["num_classes"] != test_meta["num_classes"]:
        raise UserError(f"{cfg.data}: train and test differ in resolution or classes")
    return fit_classifier(cfg, train_x, train_y, test_x, test_y, log)


def fit_classifier(cfg: ClassifierConfig, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, log: Callable[[str], None] = print) -> dict:
    """Train on uint8 images (N, H, W, C) with labels 0..9, report the test accuracy, save to cfg.out.

    Returns dict(test_accuracy, train_accuracy_last_epoch, epochs, train_items, test_items, feature_dim,
    parameters, seconds, device, path)."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError("epochs and batch_size must be >= 1")
    start = time.time()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.max_train_items is not None:
        train_x, train_y = train_x[:cfg.max_train_items], train_y[:cfg.max_train_items]
    resolution, num_classes = train_x.shape[1], 10

    torch.manual_seed(cfg.seed)
    model = FashionClassifier(cfg.width, cfg.feature_dim, num_classes, resolution).to(device)
    xs, ys = _nchw(train_x, device), torch.from_numpy(train_y).to(device)
    xt, yt = _nchw(test_x, device), torch.from_numpy(test_y).to(device)
    steps_per_epoch = math.ceil(len(xs) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                   total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    train_acc = 0.0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(xs), generator=g).to(device)
        flips = (torch.rand(len(xs), generator=g) < 0.5).to(device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = xs[idx].float()                                 # (b, C, H, W) in [0, 255]
            x = torch.where(flips[idx, None, None, None], x.flip(-1), x)
            logits = model(x)[1]
            loss = F.cross_entropy(logits, ys[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == ys[idx]).sum()
        train_acc = correct.item() / len(xs)
        log(f"classifier epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum.item() / len(xs):.4f}, "
            f"train accuracy {train_acc:.4f} ({time.time() - start:.1f} s)")
    recalibrate_batchnorm(model, xs[:10_000])
    test_acc = accuracy(model, xt, yt)
    save_torchscript(model, cfg.out)
    result = dict(test_accuracy=test_acc, train_accuracy_last_epoch=train_acc, epochs=cfg.epochs,
                  train_items=len(xs), test_items=len(xt), feature_dim=cfg.feature_dim, width=cfg.width,
                  parameters=sum(p.numel() for p in model.parameters()), seconds=round(time.time() - start, 2),
                  device=str(device), path=os.path.abspath(cfg.out))
    log(f"classifier test accuracy {test_acc:.4f} on {len(xt)} test images; saved {cfg.out}")
    return result
