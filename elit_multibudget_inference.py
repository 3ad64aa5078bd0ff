"""ELIT multibudget inference: one model at every budget -- images from the same noise, GFLOPs, latency, plots.

    python elit_multibudget_inference.py --model ELIT-SiT-XL/2 --ckpt CKPT --resolution 256 \\
        --class-label 207 --output-dir DIR [--budgets 1 0.5 0.25] [--cfg-scale 1] [--guidance-scale 4]
    python elit_multibudget_inference.py --model ELIT-SiT-XL/2 --resolution 512 --output-dir DIR   # cost only

Budget rows: for every valid budget (or `--budgets`), `num_images` images of `class_label` from the same
noise (image i uses seed + i, as in generate.py), sampled with the configured sampler and `cfg_scale`
(default 1: no guidance, as the paper's multibudget table); its GFLOPs per forward (per image, counted by
`torch.utils.flop_counter` on the meta device), the measured forward latency per image (batch
`latency_batch_size`, median of `latency_repeats` after every shape of the run was seen once), and the
sampling time per image (VAE excluded).

Guidance rows, at every budget b, with `guidance_scale` (one guided step = what the sampler evaluates):
    cfg            conditional and null-label passes both at b, batched in one forward of 2B   2 F(b)
    cheap_cfg      conditional pass at full budget, null-label pass at b                        F(1) + F(b)
    autoguidance   conditional pass at full budget, guiding pass at b with the real label       F(1) + F(b)
each with GFLOPs and measured latency per guided step (relative to standard CFG at full budget), the
sampling time per image and images. Sampling goes through generate.py's `sample_latents`; guided steps are
timed through the samplers' `guided_velocity`, so the measured code is the code that samples.

Without --ckpt a random-init model of --model at --resolution (SD-VAE latents: 4 channels, 1/8 the side)
measures cost only (no images). Outputs in --output-dir: results.json, budget_vs_gflops.png,
budget_vs_latency.png, grid.png (a row per budget), grid_guidance.png (a row per budget, a column per
guidance mode) and images.npz (the uint8 images of every row).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch

from atomic import atomic_write, write_json
from config import InferenceConfig, parse_config, to_dict
from errors import UserError, run_main, user_errors
from generate import (autocast_dtype, draw_inputs, fast_model, load_decoder, load_for_sampling, model_evaluations,
                      pick_device,
                      resolve_sampling, run_sampler, sample_latents)
from images import to_uint8

DEFAULT_RESOLUTION = 256        # of the random-init model, when neither --resolution nor --ckpt gives one
SD_VAE_FACTOR, SD_VAE_CHANNELS = 8, 4
GUIDANCE_MODES = {  # mode -> (conditional pass at full budget?, guiding pass keeps the real label?)
    "cfg": (False, False),
    "cheap_cfg": (True, False),
    "autoguidance": (True, True),
}
SWEPT = ("inference_budget", "unconditional_inference_budget", "budget_schedule")


# ----------------------------------------------------------------------------------------------------------
# Model.

def image_resolution(model, dataset_meta: Optional[dict]) -> int:
    if dataset_meta is None:
        return model.input_size * SD_VAE_FACTOR
    if dataset_meta["kind"] == "pixels":
        return int(dataset_meta["resolution"][0])
    return int(dataset_meta["image_resolution"][0])


def load_model(cfg: InferenceConfig, device):
    """(model, SamplingCheckpoint or None): from --ckpt (checked against --model / --resolution), or a
    random-init --model at --resolution."""
    from models import build_model, parse_model_name
    if cfg.ckpt:
        ck = load_for_sampling(cfg.ckpt, cfg.weights, device)
        name = ck.model.arch["name"]
        if cfg.model and cfg.model != name:
            raise UserError(f"--model {cfg.model} does not match the checkpoint's model {name}")
        res = image_resolution(ck.model, ck.dataset_meta)
        if cfg.resolution is not None and cfg.resolution != res:
            raise UserError(f"--resolution {cfg.resolution} does not match the checkpoint's {res} px")
        model = ck.model
    else:
        if not cfg.model:
            raise UserError("pass --ckpt, or --model (and --resolution) for a random-init model")
        with user_errors():
            family, _, _ = parse_model_name(cfg.model)
        if family != "ELIT-SiT":
            raise UserError(f"{cfg.model} has no compute budgets: this script needs an ELIT-SiT model")
        res = cfg.resolution or DEFAULT_RESOLUTION
        if res % SD_VAE_FACTOR:
            raise UserError(f"--resolution must be a multiple of {SD_VAE_FACTOR} (SD-VAE latents), got {res}")
        with user_errors(f"cannot build {cfg.model} at {res} px: "):
            model = build_model(cfg.model, input_size=res // SD_VAE_FACTOR, in_channels=SD_VAE_CHANNELS)
        model = model.to(device).eval().requires_grad_(False)
        ck = None
    if model.family != "ELIT-SiT":
        raise UserError(f"{model.arch['name']} has no compute budgets: this script needs an ELIT-SiT model")
    return model, ck


# ----------------------------------------------------------------------------------------------------------
# Timing.

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device) -> float:
    """Seconds of one call of fn, device work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable, device: torch.device, repeats: int) -> float:
    return statistics.median(timed(fn, device) for _ in range(max(repeats, 1)))


def guided_step_fn(model, plan: dict, batch: int, device: torch.device) -> Callable:
    """One guided (or plain) velocity evaluation of `plan` at t = 0.5 on a random batch, as the sampler runs it."""
    from samplers import guided_velocity
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g).to(device)
    y = torch.randint(model.num_classes, (batch,), generator=g).to(device)
    t = torch.full((batch,), 0.5, device=device)
    dtype = autocast_dtype(plan, device)

    def forward(xs, t_, y_, budget):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return [model(xs[0], t_, y_, budget=budget).float()]

    @torch.no_grad()
    def step():
        return guided_velocity(forward, [x], t, y, scales=[plan["cfg_scale"]], null_label=model.num_classes,
                               budget=plan["budget"], unconditional_budget=plan["unconditional_budget"],
                               autoguidance=plan["autoguidance"])
    return step


# ----------------------------------------------------------------------------------------------------------
# Cost accounting.

def step_gflops(plan: dict, flops: dict) -> float:
    """GFLOPs per image of one (guided) step of `plan`; `flops` maps a budget fraction to GFLOPs per forward."""
    cond = flops[plan["budget"]]
    if plan["cfg_scale"] == 1.0:
        return cond
    ub = plan["unconditional_budget"]
    return cond + flops[plan["budget"] if ub is None else ub]


def sample_gflops(plan: dict, flops: dict) -> float:
    """GFLOPs per image of one whole sample: every model evaluation, guided only inside the interval."""
    unguided = dict(plan, cfg_scale=1.0)
    return sum(step_gflops(plan if guided else unguided, flops) for _, guided in model_evaluations(plan))


# ----------------------------------------------------------------------------------------------------------
# Figures.

def _savefig(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_costs(results: dict, out_dir: str) -> tuple[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(results["budgets"], key=lambda r: r["budget"])
    b = [r["budget"] for r in rows]
    guid = results["guidance"]
    name = results["model"]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, [r["gflops_per_forward"] for r in rows], "o-", label="one forward")
    for mode in GUIDANCE_MODES:
        pts = sorted((g["budget"], g["gflops_per_step"]) for g in guid if g["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), "s--", label=f"guided step: {mode}")
    ax.set(xlabel="budget (fraction of latents)", ylabel="GFLOPs per image", title=f"{name}: compute vs budget")
    ax.grid(alpha=0.3)
    ax.legend()
    gflops_path = os.path.join(out_dir, "budget_vs_gflops.png")
    _savefig(fig, gflops_path)

    fig, ax = plt.subplots(figsize=(6, 4))
    lat = [r["forward_latency_ms_per_image"] for r in rows]
    full = results["reference"]
    ax.plot(b, lat, "o-", label=f"forward, batch {results['settings']['latency_batch_size']}")
    ax.plot(b, [full["forward_latency_ms_per_image"] * r["relative_gflops"] for r in rows], ":",
            color="grey", label="FLOPs-proportional")
    for mode in GUIDANCE_MODES:
        pts = sorted((g["budget"], g["step_latency_ms_per_image"]) for g in guid if g["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), "s--", label=f"guided step: {mode}")
    ax.set(xlabel="budget (fraction of latents)", ylabel="ms per image",
           title=f"{name}: latency vs budget ({results['device']}, {results['dtype']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    latency_path = os.path.join(out_dir, "budget_vs_latency.png")
    _savefig(fig, latency_path)
    return gflops_path, latency_path


def plot_grid(rows: list[np.ndarray], row_labels: list[str], path: str, col_labels: Optional[list[str]] = None) -> str:
    """A labelled image grid: rows[r] is uint8 (columns, n, H, W, 3) -> one panel of n images per column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    _savefig(fig, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# The run.

def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def budget_label(model, b: float) -> str:
    return f"budget {b:g} ({round(b * model.slots)}/{model.slots})"


def run(cfg: InferenceConfig) -> dict:
    from models.flops import gflops_per_image
    given = [k for k in SWEPT if getattr(cfg, k) is not None] + (["autoguidance"] if cfg.autoguidance else [])
    if given:
        raise UserError(f"{given[0]} is swept by this script (every budget, every guidance mode); use --budgets")
    if cfg.num_images < 1 or cfg.latency_batch_size < 1 or cfg.latency_repeats < 1:
        raise UserError("num_images, latency_batch_size and latency_repeats must be >= 1")
    if cfg.guidance_scale == 1.0:
        raise UserError("guidance_scale 1 means no guidance: the guidance rows need a scale != 1")
    device = pick_device(cfg.device, 0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, ck = load_model(cfg, device)
    if not 0 <= cfg.class_label < model.num_classes:
        raise UserError(f"class_label must be in [0, {model.num_classes - 1}], got {cfg.class_label}")
    path_type = ck.path_type if ck else "linear"
    meta = ck.dataset_meta if ck else None
    vae = load_decoder(model, meta, cfg.vae, device) if ck else None     # fails early when missing offline

    # Plans: the budget rows, the guidance rows; validation (budgets, sampler) happens here, before any work.
    levels = cfg.budgets if cfg.budgets is not None else sorted(model.budget_levels, reverse=True)
    budget_plans = {}
    for b in levels:
        plan = resolve_sampling(model, dataclasses.replace(cfg, inference_budget=b), device, path_type, warn=note)
        budget_plans.setdefault(plan["budget"], plan)                 # 0.3 and 0.25 may be the same level
    budgets = list(budget_plans)
    guide_cfg = dataclasses.replace(cfg, cfg_scale=cfg.guidance_scale)
    guidance_plans = {}
    for b in budgets:
        for mode, (full_cond, real_label) in GUIDANCE_MODES.items():
            guidance_plans[mode, b] = resolve_sampling(model, dataclasses.replace(
                guide_cfg, inference_budget=1.0 if full_cond else b,
                unconditional_inference_budget=b if full_cond else None, autoguidance=real_label), device, path_type)
    reference_plan = resolve_sampling(model, dataclasses.replace(guide_cfg, inference_budget=1.0), device, path_type)
    dtype = autocast_dtype(reference_plan, device)
    model = fast_model(model, reference_plan)                          # the path generate.py samples with
    print(f"{model.arch['name']}: {len(budgets)} budgets x (1 + {len(GUIDANCE_MODES)} guidance modes) on "
          f"{device.type}, {'bf16 autocast' if dtype else 'fp32'}", flush=True)

    # FLOPs per forward (meta device: no memory, no time).
    flops = {b: gflops_per_image(model, budget=b) for b in sorted(set(budgets) | {1.0})}

    # Latency: warm every shape up once, then time.
    L = cfg.latency_batch_size
    forward_plans = {b: dict(reference_plan, cfg_scale=1.0, budget=b, unconditional_budget=None,
                             autoguidance=False) for b in flops}
    step_fns = {("forward", b): guided_step_fn(model, p, L, device) for b, p in forward_plans.items()}
    step_fns.update({key: guided_step_fn(model, p, L, device) for key, p in guidance_plans.items()})
    step_fns["cfg", "full"] = guided_step_fn(model, reference_plan, L, device)
    for fn in step_fns.values():
        fn()
    seconds = {key: median_time(fn, device, cfg.latency_repeats) for key, fn in step_fns.items()}
    ms_per_image = {key: 1e3 * s / L for key, s in seconds.items()}

    # Sampling (same noise for every row; VAE outside the timing) and decoding.
    indices = list(range(cfg.num_images))
    labels = torch.full((cfg.num_images,), cfg.class_label, dtype=torch.long)
    all_plans = {("budget", b): p for b, p in budget_plans.items()}
    all_plans.update(guidance_plans)
    noise, _, _ = draw_inputs(model, indices, cfg.seed, model.num_classes)
    for plan in all_plans.values():                             # warm-up of the sampling shapes
        run_sampler(model, dict(plan, mode="ode", num_steps=1, heun=False), [noise[0].to(device)], labels.to(device))
    sampling, images = {}, {}
    for key, plan in all_plans.items():
        box = {}
        sampling[key] = timed(lambda: box.setdefault("x", sample_latents(
            model, indices, cfg, device, path_type=path_type, labels=labels, plan=plan)), device) / cfg.num_images
        if ck:
            images[key] = to_uint8(box["x"], meta, vae, cfg.num_images).cpu().numpy()

    # Results.
    full_forward = ms_per_image["forward", 1.0]
    full_cfg_ms, full_cfg_gflops = ms_per_image["cfg", "full"], step_gflops(reference_plan, flops)
    budget_rows = []
    for b, plan in budget_plans.items():
        k = round(b * model.slots)
        budget_rows.append(dict(
            budget=b, latents_per_window=k, latent_tokens=k * model.windows,
            gflops_per_forward=flops[b], relative_gflops=flops[b] / flops[1.0],
            forward_latency_ms_per_image=ms_per_image["forward", b],
            relative_latency=ms_per_image["forward", b] / full_forward,
            gflops_per_step=step_gflops(plan, flops), gflops_per_sample=sample_gflops(plan, flops),
            sampling_s_per_image=sampling["budget", b]))
    guidance_rows = []
    for (mode, b), plan in guidance_plans.items():
        full_cond, real_label = GUIDANCE_MODES[mode]
        guidance_rows.append(dict(
            mode=mode, budget=b, conditional_budget=plan["budget"], guidance_budget=b,
            guidance_label="real" if real_label else "null", cfg_scale=plan["cfg_scale"],
            gflops_per_step=step_gflops(plan, flops),
            relative_gflops_per_step=step_gflops(plan, flops) / full_cfg_gflops,
            step_latency_ms_per_image=ms_per_image[mode, b],
            speedup_vs_full_cfg=full_cfg_ms / ms_per_image[mode, b],
            gflops_per_sample=sample_gflops(plan, flops), sampling_s_per_image=sampling[mode, b]))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    results = dict(
        model=model.arch["name"], arch=model.arch, checkpoint=os.path.abspath(cfg.ckpt) if cfg.ckpt else None,
        step=ck.step if ck else None, weights=cfg.weights if ck else "random-init",
        image_resolution=image_resolution(model, meta), windows=model.windows, latents_per_window_max=model.slots,
        device=device_name, device_type=device.type, dtype="bfloat16" if dtype else "float32",
        torch=torch.__version__,
        settings=dict(mode=cfg.mode, num_steps=cfg.num_steps, heun=cfg.heun, path_type=path_type,
                      cfg_scale=cfg.cfg_scale, guidance_scale=cfg.guidance_scale, guidance_low=cfg.guidance_low,
                      guidance_high=cfg.guidance_high, class_label=cfg.class_label, seed=cfg.seed,
                      num_images=cfg.num_images, latency_batch_size=L, latency_repeats=cfg.latency_repeats,
                      latency="median of latency_repeats timed calls after one warm-up call of every shape; "
                              "per image = per call / latency_batch_size",
                      sampling="wall time of one row's num_images images in one batch (input drawing included, "
                               "VAE excluded) / num_images; small batches are launch-bound on GPUs"),
        reference=dict(forward_gflops=flops[1.0], forward_latency_ms_per_image=full_forward,
                       cfg_step_gflops=full_cfg_gflops, cfg_step_latency_ms_per_image=full_cfg_ms),
        budgets=budget_rows, guidance=guidance_rows, files={}, config=to_dict(cfg))

    os.makedirs(cfg.output_dir, exist_ok=True)
    gflops_path, latency_path = plot_costs(results, cfg.output_dir)
    results["files"].update(gflops_plot=os.path.basename(gflops_path), latency_plot=os.path.basename(latency_path))
    if images:
        grid = plot_grid([images["budget", b][None] for b in budgets], [budget_label(model, b) for b in budgets],
                         os.path.join(cfg.output_dir, "grid.png"))
        gguid = plot_grid([np.stack([images[m, b] for m in GUIDANCE_MODES]) for b in budgets],
                          [budget_label(model, b) for b in budgets], os.path.join(cfg.output_dir, "grid_guidance.png"),
                          col_labels=[f"{m} (scale {cfg.guidance_scale:g})" for m in GUIDANCE_MODES])
        npz = os.path.join(cfg.output_dir, "images.npz")
        atomic_write(npz, lambda f: np.savez(
            f, budgets=np.array(budgets), budget_rows=np.stack([images["budget", b] for b in budgets]),
            guidance_modes=np.array(list(GUIDANCE_MODES)),
            guidance_rows=np.stack([np.stack([images[m, b] for m in GUIDANCE_MODES]) for b in budgets])))
        results["files"].update(grid=os.path.basename(grid), grid_guidance=os.path.basename(gguid),
                                images=os.path.basename(npz))
    path = os.path.join(cfg.output_dir, "results.json")
    write_json(path, results, indent=2)

    print(f"{'budget':>8} {'k':>3} {'GFLOPs':>9} {'rel':>6} {'ms/img':>9} {'rel':>6} {'s/img sample':>13}")
    for r in budget_rows:
        print(f"{r['budget']:8.4g} {r['latents_per_window']:3d} {r['gflops_per_forward']:9.3f} "
              f"{r['relative_gflops']:6.3f} {r['forward_latency_ms_per_image']:9.4f} {r['relative_latency']:6.3f} "
              f"{r['sampling_s_per_image']:13.4f}")
    print(f"{'guidance':>13} {'budget':>8} {'GFLOPs/step':>12} {'ms/img/step':>12} {'vs full CFG':>12}")
    for g in guidance_rows:
        print(f"{g['mode']:>13} {g['budget']:8.4g} {g['gflops_per_step']:12.3f} {g['step_latency_ms_per_image']:12.4f} "
              f"{g['speedup_vs_full_cfg']:11.2f}x")
    print(os.path.abspath(path))
    return results


def main(argv=None) -> None:
    run_main(lambda: run(parse_config(InferenceConfig, argv, description=__doc__.split("\n\n")[0])))


if __name__ == "__main__":
    main()
