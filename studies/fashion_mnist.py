"""Does ELIT deliver its claims at small scale? SiT-S/2 vs multibudget ELIT-SiT-S/2 on Fashion-MNIST, one command.

    python studies/fashion_mnist.py --source /usr/share/datasets/fashion-mnist --work /tmp/fm-work --out OUT
    python studies/fashion_mnist.py --smoke --source DIR --work W --out O      # tiny models on the CPU, < 1 min

The claims tested (SPEC, "reference results"): (a) at equal training compute ELIT-SiT beats SiT; (b) one
multibudget model trades quality for FLOPs smoothly across budgets; (c) cheap CFG (unconditional pass at a low
budget) matches standard CFG at about a third less compute per guided step. Setting: Fashion-MNIST zero-padded
to 32x32, 1 channel, pixel space; patch 2 -> a 16x16 token grid (ImageNet-256 latents' grid); ELIT group size 4
-> 16 windows of 16 latent slots, trained multibudget over all 16 levels (mask probability 0 .. 15/16).

Stages (each prints a line with the elapsed time; a failing stage is recorded in results.json and the stages
that do not depend on it still run):
    data            `dataset_tools.py fashion-mnist`'s importer -> WORK/data/{train,test} (idempotent)
    classifier      studies/classifier.py -> WORK/classifier.pt (TorchScript feature network) + test accuracy
    train * probe   SiT-S/2, then ELIT-SiT-S/2, `probe_steps` steps each through training.Trainer; their logged
                    img/s set the step cap (below)
    train *         both continue (exact resume) to the same capped step count
    load *          EMA weights; held-out flow-matching loss of every row on WORK's test subset, with the same
                    fixed noise and times (FlowMatchingLoss.draw from one seed) for every model and budget
    sample *        `num_samples` images per row, labels balanced (image i has label i % 10 and the seed
                    seed + i of generate.py: every row starts from the same noise), Euler ODE
    latency *       one forward (one guided step for the guidance rows) at batch `latency_batch_size`, median of
                    `latency_repeats` after warm-up; bf16 + CUDA-graph replay on GPUs (models/graphs.py)
    metrics         evaluation.evaluate with the classifier as feature network against the test set: Frechet
                    distance (FD), precision/recall, classifier accuracy w.r.t. the sampled labels
    report          OUT/results.json, report.md, fd_vs_gflops.png, grids.png, loss_curves.png, study.log

Rows: SiT; ELIT at each of `budgets` (no guidance); with `guidance_scale` and the conditional pass at full
budget: CFG (null-label pass at full budget, batched), cheap CFG (null-label pass at `guidance_budget`),
autoguidance (guiding pass at `guidance_budget` with the real label). GFLOPs are per image and forward
(per guided step for the guidance rows), counted by models.flops. A "data" reference row evaluates
`num_samples` real training images the same way: the floor of FD at this sample size.

Time guard: the whole command aims to finish within `time_budget_minutes`. After both probes, the step count of
BOTH models is capped so that the remaining training, plus an estimate of everything after it (sampling FLOPs
at the measured training FLOP rate x SAMPLING_SAFETY, plus POST_TRAINING_S), fits; before sampling, the sample
count is reduced (equally for every row) if it no longer fits. Rows still unsampled HARD_DEADLINE_S after the
budget are skipped. Checkpoints, datasets and sample batches stay in WORK (rerunning resumes training; sample
batches are `evaluate.py`-ready .npz files with labels in arr_1).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import re
import sys
import time
import traceback
from fractions import Fraction
from types import SimpleNamespace
from typing import Callable, Optional

if __package__ in (None, ""):                                  # `python studies/fashion_mnist.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from config import (ClassifierConfig, FashionMnistConfig, FashionMnistStudyConfig, GenerateConfig, TrainConfig,
                    parse_config, to_dict)
from errors import UserError, run_main

MODELS = {"sit": "SiT-S/2", "elit": "ELIT-SiT-S/2"}
GROUP_SIZE = 4                                                  # 16x16 tokens -> 16 windows of 4x4
PRESETS = {  # values of the options left at None, per mode
    "full": dict(steps=3000, global_batch_size=256, learning_rate=2e-4, warmup_steps=100, ema_decay=0.99,
                 probe_steps=60, log_every=20, num_workers=4, num_samples=2000, sample_batch_size=500,
                 sampling_steps=50, heldout_items=2000, num_reference=None, latency_batch_size=256,
                 latency_repeats=10, classifier_epochs=None, classifier_items=None),
    "smoke": dict(steps=6, global_batch_size=8, learning_rate=1e-3, warmup_steps=0, ema_decay=0.5, probe_steps=3,
                  log_every=1, num_workers=0, num_samples=20, sample_batch_size=20, sampling_steps=4,
                  heldout_items=16, num_reference=200, latency_batch_size=4, latency_repeats=2, classifier_epochs=2,
                  classifier_items=512),
}
SMOKE_MODEL = dict(hidden_size=32, depth=4, num_heads=2)       # registry sizes overridden (Trainer model_kwargs)
SMOKE_ELIT = dict(elit_head_depth=1, elit_tail_depth=1)
SMOKE_CLASSIFIER = dict(width=4, feature_dim=16, batch_size=64)

# Time guard.
SAMPLING_SAFETY = 1.25         # sampling FLOPs run at most this much slower than training FLOPs (small budgets)
POST_TRAINING_S = 45.0         # loading, held-out loss, latency, metrics, plots (sampling: estimated)
POST_SAMPLING_S = 40.0         # latency, metrics, plots
TRAINER_OVERHEAD_S = 10.0      # per continued run: Trainer construction, checkpoint load/save, sample grid
HARD_DEADLINE_S = 60.0         # rows not started this long after the budget are skipped
HELDOUT_SEED_OFFSET = 1_000_003

# Claim thresholds (stated in the report).
A_MARGIN = 0.05                # (a) holds if FD(ELIT, 1) <= (1 - A_MARGIN) FD(SiT) at <= SiT's training FLOPs;
                               #     fails if FD(ELIT, 1) >= (1 + A_MARGIN) FD(SiT); inconclusive in between
B_FD_TOL = 0.10                # (b) monotone: halving the budget never lowers FD by more than B_FD_TOL (relative)
B_ACC_TOL = 0.02               #     ... nor raises accuracy by more than B_ACC_TOL (absolute)
B_MAX_RATIO = 2.0              #     graceful: no halving of the budget multiplies FD by more than B_MAX_RATIO
C_FD_TOL = 0.10                # (c) FD(cheap CFG) <= (1 + C_FD_TOL) FD(CFG)
C_ACC_TOL = 0.02               #     accuracy(cheap CFG) >= accuracy(CFG) - C_ACC_TOL
C_MIN_SAVING = 0.25            #     and >= 25% fewer GFLOPs per guided step ("about a third")
MIN_SAMPLE_ACCURACY = 0.5      # no claim is judged unless SiT's and full-budget ELIT's samples are recognisable:
                               # the classifier must give the drawn label for at least half of them (chance: 0.1)
THRESHOLDS = dict(a_margin=A_MARGIN, b_fd_tol=B_FD_TOL, b_acc_tol=B_ACC_TOL, b_max_ratio=B_MAX_RATIO,
                  c_fd_tol=C_FD_TOL, c_acc_tol=C_ACC_TOL, c_min_saving=C_MIN_SAVING)
OUT_FILES = ("results.json", "report.md", "fd_vs_gflops.png", "grids.png", "loss_curves.png", "study.log")


class Skipped(Exception):
    """A stage whose prerequisites failed."""


def fraction(b: Optional[float]) -> str:
    return "1" if b is None else str(Fraction(b).limit_denominator(256))


def process_start_time() -> float:
    """Wall-clock time this process started (Linux: /proc), so the time budget counts the imports too."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])        # field 22: starttime, clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        start = boot + ticks / os.sysconf("SC_CLK_TCK")
        return start if 0 <= time.time() - start < 3600 else time.time()
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def median_or_none(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def level(budget: float) -> float:
    """A budget fraction -> the ELIT level the model uses (k / K, K = GROUP_SIZE^2 slots per window)."""
    slots = GROUP_SIZE ** 2
    return math.floor(budget * slots + 1e-6) / slots


LOG_LINE = re.compile(r"step (\d+): loss ([-+0-9.eEnaif]+), ([0-9.]+) img/s")


def read_training_log(path: str) -> list[tuple[int, float, float]]:
    """(step, loss, img/s) of every step line of a Trainer log.txt."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [(int(m[1]), float(m[2]), float(m[3])) for m in map(LOG_LINE.search, f) if m]


# ----------------------------------------------------------------------------------------------------------

class Study:
    """The stages of the study over one resolved configuration; `results` is what results.json holds."""

    def __init__(self, cfg: FashionMnistStudyConfig, start: Optional[float] = None):
        """`start`: when the time budget began (default: now)."""
        self.start = time.time() if start is None else start
        self.cfg = cfg
        mode = "smoke" if cfg.smoke else "full"
        self.p = SimpleNamespace(**{k: getattr(cfg, k) if getattr(cfg, k) is not None else v
                                    for k, v in PRESETS[mode].items()})
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no GPU is visible")
        self.deadline = cfg.time_budget_minutes * 60.0
        self.work, self.out = os.path.abspath(cfg.work), os.path.abspath(cfg.out)
        self.data_dir = os.path.join(self.work, "data")
        self.classifier_path = os.path.join(self.work, "classifier.pt")
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        for name in OUT_FILES:                                  # a rerun never mixes in an older run's outputs
            if os.path.exists(os.path.join(self.out, name)):
                os.unlink(os.path.join(self.out, name))
        self.log_path = os.path.join(self.out, "study.log")
        self.status: dict[str, str] = {}
        self.arch: dict[str, dict] = {}
        self.flops: dict[str, dict] = {}                        # model -> {budget fraction or None: GFLOPs/forward}
        self.step_seconds: dict[str, Optional[float]] = {}
        self.models: dict = {}                                  # model -> SamplingCheckpoint (EMA weights)
        self.samples: dict[str, np.ndarray] = {}
        self.num_samples = self.p.num_samples
        self.steps_cap = self.p.steps
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.results = dict(
            study="Fashion-MNIST: SiT-S/2 vs multibudget ELIT-SiT-S/2", mode=mode, device=str(self.device),
            device_name=gpu or "cpu", torch=torch.__version__, cuda=torch.version.cuda if gpu else None,
            command=" ".join(sys.argv), started=time.strftime("%Y-%m-%d %H:%M:%S"), config=to_dict(cfg),
            settings=dict(vars(self.p), models=MODELS, group_size=GROUP_SIZE, thresholds=THRESHOLDS,
                          smoke_model=dict(SMOKE_MODEL, **SMOKE_ELIT) if cfg.smoke else None),
            status=self.status, errors={}, timings={}, data={}, classifier={}, training={}, rows=[],
            reference={}, claims={}, files=[])
        self.rows = self.define_rows()
        self.results["rows"] = [r["record"] for r in self.rows]

    # ------------------------------------------------------------------------------------------------------
    # Bookkeeping.
    def elapsed(self) -> float:
        return time.time() - self.start

    def say(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f} s] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save_results(self) -> None:
        from evaluation import write_json
        self.results.update(total_seconds=round(self.elapsed(), 1),
                            gpu_minutes=round(self.elapsed() / 60, 2) if self.device.type == "cuda" else 0.0)
        write_json(os.path.join(self.out, "results.json"), self.results)

    def stage(self, name: str, fn: Callable[[], None], needs=()) -> bool:
        """Run one stage: progress lines, its time, and its error (if any) recorded; never raises (but Ctrl-C)."""
        missing = [n for n in needs if self.status.get(n) != "ok"]
        start = time.time()
        try:
            if missing:
                raise Skipped(f"needs {', '.join(missing)}")
            self.say(f"{name}: start")
            fn()
            self.status[name] = "ok"
            self.say(f"{name}: done in {time.time() - start:.1f} s")
        except Skipped as e:
            self.status[name] = "skipped"
            self.results["errors"][name] = f"skipped: {e}"
            self.say(f"{name}: skipped ({e})")
        except Exception as e:                                  # noqa: BLE001  (recorded; later stages go on)
            self.status[name] = "error"
            self.results["errors"][name] = f"{type(e).__name__}: {e}"
            self.say(f"{name}: FAILED after {time.time() - start:.1f} s: {type(e).__name__}: {e}")
            with open(self.log_path, "a") as f:
                f.write(traceback.format_exc())
        finally:
            self.results["timings"][name] = round(time.time() - start, 2)
            self.save_results()
        return self.status[name] == "ok"

    # ------------------------------------------------------------------------------------------------------
    # Rows.
    def define_rows(self) -> list[dict]:
        """Every configuration: its record (results.json) and its sampling options (a GenerateConfig)."""
        cfg, p = self.cfg, self.p
        base = GenerateConfig(num_steps=p.sampling_steps, precision="bf16", fast=False, seed=cfg.seed)
        rows = [dict(record=dict(key="sit", label="SiT-S/2", model="sit", budget=None, guidance=None),
                     gen=base)]
        for b in cfg.budgets:
            rows.append(dict(record=dict(key=f"elit_b{b:g}", label=f"ELIT-SiT-S/2 b={fraction(b)}", model="elit",
                                         budget=b, guidance=None),
                             gen=dataclasses.replace(base, inference_budget=b)))
        s, gb = cfg.guidance_scale, cfg.guidance_budget
        guided = dataclasses.replace(base, cfg_scale=s, inference_budget=1.0)
        for key, label, extra in (
                ("cfg", f"CFG {s:g}", {}),
                ("cheap_cfg", f"cheap CFG {s:g} (uncond. b={fraction(gb)})", dict(unconditional_inference_budget=gb)),
                ("autoguidance", f"autoguidance {s:g} (guide b={fraction(gb)})",
                 dict(unconditional_inference_budget=gb, autoguidance=True))):
            rows.append(dict(record=dict(key=key, label=label, model="elit", budget=1.0, guidance=key,
                                         guidance_scale=s, guidance_budget=None if key == "cfg" else gb),
                             gen=dataclasses.replace(guided, **extra)))
        for r in rows:
            r["record"].update(gflops=None, gflops_per=("guided step" if r["record"]["guidance"] else "forward"),
                               gflops_per_sample=None, latency_ms_per_image=None, latency_path=None,
                               heldout_loss=None, fd=None, precision=None, recall=None, accuracy=None,
                               inception_score=None, num_samples=None, sampling_seconds=None, error=None)
        return rows

    def rows_of(self, model: str) -> list[dict]:
        return [r for r in self.rows if r["record"]["model"] == model]

    def plan(self, row: dict, model) -> dict:
        """generate.py's sampling plan of a row, with the budget keys guided_step_fn / step_gflops read."""
        from generate import resolve_sampling
        plan = resolve_sampling(model, row["gen"], self.device, "linear", warn=self.say)
        plan.setdefault("budget", None)
        plan.setdefault("unconditional_budget", None)
        plan.setdefault("autoguidance", False)
        return plan

    def row_gflops(self, row: dict, plan: dict) -> tuple[float, float]:
        """(GFLOPs per image of one forward / guided step, GFLOPs per sample) from the model's FLOP table."""
        from elit_multibudget_inference import sample_gflops, step_gflops
        table = self.flops[row["record"]["model"]]
        if row["record"]["model"] == "sit":
            table, plan = {1.0: table[None]}, dict(plan, budget=1.0)
        return step_gflops(plan, table), sample_gflops(plan, table)

    # ------------------------------------------------------------------------------------------------------
    # Stages.
    def import_data(self) -> None:
        from dataset_tools import fashion_mnist
        from data import load_dataset
        for split in ("train", "test"):
            fashion_mnist(FashionMnistConfig(source=self.cfg.source, dest=self.data_dir, split=split,
                                             resolution=32, channels=1))
        train, test = (load_dataset(os.path.join(self.data_dir, s)) for s in ("train", "test"))
        self.results["data"] = dict(source=os.path.abspath(self.cfg.source), folder=self.data_dir,
                                    train=len(train), test=len(test), resolution=train.meta["resolution"],
                                    channels=train.meta["channels"], classes=train.meta["class_names"])
        self.say(f"data: {len(train)} train, {len(test)} test images, 32x32x1")

    def train_classifier(self) -> None:
        from studies.classifier import train_classifier
        defaults = ClassifierConfig()
        kw = dict(SMOKE_CLASSIFIER) if self.cfg.smoke else {}
        ccfg = ClassifierConfig(data=self.data_dir, out=self.classifier_path,
                                epochs=self.p.classifier_epochs or defaults.epochs,
                                max_train_items=self.p.classifier_items, seed=self.cfg.seed, device=str(self.device),
                                **kw)
        self.results["classifier"] = train_classifier(ccfg, log=self.say)

    def train_config(self, name: str, steps: int, resume: bool) -> TrainConfig:
        cfg, p = self.cfg, self.p
        elit = name == "elit"
        return TrainConfig(
            model=MODELS[name], data_dir=os.path.join(self.data_dir, "train"), exp_name=name,
            output_dir=os.path.join(self.work, "runs"), global_batch_size=p.global_batch_size, max_train_steps=steps,
            learning_rate=p.learning_rate, warmup_steps=p.warmup_steps, ema_decay=p.ema_decay,
            label_dropout=cfg.label_dropout, weighting=cfg.weighting, seed=cfg.seed, mixed_precision="bf16",
            compile=cfg.compile, checkpointing_steps=10**9, resume_step=-1 if resume else 0, report_to="none",
            log_every=p.log_every, sample_every=0, progress=False, num_workers=p.num_workers,
            sample_num_steps=p.sampling_steps, sample_cfg_scale=cfg.guidance_scale,
            elit_group_size=GROUP_SIZE if elit else None, elit_min_mask_prob=0.0 if elit else None,
            elit_max_mask_prob=1.0 - 1.0 / GROUP_SIZE**2 if elit else None)

    def run_dir(self, name: str) -> str:
        return os.path.join(self.work, "runs", name)

    def fit(self, name: str, steps: int, probe: bool = False) -> None:
        """Train model `name` to `steps` (resuming its run in WORK exactly when there is one). A probe of a run
        that is already past `steps` (a rerun in the same WORK) does nothing."""
        from checkpoint import latest_checkpoint, load_checkpoint
        from training import Trainer
        latest = latest_checkpoint(os.path.join(self.run_dir(name), "checkpoints"))
        if latest is not None and int(load_checkpoint(latest)["step"]) > steps:
            if probe:
                self.say(f"train {name}: {latest} is past the probe: no step time measured")
                return
            raise UserError(f"{latest} is past step {steps}: use a fresh --work for a shorter run")
        model_kwargs = (dict(SMOKE_MODEL, **(SMOKE_ELIT if name == "elit" else {}))) if self.cfg.smoke else None
        accelerator = None
        if self.device.type == "cpu" and torch.cuda.is_available():
            from accelerate import Accelerator
            accelerator = Accelerator(cpu=True, mixed_precision="no")
        built = time.time()
        trainer = Trainer(self.train_config(name, steps, latest is not None), accelerator=accelerator,
                          model_kwargs=model_kwargs)
        record = self.results["training"].setdefault(name, dict(model=MODELS[name], segments=[], fit_seconds=0.0,
                                                                overhead_seconds=0.0))
        self.arch[name] = trainer.model.arch
        record.update(parameters=sum(p.numel() for p in trainer.params), batch=self.p.global_batch_size)
        first, start = trainer.step, time.time()
        record["overhead_seconds"] += start - built
        if trainer.step < steps:
            trainer.fit()
        wall = time.time() - start
        record["segments"].append(dict(from_step=first, to_step=trainer.step, seconds=round(wall, 2)))
        record["fit_seconds"] = round(record["fit_seconds"] + wall, 2)
        record["steps"] = trainer.step
        record["checkpoint"] = latest_checkpoint(os.path.join(self.run_dir(name), "checkpoints"))
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log = read_training_log(os.path.join(self.run_dir(name), "log.txt"))
        rates = [rate for step, _, rate in log if first < step <= steps]
        if rates and first < steps:                              # the last window of this segment: warm
            self.step_seconds[name] = self.p.global_batch_size / rates[-1]
        # img/s: every logged window but each segment's first (it includes the warm-up)
        starts = [seg["from_step"] for seg in record["segments"]]
        warm = [rate for step, _, rate in log if not any(s < step <= s + self.p.log_every for s in starts)]
        record["img_per_s_median"] = median_or_none(warm or [rate for _, _, rate in log])
        record["final_logged_loss"] = log[-1][1] if log else None
        self.say(f"train {name}: step {record['steps']}, {wall:.1f} s"
                 + (f", {self.step_seconds[name] * 1e3:.1f} ms/step" if self.step_seconds.get(name) else ""))
        if name not in self.flops:
            self.flops[name] = self.flop_table(name)

    def flop_table(self, name: str) -> dict:
        """GFLOPs per image of one forward: SiT {None: F}; ELIT {b: F(b)} for every level (meta device)."""
        from models import build_from_arch
        from models.flops import gflops_per_image
        arch = self.arch[name]
        if name == "sit":
            return {None: gflops_per_image(SimpleNamespace(arch=arch))}
        with torch.device("meta"):
            levels = build_from_arch(arch).budget_levels
        return {b: gflops_per_image(SimpleNamespace(arch=arch), budget=b) for b in levels}

    def training_gflops(self, name: str, steps: int) -> float:
        """Training GFLOPs of `steps` steps: 3 x forward (forward + backward) x batch, summed over the steps'
        ELIT budgets as the Trainer draws them (loss.draw_budget: a pure function of seed and step)."""
        from loss import draw_budget
        B, table = self.p.global_batch_size, self.flops[name]
        if name == "sit":
            return 3.0 * B * steps * table[None]
        levels = sorted(table)
        return 3.0 * B * sum(table[draw_budget(levels, 0.0, 1.0 - 1.0 / GROUP_SIZE**2, self.cfg.seed, s)]
                             for s in range(steps))

    def sampling_gflops(self, num_samples: int) -> float:
        """Forward GFLOPs of sampling every row (guided rows: every step guided, interval [0, 1])."""
        total = 0.0
        for row in self.rows:
            m = row["record"]["model"]
            if m not in self.flops:
                continue
            table = self.flops[m]
            if m == "sit":
                per = table[None]
            else:
                per = table[level(row["gen"].inference_budget or 1.0)]
                if row["record"]["guidance"]:
                    per += table[level(row["gen"].unconditional_inference_budget or 1.0)]
            total += per * num_samples * self.p.sampling_steps
        return total

    def flop_rate(self) -> Optional[float]:
        """Training FLOP/s measured by the probes (SiT's if known): sets the time estimates."""
        for name in ("sit", "elit"):
            t = self.step_seconds.get(name)
            if t and name in self.flops:
                steps = self.p.probe_steps
                per_step = self.training_gflops(name, steps) / steps
                return per_step * 1e9 / t
        return None

    def set_step_cap(self) -> None:
        """After the probes: the common step count that fits the time budget (never above `steps`)."""
        p = self.p
        known = [t for t in self.step_seconds.values() if t]
        info = dict(requested=p.steps, probe_steps=p.probe_steps, step_seconds=dict(self.step_seconds))
        if not known:
            self.steps_cap = p.steps
            info.update(cap=p.steps, reason="no step time measured: no cap")
        else:
            pair = sum(self.step_seconds.get(n) or max(known) for n in MODELS)
            rate = self.flop_rate()
            sampling = SAMPLING_SAFETY * self.sampling_gflops(self.num_samples) * 1e9 / rate if rate else 0.0
            available = self.deadline - self.elapsed() - POST_TRAINING_S - sampling - TRAINER_OVERHEAD_S * len(MODELS)
            cap = p.probe_steps + max(0, math.floor(available / pair))
            self.steps_cap = int(max(min(p.steps, cap), min(p.probe_steps, p.steps)))
            info.update(cap=self.steps_cap, seconds_per_step_pair=pair, estimated_sampling_s=round(sampling, 1),
                        available_training_s=round(available, 1), flop_rate_tflops=rate / 1e12 if rate else None,
                        reason="time budget" if self.steps_cap < p.steps else "requested steps fit")
        self.results["training"]["step_cap"] = info
        self.say(f"step cap: {self.steps_cap} steps for both models ({info['reason']})")

    def load_model(self, name: str) -> None:
        """EMA weights of the final checkpoint; training compute; held-out loss of the model's rows."""
        from generate import load_for_sampling
        record = self.results["training"][name]
        ck = load_for_sampling(record["checkpoint"], "ema", self.device)
        self.models[name] = ck
        self.arch.setdefault(name, ck.model.arch)
        self.flops.setdefault(name, self.flop_table(name))
        record.update(training_gflops=self.training_gflops(name, ck.step), checkpoint_step=ck.step,
                      gflops_per_forward=self.flops[name].get(None, self.flops[name].get(1.0)))
        for row in self.rows_of(name):
            plan = self.plan(row, ck.model)
            row["record"]["gflops"], row["record"]["gflops_per_sample"] = self.row_gflops(row, plan)
        self.heldout(name)

    @torch.no_grad()
    def heldout(self, name: str) -> None:
        """Held-out flow-matching loss of every row of `name` on the first `heldout_items` test images, fp32.

        The noise and times are drawn once from one seed (FlowMatchingLoss.draw), so every model, budget and
        guidance mode sees the same draws; no label dropout. Unguided rows: the training loss (per-sample
        velocity MSE). Guidance rows: the MSE of the guided velocity (samplers.guided_velocity) to the same
        target: how far guidance moves the field off the data's conditional flow (compare among themselves)."""
        from data import load_dataset, to_model_input
        from loss import FlowMatchingLoss, per_sample_mse, slice_draws
        from samplers import guided_velocity
        ds = load_dataset(os.path.join(self.data_dir, "test"))
        n = min(self.p.heldout_items, len(ds))
        batch = torch.utils.data.default_collate(ds.__getitems__(list(range(n))))
        x0, y = to_model_input(batch, ds.meta).to(self.device), batch["y"].to(self.device)
        loss_fn = FlowMatchingLoss("linear", self.cfg.weighting, label_dropout=0.0)
        g = torch.Generator().manual_seed(self.cfg.seed + HELDOUT_SEED_OFFSET)
        draws = loss_fn.draw(n, tuple(x0.shape[1:]), generator=g, device=self.device)
        model = self.models[name].model
        forward = lambda xs, t, y_, b: [model(xs[0], t, y_, budget=b)]                    # noqa: E731
        chunk = 500
        for row in self.rows_of(name):
            plan = self.plan(row, model)
            total = 0.0
            for lo in range(0, n, chunk):
                d, x, yy = slice_draws(draws, lo, lo + chunk), x0[lo:lo + chunk], y[lo:lo + chunk]
                if row["record"]["guidance"] is None:
                    loss = loss_fn(model, x, yy, budget=plan["budget"], draws=d).loss
                else:
                    x_t = loss_fn.path.interpolate(x, d["noise"], d["t"])
                    v = guided_velocity(forward, [x_t], d["t"], yy, scales=[plan["cfg_scale"]],
                                        null_label=model.num_classes, budget=plan["budget"],
                                        unconditional_budget=plan["unconditional_budget"],
                                        autoguidance=plan["autoguidance"])[0]
                    loss = per_sample_mse(v, loss_fn.path.velocity(x, d["noise"], d["t"]))
                total += loss.sum().item()
            row["record"]["heldout_loss"] = total / n
        self.results["settings"]["heldout"] = dict(items=n, seed=self.cfg.seed + HELDOUT_SEED_OFFSET,
                                                   time_distribution=self.cfg.weighting, precision="fp32")

    def decide_num_samples(self) -> None:
        """Reduce the per-row sample count (equally for every row) when sampling would overrun the budget."""
        rate = self.flop_rate()
        n = self.p.num_samples
        if rate:
            estimate = SAMPLING_SAFETY * self.sampling_gflops(n) * 1e9 / rate
            remaining = self.deadline - self.elapsed() - POST_SAMPLING_S
            if estimate > remaining:
                n = max(100, int(n * max(remaining, 0) / estimate) // 100 * 100)
                n = min(n, self.p.num_samples)
                self.say(f"sampling: estimated {estimate:.0f} s for {self.p.num_samples} images per row, "
                         f"{remaining:.0f} s left: {n} images per row")
            self.results["settings"]["sampling_estimate_s"] = round(estimate, 1)
        self.num_samples = n
        self.results["settings"]["num_samples_used"] = n

    def sample(self, name: str) -> None:
        from generate import generate_images
        from evaluation.batches import write_npz
        ck = self.models[name]
        n, b = self.num_samples, self.p.sample_batch_size
        labels = torch.arange(n) % ck.model.num_classes           # balanced: image i has label i % 10
        folder = os.path.join(self.work, "samples")
        os.makedirs(folder, exist_ok=True)
        for row in self.rows_of(name):
            rec = row["record"]
            if self.elapsed() > self.deadline + HARD_DEADLINE_S:
                rec["error"] = "skipped: past the time budget"
                self.say(f"sample {rec['key']}: skipped (past the time budget)")
                continue
            try:
                plan = self.plan(row, ck.model)
                start = time.time()
                parts = [generate_images(ck.model, range(lo, min(lo + b, n)), row["gen"], self.device,
                                         ck.dataset_meta, None, path_type=ck.path_type,
                                         labels=labels[lo:min(lo + b, n)], plan=plan)
                         for lo in range(0, n, b)]
                images = np.concatenate(parts)                   # uint8 (n, 32, 32, 3)
                rec.update(sampling_seconds=round(time.time() - start, 2), num_samples=n)
                self.samples[rec["key"]] = images
                write_npz(os.path.join(folder, f"{rec['key']}.npz"), arr_0=images, arr_1=labels.numpy())
                self.say(f"sample {rec['key']}: {n} images in {rec['sampling_seconds']:.1f} s")
            except Exception as e:                              # noqa: BLE001  (the other rows go on)
                rec["error"] = f"sampling: {type(e).__name__}: {e}"
                self.say(f"sample {rec['key']}: FAILED: {type(e).__name__}: {e}")

    def latency(self, name: str) -> None:
        """Forward (guided step) latency per image of every row of `name`: median of repeats after warm-up."""
        from elit_multibudget_inference import guided_step_fn, median_time
        ck = self.models[name]
        runner, path = ck.model, "eager" + (" bf16 autocast" if self.device.type == "cuda" else " fp32")
        if self.device.type == "cuda" and self.cfg.cuda_graphs:
            from models.graphs import fast_inference
            runner, path = fast_inference(copy.deepcopy(ck.model), compile=False), "bf16 weights + CUDA graphs"
        L = self.p.latency_batch_size
        for row in self.rows_of(name):
            plan = self.plan(row, ck.model)
            try:
                try:
                    fn = guided_step_fn(runner, plan, L, self.device)
                    fn(), fn()
                    used = path
                except Exception as e:                          # noqa: BLE001  (graph capture: fall back)
                    if runner is ck.model:
                        raise
                    self.say(f"latency {row['record']['key']}: {path} failed ({type(e).__name__}: {e}); eager")
                    runner, path = ck.model, "eager bf16 autocast"
                    fn = guided_step_fn(runner, plan, L, self.device)
                    fn(), fn()
                    used = path
                seconds = median_time(fn, self.device, self.p.latency_repeats)
                row["record"].update(latency_ms_per_image=1e3 * seconds / L, latency_path=used)
            except Exception as e:                              # noqa: BLE001
                row["record"]["error"] = f"latency: {type(e).__name__}: {e}"
                self.say(f"latency {row['record']['key']}: FAILED: {type(e).__name__}: {e}")
        self.results["settings"]["latency"] = dict(batch=L, repeats=self.p.latency_repeats, path=path,
                                                   what="median per call / batch, after two warm-up calls")
        del runner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def metrics(self) -> None:
        """FD, precision/recall, classifier accuracy of every sampled row and of real training images."""
        from evaluation import evaluate, load_network, reference_statistics
        from evaluation.batches import write_npz
        from studies.classifier import load_split
        test_x, test_y, _ = load_split(self.data_dir, "test", self.p.num_reference)
        ref_path = os.path.join(self.work, f"reference_test{len(test_x)}.npz")
        if not os.path.isfile(ref_path):
            write_npz(ref_path, arr_0=test_x, arr_1=test_y)
        net = load_network(feature_network=self.classifier_path, device=self.device)
        ref = reference_statistics(ref_path, net, batch_size=500)
        # Real training images, two disjoint subsets of the sample size: the FD an ideal generator would get at
        # this size, and how much it moves from one draw of images to another.
        n = self.num_samples
        train_x, train_y, _ = load_split(self.data_dir, "train", 2 * n)
        data = evaluate(train_x[:n], ref, net, labels=train_y[:n], batch_size=500)
        other = evaluate(train_x[n:], ref, net, labels=train_y[n:], batch_size=500) if len(train_x) >= 2 * n else {}
        self.results["reference"] = dict(
            test_images=len(test_x), reference_file=ref_path, network=net.info(),
            data_row=dict(label=f"real train images (n={n})", fd=data["fid"], precision=data["precision"],
                          recall=data["recall"], accuracy=data["classifier_accuracy"],
                          inception_score=data["inception_score"], num_samples=n,
                          fd_second_subset=other.get("fid")))
        self.say(f"metrics: real data FD {data['fid']:.3f} (second subset {_fmt(other.get('fid'))}), "
                 f"accuracy {data['classifier_accuracy']:.4f}")
        for row in self.rows:
            rec = row["record"]
            if rec["key"] not in self.samples:
                continue
            try:
                m = evaluate(self.samples[rec["key"]], ref, net, labels=np.arange(rec["num_samples"]) % 10,
                             batch_size=500)
                rec.update(fd=m["fid"], precision=m["precision"], recall=m["recall"],
                           accuracy=m["classifier_accuracy"], inception_score=m["inception_score"])
                self.say(f"metrics {rec['key']}: FD {m['fid']:.3f}, accuracy {m['classifier_accuracy']:.4f}")
            except Exception as e:                              # noqa: BLE001
                rec["error"] = f"metrics: {type(e).__name__}: {e}"
                self.say(f"metrics {rec['key']}: FAILED: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.say(f"Fashion-MNIST study ({self.results['mode']}) on {self.results['device_name']}, torch "
                 f"{torch.__version__}; work {self.work}, out {self.out}; budget {self.cfg.time_budget_minutes:g} min")
        self.stage("data", self.import_data)
        self.stage("classifier", self.train_classifier, needs=["data"])
        probe = min(self.p.probe_steps, self.p.steps)
        for name in MODELS:
            self.stage(f"train {name} probe", lambda n=name: self.fit(n, probe, probe=True), needs=["data"])
        self.stage("plan steps", self.set_step_cap)
        for name in MODELS:
            self.stage(f"train {name}", lambda n=name: self.fit(n, self.steps_cap), needs=["data"])
        for name in MODELS:
            self.stage(f"load {name}", lambda n=name: self.load_model(n), needs=[f"train {name}"])
        self.stage("plan samples", self.decide_num_samples)
        for name in MODELS:
            self.stage(f"sample {name}", lambda n=name: self.sample(n), needs=[f"load {name}"])
        for name in MODELS:
            self.stage(f"latency {name}", lambda n=name: self.latency(n), needs=[f"load {name}"])
        self.stage("metrics", self.metrics, needs=["data", "classifier"])
        self.stage("claims", lambda: self.results.update(claims=judge_claims(self.results)))
        self.stage("plots", self.plots)
        self.stage("report", self.report)
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.say(f"finished in {self.elapsed() / 60:.2f} min ({self.results['device_name']})")
        self.append_logs()
        self.results["files"] = sorted(os.listdir(self.out))
        self.save_results()
        return self.results

    def plots(self) -> None:
        failures = []
        for what, fn in (("fd_vs_gflops.png", lambda: plot_quality(self.results, os.path.join(self.out, "fd_vs_gflops.png"))),
                         ("grids.png", self.plot_grids),
                         ("loss_curves.png", lambda: plot_loss_curves(
                             {MODELS[n]: read_training_log(os.path.join(self.run_dir(n), "log.txt")) for n in MODELS},
                             os.path.join(self.out, "loss_curves.png")))):
            try:
                fn()
            except Exception as e:                              # noqa: BLE001  (the other plots go on)
                failures.append(f"{what}: {type(e).__name__}: {e}")
                self.say(f"plot {what}: FAILED: {type(e).__name__}: {e}")
        if failures:
            raise RuntimeError("; ".join(failures))

    def plot_grids(self) -> None:
        """One labelled row per configuration: 2 images per class, classes as columns (same noise in every row)."""
        from elit_multibudget_inference import plot_grid
        from data import FASHION_MNIST_CLASSES
        from studies.classifier import load_split
        panels, labels = [], []
        test_x, test_y, _ = load_split(self.data_dir, "test", 2000)
        real = [i for c in range(10) for i in np.flatnonzero(test_y == c)[:2]]
        if len(real) == 20:
            real = np.asarray(real).reshape(10, 2).T.reshape(-1)  # row 1: one per class, row 2: the second
            panels.append(class_panel(np.repeat(test_x[real], 3, axis=-1)))
            labels.append("real (test)")
        for row in self.rows:
            images = self.samples.get(row["record"]["key"])
            if images is not None and len(images) >= 20:
                panels.append(class_panel(images[:20]))
                labels.append(row["record"]["label"])
        if not panels:
            raise RuntimeError("no samples to show")
        plot_grid([p[None, None] for p in panels], labels, os.path.join(self.out, "grids.png"),
                  col_labels=["columns: " + ", ".join(FASHION_MNIST_CLASSES)])

    def report(self) -> None:
        from atomic import write_text
        write_text(os.path.join(self.out, "report.md"), render_report(self.results))

    def append_logs(self) -> None:
        """The Trainers' logs at the end of study.log (one file comes back instead of three)."""
        with open(self.log_path, "a") as f:
            for name in MODELS:
                path = os.path.join(self.run_dir(name), "log.txt")
                if os.path.isfile(path):
                    f.write(f"\n===== {path} =====\n")
                    with open(path) as g:
                        f.write(g.read())


# ----------------------------------------------------------------------------------------------------------
# Claims, computed from the numbers.

def _row(results: dict, key: str) -> dict:
    return next((r for r in results["rows"] if r["key"] == key), {})


def judge_claims(results: dict) -> dict:
    """Verdicts ('holds', 'does not hold', 'inconclusive', 'not evaluated') with the numbers behind them."""
    rows = results["rows"]
    sit, full = _row(results, "sit"), _row(results, "elit_b1")
    training = results.get("training", {})
    claims = {}

    # (a) equal training compute: ELIT at full budget vs SiT.
    t_sit, t_elit = (training.get(n, {}).get("training_gflops") for n in ("sit", "elit"))
    a = dict(fd_sit=sit.get("fd"), fd_elit=full.get("fd"), accuracy_sit=sit.get("accuracy"),
             accuracy_elit=full.get("accuracy"), heldout_sit=sit.get("heldout_loss"),
             heldout_elit=full.get("heldout_loss"), training_gflops_sit=t_sit, training_gflops_elit=t_elit,
             steps_sit=training.get("sit", {}).get("steps"), steps_elit=training.get("elit", {}).get("steps"),
             threshold=f"holds if FD(ELIT, b=1) <= {1 - A_MARGIN:g} x FD(SiT) with ELIT's training FLOPs <= SiT's; "
                       f"does not hold if FD(ELIT, b=1) >= {1 + A_MARGIN:g} x FD(SiT) or ELIT used more FLOPs; "
                       "inconclusive in between")
    if None in (a["fd_sit"], a["fd_elit"], t_sit, t_elit):
        a["verdict"] = "not evaluated"
    else:
        ratio = a["fd_elit"] / a["fd_sit"]
        a["fd_ratio"], a["compute_ratio"] = ratio, t_elit / t_sit
        if t_elit > t_sit * (1 + 1e-9):
            a["verdict"] = "does not hold"
        elif ratio <= 1 - A_MARGIN:
            a["verdict"] = "holds"
        elif ratio >= 1 + A_MARGIN:
            a["verdict"] = "does not hold"
        else:
            a["verdict"] = "inconclusive"
    claims["a"] = a

    # (b) smooth quality-for-FLOPs trade-off across budgets.
    curve = sorted([r for r in rows if r["model"] == "elit" and r["guidance"] is None and r.get("gflops")],
                   key=lambda r: -r["gflops"])
    b = dict(budgets=[r["budget"] for r in curve], gflops=[r["gflops"] for r in curve],
             fd=[r.get("fd") for r in curve], accuracy=[r.get("accuracy") for r in curve],
             heldout=[r.get("heldout_loss") for r in curve],
             threshold=f"holds if, along budgets of falling GFLOPs, FD never falls by more than {B_FD_TOL:.0%} and "
                       f"accuracy never rises by more than {B_ACC_TOL * 100:g} points (monotone), and no step "
                       f"multiplies FD by more than {B_MAX_RATIO:g} (graceful)")
    if len(curve) < 2 or any(v is None for v in b["fd"] + b["accuracy"]):
        b["verdict"] = "not evaluated"
    else:
        steps = list(zip(curve, curve[1:]))
        b["fd_ratios"] = [lo["fd"] / hi["fd"] for hi, lo in steps]
        b["monotone"] = all(lo["fd"] >= hi["fd"] * (1 - B_FD_TOL) and lo["accuracy"] <= hi["accuracy"] + B_ACC_TOL
                            for hi, lo in steps)
        b["graceful"] = max(b["fd_ratios"]) <= B_MAX_RATIO
        b["verdict"] = "holds" if b["monotone"] and b["graceful"] else "does not hold"
        if sit.get("fd") is not None and sit.get("gflops"):
            better = [r for r in curve if r["fd"] <= sit["fd"]]
            b["cheapest_budget_matching_sit_fd"] = min(better, key=lambda r: r["gflops"])["budget"] if better else None
            b["its_gflops_relative_to_sit"] = (min(r["gflops"] for r in better) / sit["gflops"]) if better else None
    claims["b"] = b

    # (c) cheap CFG vs CFG.
    cfg, cheap, auto = _row(results, "cfg"), _row(results, "cheap_cfg"), _row(results, "autoguidance")
    c = dict(fd_cfg=cfg.get("fd"), fd_cheap=cheap.get("fd"), fd_autoguidance=auto.get("fd"),
             accuracy_cfg=cfg.get("accuracy"), accuracy_cheap=cheap.get("accuracy"),
             accuracy_autoguidance=auto.get("accuracy"), gflops_cfg=cfg.get("gflops"),
             gflops_cheap=cheap.get("gflops"), latency_cfg=cfg.get("latency_ms_per_image"),
             latency_cheap=cheap.get("latency_ms_per_image"), fd_unguided=full.get("fd"),
             threshold=f"holds if FD(cheap CFG) <= {1 + C_FD_TOL:g} x FD(CFG), accuracy(cheap CFG) >= accuracy(CFG) - "
                       f"{C_ACC_TOL * 100:g} points, and cheap CFG needs >= {C_MIN_SAVING:.0%} fewer GFLOPs per "
                       "guided step")
    if None in (c["fd_cfg"], c["fd_cheap"], c["accuracy_cfg"], c["accuracy_cheap"], c["gflops_cfg"], c["gflops_cheap"]):
        c["verdict"] = "not evaluated"
    else:
        c["fd_ratio"] = c["fd_cheap"] / c["fd_cfg"]
        c["gflops_saving"] = 1 - c["gflops_cheap"] / c["gflops_cfg"]
        if c["latency_cfg"] and c["latency_cheap"]:
            c["latency_saving"] = 1 - c["latency_cheap"] / c["latency_cfg"]
        c["quality_matches"] = c["fd_ratio"] <= 1 + C_FD_TOL and c["accuracy_cheap"] >= c["accuracy_cfg"] - C_ACC_TOL
        c["saving_enough"] = c["gflops_saving"] >= C_MIN_SAVING
        c["verdict"] = "holds" if c["quality_matches"] and c["saving_enough"] else "does not hold"
    claims["c"] = c

    # A comparison of models whose samples are unrecognisable says nothing about the method.
    accuracies = [r.get("accuracy") for r in (sit, full)]
    if all(v is not None for v in accuracies) and min(accuracies) < MIN_SAMPLE_ACCURACY:
        for claim in claims.values():
            if claim["verdict"] != "not evaluated":
                claim["verdict_from_numbers"] = claim["verdict"]
                claim["verdict"] = "not evaluated"
                claim["reason"] = (f"samples not recognisable: classifier accuracy on SiT's / full-budget ELIT's samples "
                                   f"{accuracies[0]:.3f} / {accuracies[1]:.3f} < {MIN_SAMPLE_ACCURACY} (chance 0.1)")
    return claims


# ----------------------------------------------------------------------------------------------------------
# Figures and report.

def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def class_panel(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """20 uint8 images (H, W, 3) with labels 0..9, 0..9 -> one (2H + pad, 10W + 9 pad, 3) panel, white gaps."""
    n, h, w, c = images.shape
    panel = np.full((2 * h + pad, 10 * w + 9 * pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images[:20]):
        r, col = divmod(i, 10)
        panel[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = img
    return panel


def plot_quality(results: dict, path: str) -> None:
    """FD, accuracy, held-out loss vs GFLOPs, and FD vs latency: ELIT budgets as a curve, SiT as a point,
    guidance rows (per guided step) as squares; dotted lines: real training images (the FD floor)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from elit_multibudget_inference import _savefig
    rows = results["rows"]
    data = results.get("reference", {}).get("data_row", {})
    panels = [("gflops", "fd", "GFLOPs per image (forward; guided step for guidance)", "Frechet distance (classifier) ↓"),
              ("gflops", "accuracy", "GFLOPs per image", "classifier accuracy of samples ↑"),
              ("gflops", "heldout_loss", "GFLOPs per image (forward)", "held-out flow-matching loss ↓"),
              ("latency_ms_per_image", "fd", "latency, ms per image (batch forward / guided step)", "Frechet distance ↓")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, (xk, yk, xl, yl) in zip(axes.flat, panels):
        ok = lambda r: r.get(xk) is not None and r.get(yk) is not None            # noqa: E731
        elit = sorted([r for r in rows if r["model"] == "elit" and r["guidance"] is None and ok(r)], key=lambda r: r[xk])
        if elit:
            ax.plot([r[xk] for r in elit], [r[yk] for r in elit], "o-", color="tab:blue", label="ELIT-SiT-S/2 (one model)")
            for r in elit:
                ax.annotate(f"b={fraction(r['budget'])}", (r[xk], r[yk]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for r in rows:
            if r["model"] == "sit" and ok(r):
                ax.plot(r[xk], r[yk], "*", color="tab:red", markersize=14, label="SiT-S/2")
        if yk != "heldout_loss":                                # the guided rows' loss is another quantity
            for r, colour in zip([r for r in rows if r["guidance"]], ("tab:green", "tab:orange", "tab:purple")):
                if ok(r):
                    ax.plot(r[xk], r[yk], "s", color=colour, markersize=8, label=r["label"])
        if data.get(yk) is not None:
            ax.axhline(data[yk], color="grey", linestyle=":", label=f"real images (n={data.get('num_samples')})")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Fashion-MNIST 32x32: quality vs compute ({results.get('device_name')})")
    fig.tight_layout()
    _savefig(fig, path)


def plot_loss_curves(logs: dict, path: str) -> None:
    """Training loss (mean over each log window) vs step, one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from elit_multibudget_inference import _savefig
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, log in logs.items():
        last = {}
        for step, loss, _ in log:                               # a resumed segment repeats nothing, but be safe
            last[step] = loss
        if last:
            steps = sorted(last)
            ax.plot(steps, [last[s] for s in steps], label=name + (" (multibudget: mean over drawn budgets)"
                                                                   if name.startswith("ELIT") else ""))
    if not ax.lines:
        plt.close(fig)
        raise RuntimeError("no training log lines")
    ax.set(xlabel="step", ylabel="training loss", title="training loss (flow matching, EMA-free model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, path)


def render_report(results: dict) -> str:
    """report.md: settings, the table, training, the claims with their thresholds and verdicts, errors."""
    s, claims, tr = results["settings"], results.get("claims", {}), results.get("training", {})
    clf, ref = results.get("classifier", {}), results.get("reference", {})
    data = ref.get("data_row", {})
    lines = [
        "# Fashion-MNIST study: does ELIT deliver its claims at small scale?", "",
        f"Card: **{results['device_name']}** (torch {results['torch']}, CUDA {results.get('cuda')}); wall clock "
        f"{results.get('total_seconds', 0) / 60:.2f} min = **{results.get('gpu_minutes')} GPU minutes** (1 GPU), "
        f"mode `{results['mode']}`, started {results['started']}.", "",
        f"Setting: Fashion-MNIST padded to 32x32, 1 channel, pixel space; patch 2 (16x16 = 256 tokens); "
        f"{MODELS['sit']} vs {MODELS['elit']} multibudget (group size {s['group_size']}: 16 windows, all 16 levels "
        f"trained). Both: {tr.get('step_cap', {}).get('cap', s['steps'])} steps, batch {s['global_batch_size']}, "
        f"lr {s['learning_rate']:g} (warm-up {s['warmup_steps']}), EMA "
        f"{s['ema_decay']:g}, label dropout {results['config']['label_dropout']:g}, "
        f"{results['config']['weighting']} times, seed {results['config']['seed']}, bf16 autocast on GPU, eager. "
        f"Sampling: Euler ODE {s['sampling_steps']} steps, EMA weights, "
        f"{s.get('num_samples_used', s['num_samples'])} images per row (labels balanced, image i from seed "
        f"{results['config']['seed']} + i: every row starts from the same noise).", "",
        f"Metrics: Frechet distance (FD) and precision/recall in the {clf.get('feature_dim', '?')}-d penultimate "
        f"features of a small CNN trained on the training set (test accuracy **{_fmt(clf.get('test_accuracy'), '.4f')}**), "
        f"against {ref.get('test_images', '?')} test images; accuracy = the classifier's agreement with the "
        f"label each sample was drawn for; held-out loss = flow-matching loss on {s.get('heldout', {}).get('items', '?')} "
        f"test images with fixed noise and times (same draws for every row). GFLOPs per image and forward "
        f"(per guided step for guidance rows), from torch's flop counter; latency per image at batch "
        f"{s['latency_batch_size']} ({s.get('latency', {}).get('path', 'n/a')}).", "",
        "## Results", "",
        "| configuration | GFLOPs | latency ms/img | FD ↓ | precision | recall | accuracy ↑ | held-out loss ↓ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['label']} | {_fmt(r['gflops'], '.2f')} | {_fmt(r['latency_ms_per_image'], '.4f')} | "
                     f"{_fmt(r['fd'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['accuracy'], '.4f')} | "
                     f"{_fmt(r['heldout_loss'], '.4f')}{'' if r['guidance'] is None else ' (guided)'} |")
    if data:
        lines.append(f"| {data['label']} | | | {_fmt(data['fd'])} | {_fmt(data['precision'])} | {_fmt(data['recall'])} | "
                     f"{_fmt(data['accuracy'], '.4f')} | |")
    lines += ["", "Guidance rows: scale " + f"{results['config']['guidance_scale']:g}, conditional pass at full budget; "
              "their GFLOPs and latency are per guided step; their held-out loss is the MSE of the guided velocity to "
              "the flow-matching target (comparable among guidance rows only).", "",
              "![quality vs GFLOPs](fd_vs_gflops.png)", "", "![samples per configuration](grids.png)", "",
              "## Training", "",
              "| model | parameters | steps | wall s (fit) | img/s (median) | training PFLOPs (3x fwd) | last logged loss |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in MODELS.items():
        t = tr.get(name, {})
        pf = t.get("training_gflops")
        params = t.get("parameters")
        lines.append(f"| {label} | {_fmt(params / 1e6 if params else None, '.1f')}M | {t.get('steps', 'n/a')} | "
                     f"{_fmt(t.get('fit_seconds'), '.1f')} | {_fmt(t.get('img_per_s_median'), '.0f')} | "
                     f"{_fmt(pf / 1e6 if pf else None, '.1f')} | {_fmt(t.get('final_logged_loss'), '.4f')} |")
    cap = tr.get("step_cap", {})
    lines += ["", f"Step cap: {cap.get('cap', 'n/a')} of {cap.get('requested', 'n/a')} requested ({cap.get('reason', 'n/a')}). "
              f"Classifier: {clf.get('epochs', 'n/a')} epochs, {_fmt(clf.get('seconds'), '.1f')} s.", "",
              "![training loss](loss_curves.png)", "", "## Claims", ""]
    names = {"a": "(a) at equal training compute ELIT-SiT beats SiT",
             "b": "(b) one multibudget model trades quality for FLOPs smoothly",
             "c": "(c) cheap CFG matches CFG at about a third less compute per guided step"}
    for key, title in names.items():
        c = claims.get(key, {})
        lines.append(f"- **{title}: {c.get('verdict', 'not evaluated').upper()}.** {claim_sentence(key, c)} "
                     f"Threshold: {c.get('threshold', 'n/a')}.")
    lines += ["", f"Scale of FD: {data.get('num_samples', '?')} real training images score {_fmt(data.get('fd'))} against "
              f"the test set (a second, disjoint subset: {_fmt(data.get('fd_second_subset'))}): what an ideal generator "
              "would get at this sample size, and how much FD moves with the draw of images alone. One training seed "
              "per model: differences between rows that are not large against this are not evidence.", ""]
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- `{k}`: {v}" for k, v in results["errors"].items()] + [""]
    row_errors = [f"- `{r['key']}`: {r['error']}" for r in results["rows"] if r.get("error")]
    if row_errors:
        lines += ["## Row errors", ""] + row_errors + [""]
    lines += ["## Stage times (s)", "", " | ".join(f"{k} {v:.1f}" for k, v in results.get("timings", {}).items()), ""]
    return "\n".join(lines)


def claim_sentence(key: str, c: dict) -> str:
    """The numbers behind a verdict, in one sentence."""
    if c.get("reason"):
        return f"Not judged: {c['reason']}; the numbers alone would say '{c['verdict_from_numbers']}'."
    if c.get("verdict") in (None, "not evaluated"):
        return "Some numbers are missing (see Errors)."
    if key == "a":
        return (f"FD {c['fd_elit']:.3f} (ELIT, b=1) vs {c['fd_sit']:.3f} (SiT), ratio {c['fd_ratio']:.3f}; accuracy "
                f"{_fmt(c['accuracy_elit'], '.4f')} vs {_fmt(c['accuracy_sit'], '.4f')}; held-out loss "
                f"{_fmt(c['heldout_elit'], '.4f')} vs {_fmt(c['heldout_sit'], '.4f')}; same {c['steps_elit']} steps, "
                f"ELIT used {c['compute_ratio']:.2f}x SiT's training FLOPs.")
    if key == "b":
        pts = ", ".join(f"b={fraction(b)}: {g:.2f} GFLOPs FD {f:.3f} acc {a:.3f}"
                        for b, g, f, a in zip(c["budgets"], c["gflops"], c["fd"], c["accuracy"]))
        extra = ""
        if "cheapest_budget_matching_sit_fd" in c:
            m = c["cheapest_budget_matching_sit_fd"]
            extra = (f" The cheapest budget at or below SiT's FD: b={fraction(m)} ({c['its_gflops_relative_to_sit']:.2f}x "
                     "SiT's GFLOPs)." if m is not None else " No budget reaches SiT's FD.")
        return (f"{pts}; monotone: {c['monotone']}, largest FD ratio per step {max(c['fd_ratios']):.2f} "
                f"(graceful: {c['graceful']}).{extra}")
    return (f"FD {c['fd_cheap']:.3f} (cheap) vs {c['fd_cfg']:.3f} (CFG), ratio {c['fd_ratio']:.3f}; accuracy "
            f"{c['accuracy_cheap']:.4f} vs {c['accuracy_cfg']:.4f}; {c['gflops_saving']:.0%} fewer GFLOPs per guided "
            f"step" + (f", {c['latency_saving']:.0%} less latency" if c.get("latency_saving") is not None else "")
            + f". Autoguidance: FD {_fmt(c['fd_autoguidance'])}, accuracy {_fmt(c['accuracy_autoguidance'], '.4f')}; "
            f"unguided ELIT b=1: FD {_fmt(c['fd_unguided'])}.")


# ----------------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    cfg = parse_config(FashionMnistStudyConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.time_budget_minutes <= 0:
        raise UserError("time_budget_minutes must be > 0")
    if not 0 < cfg.guidance_budget <= 1 or any(not 0 < b <= 1 for b in cfg.budgets):
        raise UserError("budgets and guidance_budget are fractions in (0, 1]")
    # As a command the time budget counts from process start (imports included); called from Python, from now.
    return Study(cfg, start=process_start_time() if argv is None else None).run()


if __name__ == "__main__":
    run_main(main)
