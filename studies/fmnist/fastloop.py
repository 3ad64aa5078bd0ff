"""The study's fast training loop for small models (training/trainer.py is the general one).

Everything stays on the device: the training images (uint8, 60k x 32 x 32 fits easily), the batch indices (a
per-epoch permutation drawn with a seeded device generator), the flow-matching draws (`FlowMatchingLoss.draw`
from the same generator) and the loss sum, which is read only every `log_every` steps. No step has a host
sync. The ELIT budget of a step is `loss.draw_budget` (a pure function of seed and step, as in the Trainer).
All models of a study draw from generators with the same seed and the same shapes, so they see identical
batches, noise, times and label-dropout masks.

On a GPU the repeated blocks are compiled (`model.compile_regions`; a model that trains over several budget
levels compiles with automatic dynamic shapes, so its token count becomes symbolic after the second level
instead of recompiling 16 times). `warm_up` runs the compile outside the measured run and then restores the
initial weights, optimiser, schedule and EMA, so warm-up steps leave no trace; a compile failure falls back to
eager (logged). Optimiser: fused AdamW, gradient clipping on the device, constant learning rate after a linear
warm-up; EMA with a warmed-up decay min(decay, (1 + s) / (10 + s)) so that early curve points are not biased
towards the initialisation.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Optional

import torch

from loss import FlowMatchingLoss, allowed_budgets, draw_budget
from models import build_model

WARMUP_STEPS = 3               # compile warm-up steps at each of two levels (the first call compiles)


class ModelRun:
    """One model's training state: model, EMA, optimiser, generators, step, device-side loss sum."""

    def __init__(self, key: str, spec: dict, images: torch.Tensor, labels: torch.Tensor, p, cfg,
                 device: torch.device, model_kwargs: Optional[dict] = None):
        """images uint8 (N, C, H, W) and labels (N,) on `device`; `p` the resolved presets, `cfg` the options."""
        self.key, self.spec, self.p, self.cfg, self.device = key, spec, p, cfg, device
        self.images, self.labels = images, labels
        torch.manual_seed(cfg.seed)                                 # same seed, same initialisation recipe
        self.model = build_model(spec["model"], input_size=images.shape[-1], in_channels=images.shape[1],
                                 num_classes=10, **spec.get("kwargs", {}), **(model_kwargs or {})).to(device).train()
        self.arch = self.model.arch
        self.levels = list(self.model.budget_levels)
        self.allowed = (allowed_budgets(self.levels, *spec["mask"]) if self.levels else [None])
        self.loss_fn = FlowMatchingLoss("linear", cfg.weighting, cfg.label_dropout)
        self.params = [q for q in self.model.parameters() if q.requires_grad]
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)   # before compile: stays eager
        self.compiled = "eager"
        self.allow_compile = True
        self.reset()

    # ------------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Initial weights, a fresh optimiser, schedule and EMA, step 0, fresh generators (after warm-up)."""
        with torch.no_grad():
            self.model.load_state_dict(self.initial)                # in place: compiled code stays valid
            self.ema.load_state_dict(self.initial)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.params, lr=self.p.learning_rate, betas=(0.9, 0.999),
                                           weight_decay=0.0, fused=fused or None, foreach=None if fused else True)
        self.step = 0
        self.seen = 0                                               # images drawn from the current permutation
        self.order = None
        self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_steps = 0
        self.loss_log: list[tuple[int, float]] = []                 # (step, mean training loss since last read)
        self.budget_counts: dict = {}

    def budget_of(self, step: int):
        """The step's budget: None (no budgets), or uniform over the allowed levels (loss.draw_budget)."""
        if not self.levels:
            return None
        lo, hi = self.spec["mask"]
        return draw_budget(self.levels, lo, hi, self.cfg.seed, step)

    def compile(self, log: Callable[[str], None]) -> None:
        """Regional torch.compile (GPU); multibudget models with automatic dynamic shapes."""
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        dynamic = None if len(self.allowed) > 1 else False
        self.model.compile_regions(dynamic=dynamic)
        self.compiled = f"regional torch.compile (dynamic={dynamic})"
        log(f"{self.key}: {self.compiled}")

    def uncompile(self) -> None:
        """Back to eager: drop the compiled forwards of every region."""
        for module in self.model.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        self.compiled = "eager (compile failed)"

    # ------------------------------------------------------------------------------------------------------
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next B training images in [-1, 1] (B, C, H, W) and labels, from a device permutation per epoch."""
        B, N = self.p.global_batch_size, len(self.images)
        if self.order is None or self.seen + B > N:
            self.order = torch.randperm(N, generator=g, device=self.device)
            self.seen = 0
        idx = self.order[self.seen:self.seen + B]
        self.seen += B
        return self.images[idx].float().div_(127.5).sub_(1.0), self.labels[idx]

    def train_step(self, budget, g: Optional[torch.Generator] = None, lr: Optional[float] = None) -> torch.Tensor:
        """One optimiser step at `budget` on the next batch of generator `g`; the loss stays on the device."""
        g = g if g is not None else self.generator
        x, y = self.batch(g)
        draws = self.loss_fn.draw(x.shape[0], tuple(x.shape[1:]), generator=g)
        with self.autocast():
            loss = self.loss_fn(self.model, x, y, budget=budget, draws=draws).loss.mean()
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr if lr is not None else self.lr(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def lr(self, step: int) -> float:
        w = self.p.warmup_steps
        return self.p.learning_rate * (min(1.0, (step + 1) / w) if w > 0 else 1.0)

    def ema_update(self, step: int) -> None:
        decay = min(self.p.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), [q.detach() for q in self.model.parameters()],
                                 1.0 - decay)

    def train(self, until: int) -> None:
        """Train to step `until` (no host syncs but every `log_every` steps, when the loss sum is read)."""
        while self.step < until:
            b = self.budget_of(self.step)
            self.budget_counts[b] = self.budget_counts.get(b, 0) + 1
            self.loss_sum += self.train_step(b)
            self.ema_update(self.step)
            self.step += 1
            self.loss_steps += 1
            if self.step % self.p.log_every == 0 or self.step == until:
                self.read_loss()

    def read_loss(self) -> None:
        if self.loss_steps:
            self.loss_log.append((self.step, self.loss_sum.item() / self.loss_steps))   # the one sync
            self.loss_sum.zero_()
            self.loss_steps = 0

    # ------------------------------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_steps(self, g: torch.Generator) -> float:
        """Mean seconds of a step over every allowed level (5 steps for one level), after one untimed pass that
        absorbs any level-specific (re)compile."""
        timed = self.allowed if len(self.allowed) > 1 else self.allowed * 5
        for b in timed:
            self.train_step(b, g, lr=0.0)
        self.sync()
        times = []
        for b in timed:
            t0 = time.perf_counter()
            self.train_step(b, g, lr=0.0)
            self.sync()
            times.append(time.perf_counter() - t0)
        return sum(times) / len(times)

    def warm_up(self, log: Callable[[str], None], decide: Optional[Callable[[float], bool]] = None) -> dict:
        """Time the step eagerly; on a GPU with compile asked for, and if decide(eager seconds per step) says
        so, compile and time again. Then restore the initial state (the warm-up leaves no trace).

        Returns dict(seconds, compile_seconds, eager_step_seconds, step_seconds, compiled)."""
        start = time.time()
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 7919)     # not the run's stream
        eager = self.time_steps(g)
        compile_seconds = 0.0
        if self.device.type == "cuda" and self.cfg.compile and self.allow_compile and (decide is None or decide(eager)):
            t0 = time.time()
            # Two levels first (a model over several levels then compiles its dynamic-shape graph), then all.
            warm = self.allowed[-1:] + self.allowed[:1] if len(self.allowed) > 1 else self.allowed
            try:
                self.compile(log)
                for b in warm:
                    for _ in range(WARMUP_STEPS):
                        self.train_step(b, g, lr=0.0)
                step_seconds = self.time_steps(g)
            except Exception as e:                              # noqa: BLE001  (eager is always possible)
                log(f"{self.key}: compile failed ({type(e).__name__}: {str(e)[:300]}); eager")
                self.uncompile()
                self.optimizer.zero_grad(set_to_none=True)
                step_seconds = eager
            compile_seconds = time.time() - t0
        else:
            step_seconds = eager
        self.reset()
        return dict(seconds=round(time.time() - start, 2), compile_seconds=round(compile_seconds, 2),
                    eager_step_seconds=eager, step_seconds=step_seconds, compiled=self.compiled)
