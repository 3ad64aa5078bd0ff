"""Figures: atomic PNG saving and a labelled image grid (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from utils.atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (an optional, heavy dependency)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def savefig(fig, path: str) -> None:
    """Write `fig` as a PNG atomically (temp file + rename), then close it."""
    plt = pyplot()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_grid(rows: list[np.ndarray], row_labels: list[str], path: str, col_labels: Optional[list[str]] = None) -> str:
    """A labelled image grid: rows[r] is uint8 (columns, n, H, W, 3) -> one panel of n images per column."""
    plt = pyplot()
    cols = rows[0].shape[0]
    n, h, w = rows[0].shape[1:4]
    aspect = n * w / h
    fig, axes = plt.subplots(len(rows), cols, squeeze=False,
                             figsize=(cols * min(2.0 * aspect, 10), len(rows) * 2.0 + 0.5))
    for r, (panels, label) in enumerate(zip(rows, row_labels)):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(np.concatenate(list(panels[c]), axis=1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
            if r == 0 and col_labels:
                ax.set_title(col_labels[c], fontsize=10)
    savefig(fig, path)
    return path
