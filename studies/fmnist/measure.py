"""Measurements of a model at a point of training: its sampling model (EMA weights), samples of a row, their
metrics against the test set, the held-out loss, latency, and FLOP accounting (models.flops tables).

Sampling (GPU): a bf16 copy of the EMA weights behind `models.graphs.GraphedModel` (one CUDA graph per shape
and budget, captured once; the EMA is copied into the same parameters before every measurement, so graphs
stay valid). CPU: the fp32 EMA itself. Image i of every row and every curve point has label i % 10 and the
per-image seed seed + i (sampling.run), so every configuration starts from the same noise.
"""

from __future__ import annotations

import copy
import json
import math
import time
from types import SimpleNamespace

import numpy as np
import torch

from dataio.codec import pixels_to_uint8
from evaluation import evaluate
from loss import FlowMatchingLoss, per_sample_mse, slice_draws
from models import build_from_arch
from models.flops import gflops_per_image
from models.graphs import GraphedModel, cast_parameters
from samplers import guided_velocity
from sampling import cost
from sampling.plan import resolve_plan
from sampling.run import sample_latents
from studies.fmnist.rows import FULL_ROW
from studies.fmnist.state import Study

HELDOUT_SEED_OFFSET = 1_000_003
HELDOUT_CHUNK = 500


_FLOP_TABLES: dict = {}


def flop_table(arch: dict) -> dict:
    """GFLOPs per image of one forward: {None: F} without budgets (SiT); {b: F(b)} for every level (ELIT)."""
    key = json.dumps(arch, sort_keys=True, default=str)
    if key not in _FLOP_TABLES:
        _FLOP_TABLES[key] = _count(arch)
    return _FLOP_TABLES[key]


def _count(arch: dict) -> dict:
    with torch.device("meta"):
        levels = build_from_arch(arch).budget_levels
    if not levels:
        return {None: gflops_per_image(SimpleNamespace(arch=arch))}
    return {b: gflops_per_image(SimpleNamespace(arch=arch), budget=b) for b in levels}


def training_gflops(study: Study, key: str, steps: int) -> float:
    """Training GFLOPs of `steps` steps: 3 x forward (forward + backward) x batch, summed over the steps'
    budgets as the loop draws them (a pure function of seed and step)."""
    run, table = study.runs[key], study.flops[key]
    per = [table[run.budget_of(s)] if None not in table else table[None] for s in range(steps)]
    return 3.0 * study.p.global_batch_size * sum(per)


# ----------------------------------------------------------------------------------------------------------
def make_sampling_model(study: Study, key: str) -> None:
    """The sampling model of `key`: GPU with cuda_graphs: bf16 copy + graph replay; else the EMA itself."""
    ema = study.runs[key].ema
    if study.device.type == "cuda" and study.cfg.cuda_graphs:
        copied = cast_parameters(copy.deepcopy(ema).eval().requires_grad_(False))
        study.evals[key] = dict(call=GraphedModel(copied), copy=copied, path="bf16 weights + CUDA graphs")
    else:
        path = "eager bf16 autocast" if study.device.type == "cuda" else "eager fp32"
        study.evals[key] = dict(call=ema, copy=None, path=path)


def eager_fallback(study: Study, key: str, error: Exception) -> bool:
    """After a failure of the graphed sampling model of `key`: sample and time the EMA eagerly from now on.
    False when it already was eager (the caller re-raises)."""
    if study.evals[key]["copy"] is None:
        return False
    study.say(f"{key}: CUDA-graph sampling failed ({type(error).__name__}: {str(error)[:300]}); eager from here")
    study.evals[key] = dict(call=study.runs[key].ema, copy=None, path="eager bf16 autocast (graphs failed)")
    return True


def with_fallback(study: Study, row: dict, fn):
    """fn(), retried once eagerly if the row's graphed sampling model fails."""
    try:
        return fn()
    except Exception as e:                                  # noqa: BLE001
        if not eager_fallback(study, row["record"]["model"], e):
            raise
        return fn()


def refresh(study: Study, key: str) -> None:
    """Copy the current EMA weights into the sampling copy (in place: captured graphs stay valid)."""
    target = study.evals[key]["copy"]
    if target is not None:
        with torch.no_grad():
            for dst, src in zip(target.parameters(), study.runs[key].ema.parameters()):
                dst.copy_(src)


def plan_of(study: Study, row: dict):
    return resolve_plan(study.runs[row["record"]["model"]].ema, row["opts"], study.device, "linear",
                        warn=study.say)


def row_costs(study: Study, row: dict) -> None:
    plan, table = plan_of(study, row), study.flops[row["record"]["model"]]
    row["record"].update(gflops=cost.step_gflops(plan, table), gflops_per_sample=cost.sample_gflops(plan, table))


def latency(study: Study, row: dict) -> float:
    """Seconds of one (guided) step at batch sample_batch_size, median of latency_repeats after warm-up (the
    first call captures the graphs that sampling replays); stored per image in the row."""
    return with_fallback(study, row, lambda: _latency(study, row))


def _latency(study: Study, row: dict) -> float:
    ev, L = study.evals[row["record"]["model"]], study.p.sample_batch_size
    fn = cost.guided_step_fn(ev["call"], plan_of(study, row), L, study.device)
    fn(), fn()
    seconds = cost.measure(fn, study.device, study.p.latency_repeats)[0]
    row["record"].update(latency_ms_per_image=1e3 * seconds / L, latency_path=ev["path"])
    row["step_seconds"] = seconds
    return seconds


def sampling_seconds(study: Study, row: dict, n: int) -> float:
    """Estimated wall time of n samples of `row` from its measured step time (0 when unknown)."""
    return math.ceil(n / study.p.sample_batch_size) * study.p.sampling_steps * row.get("step_seconds", 0.0)


# ----------------------------------------------------------------------------------------------------------
def sample(study: Study, row: dict, n: int) -> np.ndarray:
    """uint8 (n, 32, 32, 3) images of `row`: image i has label i % 10 and seed seed + i."""
    return with_fallback(study, row, lambda: _sample(study, row, n))


def _sample(study: Study, row: dict, n: int) -> np.ndarray:
    model_key = row["record"]["model"]
    call, plan, b = study.evals[model_key]["call"], plan_of(study, row), study.p.sample_batch_size
    labels = torch.arange(n) % 10
    parts = []
    for lo in range(0, n, b):
        x = sample_latents(call, plan, range(lo, min(lo + b, n)), seed=study.cfg.seed, labels=labels[lo:lo + b],
                           device=study.device)
        parts.append(pixels_to_uint8(x).cpu().numpy())
    return np.concatenate(parts)


def metrics(study: Study, images: np.ndarray) -> dict:
    """FD, precision, recall (classifier features) and accuracy w.r.t. the drawn labels (i % 10)."""
    m = evaluate(images, study.ref, study.net, labels=np.arange(len(images)) % 10, batch_size=500)
    return dict(fd=m["fid"], precision=m["precision"], recall=m["recall"], accuracy=m["classifier_accuracy"])


@torch.no_grad()
def heldout(study: Study, key: str, row: dict = None) -> float:
    """Held-out flow-matching loss of the EMA weights (fp32) on the first heldout_items test images, with one
    draw of noise and times from one seed shared by every model, budget and point (no label dropout). A row's
    budget and guidance apply; for guidance rows it is the MSE of the guided velocity to the same target."""
    if "heldout" not in study.data:
        x, y = study.data["test"]
        n = min(study.p.heldout_items, len(x))
        x0 = torch.from_numpy(x[:n]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(study.device)
        g = torch.Generator().manual_seed(study.cfg.seed + HELDOUT_SEED_OFFSET)
        fm = FlowMatchingLoss("linear", study.cfg.weighting, label_dropout=0.0)
        study.data["heldout"] = (fm, x0, torch.from_numpy(y[:n]).to(study.device),
                                 fm.draw(n, tuple(x0.shape[1:]), generator=g, device=study.device))
        study.results["settings"]["heldout"] = dict(items=n, seed=study.cfg.seed + HELDOUT_SEED_OFFSET,
                                                    time_distribution=study.cfg.weighting, precision="fp32")
    fm, x0, y, draws = study.data["heldout"]
    model = study.runs[key].ema
    plan = plan_of(study, row) if row is not None else None
    forward = lambda xs, t, y_, b: [model(xs[0], t, y_, budget=b)]                    # noqa: E731
    total = 0.0
    for lo in range(0, len(x0), HELDOUT_CHUNK):
        d, xb, yb = slice_draws(draws, lo, lo + HELDOUT_CHUNK), x0[lo:lo + HELDOUT_CHUNK], y[lo:lo + HELDOUT_CHUNK]
        if plan is None or plan.cfg_scale == 1.0:
            loss = fm(model, xb, yb, budget=None if plan is None else plan.budget, draws=d).loss
        else:
            x_t = fm.path.interpolate(xb, d["noise"], d["t"])
            v = guided_velocity(forward, [x_t], d["t"], yb, scales=[plan.cfg_scale], null_label=model.num_classes,
                                budget=plan.budget, unconditional_budget=plan.unconditional_budget,
                                autoguidance=plan.autoguidance)[0]
            loss = per_sample_mse(v, fm.path.velocity(xb, d["noise"], d["t"]))
        total += loss.sum().item()
    return total / len(x0)


def curve_point(study: Study, key: str, n: int) -> dict:
    """One learning-curve point of model `key` at its current step: n samples at full budget, no guidance."""
    start = time.time()
    run = study.runs[key]
    refresh(study, key)
    row = next(r for r in study.rows if r["record"]["key"] == FULL_ROW[key])
    point = dict(step=run.step, images=run.step * study.p.global_batch_size,
                 training_gflops=training_gflops(study, key, run.step), num_samples=n,
                 train_loss=run.loss_log[-1][1] if run.loss_log else None, heldout_loss=heldout(study, key))
    images = sample(study, row, n)
    point.update(metrics(study, images), seconds=round(time.time() - start, 2))
    point.update(fd_small=point["fd"], accuracy_small=point["accuracy"])      # (the curve's sample size)
    return point
