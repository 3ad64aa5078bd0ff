"""A tiny CNN that checks class-conditional samples: trained in seconds on a dataset's real images, it reports how
often a sample is classified as the class it was drawn for ("class agreement"), beside chance (1 / classes).

    clf = fit_classifier(images, labels, num_classes)     # uint8 (N, H, W, C), int64 (N,); CPU seconds
    agreement(clf, samples, sample_labels)                 # fraction in [0, 1]

Meant for small, easy label sets (the CPU demo's coloured shapes), where a person and this network agree on
what a real image shows; it is no substitute for FID on real data. Like the rest of `evaluation/` it depends
only on torch and numpy. Deterministic for a given seed on one machine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyClassifier(nn.Module):
    """Inputs average-pooled to at most 16x16, three 3x3 conv layers (8, 16, 16 channels), two 2x max-pools, global
    average pool, linear: ~4k weights, so training costs CPU seconds."""

    SIDE = 16                                          # the input side the convolutions see (at most)

    def __init__(self, channels: int, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> logits (B, num_classes)."""
        if x.shape[-1] > self.SIDE:
            x = F.adaptive_avg_pool2d(x, self.SIDE)                                   # (B, C, 16, 16)
        return self.head(self.features(x).mean((2, 3)))


def _inputs(images) -> torch.Tensor:
    """uint8 (N, H, W, C) (numpy or torch) -> float (N, C, H, W) in [-1, 1] on the CPU."""
    x = torch.as_tensor(np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def fit_classifier(images, labels, num_classes: int, *, steps: int = 200, batch_size: int = 32,
                   lr: float = 3e-3, seed: int = 0) -> TinyClassifier:
    """Train a TinyClassifier on uint8 images (N, H, W, C) and labels (N,) with Adam, `steps` batches.

    Each batch is jittered (a random shift of up to 2 pixels of the input, Gaussian pixel noise of std 0.1) so that the
    network keys on colour and shape rather than exact pixels, and judges imperfect samples as a person would.
    """
    g = torch.Generator().manual_seed(seed)
    x, y = _inputs(images), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # ops this small gain nothing from threads, and lose much on a busy machine
    try:
        with torch.random.fork_rng(devices=[]):             # the caller's global RNG stream is left untouched
            torch.manual_seed(seed)
            clf = TinyClassifier(x.shape[1], num_classes)
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        with torch.enable_grad():                           # callers may sit in no_grad (the sample grids do)
            for _ in range(steps):
                idx = torch.randint(len(x), (batch_size,), generator=g)
                dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
                xb = torch.roll(x[idx], (dy, dx), (2, 3)) + 0.1 * torch.randn(x[idx].shape, generator=g)
                loss = F.cross_entropy(clf(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return clf.eval()


@torch.no_grad()
def predict(clf: TinyClassifier, images, batch_size: int = 512) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> predicted labels (N,) int64."""
    x = _inputs(images)
    return torch.cat([clf(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def agreement(clf: TinyClassifier, images, labels) -> float:
    """The fraction of `images` that `clf` assigns to their `labels` (accuracy on real images, agreement on samples)."""
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels), dtype=torch.long)
    return float((predict(clf, images) == y).float().mean())
