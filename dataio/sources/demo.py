"""Demo data: ten classes of coloured shapes and textures, drawn from a seed (no download).

    python dataset_tools.py demo --dest data/demo          # -> a pixel dataset, seconds
"""

from __future__ import annotations

import time

import numpy as np

from dataio.options import DemoConfig
from dataio.writers import write_pixel_dataset
from utils.errors import UserError

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



def demo(cfg: DemoConfig) -> None:
    """`dataset_tools.py demo`: write the demo pixel dataset of `cfg` (a no-op when it is there already)."""
    start = time.time()
    recipe = dict(command="demo", num_images=cfg.num_images, resolution=cfg.resolution, seed=cfg.seed)
    wrote = write_pixel_dataset(cfg.dest, lambda: make_demo_images(cfg.num_images, cfg.resolution, cfg.seed)[:2],
                                [name for name, _ in DEMO_CLASSES], recipe, "dataset_tools.py demo", seed=cfg.seed)
    if not wrote:
        print(f"{cfg.dest} already holds this dataset; nothing to do")
        return
    print(f"wrote {cfg.num_images} demo images ({cfg.resolution}x{cfg.resolution}x3, {len(DEMO_CLASSES)} classes) "
          f"to {cfg.dest} in {time.time() - start:.1f} s")
