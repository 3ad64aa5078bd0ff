"""ELIT multibudget inference: one model at every budget -- images from the same noise, GFLOPs, latency, plots.

Budget rows: for every valid budget (or `budgets`), `num_images` images of `class_label` from the same noise
(image i uses seed + i, as in generate.py), sampled with the configured sampler and `cfg_scale` (default 1:
no guidance, as the paper's multibudget table); its GFLOPs per forward (per image, counted by
`torch.utils.flop_counter` on the meta device), the measured forward latency per image (batch
`latency_batch_size`, median of `latency_repeats` after every shape of the run was seen once), and the
sampling time per image (VAE excluded).

Guidance rows, at every budget b, with `guidance_scale` (one guided step = what the sampler evaluates):
    cfg            conditional and null-label passes both at b, batched in one forward of 2B   2 F(b)
    cheap_cfg      conditional pass at full budget, null-label pass at b                        F(1) + F(b)
    autoguidance   conditional pass at full budget, guiding pass at b with the real label       F(1) + F(b)
each with GFLOPs and measured latency per guided step (relative to standard CFG at full budget), the
sampling time per image and images. Every row is a SamplingPlan; sampling goes through sampling/run.py's
`sample_latents` and guided steps are timed through the samplers' `guided_velocity`, so the measured code
is the code that samples.

Without a checkpoint a random-init model at `resolution` (SD-VAE latents) measures cost only (no images).
Outputs in `output_dir`: results.json, budget_vs_gflops.png, budget_vs_latency.png, grid.png (a row per
budget), grid_guidance.png (a row per budget, a column per guidance mode) and images.npz (uint8 images).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys

import numpy as np
import torch

from dataio.codec import sd_vae_record
from models import build_model, parse_model_name
from models.flops import gflops_per_image
from samplers import FlowSteps, owner
from sampling.cost import guided_step_fn, measure, sample_gflops, step_gflops
from sampling.load import Decoder, image_resolution, load_for_sampling
from sampling.options import InferenceConfig
from sampling.plan import Budgets, resolve_plan
from sampling.run import draw_inputs, prepare_model, run_sampler, sample_latents
from utils.atomic import atomic_write, writable_dir, write_json
from utils.cli import reference_expectations, to_dict
from utils.device import allow_tf32, pick_device, use_attention_backend
from utils.errors import UserError, user_errors
from utils.plots import plot_grid, pyplot, savefig

DEFAULT_RESOLUTION = 256        # of the random-init model, when neither resolution nor a checkpoint gives one
GUIDANCE_MODES = {  # mode -> (conditional pass at full budget?, guiding pass keeps the real label?)
    "cfg": (False, False),
    "cheap_cfg": (True, False),
    "autoguidance": (True, True),
}
SWEPT = ("inference_budget", "unconditional_inference_budget", "budget_schedule")


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _needs_budgets(name: str) -> UserError:
    return UserError(f"{name} has no compute budgets: this script needs an {owner('inference_budget')} model")


def load_model(cfg: InferenceConfig, device):
    """(model, SamplingCheckpoint or None): from `ckpt` (checked against `model` / `resolution`), or a
    random-init `model` at `resolution`."""
    if cfg.ckpt:
        ck = load_for_sampling(cfg.ckpt, cfg.weights, device, expected=reference_expectations(cfg), model=cfg.model,
                               resolution=cfg.resolution)
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
            parse_model_name(cfg.model)
        with torch.device("meta"):                                     # ask the model, at no cost
            if not build_model(cfg.model).budget_levels:
                raise _needs_budgets(cfg.model)
        res = cfg.resolution or DEFAULT_RESOLUTION
        channels, size, _ = sd_vae_record(res)["latent_shape"]          # a random-init model on SD-VAE latents
        with user_errors(f"cannot build {cfg.model} at {res} px: "):
            model = build_model(cfg.model, input_size=size, in_channels=channels)
        model = model.to(device).eval().requires_grad_(False)
        ck = None
    if not model.budget_levels:
        raise _needs_budgets(model.arch["name"])
    return model, ck


def budget_label(model, b: float) -> str:
    return f"budget {b:g} ({round(b * model.slots)}/{model.slots})"


def plot_costs(results: dict, out_dir: str) -> tuple[str, str]:
    """budget_vs_gflops.png and budget_vs_latency.png: one forward and the guided step of every mode."""
    plt = pyplot()
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
    savefig(fig, gflops_path)

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
    savefig(fig, latency_path)
    return gflops_path, latency_path


def run(cfg: InferenceConfig) -> dict:
    """Every budget and guidance row of `cfg`: measure, sample, plot; write results.json; return the results."""
    given = [k for k in SWEPT if getattr(cfg, k) is not None] + (["autoguidance"] if cfg.autoguidance else [])
    if given:
        raise UserError(f"{given[0]} is swept by this script (every budget, every guidance mode); use --budgets")
    if cfg.num_images < 1 or cfg.latency_batch_size < 1 or cfg.latency_repeats < 1:
        raise UserError("num_images, latency_batch_size and latency_repeats must be >= 1")
    if cfg.guidance_scale == 1.0:
        raise UserError("guidance_scale 1 means no guidance: the guidance rows need a scale != 1")
    writable_dir(cfg.output_dir, "output folder")                      # a file or read-only: refused now
    device = pick_device(cfg.device, 0)
    allow_tf32(device)
    use_attention_backend(cfg.attention_backend)
    model, ck = load_model(cfg, device)
    if not 0 <= cfg.class_label < model.num_classes:
        raise UserError(f"class_label must be in [0, {model.num_classes - 1}], got {cfg.class_label}")
    path_type = ck.path_type if ck else "linear"
    meta = ck.dataset_meta if ck else None
    decoder = Decoder(meta, cfg.vae).load(model, device) if ck else None   # fails early when missing offline

    # Plans: the budget rows, the guidance rows; validation (budgets, sampler) happens here, before any work.
    levels = cfg.budgets if cfg.budgets is not None else sorted(model.budget_levels, reverse=True)
    budget_plans = {}
    for b in levels:
        plan = resolve_plan(model, dataclasses.replace(cfg, inference_budget=b), device, path_type, warn=note)
        budget_plans.setdefault(plan.budget, plan)                    # 0.3 and 0.25 may be the same level
    budgets = list(budget_plans)
    guide_cfg = dataclasses.replace(cfg, cfg_scale=cfg.guidance_scale)
    guidance_plans = {}
    for b in budgets:
        for mode, (full_cond, real_label) in GUIDANCE_MODES.items():
            guidance_plans[mode, b] = resolve_plan(model, dataclasses.replace(
                guide_cfg, inference_budget=1.0 if full_cond else b,
                unconditional_inference_budget=b if full_cond else None, autoguidance=real_label), device, path_type)
    reference_plan = resolve_plan(model, dataclasses.replace(guide_cfg, inference_budget=1.0), device, path_type)
    dtype = reference_plan.autocast_dtype(device)
    model = prepare_model(model, reference_plan)                      # the path generate.py samples with
    print(f"{model.arch['name']}: {len(budgets)} budgets x (1 + {len(GUIDANCE_MODES)} guidance modes) on "
          f"{device.type}, {'bf16 autocast' if dtype else 'fp32'}", flush=True)

    # FLOPs per forward (meta device: no memory, no time).
    flops = {b: gflops_per_image(model, budget=b) for b in sorted(set(budgets) | {1.0})}

    # Latency: warm every shape up once, then time.
    L = cfg.latency_batch_size
    forward_plans = {b: reference_plan.replace(cfg_scale=1.0, budgets=Budgets(b, None, None, False)) for b in flops}
    step_fns = {("forward", b): guided_step_fn(model, p, L, device) for b, p in forward_plans.items()}
    step_fns.update({key: guided_step_fn(model, p, L, device) for key, p in guidance_plans.items()})
    step_fns["cfg", "full"] = guided_step_fn(model, reference_plan, L, device)
    for fn in step_fns.values():
        fn()
    ms_per_image = {key: 1e3 * measure(fn, device, cfg.latency_repeats)[0] / L for key, fn in step_fns.items()}

    # Sampling (same noise for every row; VAE outside the timing) and decoding.
    indices = list(range(cfg.num_images))
    labels = torch.full((cfg.num_images,), cfg.class_label, dtype=torch.long)
    all_plans = {("budget", b): p for b, p in budget_plans.items()}
    all_plans.update(guidance_plans)
    noise, _, _ = draw_inputs(model, indices, cfg.seed, model.num_classes)
    for plan in all_plans.values():                                   # warm-up of the sampling shapes
        run_sampler(model, plan.replace(steps=FlowSteps(mode="ode", num_steps=1, heun=False)),
                    [n.to(device) for n in noise], labels.to(device))
    sampling, images = {}, {}
    for key, plan in all_plans.items():
        seconds, x = measure(lambda: sample_latents(model, plan, indices, seed=cfg.seed, labels=labels,
                                                    device=device), device)
        sampling[key] = seconds / cfg.num_images
        if decoder is not None:
            images[key] = decoder(x, cfg.num_images)

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
            mode=mode, budget=b, conditional_budget=plan.budget, guidance_budget=b,
            guidance_label="real" if real_label else "null", cfg_scale=plan.cfg_scale,
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
    write_outputs(results, images, budgets, model, cfg)
    return results


def write_outputs(results: dict, images: dict, budgets: list, model, cfg: InferenceConfig) -> None:
    """Plots, grids and images.npz (when there are images), results.json and the printed tables."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    gflops_path, latency_path = plot_costs(results, cfg.output_dir)
    results["files"].update(gflops_plot=os.path.basename(gflops_path), latency_plot=os.path.basename(latency_path))
    if images:
        labels = [budget_label(model, b) for b in budgets]
        grid = plot_grid([images["budget", b][None] for b in budgets], labels, os.path.join(cfg.output_dir, "grid.png"))
        gguid = plot_grid([np.stack([images[m, b] for m in GUIDANCE_MODES]) for b in budgets], labels,
                          os.path.join(cfg.output_dir, "grid_guidance.png"),
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
    for r in results["budgets"]:
        print(f"{r['budget']:8.4g} {r['latents_per_window']:3d} {r['gflops_per_forward']:9.3f} "
              f"{r['relative_gflops']:6.3f} {r['forward_latency_ms_per_image']:9.4f} {r['relative_latency']:6.3f} "
              f"{r['sampling_s_per_image']:13.4f}")
    print(f"{'guidance':>13} {'budget':>8} {'GFLOPs/step':>12} {'ms/img/step':>12} {'vs full CFG':>12}")
    for g in results["guidance"]:
        print(f"{g['mode']:>13} {g['budget']:8.4g} {g['gflops_per_step']:12.3f} {g['step_latency_ms_per_image']:12.4f} "
              f"{g['speedup_vs_full_cfg']:11.2f}x")
    print(os.path.abspath(path))
