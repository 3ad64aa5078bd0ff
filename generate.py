"""Sample images from a checkpoint: one process or torchrun/DDP -> a PNG folder + an ADM-compatible .npz.

    torchrun --nproc_per_node=8 generate.py --config experiments_updated/generation/elit_xl_256_cfg.yaml \\
        --ckpt results/elit-xl/checkpoints/0400000.pt [--inference-budget 0.5] \\
        [--unconditional-inference-budget 0.0625] [--autoguidance]
    python generate.py --ckpt CKPT --num-samples 1000 --cfg-scale 4        # one process, no process group

The model (architecture and weights) comes from the checkpoint alone; so does the decoding: the training
dataset's metadata stored in the checkpoint says pixels in [-1, 1] or VAE latents (with their VAE and
normalisation). A checkpoint without it (converted from the reference) is an SD-VAE latent model decoded
with `--vae` and that VAE's own scaling factor.

Reproducibility. Image i has its own CPU generator seeded with `seed + i`, which draws, in this order, its
noise (DFM: one tensor per pyramid stage, coarsest first, shapes of `models.dfm.decompose`), its label
(uniform over the first `num_classes_sampled` classes, default all) and, for the SDE, its per-step noise.
Global batch j always holds images [j*b, (j+1)*b) (b = per_proc_batch_size; the last one is padded with
images N.. and cut), and rank r takes the batches j with j % world_size == r. The tensors a forward sees
therefore never depend on the number of processes, on which process runs a batch, or on resuming: the
.npz is byte-identical for 1 and N processes (on the same hardware and software).

Output. `sample_dir/NAME/` with NAME encoding the checkpoint and every sampling knob (`output_name`), e.g.
    elit-xl-step400000-3fa4c21b-ema-ode50-cfg4-gi0to1-ucb0.0625-b1-bf16-seed0-n50000-batch32
holds `generation.json` (the resolved sampling settings, the config and the checkpoint), one PNG per image
(`000123.png`, optional: --no-write-png) and, while running, one `.npy` shard per finished batch
(`batches/000007.npy`); at the end `sample_dir/NAME.npz` holds `arr_0`, uint8 (N, H, W, 3) in index order
(grey models replicated to RGB, rounded not truncated), written by streaming the shards into a temp file
that is renamed into place; the shards are then removed (the .npz holds them).

Resume. Rerunning the same command skips every batch whose shard (or every PNG) exists and never rewrites
it; a finished .npz is never rewritten. A folder whose generation.json holds other settings is refused.

The core is `generate_images` / `sample_latents` (imported by `elit_multibudget_inference.py`); `run` is
the resumable, distributed driver and `main` the thin command line. The last line on stdout is the .npz.
On CUDA, matmuls may use TF32 and the model runs under bf16 autocast (`--precision fp32` to turn it off);
CPU runs are fp32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from atomic import atomic_write, write_json
from checkpoint import load_checkpoint, model_from_checkpoint
from config import GenerateConfig, parse_budget_schedule, parse_config, to_dict
from errors import UserError, run_main, user_errors

SETTINGS_FILE = "generation.json"
SHARD_DIR = "batches"
SDE_MODE = "sde"


# ----------------------------------------------------------------------------------------------------------
# Loading: a checkpoint -> model + what decoding needs.

@dataclass
class SamplingCheckpoint:
    """A model rebuilt from a checkpoint plus what sampling and decoding need from the checkpoint."""
    model: torch.nn.Module
    dataset_meta: Optional[dict]        # the training dataset's dataset.json; None: an SD-VAE latent model
    path_type: str                      # interpolation path of training (matters for the SDE's score)
    step: int
    label: str                          # a readable name for output folders
    fingerprint: str                    # 8 hex digits of the weights' SHA-256: the folder name follows the weights
    path: str


def weights_fingerprint(state_dict: dict, arch: dict) -> str:
    """SHA-256 of the architecture and every tensor (name, dtype, shape, bytes), first 8 hex digits."""
    h = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:8]


def _checkpoint_label(path: str, config) -> str:
    """The checkpoint file's stem, unless it is only a step number: then the run's exp_name or its folder."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isdigit():
        label = stem
    elif isinstance(config, dict) and isinstance(config.get("exp_name"), str) and config["exp_name"]:
        label = config["exp_name"]
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.basename(parent) == "checkpoints":
            parent = os.path.dirname(parent)
        label = os.path.basename(parent) or "ckpt"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label)


def load_for_sampling(path: str, weights: str = "ema", device="cpu") -> SamplingCheckpoint:
    """Load a checkpoint (UserError when missing/corrupt), rebuild its model in eval mode on `device`."""
    from data import check_model_fits
    ckpt = load_checkpoint(path)
    with user_errors(f"cannot rebuild the model of {path}: "):
        try:
            model = model_from_checkpoint(ckpt, weights)
        except RuntimeError as e:                         # strict load_state_dict: missing/unexpected/mis-shaped
            raise UserError(f"{path}: its '{weights}' weights do not fit its architecture "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else 'load_state_dict failed'})")
    meta = ckpt.get("dataset")
    if meta is not None:
        if not isinstance(meta, dict) or meta.get("kind") not in ("latents", "pixels"):
            raise UserError(f"{path}: its dataset metadata is not of a latent or pixel dataset")
        check_model_fits(meta, model.input_size, model.in_channels, model.arch["name"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    fingerprint = weights_fingerprint(ckpt[weights], ckpt["arch"])
    step = ckpt.get("step", 0)
    return SamplingCheckpoint(
        model=model.to(device).requires_grad_(False), dataset_meta=meta,
        path_type=str(config.get("path_type", "linear")), step=int(step) if isinstance(step, int) else 0,
        label=_checkpoint_label(path, config), fingerprint=fingerprint, path=os.path.abspath(path))


def vae_source(dataset_meta: Optional[dict], override: Optional[str]) -> Optional[str]:
    """The VAE that decodes this model's samples: None for pixel models, else `override` or the dataset's
    (a checkpoint without dataset metadata: the SD VAE)."""
    from vae import DEFAULT_VAE
    if dataset_meta is not None and dataset_meta["kind"] == "pixels":
        return None
    if override:
        source = override
    elif dataset_meta is not None and dataset_meta.get("vae"):
        source = dataset_meta["vae"]
    else:
        source = DEFAULT_VAE
    local = os.path.expanduser(source)
    return os.path.abspath(local) if os.path.isdir(local) else source


def load_decoder(model, dataset_meta: Optional[dict], override: Optional[str], device):
    """The VAE (fp32, eval) for a latent model, None for a pixel model; UserError if it does not fit."""
    source = vae_source(dataset_meta, override)
    if source is None:
        return None
    from vae import load_vae
    vae = load_vae(source, device)
    channels = getattr(vae.config, "latent_channels", None)
    if channels != model.in_channels:
        raise UserError(f"VAE {source} has {channels} latent channels but the model has {model.in_channels}")
    return vae


# ----------------------------------------------------------------------------------------------------------
# Resolving the sampling knobs: validation and a canonical, plain-data plan.

def _num(x) -> str:
    """Compact, exact-enough number for names: 4.0 -> '4', 0.0625 -> '0.0625'."""
    return format(float(x), "g")


def _budget_fraction(model, budget, key: str, warn: Callable[[str], None] = lambda message: None) -> float:
    """A budget (fraction or total latent count) -> its canonical fraction k / K; UserError naming the levels."""
    with user_errors(f"{key}: "):
        k = model.latents_per_window(budget)
    if budget is not None and budget <= 1 and abs(budget - k / model.slots) > 1e-9:
        warn(f"{key} {_num(budget)} keeps {k} of {model.slots} latents per window (budget {_num(k / model.slots)})")
    return k / model.slots


def resolve_sampling(model, cfg, device=None, path_type: str = "linear",
                     warn: Optional[Callable[[str], None]] = None) -> dict:
    """Validate the sampling options of `cfg` (SamplingOptions fields) against `model`; return the plan.

    The plan is plain data (saved beside the samples, compared on resume, encoded in the folder name) holding
    only the knobs that matter: without guidance (cfg_scale 1) the guidance interval, unconditional budget
    and autoguidance are dropped (`warn` is told); ELIT budgets become the fractions k / K the model uses
    (64 tokens of 16 windows -> 0.25; full -> 1); DFM gets its resolved steps per stage and thresholds.
    Defaults for DFM (`samplers.default_dfm_schedule`): num_steps split 80/20 between the two stages (more
    stages: 80% to the coarsest, the rest evenly), thresholds 0.1 for two stages, evenly spaced in (0, 0.1]
    for more.
    """
    from samplers import default_dfm_schedule, dfm_schedule
    warn = warn or (lambda message: None)
    family = getattr(model, "family", "SiT")
    name = model.arch["name"] if hasattr(model, "arch") else family
    device = torch.device(device if device is not None else "cpu")
    if cfg.num_steps < 1:
        raise UserError(f"num_steps must be >= 1, got {cfg.num_steps}")
    if cfg.guidance_low > cfg.guidance_high:
        raise UserError(f"guidance_low ({cfg.guidance_low}) must not exceed guidance_high ({cfg.guidance_high})")
    if cfg.heun and cfg.mode == SDE_MODE:
        raise UserError("heun applies to the ODE sampler only (mode: ode)")
    guided = cfg.cfg_scale != 1.0
    plan = dict(family=family, path_type=path_type, cfg_scale=float(cfg.cfg_scale),
                guidance_low=float(cfg.guidance_low) if guided else 0.0,
                guidance_high=float(cfg.guidance_high) if guided else 1.0,
                precision=("bf16fast" if getattr(cfg, "fast", False) else "bf16")
                if cfg.precision == "bf16" and device.type == "cuda" else "fp32")
    if not guided and (cfg.unconditional_inference_budget is not None or cfg.autoguidance
                       or (cfg.guidance_low, cfg.guidance_high) != (0.0, 1.0)):
        warn("cfg_scale is 1 (no guidance): guidance_low/high, unconditional_inference_budget and autoguidance "
             "have no effect and are ignored")

    budget_keys = dict(inference_budget=cfg.inference_budget, budget_schedule=cfg.budget_schedule,
                       unconditional_inference_budget=cfg.unconditional_inference_budget,
                       autoguidance=cfg.autoguidance or None)
    if family != "ELIT-SiT":
        given = [k for k, v in budget_keys.items() if v is not None]
        if given:
            raise UserError(f"{given[0]} applies to ELIT-SiT models; {name} has no compute budgets")
    else:
        if cfg.autoguidance and cfg.unconditional_inference_budget is None and guided:
            raise UserError("autoguidance needs unconditional_inference_budget (the budget of the guiding pass)")
        if cfg.budget_schedule is not None and cfg.inference_budget is not None:
            raise UserError("inference_budget and budget_schedule exclude each other (the schedule covers every t)")
        schedule = parse_budget_schedule(cfg.budget_schedule)
        ub = cfg.unconditional_inference_budget
        plan.update(
            budget=None if schedule else _budget_fraction(model, cfg.inference_budget, "inference_budget", warn),
            budget_schedule=[[t, _budget_fraction(model, b, "budget_schedule", warn)] for t, b in schedule]
            if schedule else None,
            unconditional_budget=_budget_fraction(model, ub, "unconditional_inference_budget", warn)
            if guided and ub is not None else None,
            autoguidance=bool(cfg.autoguidance) and guided)

    dfm_given = [k for k in ("dfm_steps_per_stage", "dfm_stage_thresholds") if getattr(cfg, k) is not None]
    if family == "DFM-SiT":
        if cfg.mode != "ode" or cfg.heun:
            raise UserError("DFM-SiT samples with its own Euler schedule: use mode ode without heun")
        with user_errors("DFM schedule: "):
            steps, thresholds = default_dfm_schedule(cfg.num_steps, model.stages)
            steps = list(cfg.dfm_steps_per_stage) if cfg.dfm_steps_per_stage is not None else steps
            thresholds = list(cfg.dfm_stage_thresholds) if cfg.dfm_stage_thresholds is not None else thresholds
            if len(steps) != model.stages:
                raise ValueError(f"dfm_steps_per_stage needs one entry per stage ({model.stages}), got {steps}")
            dfm_schedule(steps, thresholds)
        plan.update(dfm_steps_per_stage=[int(s) for s in steps], dfm_stage_thresholds=[float(t) for t in thresholds])
    else:
        if dfm_given:
            raise UserError(f"{dfm_given[0]} applies to DFM-SiT models, not {name}")
        plan.update(mode=cfg.mode, num_steps=int(cfg.num_steps), heun=bool(cfg.heun))
    return plan


def autocast_dtype(plan: dict, device) -> Optional[torch.dtype]:
    return torch.bfloat16 if plan["precision"].startswith("bf16") and torch.device(device).type == "cuda" else None


def fast_model(model, plan: dict):
    """precision 'bf16fast' (CUDA): bf16 weights, compiled blocks and CUDA-graph replay (models/graphs.py)."""
    if plan["precision"] != "bf16fast":
        return model
    from models.graphs import fast_inference
    return fast_inference(model)


def model_evaluations(plan: dict) -> list[tuple[float, bool]]:
    """(t, guided) of every model evaluation of one sample (SiT / ELIT samplers): for cost accounting."""
    from samplers import guidance_scale, ode_grid, sde_grid
    if plan["family"] == "DFM-SiT":
        raise ValueError("model_evaluations covers the SiT / ELIT-SiT samplers")
    n = plan["num_steps"]
    if plan["mode"] == SDE_MODE:
        times = sde_grid(n)[:-1]
    else:
        grid = ode_grid(n)
        times = grid[:-1] + (grid[1:-1] if plan["heun"] else [])
    return [(t, guidance_scale(t, plan["cfg_scale"], plan["guidance_low"], plan["guidance_high"]) != 1.0)
            for t in times]


# ----------------------------------------------------------------------------------------------------------
# The core: per-image seeded inputs -> samples -> uint8 images.

def input_shapes(model) -> list[tuple[int, ...]]:
    """Per-image noise shapes: [(C, H, W)], or one per DFM stage, coarsest first (as `decompose` makes them)."""
    shape = (model.in_channels, model.input_size, model.input_size)
    if getattr(model, "family", None) != "DFM-SiT":
        return [shape]
    from models.dfm import decompose
    return [tuple(x.shape[1:]) for x in decompose(torch.empty(1, *shape, device="meta"), model.stages)]


def draw_inputs(model, indices: Sequence[int], seed: int, num_classes: int, sde_steps: int = 0):
    """Image i's generator (CPU, seed + i) draws its noise, then its label, then its SDE noise.

    Returns (noise: list of (n, ...) tensors, one per stage; labels (n,) int64; sde_noise (n, sde_steps, C, H,
    W) or None), all on the CPU.
    """
    shapes = input_shapes(model)
    noise, labels, sde = [[] for _ in shapes], [], []
    for i in indices:
        g = torch.Generator().manual_seed(int(seed) + int(i))
        for store, shape in zip(noise, shapes):
            store.append(torch.randn(shape, generator=g))
        labels.append(torch.randint(num_classes, (), generator=g))
        if sde_steps:
            sde.append(torch.randn(sde_steps, *shapes[-1], generator=g))
    return [torch.stack(n) for n in noise], torch.stack(labels), torch.stack(sde) if sde_steps else None


def run_sampler(model, plan: dict, noise: list, labels: torch.Tensor, sde_noise=None) -> torch.Tensor:
    """One call of the plan's sampler on inputs already on the model's device -> (n, C, H, W) float32."""
    from samplers import sample, sample_dfm
    dtype = autocast_dtype(plan, labels.device)
    guidance = dict(cfg_scale=plan["cfg_scale"], guidance_low=plan["guidance_low"],
                    guidance_high=plan["guidance_high"], path_type=plan["path_type"], autocast_dtype=dtype)
    if plan["family"] == "DFM-SiT":
        return sample_dfm(model, noise, labels, steps_per_stage=plan["dfm_steps_per_stage"],
                          thresholds=plan["dfm_stage_thresholds"], **guidance)
    elit = plan["family"] == "ELIT-SiT"
    return sample(model, noise[0], labels, mode=plan["mode"], num_steps=plan["num_steps"], heun=plan["heun"],
                  budget=plan.get("budget") if elit else None,
                  unconditional_budget=plan.get("unconditional_budget"), autoguidance=plan.get("autoguidance", False),
                  budget_schedule=plan.get("budget_schedule"), sde_noise=sde_noise, **guidance)


def sample_latents(model, indices: Sequence[int], cfg, device, *, path_type: str = "linear",
                   labels: Optional[torch.Tensor] = None, plan: Optional[dict] = None) -> torch.Tensor:
    """Samples of images `indices` (model space: latents or pixels), (n, C, H, W) float32 on `device`.

    `cfg`: any object with the SamplingOptions fields, `seed` and optionally `num_classes_sampled` (a
    GenerateConfig or InferenceConfig); `plan` (from `resolve_sampling`) skips re-resolving it. `labels`
    replaces the drawn labels (which are still drawn, so the noise stream is the same).
    """
    device = torch.device(device)
    plan = plan or resolve_sampling(model, cfg, device, path_type)
    num_classes = getattr(cfg, "num_classes_sampled", None) or model.num_classes
    sde_steps = plan["num_steps"] - 1 if plan.get("mode") == SDE_MODE else 0
    noise, drawn, sde_noise = draw_inputs(model, indices, cfg.seed, num_classes, sde_steps)
    y = drawn if labels is None else torch.as_tensor(labels, dtype=torch.long).expand(len(indices))
    return run_sampler(model, plan, [n.to(device) for n in noise], y.to(device),
                       None if sde_noise is None else sde_noise.to(device))


def generate_images(model, indices: Sequence[int], cfg, device, dataset_meta: Optional[dict] = None, vae=None, *,
                    path_type: str = "linear", labels: Optional[torch.Tensor] = None, plan: Optional[dict] = None,
                    vae_batch_size: Optional[int] = None) -> np.ndarray:
    """Images `indices` as uint8 (n, H, W, 3) numpy, rounded; see `sample_latents` for the arguments.
    Pixel models (dataset_meta kind 'pixels') are rescaled from [-1, 1]; latent models decoded by `vae`."""
    from images import to_uint8
    x = sample_latents(model, indices, cfg, device, path_type=path_type, labels=labels, plan=plan)
    return to_uint8(x, dataset_meta, vae, vae_batch_size or len(indices)).cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# Output naming and identity.

def output_name(plan: dict, *, label: str, step: int, fingerprint: str, weights: str, seed: int,
                num_samples: int, batch_size: int, num_classes_sampled: Optional[int] = None,
                vae_tag: Optional[str] = None) -> str:
    """The folder name: checkpoint (label, step, weight fingerprint, ema/model) and every sampling knob.

    Parts, in order: `{label}-step{S}-{fingerprint}-{weights}`; the sampler (`ode50`, `ode50heun`, `sde250`;
    DFM `dfm40+10-thr0.1`); guidance (`cfg1`, or `cfg4-gi{low}to{high}` plus `ucb{B}` for cheap CFG /
    `ag{B}` for autoguidance); the ELIT budget (`b{fraction}` or `sched` + `t{T}b{B}`... for a schedule);
    `bf16fast|bf16|fp32`, `seed{S}`, `n{N}`, `batch{b}` (the batch composition fixes the bytes); `cls{K}` when labels
    come from the first K classes; `vae-{name}` when the VAE is not the checkpoint's own.
    """
    parts = [label, f"step{step}", fingerprint, weights]
    if plan["family"] == "DFM-SiT":
        parts += ["dfm" + "+".join(str(s) for s in plan["dfm_steps_per_stage"]),
                  "thr" + "+".join(_num(t) for t in plan["dfm_stage_thresholds"])]
    else:
        parts.append(f"{plan['mode']}{plan['num_steps']}" + ("heun" if plan["heun"] else ""))
    if plan["cfg_scale"] == 1.0:
        parts.append("cfg1")
    else:
        parts += [f"cfg{_num(plan['cfg_scale'])}", f"gi{_num(plan['guidance_low'])}to{_num(plan['guidance_high'])}"]
        if plan.get("unconditional_budget") is not None:
            parts.append(("ag" if plan["autoguidance"] else "ucb") + _num(plan["unconditional_budget"]))
    if plan["family"] == "ELIT-SiT":
        if plan["budget_schedule"]:
            parts.append("sched" + "".join(f"t{_num(t)}b{_num(b)}" for t, b in plan["budget_schedule"]))
        else:
            parts.append(f"b{_num(plan['budget'])}")
    parts += [plan["precision"], f"seed{seed}", f"n{num_samples}", f"batch{batch_size}"]
    if num_classes_sampled is not None:
        parts.append(f"cls{num_classes_sampled}")
    if vae_tag:
        parts.append("vae-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", vae_tag))
    return "-".join(parts)


def _plain(obj):
    """JSON round trip: tuples -> lists, so saved and fresh settings compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def read_npz_shape(path: str) -> Optional[tuple]:
    """Shape and dtype of arr_0 in an .npz, read from its header (no data); None if unreadable."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
            return tuple(shape), np.dtype(dtype)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


# ----------------------------------------------------------------------------------------------------------
# Atomic writes.

def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"), ".png")


def write_npz_from_shards(path: str, shard_paths: list[str], shape: tuple) -> None:
    """Stream uint8 shards into `path` (an uncompressed .npz with arr_0 of `shape`) without holding them all."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(
                    member, dict(descr=np.lib.format.dtype_to_descr(np.dtype(np.uint8)), fortran_order=False,
                                 shape=tuple(shape)))
                count = 0
                for shard in shard_paths:
                    arr = np.load(shard)
                    if arr.dtype != np.uint8 or arr.shape[1:] != tuple(shape[1:]):
                        raise UserError(f"corrupt shard {shard}: {arr.dtype} {arr.shape}; delete it and rerun")
                    member.write(np.ascontiguousarray(arr).tobytes())
                    count += len(arr)
                if count != shape[0]:
                    raise UserError(f"the shards hold {count} images, expected {shape[0]}")
    atomic_write(path, write, ".npz")


# ----------------------------------------------------------------------------------------------------------
# The resumable, distributed driver.

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False

    def barrier(self, device) -> None:
        if not self.initialized:
            return
        import torch.distributed as dist
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


def dist_env() -> Dist:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    return Dist(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(requested: Optional[str], local_rank: int) -> torch.device:
    if requested is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but no GPU is visible")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(env: Dist, device: torch.device) -> None:
    """A process group only under torchrun with several processes: nccl on GPUs, gloo on CPU."""
    if env.world <= 1:
        return
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(hours=2), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(hours=2))
    env.initialized = True


class Batches:
    """Global batch j = images [j*b, (j+1)*b) cut to num_samples; files of the folder that hold them."""

    def __init__(self, folder: str, num_samples: int, batch_size: int):
        self.folder, self.n, self.b = folder, num_samples, batch_size
        self.count = math.ceil(num_samples / batch_size)
        self.shard_dir = os.path.join(folder, SHARD_DIR)

    def indices(self, j: int) -> range:
        """The b indices of batch j, padding included (images >= num_samples are drawn and discarded)."""
        return range(j * self.b, (j + 1) * self.b)

    def valid(self, j: int) -> int:
        return min(self.b, self.n - j * self.b)

    def shard(self, j: int) -> str:
        return os.path.join(self.shard_dir, f"{j:06d}.npy")

    def png(self, i: int) -> str:
        return os.path.join(self.folder, f"{i:06d}.png")

    def pngs(self, j: int) -> list[str]:
        return [self.png(i) for i in self.indices(j)[:self.valid(j)]]

    def recover(self, j: int, write_png: bool) -> bool:
        """True if batch j is finished: its shard exists, or all its PNGs do (the shard is then rebuilt from
        them: PNG is lossless). With `write_png`, PNGs missing beside a shard are written from it."""
        if os.path.isfile(self.shard(j)):
            if write_png:
                missing = [(k, p) for k, p in enumerate(self.pngs(j)) if not os.path.isfile(p)]
                if missing:
                    arr = np.load(self.shard(j))
                    for k, p in missing:
                        save_png(arr[k], p)
            return True
        pngs = self.pngs(j)
        if all(os.path.isfile(p) for p in pngs):
            from PIL import Image
            arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
            atomic_write(self.shard(j), lambda f: np.save(f, arr), ".npy")
            return True
        return False

    def save(self, j: int, images: np.ndarray, write_png: bool) -> None:
        """PNGs first, then the shard: a shard marks a finished batch."""
        images = images[:self.valid(j)]
        if write_png:
            for i, img in zip(self.indices(j), images):
                save_png(img, self.png(i))
        atomic_write(self.shard(j), lambda f: np.save(f, images), ".npy")


def _settings(cfg: GenerateConfig, ck: SamplingCheckpoint, plan: dict, vae: Optional[str]) -> dict:
    meta = ck.dataset_meta
    return _plain(dict(
        plan, model=ck.model.arch["name"], arch=ck.model.arch, weights=cfg.weights, weights_sha256=ck.fingerprint,
        step=ck.step, seed=cfg.seed, num_samples=cfg.num_samples, per_proc_batch_size=cfg.per_proc_batch_size,
        num_classes=cfg.num_classes_sampled or ck.model.num_classes, output=meta["kind"] if meta else "latents",
        vae=vae, latent_scale=meta.get("latent_scale") if meta else None,
        latent_shift=meta.get("latent_shift") if meta else None))


def _check_settings(path: str, settings: dict) -> None:
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


def run(cfg: GenerateConfig, max_batches: Optional[int] = None) -> Optional[str]:
    """Generate (or finish) the samples of `cfg` on this process's share of the batches.

    Returns the .npz path (on every rank), or None when `max_batches` (per process) stopped it early
    (a partial run that a later run resumes). Rank 0 prints progress and, last, the .npz path.
    """
    env = dist_env()
    main_proc = env.rank == 0
    say = (lambda message: print(message, flush=True)) if main_proc else (lambda message: None)
    note = (lambda message: print(f"note: {message}", file=sys.stderr, flush=True)) if main_proc else (lambda m: None)
    if not cfg.ckpt:
        raise UserError("pass --ckpt (a checkpoint written by train.py or models.convert)")
    if cfg.num_samples < 1 or cfg.per_proc_batch_size < 1:
        raise UserError("num_samples and per_proc_batch_size must be >= 1")
    device = pick_device(cfg.device, env.local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True       # fp32 matmuls (precision fp32, the VAE) on TF32 cores
        torch.backends.cudnn.allow_tf32 = True

    ck = load_for_sampling(cfg.ckpt, cfg.weights, device)
    model = ck.model
    if cfg.num_classes_sampled is not None and not 1 <= cfg.num_classes_sampled <= model.num_classes:
        raise UserError(f"num_classes_sampled must be in [1, {model.num_classes}], got {cfg.num_classes_sampled}")
    plan = resolve_sampling(model, cfg, device, ck.path_type, warn=note)
    vae = vae_source(ck.dataset_meta, cfg.vae)
    if ck.dataset_meta is not None and ck.dataset_meta["kind"] == "pixels" and cfg.vae:
        note(f"{model.arch['name']} was trained on pixels: --vae is ignored")
    default_vae = vae_source(ck.dataset_meta, None)
    name = output_name(plan, label=ck.label, step=ck.step, fingerprint=ck.fingerprint, weights=cfg.weights,
                       seed=cfg.seed, num_samples=cfg.num_samples, batch_size=cfg.per_proc_batch_size,
                       num_classes_sampled=(cfg.num_classes_sampled if cfg.num_classes_sampled != model.num_classes
                                            else None),
                       vae_tag=os.path.basename(os.path.normpath(vae)) if vae != default_vae else None)
    folder = os.path.join(cfg.sample_dir, name)
    npz_path = folder + ".npz"
    settings = _settings(cfg, ck, plan, vae)
    settings_path = os.path.join(folder, SETTINGS_FILE)
    if os.path.isfile(settings_path):
        _check_settings(settings_path, settings)

    if os.path.exists(npz_path):
        found = read_npz_shape(npz_path)
        if found is None or found[1] != np.uint8 or found[0][0] != cfg.num_samples or len(found[0]) != 4:
            raise UserError(f"{npz_path} exists but is not a complete sample batch of {cfg.num_samples} images "
                            f"({found}); move it away to regenerate")
        say(f"{npz_path} is complete: nothing to do")
        say(os.path.abspath(npz_path))
        return npz_path

    vae_model = load_decoder(model, ck.dataset_meta, cfg.vae, device)
    model = fast_model(model, plan)
    init_distributed(env, device)
    try:
        batches = Batches(folder, cfg.num_samples, cfg.per_proc_batch_size)
        if main_proc:
            os.makedirs(batches.shard_dir, exist_ok=True)
            if not os.path.isfile(settings_path):
                write_json(settings_path, dict(settings=settings, checkpoint=ck.path, config=to_dict(cfg),
                                              created_by="generate.py"), indent=2)
        env.barrier(device)
        os.makedirs(batches.shard_dir, exist_ok=True)
        mine = list(range(env.rank, batches.count, env.world))
        todo = [j for j in mine if not batches.recover(j, cfg.write_png)]
        say(f"{model.arch['name']} ({ck.path}, step {ck.step}): {cfg.num_samples} images in {batches.count} "
            f"batches of {batches.b} on {env.world} process(es), {device.type}, {plan['precision']} -> {folder}")
        if len(todo) < len(mine):
            say(f"resuming: {len(mine) - len(todo)} of this process's {len(mine)} batches are done")
        from tqdm import tqdm
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not main_proc, unit="batch",
                   file=sys.stderr, dynamic_ncols=True)
        for done, j in enumerate(todo):
            if max_batches is not None and done >= max_batches:
                bar.close()
                return None
            images = generate_images(model, batches.indices(j), cfg, device, ck.dataset_meta, vae_model,
                                     path_type=ck.path_type, plan=plan)
            batches.save(j, images, cfg.write_png)
            bar.update(1)
        bar.close()
        env.barrier(device)
        if main_proc:
            shards = [batches.shard(j) for j in range(batches.count)]
            missing = [p for p in shards if not os.path.isfile(p)]
            if missing:
                raise UserError(f"{len(missing)} batches are missing after generation (e.g. {missing[0]})")
            shape = (cfg.num_samples,) + np.load(shards[0], mmap_mode="r").shape[1:]
            write_npz_from_shards(npz_path, shards, shape)
            shutil.rmtree(batches.shard_dir)                 # the .npz holds every shard
            for stale in os.listdir(folder):                 # temp files of interrupted runs
                if stale.startswith(".tmp-"):
                    os.unlink(os.path.join(folder, stale))
            say(os.path.abspath(npz_path))
        env.barrier(device)
    finally:
        if env.initialized:
            import torch.distributed as dist
            dist.destroy_process_group()
    return npz_path


def main(argv=None) -> None:
    def body():
        cfg = parse_config(GenerateConfig, argv, description=__doc__.split("\n\n")[0])
        try:
            run(cfg)
        except UserError:
            if dist_env().rank != 0:                          # one copy of the message, from rank 0
                sys.exit(2)
            raise
    run_main(body)


if __name__ == "__main__":
    main()
