"""Demo data: six classes, each one solid colour and one simple shape, drawn from a seed (no download).

    python dataset_tools.py demo --dest data/demo          # -> a pixel dataset, seconds

The classes are meant to be told apart at a glance at 32x32 (and at 16x16): colour alone separates them, and so
does shape alone, so a tiny model trained for a few CPU minutes makes samples a person can name, and a tiny
classifier (evaluation/classifier.py) trained on these images can check that it does.
"""

from __future__ import annotations

import time

import numpy as np

from dataio.options import DemoConfig
from dataio.writers import write_pixel_dataset
from utils.errors import UserError

DEMO_CLASSES = [  # (name, RGB in [0, 1]): every class has its own colour and its own shape
    ("red-disc", (0.95, 0.15, 0.10)),
    ("green-square", (0.10, 0.85, 0.20)),
    ("blue-horizontal-bar", (0.20, 0.35, 1.00)),
    ("yellow-vertical-bar", (1.00, 0.90, 0.10)),
    ("magenta-cross", (0.95, 0.15, 0.90)),
    ("cyan-ring", (0.10, 0.90, 0.95)),
]
BACKGROUND = 0.12                                   # plain dark grey, jittered a little per image


def _box(u, v, half_u, half_v):
    """Signed distance to an axis-aligned box centred at 0 (Quilez's formula)."""
    du, dv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
    return outside + np.minimum(np.maximum(du, dv), 0)


def _demo_sdf(k: int, u, v, r):
    """Class k's shape as a signed distance (negative inside) at centred coordinates (u, v); r: its half size."""
    if k == 0:
        return np.hypot(u, v) - r
    if k == 1:
        return _box(u, v, 0.85 * r, 0.85 * r)
    if k == 2:
        return _box(u, v, r, 0.4 * r)
    if k == 3:
        return _box(u, v, 0.4 * r, r)
    if k == 4:
        return np.minimum(_box(u, v, r, 0.28 * r), _box(u, v, 0.28 * r, r))
    if k == 5:
        return np.abs(np.hypot(u, v) - 0.72 * r) - 0.28 * r
    raise ValueError(k)


def make_demo_images(num_images: int, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Deterministic class-conditional toy images: (uint8 (N, R, R, 3), int64 labels (N,), class names).

    Each image is one large shape of its class (half size 0.5-0.65 of the half image, centre jittered by
    +-0.15) in its class's colour (+-0.03) on a plain dark background. Labels are balanced and shuffled. Drawn
    with numpy's PCG64 from `seed`: same seed, same bytes.
    """
    if num_images <= 0 or resolution < 8:
        raise UserError(f"demo needs num_images >= 1 and resolution >= 8, got {num_images}, {resolution}")
    rng = np.random.Generator(np.random.PCG64(seed))
    n, k = num_images, len(DEMO_CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    cx, cy = rng.uniform(-0.15, 0.15, n), rng.uniform(-0.15, 0.15, n)
    r = rng.uniform(0.5, 0.65, n)
    base = np.array([c for _, c in DEMO_CLASSES], dtype=np.float64)
    colour = np.clip(base[labels] + rng.uniform(-0.03, 0.03, (n, 3)), 0, 1)
    background = BACKGROUND + rng.uniform(-0.02, 0.02, (n, 1))
    grid = (np.arange(resolution) + 0.5) / resolution * 2 - 1    # pixel centres in [-1, 1]
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    chunk = max(1, 2 ** 22 // resolution ** 2)                 # bounded memory at large resolutions
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        col = lambda a: a[sl, None, None]                   # noqa: E731  (b,) -> (b, 1, 1)
        u, v = grid[None, None, :] - col(cx), grid[None, :, None] - col(cy)            # (b, 1, R), (b, R, 1)
        u, v = np.broadcast_arrays(u, v)                                                # (b, R, R) each
        mask = np.zeros(u.shape)
        for c in range(k):                                  # a loop over classes, not images
            m = labels[sl] == c
            if m.any():
                sdf = _demo_sdf(c, u[m], v[m], col(r)[m])
                mask[m] = np.clip(0.5 - sdf * resolution / 2, 0, 1)       # 1-pixel anti-aliased edge
        img = background[sl, None, None] * (1 - mask[..., None]) + colour[sl, None, None] * mask[..., None]
        images[sl] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, labels, [name for name, _ in DEMO_CLASSES]


def demo(cfg: DemoConfig) -> None:
    """`dataset_tools.py demo`: write the demo pixel dataset of `cfg` (a no-op when it is there already)."""
    start = time.time()
    recipe = dict(command="demo", num_images=cfg.num_images, resolution=cfg.resolution, seed=cfg.seed,
                  classes=[name for name, _ in DEMO_CLASSES])   # a folder of the old ten classes is not reused
    wrote = write_pixel_dataset(cfg.dest, lambda: make_demo_images(cfg.num_images, cfg.resolution, cfg.seed)[:2],
                                [name for name, _ in DEMO_CLASSES], recipe, "dataset_tools.py demo", seed=cfg.seed)
    if not wrote:
        print(f"{cfg.dest} already holds this dataset; nothing to do")
        return
    print(f"wrote {cfg.num_images} demo images ({cfg.resolution}x{cfg.resolution}x3, {len(DEMO_CLASSES)} classes) "
          f"to {cfg.dest} in {time.time() - start:.1f} s")
