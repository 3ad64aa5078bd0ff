"""Sampling as a library: per-image seeded inputs -> samples -> uint8 images, and generate.py's driver.

Reproducibility. Image i has its own CPU generator seeded with `seed + i`, which draws, in this order, its
noise (one tensor per `model.noise_shapes()` entry: DFM one per pyramid stage, coarsest first), its label
(uniform over the first `num_classes` classes) and, for the SDE, its per-step noise. With balanced labels
(`--labels balanced`) image i's class is i mod num_classes instead; the label is still drawn (and
discarded), so the noise of image i is the same under both modes. Global batch j always
holds images [j*b, (j+1)*b) (b = per_proc_batch_size; the last one is padded with images N.. and cut), and
rank r takes the batches j with j % world_size == r. The tensors a forward sees therefore never depend on the
number of processes, on which process runs a batch, or on resuming: the .npz is byte-identical for 1 and N
processes (on the same hardware and software).

`generate_images` is the iterator that the driver (`run_generation`), the multibudget script and the study
share (EDM2's generate_images pattern): it yields the uint8 images of one batch of indices at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from models.graphs import fast_inference
from sampling.distributed import dist_env, init_distributed
from sampling.load import Decoder, load_for_sampling
from sampling.options import GenerateConfig
from sampling.plan import SamplingPlan, resolve_generation
from sampling.shards import Batches, read_npz_shape
from utils.atomic import folder_lock, remove_stale_temps, writable_dir, write_json
from utils.cli import reference_expectations, to_dict
from utils.device import allow_tf32, pick_device, use_attention_backend
from utils.errors import UserError

SETTINGS_FILE = "generation.json"


# ----------------------------------------------------------------------------------------------------------
# The core.

def draw_inputs(model, indices: Sequence[int], seed: int, num_classes: int, sde_steps: int = 0):
    """Image i's generator (CPU, seed + i) draws its noise, then its label, then its SDE noise.

    Returns (noise: list of (n, ...) tensors, one per stage; labels (n,) int64; sde_noise (n, sde_steps, C, H,
    W) or None), all on the CPU.
    """
    shapes = model.noise_shapes()
    noise, labels, sde = [[] for _ in shapes], [], []
    for i in indices:
        g = torch.Generator().manual_seed(int(seed) + int(i))
        for store, shape in zip(noise, shapes):
            store.append(torch.randn(shape, generator=g))
        labels.append(torch.randint(num_classes, (), generator=g))
        if sde_steps:
            sde.append(torch.randn(sde_steps, *shapes[-1], generator=g))
    return [torch.stack(n) for n in noise], torch.stack(labels), torch.stack(sde) if sde_steps else None


def run_sampler(model, plan: SamplingPlan, noise: list, labels: torch.Tensor, sde_noise=None) -> torch.Tensor:
    """One call of the plan's sampler on inputs already on the model's device -> (n, C, H, W) float32."""
    return plan.sampler.run(model, plan, noise, labels, sde_noise, plan.autocast_dtype(labels.device))


def prepare_model(model, plan: SamplingPlan):
    """precision 'bf16fast' (CUDA): bf16 weights, compiled blocks and CUDA-graph replay (models/graphs.py)."""
    return fast_inference(model) if plan.precision == "bf16fast" else model


def balanced_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class-balanced labels: image i gets class i mod num_classes, (n,) int64 (a function of the index only)."""
    return torch.as_tensor(list(indices), dtype=torch.long) % num_classes


def sample_latents(model, plan: SamplingPlan, indices: Sequence[int], *, seed: int, num_classes: Optional[int] = None,
                   labels: Optional[torch.Tensor] = None, device=None, balanced: bool = False) -> torch.Tensor:
    """Samples of images `indices` (model space: latents or pixels), (n, C, H, W) float32 on `device`.

    Labels are drawn from the first `num_classes` classes (default all), or with `balanced` are i mod
    num_classes; `labels` ((n,) or one label for all) replaces them. Labels are drawn in every case, so the
    noise stream stays the same.
    """
    device = torch.device(device if device is not None else "cpu")
    noise, drawn, sde_noise = draw_inputs(model, indices, seed, num_classes or model.num_classes,
                                          plan.steps.sde_steps)
    if balanced and labels is None:
        drawn = balanced_labels(indices, num_classes or model.num_classes)
    y = drawn if labels is None else torch.as_tensor(labels, dtype=torch.long).expand(len(indices))
    return run_sampler(model, plan, [n.to(device) for n in noise], y.to(device),
                       None if sde_noise is None else sde_noise.to(device))


def generate_images(model, plan: SamplingPlan, batches: Iterable[Sequence[int]], *, seed: int,
                    decode: Callable[[torch.Tensor], np.ndarray], num_classes: Optional[int] = None,
                    labels: Optional[torch.Tensor] = None, device=None, balanced: bool = False) -> Iterator[np.ndarray]:
    """For every batch of image indices, its images as uint8 (n, H, W, 3) numpy (`decode`: a sampling.load
    Decoder). `labels`: None (drawn, or i mod num_classes with `balanced`), one label for every image, or a
    tensor indexed by image index."""
    for indices in batches:
        y = labels
        if labels is not None and torch.as_tensor(labels).ndim:
            y = torch.as_tensor(labels)[torch.as_tensor(list(indices))]
        yield decode(sample_latents(model, plan, indices, seed=seed, num_classes=num_classes, labels=y,
                                    device=device, balanced=balanced))


# ----------------------------------------------------------------------------------------------------------
# generate.py's driver: resumable, distributed.

def check_settings(path: str, settings: dict) -> None:
    """UserError unless the generation.json at `path` holds `settings` (naming the first key that differs)."""
    try:
        with open(path) as f:
            saved = json.load(f).get("settings")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"cannot read {path}; remove the folder or choose another --sample-dir") from None
    if saved != settings:
        diff = [k for k in sorted(set(saved or {}) | set(settings)) if (saved or {}).get(k) != settings.get(k)]
        k = diff[0] if diff else "?"
        raise UserError(f"{os.path.dirname(path)} holds samples of other settings ({k}: saved "
                        f"{(saved or {}).get(k)!r}, now {settings.get(k)!r}); remove it or choose another --sample-dir")


def run_generation(cfg: GenerateConfig, max_batches: Optional[int] = None) -> Optional[str]:
    """Generate (or finish) the samples of `cfg` on this process's share of the batches.

    Output: `sample_dir/NAME/` (NAME: `GenerationPlan.folder_name`) with generation.json (settings, config,
    checkpoint), optional PNGs and per-batch shards; at the end `sample_dir/NAME.npz` (arr_0 uint8 (N, H, W, 3)
    in index order). Rerunning skips finished batches and never rewrites them; a finished .npz is never
    rewritten; a folder of other settings is refused. A second run into the same folder while one is writing
    it is refused (`NAME.lock`; the lock of a dead run is taken over), and Ctrl-C is one line saying how to
    resume. Returns the .npz path (on every rank), or None when `max_batches` (per process) stopped it early.
    Rank 0 prints progress and, last, the .npz path.
    """
    progress = dict(folder=cfg.sample_dir, done=0, total=0)
    try:
        return _run_generation(cfg, max_batches, progress)
    except KeyboardInterrupt:
        raise UserError(f"interrupted: {progress['done']} of this process's {progress['total']} batches are saved "
                        f"in {progress['folder']}; rerun the same command to resume") from None


def _agree(env, device, ok: bool) -> bool:
    """True on every rank iff `ok` on every rank (one all-reduce; no process group: `ok`)."""
    if not env.initialized:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _run_generation(cfg: GenerateConfig, max_batches: Optional[int], progress: dict) -> Optional[str]:
    env = dist_env()
    main_proc = env.rank == 0
    say = (lambda message: print(message, flush=True)) if main_proc else (lambda message: None)
    note = (lambda message: print(f"note: {message}", file=sys.stderr, flush=True)) if main_proc else (lambda m: None)
    if not cfg.ckpt:
        raise UserError("pass --ckpt (a checkpoint written by train.py or models.convert)")
    if cfg.num_samples < 1 or cfg.per_proc_batch_size < 1:
        raise UserError("num_samples and per_proc_batch_size must be >= 1")
    writable_dir(cfg.sample_dir, "sample folder")                     # a file or read-only: refused now
    device = pick_device(cfg.device, env.local_rank)
    allow_tf32(device)
    use_attention_backend(cfg.attention_backend)

    ck = load_for_sampling(cfg.ckpt, cfg.weights, device, expected=reference_expectations(cfg))
    decoder = Decoder(ck.dataset_meta, cfg.vae)
    gen = resolve_generation(cfg, ck, decoder, device, warn=note)
    folder = os.path.join(cfg.sample_dir, gen.folder_name)
    progress["folder"] = folder
    npz_path = folder + ".npz"
    settings = gen.settings()
    settings_path = os.path.join(folder, SETTINGS_FILE)
    if os.path.isfile(settings_path):
        check_settings(settings_path, settings)

    def complete() -> bool:
        if not os.path.exists(npz_path):
            return False
        found = read_npz_shape(npz_path)
        if found is None or found[1] != np.uint8 or found[0][0] != cfg.num_samples or len(found[0]) != 4:
            raise UserError(f"{npz_path} exists but is not a complete sample batch of {cfg.num_samples} images "
                            f"({found}); move it away to regenerate")
        say(f"{npz_path} is complete: nothing to do")
        say(os.path.abspath(npz_path))
        return True

    if complete():
        return npz_path
    decoder.load(ck.model, device)
    model = prepare_model(ck.model, gen.sampling)
    init_distributed(env, device)
    with contextlib.ExitStack() as stack:
        stack.callback(env.close)
        refused = None
        if main_proc:                                                   # one run per folder at a time
            try:
                took_over = stack.enter_context(folder_lock(folder + ".lock", folder))
                if took_over:
                    note(took_over)
            except UserError as e:
                refused = e
        if not _agree(env, device, refused is None):
            raise refused or UserError("another run holds the folder's lock")
        if complete():                                                  # finished while this run loaded
            return npz_path
        batches = Batches(folder, cfg.num_samples, cfg.per_proc_batch_size)
        if main_proc:
            os.makedirs(batches.shard_dir, exist_ok=True)
            for stale in (cfg.sample_dir, folder, batches.shard_dir):    # partial files of a killed run
                remove_stale_temps(stale)
            if not os.path.isfile(settings_path):
                write_json(settings_path, dict(settings=settings, checkpoint=ck.path, config=to_dict(cfg),
                                              created_by="generate.py"), indent=2)
        env.barrier(device)
        os.makedirs(batches.shard_dir, exist_ok=True)
        mine = list(range(env.rank, batches.count, env.world))
        todo = [j for j in mine if not batches.recover(j, cfg.write_png)]
        say(f"{gen.model} ({ck.path}, step {ck.step}): {cfg.num_samples} images in {batches.count} "
            f"batches of {batches.b} on {env.world} process(es), {device.type}, {gen.sampling.precision} -> {folder}")
        if len(todo) < len(mine):
            say(f"resuming: {len(mine) - len(todo)} of this process's {len(mine)} batches are done")
        done = len(mine) - len(todo)
        progress.update(done=done, total=len(mine))
        stopped = max_batches is not None and max_batches < len(todo)      # a partial run, resumed later
        todo = todo[:max_batches] if stopped else todo
        images = generate_images(model, gen.sampling, (batches.indices(j) for j in todo), seed=gen.seed,
                                 decode=decoder, num_classes=gen.num_classes, device=device,
                                 balanced=gen.labels == "balanced")
        with tqdm(total=len(mine), initial=done, disable=not main_proc, unit="batch", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for j, batch in zip(todo, images):
                batches.save(j, batch, cfg.write_png)
                progress["done"] += 1
                bar.update(1)
        if stopped:
            return None
        env.barrier(device)
        if main_proc:
            batches.merge(npz_path)
            say(os.path.abspath(npz_path))
        env.barrier(device)
    return npz_path
