"""Throughput of `dataset_tools.py encode`: PNG decode + SD-VAE encoder, the real command's code path.

    python benchmarks/encode_throughput.py --images 4096 --precision bf16 fp32 --batch-size 128   # + bf16 NCHW

A random-init `AutoencoderKL` of the SD-VAE architecture (stabilityai/sd-vae-ft-ema's config; speed does not
depend on the weights) is saved to a temporary folder, and a `convert`-format folder of smooth random
256 x 256 PNGs is written (decoded again by the encode workers, as with real data). Then `encode` runs once
per precision; img/s = images / wall time of the whole call (VAE load, worker start-up and the final rename
included). Prints one JSON line per precision.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataio.format import begin_dataset, finish_dataset  # noqa: E402
from dataio.options import EncodeConfig  # noqa: E402
from dataio.sources.encode import encode  # noqa: E402

# stabilityai/sd-vae-ft-ema's config.json (architecture only).
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
TINY_VAE = dict(SD_VAE, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=8, sample_size=32)


def make_vae(folder: str, tiny: bool) -> str:
    from diffusers import AutoencoderKL          # heavy, optional third-party package
    torch.manual_seed(0)
    AutoencoderKL(**(TINY_VAE if tiny else SD_VAE)).save_pretrained(folder)
    return folder


def _png(args):
    folder, i, side = args
    rng = np.random.default_rng(i)
    low = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((side, side), Image.BILINEAR)
    img = np.clip(np.asarray(low).astype(np.int16) + rng.integers(-6, 7, (side, side, 3)), 0, 255).astype(np.uint8)
    name = f"img{i:07d}.png"
    Image.fromarray(img).save(os.path.join(folder, name))
    return name


def make_source(dest: str, n: int, side: int, workers: int) -> str:
    """A folder as `convert` writes it: n PNGs of side x side, 10 classes, dataset.json."""
    recipe = dict(command="bench-source", count=n, side=side)
    tmp = begin_dataset(dest, recipe)
    with multiprocessing.Pool(workers) as pool:
        names = pool.map(_png, [(tmp, i, side) for i in range(n)], chunksize=64)
    meta = dict(kind="images", count=n, num_classes=10, class_names=[str(c) for c in range(10)],
                resolution=[side, side], channels=3, labels=[[name, i % 10] for i, name in enumerate(names)],
                created_by="benchmarks/encode_throughput.py")
    finish_dataset(tmp, dest, meta, recipe)
    return dest


def main(args) -> None:
    root = tempfile.mkdtemp(prefix="bench-encode-")
    workers = args.num_workers if args.num_workers is not None else min(16, os.cpu_count() or 1)
    t0 = time.time()
    vae = make_vae(os.path.join(root, "vae"), args.tiny)
    src = make_source(os.path.join(root, "src"), args.images, args.resolution, max(workers, 1))
    print(f"made the VAE and {args.images} PNGs in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = [(p, True) for p in args.precision] + [(p, False) for p in args.contiguous_too]
    for precision, channels_last in runs:
        dest = os.path.join(root, f"lat-{precision}-{channels_last}")
        cfg = EncodeConfig(source=src, dest=dest, vae=vae, batch_size=args.batch_size, device=device,
                           precision=precision, num_workers=workers, channels_last=channels_last)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        encode(cfg)
        sec = time.time() - t0
        print(json.dumps(dict(kind="encode", images=args.images, resolution=args.resolution, precision=precision,
                              channels_last=channels_last and device == "cuda",
                              batch_size=args.batch_size, num_workers=workers, seconds=round(sec, 2),
                              img_per_s=round(args.images / sec, 1), vae="tiny" if args.tiny else "SD-VAE (random)",
                              peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                              device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                              torch=torch.__version__)), flush=True)
        shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--contiguous-too", nargs="*", default=["bf16"], choices=["bf16", "fp32"],
                   help="also run these precisions with the VAE in the default (NCHW) layout")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=None, help="PNG-decoding workers (default: CPU cores, <= 16)")
    p.add_argument("--tiny", action="store_true", help="a tiny VAE (smoke test of the harness)")
    main(p.parse_args())
