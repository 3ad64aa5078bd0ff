"""The study's figures, drawn from results.json (and, for the grids, the final samples): curves.png (learning
curves against training FLOPs), quality_vs_gflops.png (the final rows against inference cost) and grids.png
(samples per configuration, two per class, the same noise in every row)."""

from __future__ import annotations

import numpy as np

from dataio.sources.fashion_mnist import FASHION_MNIST_CLASSES
from studies.fmnist.options import MODELS
from studies.fmnist.rows import fraction
from utils.plots import plot_grid, pyplot, savefig

COLOURS = {"sit": "tab:red", "elit_single": "tab:green", "elit_multi": "tab:blue"}


def plot_curves(results: dict, path: str) -> None:
    """FD, accuracy and held-out loss of every model against training PFLOPs (curve points at curve_samples,
    the last, larger marker, at num_samples); FD panel: the real-image floor of two disjoint subsets."""
    plt = pyplot()
    curves = results.get("curves", {})
    if not any(curves.values()):
        raise RuntimeError("no curve points")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    small = {"fd": "fd_small", "accuracy": "accuracy_small", "heldout_loss": "heldout_loss"}
    for ax, (key, label) in zip(axes, (("fd", "Frechet distance (classifier features) ↓"),
                                       ("accuracy", "classifier accuracy of samples ↑"),
                                       ("heldout_loss", "held-out flow-matching loss ↓"))):
        for model, curve in curves.items():
            line = small[key] if all(p.get(small[key]) is not None for p in curve) else key
            pts = [p for p in curve if p.get(line) is not None]
            if not pts:
                continue
            x = [p["training_gflops"] / 1e6 for p in pts]
            ax.plot(x, [p[line] for p in pts], "o-", color=COLOURS.get(model), label=MODELS[model]["label"])
            if pts[-1].get("final") and pts[-1].get(key) is not None:
                ax.plot(x[-1], pts[-1][key], "o", color=COLOURS.get(model), markersize=10, alpha=0.6)
        if key == "fd":
            for i, (n, f) in enumerate(sorted(results.get("reference", {}).get("floor", {}).items(),
                                              key=lambda kv: int(kv[0]))):
                lo, hi = sorted((f["fd_a"], f["fd_b"]))
                ax.axhspan(lo, max(hi, lo * 1.02), color="grey", alpha=0.25 + 0.15 * i)
                ax.axhline(f["fd_a"], color="grey", linestyle=":" if i else "--", linewidth=1,
                           label=f"real images, n={n} (two subsets: {f['fd_a']:.2f} / {f['fd_b']:.2f})")
            ax.set_yscale("log")
        ax.set(xlabel="training PFLOPs (3 x forward x batch, summed over steps)", ylabel=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    plan = results.get("training", {}).get("plan", {})
    fig.suptitle(f"Learning curves on Fashion-MNIST 32x32 ({plan.get('steps', '?')} steps each, same data, batch "
                 f"and seed; {results.get('device_name')}); lines: curve sample size; large markers: final point at full size")
    fig.tight_layout()
    savefig(fig, path)


def plot_quality(results: dict, path: str) -> None:
    """FD and accuracy vs GFLOPs per image, and FD vs latency: multibudget budgets as a curve, the other models
    as points, guidance rows (per guided step) as squares; dotted: real images at the final sample size."""
    plt = pyplot()
    rows = results["rows"]
    floor = results.get("reference", {}).get("floor", {})
    n = str(results.get("settings", {}).get("num_samples_used", ""))
    panels = [("gflops", "fd", "GFLOPs per image (forward; guided step for guidance)", "Frechet distance ↓"),
              ("gflops", "accuracy", "GFLOPs per image", "classifier accuracy ↑"),
              ("latency_ms_per_image", "fd", "latency, ms per image (batch forward / guided step)", "Frechet distance ↓")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    markers = dict(cfg="s", cheap_cfg="D", autoguidance="^")
    for ax, (xk, yk, xl, yl) in zip(axes, panels):
        ok = [r for r in rows if r.get(xk) is not None and r.get(yk) is not None]
        budgets = sorted([r for r in ok if r["model"] == "elit_multi" and r["guidance"] is None], key=lambda r: r[xk])
        if budgets:
            ax.plot([r[xk] for r in budgets], [r[yk] for r in budgets], "o-", color=COLOURS["elit_multi"],
                    label=MODELS["elit_multi"]["label"] + " (one model, budgets)")
            for r in budgets:
                ax.annotate(f"b={fraction(r['budget'])}", (r[xk], r[yk]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        for r in ok:
            if r["model"] != "elit_multi" and r["guidance"] is None:
                ax.plot(r[xk], r[yk], "*", color=COLOURS[r["model"]], markersize=14, label=r["label"])
            elif r["guidance"] is not None:
                ax.plot(r[xk], r[yk], markers[r["guidance"]], color=COLOURS[r["model"]], markersize=8,
                        markerfacecolor="none" if r["model"] == "elit_single" else None, label=r["label"])
        key = {"fd": "fd_a", "accuracy": "accuracy_a"}[yk]
        if floor.get(n, {}).get(key) is not None:
            ax.axhline(floor[n][key], color="grey", linestyle=":", label=f"real images (n={n})")
        if yk == "fd":
            ax.set_yscale("log")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(f"Fashion-MNIST 32x32: final quality vs inference compute ({results.get('device_name')})")
    fig.tight_layout()
    savefig(fig, path)


def class_panel(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """20 uint8 images (H, W, 3) with labels 0..9, 0..9 -> one (2H + pad, 10W + 9 pad, 3) panel, white gaps."""
    n, h, w, c = images.shape
    panel = np.full((2 * h + pad, 10 * w + 9 * pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images[:20]):
        r, col = divmod(i, 10)
        panel[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = img
    return panel


def plot_grids(results: dict, samples: dict, real: np.ndarray, path: str) -> None:
    """One labelled row per configuration with >= 20 samples (image i: label i % 10), real test images first."""
    panels, labels = [class_panel(real)], ["real (test)"]
    for r in results["rows"]:
        images = samples.get(r["key"])
        if images is not None and len(images) >= 20:
            panels.append(class_panel(images[:20]))
            labels.append(r["label"])
    if len(panels) == 1:
        raise RuntimeError("no samples to show")
    plot_grid([p[None, None] for p in panels], labels, path,
              col_labels=["columns: " + ", ".join(FASHION_MNIST_CLASSES)])
