"""Training throughput of the real train.py step (training.Trainer.train_step), data loading excluded.

    python benchmarks/train_throughput.py --model SiT-XL/2 --batch 64                      # one GPU
    python benchmarks/train_throughput.py --model ELIT-SiT-XL/2 --multibudget
    python benchmarks/train_throughput.py --model SiT-S/2 --pixels 1 --resolution 32 --batch 256   # the study's
    python benchmarks/train_throughput.py --model ELIT-SiT-XL/2 --multibudget -- --compile-dynamic --compile-cache DIR
    torchrun --nproc_per_node 2 benchmarks/train_throughput.py --model SiT-XL/2            # DDP, batch per GPU
    python benchmarks/train_throughput.py --model SiT-XL/2 --batch 64 --gradient-checkpointing  # recompute blocks

Each process gets `--batch` images per step from pre-made device tensors (synthetic latents: shapes and the
step are the real ones, the data pipeline is not timed). Warm-up runs until every budget level (ELIT) or
stage (DFM) has been trained at least twice, so no compilation or allocation falls in the timed steps; the
timed steps then draw budgets as training does. Prints one JSON line per run (and appends it to --json).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dataio.codec import SD_VAE_FACTOR  # noqa: E402
from training import Trainer  # noqa: E402
from training.options import TrainConfig  # noqa: E402
from utils.cli import parse_config  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class SyntheticLatents:
    """Stands in for a latent dataset (or, with `pixels` = C channels, a pixel dataset of 10 classes): metadata
    only (batches are made on the device)."""

    def __init__(self, resolution: int, count: int = 1_000_000, pixels: int = 0):
        if pixels:
            self.meta = dict(kind="pixels", count=count, num_classes=10, resolution=[resolution, resolution],
                             channels=pixels)
        else:
            self.meta = dict(kind="latents", count=count, num_classes=1000, image_resolution=[resolution, resolution],
                             latent_shape=[4, resolution // SD_VAE_FACTOR, resolution // SD_VAE_FACTOR], latent_scale=1.0, latent_shift=0.0,
                             vae="none")

    def __len__(self):
        return self.meta["count"]

    def __getitem__(self, i):
        raise RuntimeError("benchmark batches are made on the device")


def run(args) -> dict:
    start = time.time()
    out = tempfile.mkdtemp(prefix="bench-")
    flags = ["--model", args.model, "--global-batch-size", str(args.batch * int(os.environ.get("WORLD_SIZE", 1))),
             "--output-dir", out, "--exp-name", "bench", "--report-to", "none", "--no-progress",
             "--resolution", str(args.resolution), "--num-workers", "0",
             "--compile" if args.compile else "--no-compile"]
    if args.gradient_checkpointing:
        flags += ["--gradient-checkpointing"]
    if args.multibudget:                        # every level: mask probabilities 0 .. 1 - 1/K (the default max)
        flags += ["--elit-min-mask-prob", "0"]
    cfg = parse_config(TrainConfig, flags + args.extra)
    kwargs = json.loads(args.model_kwargs) if getattr(args, "model_kwargs", "") else None
    trainer = Trainer(cfg, dataset=SyntheticLatents(args.resolution, pixels=getattr(args, "pixels", 0)),
                      model_kwargs=kwargs)
    build = time.time() - start
    levels = len(trainer.model.budget_levels)
    dev, shape, classes = trainer.device, trainer.codec.model_shape(), trainer.meta["num_classes"]
    g = torch.Generator(device=dev).manual_seed(trainer.rank)
    batches = [[dict(x=torch.randn(trainer.micro, *shape, device=dev, generator=g),
                     std=torch.rand(trainer.micro, *shape, device=dev, generator=g) * 0.1,
                     y=torch.randint(0, classes, (trainer.micro,), device=dev, generator=g))
                for _ in range(cfg.gradient_accumulation_steps)] for _ in range(4)]

    # Warm-up: until every condition (budget level / stage) has been trained twice.
    t0, seen = time.time(), {}
    last_note = t0
    while True:
        cond = json.dumps(trainer.step_condition())
        trainer.train_step(batches[trainer.step % 4])
        seen[cond] = seen.get(cond, 0) + 1
        if time.time() - last_note >= 10:                   # the log says how far a stopped run got
            print(f"warm-up: {time.time() - t0:.0f} s, {sum(seen.values())} steps, {len(seen)}/{levels or 1} "
                  f"conditions seen", file=sys.stderr, flush=True)
            last_note = time.time()
        if (trainer.step >= max(3, getattr(args, "min_warmup_steps", 3)) and min(seen.values()) >= 2
                and (not args.multibudget or len(seen) == levels)):
            break
    sync()
    warmup = time.time() - t0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    conds = []
    t0 = time.time()
    for i in range(args.steps):
        conds.append(trainer.step_condition())
        trainer.train_step(batches[i % 4])
    sync()
    elapsed = time.time() - t0
    world = trainer.world
    result = dict(model=args.model, resolution=args.resolution, batch_per_gpu=args.batch, gpus=world,
                  multibudget=bool(args.multibudget), compile=args.compile,
                  gradient_checkpointing=bool(args.gradient_checkpointing), steps=args.steps,
                  img_per_s=round(args.batch * world * args.steps / elapsed, 1),
                  step_ms=round(1000 * elapsed / args.steps, 2), warmup_s=round(warmup, 1), build_s=round(build, 1),
                  warmup_steps=sum(seen.values()), extra=" ".join(args.extra),
                  peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                  conditions_timed=len({json.dumps(c) for c in conds}),
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch=torch.__version__)
    if trainer.is_main:
        print(json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SiT-XL/2")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=64, help="images per GPU per step")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--multibudget", action="store_true",
                   help="models with budget levels: draw every level (else the full budget)")
    p.add_argument("--min-warmup-steps", type=int, default=3, help="at least this many warm-up steps (CUDA graphs: "
                   "recorded on a later call than the first)")
    p.add_argument("--pixels", type=int, default=0, help="synthetic pixel data of this many channels (0: latents)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass (train.py's option)")
    p.add_argument("--model-kwargs", default="", help="JSON overrides of the registry size (smoke tests)")
    p.add_argument("--json", help="append the result to this JSON-lines file")
    p.add_argument("extra", nargs="*", help="extra train.py flags after --, e.g. -- --gradient-accumulation-steps 2")
    run(p.parse_args())
