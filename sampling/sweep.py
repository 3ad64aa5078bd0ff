"""Guidance sweep: CFG vs cheap CFG vs autoguidance over several guidance scales -- images, GFLOPs, plot, grid.

    python -m sampling.sweep --ckpt CKPT --cfg-scales 1 2 3 4 5 --output-dir DIR [--class-label 207]
        [--unconditional-inference-budget 0.0625] [--modes cfg cheap_cfg autoguidance] [--num-images 4]
    python -m sampling.sweep --model ELIT-SiT-XL/2 --resolution 256 --output-dir DIR      # GFLOPs only

The public reference's `elit_ccfg_inference.py` compares the three ways to guide an ELIT model at every scale
of `--cfg-scales`. One guided step (what the sampler evaluates, `samplers.guided_velocity`) costs

    cfg            conditional and null-label passes at the conditional budget b, batched    2 F(b)
    cheap_cfg      conditional pass at b, null-label pass at the low budget u                 F(b) + F(u)
    autoguidance   conditional pass at b, guiding pass at u with the real label               F(b) + F(u)

where b = `inference_budget` (default full) and u = `unconditional_inference_budget` (default: the model's
lowest budget level); scale 1 is one unguided pass F(b) for every mode. F comes from `torch.utils.flop_counter`
on the meta device (`models/flops.py`), per step and per sample from `sampling/cost.py` (guided only inside
[guidance_low, guidance_high]). Every image of every cell uses the same noise (image i: seed + i, as in
generate.py) and label, so a row shows what the mode does as the scale grows.

Outputs in `output_dir`: results.json (a row per mode x scale), guidance_gflops.png (GFLOPs per guided step
and per sample vs scale, one line per mode), grid.png (a row per mode, a column per scale) and images.npz.
Without a checkpoint a random-init `model` at `resolution` gives the GFLOPs rows only (built on the meta
device: no memory, no time). It is its own module (`python -m`) rather than a mode of
elit_multibudget_inference.py: that script sweeps budgets at one scale with its own options; this sweep
sweeps scales at one budget pair, and neither grows flags the other ignores.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dataio.codec import sd_vae_record
from models import build_model, parse_model_name
from models.flops import gflops_per_image
from samplers import owner
from sampling.cost import measure, sample_gflops, step_gflops
from sampling.load import Decoder, image_resolution, load_for_sampling
from sampling.options import OutputOptions, SamplingOptions
from sampling.plan import resolve_plan
from sampling.run import prepare_model, sample_latents
from utils.atomic import atomic_write, write_json
from utils.cli import opt, parse_config, to_dict
from utils.device import allow_tf32, pick_device, use_attention_backend
from utils.errors import UserError, run_main, user_errors
from utils.plots import plot_grid, pyplot, savefig

MODES = {  # mode -> (guiding pass at the low budget?, guiding pass keeps the real label?)
    "cfg": (False, False),
    "cheap_cfg": (True, False),
    "autoguidance": (True, True),
}
DEFAULT_RESOLUTION = 256        # of the random-init model when neither resolution nor a checkpoint gives one


@dataclass
class SweepConfig(SamplingOptions, OutputOptions):
    """python -m sampling.sweep: CFG vs cheap CFG vs autoguidance over guidance scales"""
    cfg_scales: list[float] = opt([1.0, 2.0, 3.0, 4.0, 5.0], "guidance scales to sweep (1 = no guidance)")
    modes: list[str] = opt(list(MODES), "guidance modes to compare: cfg, cheap_cfg, autoguidance")
    model: Optional[str] = opt(None, "model name; checked against the checkpoint, or a random-init model (GFLOPs only)")
    resolution: Optional[int] = opt(None, "image resolution in pixels of the random-init model (default 256)")
    class_label: Optional[int] = opt(None, "class of every image (default: each image's drawn label, as generate.py)")
    num_images: int = opt(4, "images per cell (the same noise in every cell)", ge=1)
    output_dir: str = opt("guidance_sweep", "where results.json, the plot and the grid go")


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def check_options(cfg: SweepConfig) -> None:
    """Knobs this sweep sets itself are refused; modes and scales are checked (before any loading)."""
    if cfg.cfg_scale != 1.0:
        raise UserError("cfg_scale is swept here: pass the scales as --cfg-scales 1 2 3 4 5")
    if cfg.autoguidance:
        raise UserError("autoguidance is one of the swept modes here: choose them with --modes")
    if cfg.budget_schedule is not None:
        raise UserError("budget_schedule is not swept: give a fixed inference_budget")
    if not cfg.cfg_scales:
        raise UserError("cfg_scales needs at least one scale")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad or not cfg.modes or len(set(cfg.modes)) != len(cfg.modes):
        raise UserError(f"modes must be distinct names among {', '.join(MODES)}, got {' '.join(cfg.modes)}")


def load_model(cfg: SweepConfig, device):
    """(model, SamplingCheckpoint or None): the checkpoint's model, or a random-init `model` on the meta device."""
    if cfg.ckpt:
        ck = load_for_sampling(cfg.ckpt, cfg.weights, device)
        name = ck.model.arch["name"]
        if cfg.model and cfg.model != name:
            raise UserError(f"--model {cfg.model} does not match the checkpoint's model {name}")
        return ck.model, ck
    if not cfg.model:
        raise UserError("pass --ckpt, or --model (and --resolution) for the GFLOPs of a random-init model")
    with user_errors():
        parse_model_name(cfg.model)
    channels, size, _ = sd_vae_record(cfg.resolution or DEFAULT_RESOLUTION)["latent_shape"]
    with user_errors(f"cannot build {cfg.model}: "), torch.device("meta"):
        return build_model(cfg.model, input_size=size, in_channels=channels).eval(), None


def mode_plans(model, cfg: SweepConfig, device, path_type: str) -> dict:
    """{(mode, scale): SamplingPlan}; the low budget defaults to the model's lowest level."""
    low_modes = [m for m in cfg.modes if MODES[m][0]]
    if low_modes and not model.budget_levels:
        raise UserError(f"{' and '.join(low_modes)} need a model with compute budgets ({owner('inference_budget')}); "
                        f"{model.arch['name']} has none: pass --modes cfg")
    low = cfg.unconditional_inference_budget
    if low is None and low_modes:
        low = min(model.budget_levels)
    plans = {}
    for mode in cfg.modes:
        cheap, real_label = MODES[mode]
        for s in cfg.cfg_scales:
            opts = dataclasses.replace(cfg, cfg_scale=s, unconditional_inference_budget=low if cheap else None,
                                       autoguidance=real_label)
            if s == 1.0:            # unguided: the same plan for every mode (no warning about ignored knobs)
                opts = dataclasses.replace(opts, unconditional_inference_budget=None, autoguidance=False,
                                           guidance_low=0.0, guidance_high=1.0)
            plans[mode, s] = resolve_plan(model, opts, device, path_type, warn=note)
    return plans


def plot_gflops(results: dict, path: str) -> str:
    """GFLOPs per guided step (left) and per sample (right) against the guidance scale, one line per mode."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "gflops_per_step", "GFLOPs per guided step (per image)"),
                           (axes[1], "gflops_per_sample", "GFLOPs per sample (per image)")):
        for mode, style in zip(results["settings"]["modes"], ("o-", "s--", "^:")):   # cheap CFG = autoguidance cost
            pts = sorted((r["cfg_scale"], r[key]) for r in results["rows"] if r["mode"] == mode)
            ax.plot(*zip(*pts), style, label=mode)
        ax.set(xlabel="guidance scale", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['model']}: guidance cost (conditional budget {results['settings']['conditional_budget']}, "
                 f"low budget {results['settings']['low_budget']})")
    savefig(fig, path)
    return path


def run(cfg: SweepConfig) -> dict:
    """Every mode x scale of `cfg`: GFLOPs, and with a checkpoint images and sampling time; write the outputs."""
    check_options(cfg)
    device = pick_device(cfg.device, 0)
    allow_tf32(device)
    use_attention_backend(cfg.attention_backend)
    model, ck = load_model(cfg, device)
    if cfg.class_label is not None and not 0 <= cfg.class_label < model.num_classes:
        raise UserError(f"class_label must be in [0, {model.num_classes - 1}], got {cfg.class_label}")
    path_type = ck.path_type if ck else "linear"
    plans = mode_plans(model, cfg, device, path_type)                   # every knob checked before any work
    decoder = Decoder(ck.dataset_meta, cfg.vae).load(model, device) if ck else None

    budgets = {p.budget for p in plans.values()} | {p.unconditional_budget for p in plans.values()
                                                     if p.unconditional_budget is not None}
    flops = {b: gflops_per_image(model, **({} if b is None else {"budget": b})) for b in budgets}   # None: no budgets
    cfg_step = {s: step_gflops(plans[m, s], flops) for (m, s) in plans if m == "cfg"}

    images, seconds = {}, {}
    if ck is not None:
        indices = list(range(cfg.num_images))
        labels = None if cfg.class_label is None else torch.full((cfg.num_images,), cfg.class_label)
        done = {}
        sampler_model = prepare_model(model, next(iter(plans.values())))   # the path generate.py samples with
        for key, plan in plans.items():                               # scale 1: one sample shared by the modes
            if plan not in done:
                t, x = measure(lambda: sample_latents(sampler_model, plan, indices, seed=cfg.seed, labels=labels,
                                                      device=device), device)
                done[plan] = (t / cfg.num_images, decoder(x, cfg.num_images))
            seconds[key], images[key] = done[plan]

    rows = []
    for (mode, s), plan in plans.items():
        real_label = MODES[mode][1]
        row = dict(mode=mode, cfg_scale=s, conditional_budget=plan.budget,
                   guidance_budget=(plan.unconditional_budget or plan.budget) if s != 1.0 else None,
                   guidance_label=None if s == 1.0 else ("real" if real_label else "null"),
                   gflops_per_step=step_gflops(plan, flops), gflops_per_sample=sample_gflops(plan, flops),
                   model_evaluations=len(plan.model_evaluations()),
                   relative_to_cfg=step_gflops(plan, flops) / cfg_step[s] if s in cfg_step else None,
                   sampling_s_per_image=seconds.get((mode, s)))
        rows.append(row)
    first = next(iter(plans.values()))
    low = next((p.unconditional_budget for p in plans.values() if p.unconditional_budget is not None), None)
    results = dict(
        model=model.arch["name"], arch=model.arch, checkpoint=os.path.abspath(cfg.ckpt) if cfg.ckpt else None,
        step=ck.step if ck else None, weights=cfg.weights if ck else "random-init",
        image_resolution=image_resolution(model, ck.dataset_meta if ck else None), device=device.type,
        settings=dict(modes=list(cfg.modes), cfg_scales=list(cfg.cfg_scales), conditional_budget=first.budget,
                      low_budget=low, mode=cfg.mode, num_steps=cfg.num_steps, heun=cfg.heun, path_type=path_type,
                      guidance_low=cfg.guidance_low, guidance_high=cfg.guidance_high, seed=cfg.seed,
                      class_label=cfg.class_label, num_images=cfg.num_images),
        gflops_per_forward={str(k): v for k, v in sorted(flops.items(), key=lambda kv: -(kv[0] or 1))},
        rows=rows, files={}, config=to_dict(cfg))
    write_outputs(results, images, cfg)
    return results


def write_outputs(results: dict, images: dict, cfg: SweepConfig) -> None:
    """The plot, the grid and images.npz (when there are images), results.json and a printed table."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    plot = plot_gflops(results, os.path.join(cfg.output_dir, "guidance_gflops.png"))
    results["files"]["gflops_plot"] = os.path.basename(plot)
    if images:
        scales, modes = cfg.cfg_scales, cfg.modes
        grid = plot_grid([np.stack([images[m, s] for s in scales]) for m in modes], list(modes),
                         os.path.join(cfg.output_dir, "grid.png"), col_labels=[f"scale {s:g}" for s in scales])
        npz = os.path.join(cfg.output_dir, "images.npz")
        atomic_write(npz, lambda f: np.savez(f, modes=np.array(modes), cfg_scales=np.array(scales),
                                             images=np.stack([np.stack([images[m, s] for s in scales])
                                                              for m in modes])))     # (modes, scales, n, H, W, 3)
        results["files"].update(grid=os.path.basename(grid), images=os.path.basename(npz))
    path = os.path.join(cfg.output_dir, "results.json")
    write_json(path, results, indent=2)
    print(f"{'mode':>13} {'scale':>6} {'GFLOPs/step':>12} {'vs CFG':>7} {'GFLOPs/sample':>14} {'s/img':>8}")
    for r in results["rows"]:
        t = "-" if r["sampling_s_per_image"] is None else f"{r['sampling_s_per_image']:.3f}"
        print(f"{r['mode']:>13} {r['cfg_scale']:6g} {r['gflops_per_step']:12.3f} {r['relative_to_cfg'] or 1:7.3f} "
              f"{r['gflops_per_sample']:14.2f} {t:>8}")
    print(os.path.abspath(path))


def main(argv=None) -> None:
    run_main(lambda: run(parse_config(SweepConfig, argv, description=__doc__.split("\n\n")[0])))


if __name__ == "__main__":
    main()
