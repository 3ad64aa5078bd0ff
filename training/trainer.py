"""The training loop behind `train.py`, as a library so benchmarks time the very same step.

    trainer = Trainer(cfg)          # model, EMA, optimizer, loss, data, output folder; resumes if asked
    trainer.fit()                   # steps, logging, checkpoints, sample grids

One optimizer step (`Trainer.train_step`) = `gradient_accumulation_steps` micro-batches, each of
`global_batch_size / (processes * accumulation)` images per process. Everything random in a step comes from
(seed, step, micro-batch): the noise, times and label-dropout mask are drawn for the *global* micro-batch from a
generator seeded by those numbers and each process keeps its rows; the ELIT budget and the DFM stage are pure
functions of (seed, step). So results do not depend on the number of processes, and a resumed run replays
exactly the steps an uninterrupted one would have taken. The step has no host syncs: the loss is summed on the
device and read only every `log_every` steps.

Gradient clipping is folded into the fused AdamW kernel: the kernel divides gradients by `grad_scale` and
skips the update when `found_inf` is set (the protocol torch's GradScaler uses), so clipping costs one norm
and no extra pass over the gradients, and a non-finite gradient never reaches the weights. The first step
with a non-finite loss is recorded on the device; the run stops at the next log or checkpoint with a message
naming that step, without writing a checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import random
import time
from typing import Iterator, Optional

import numpy as np
import torch

from checkpoint import atomic_save, latest_checkpoint, load_checkpoint
from training.options import TrainConfig, model_overrides
from utils.cli import save_config, to_dict
from data import StepBatchSampler, check_model_fits, dataset_info, load_dataset, make_loader, to_model_input
from errors import UserError, user_errors
from images import save_grid, to_uint8
from loss import (DFMLoss, FlowMatchingLoss, allowed_budgets, draw_budget, encoder_features, load_repa_encoder,
                  pyramid_shapes, slice_draws, unwrap)
from models import build_model, parse_model_name
from samplers import default_dfm_schedule, sample, sample_dfm


def step_seed(seed: int, step: int, micro: int) -> int:
    """A 63-bit seed for the random draws of (seed, step, micro-batch), the same on every process."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def rng_state() -> dict:
    """Every RNG the process owns, as plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), gauss=float(gauss)),
                python=random.getstate())


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Trainer:
    """Builds everything a run needs from a TrainConfig; `fit()` trains, `train_step()` is the hot path."""

    def __init__(self, cfg: TrainConfig, accelerator=None, dataset=None, model_kwargs: Optional[dict] = None):
        """`model_kwargs` override registry sizes (tests and benchmarks use tiny models; the CLI does not)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        on_gpu = torch.cuda.is_available()
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
        if cfg.global_batch_size < 1 or cfg.gradient_accumulation_steps < 1:
            raise UserError("global_batch_size and gradient_accumulation_steps must be >= 1")

        # Data first: the model's input size, channels and classes come from the dataset's metadata.
        if dataset is None:
            if not cfg.data_dir:
                raise UserError("no data: pass --data-dir (a folder written by dataset_tools.py)")
            dataset = load_dataset(cfg.data_dir, with_images=cfg.proj_coeff > 0)
        self.dataset, self.meta = dataset, dataset.meta
        info = dataset_info(self.meta)
        if cfg.resolution is not None:
            expected = cfg.resolution // 8 if self.meta["kind"] == "latents" else cfg.resolution
            check_model_fits(self.meta, expected, info["in_channels"], f"{cfg.model} at resolution {cfg.resolution}")

        with user_errors():
            self.family = parse_model_name(cfg.model)[0]
        # DFM: inactive stages' embeddings and heads get no gradient on steps that draw a lower stage.
        ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if self.family == "DFM-SiT" else []
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision if on_gpu else "no", cpu=not on_gpu,
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_dir=os.path.join(cfg.output_dir, cfg.exp_name, "logs"), kwargs_handlers=ddp)
        acc = self.accelerator
        self.device, self.world, self.rank = acc.device, acc.num_processes, acc.process_index
        self.is_main = acc.is_main_process
        per_step = self.world * cfg.gradient_accumulation_steps
        if cfg.global_batch_size % per_step:
            raise UserError(f"global_batch_size {cfg.global_batch_size} is not divisible by processes x "
                            f"gradient_accumulation_steps = {per_step}")
        self.micro = cfg.global_batch_size // per_step                  # images per process per micro-batch
        self.global_micro = self.micro * self.world

        # REPA target encoder (frozen), fed the training images; its width sets the projector's.
        self.encoder, repa = None, {}
        if cfg.proj_coeff > 0:
            if not cfg.repa_depth:
                raise UserError("proj_coeff > 0 needs repa_depth (the block whose tokens the projector reads)")
            self.encoder = load_repa_encoder(cfg.repa_encoder, cfg.repa_encoder_path, self.device)
            repa = dict(repa_depth=cfg.repa_depth, repa_z_dim=self.encoder.embed_dim)
        elif cfg.repa_depth:
            repa = dict(repa_depth=cfg.repa_depth)

        torch.manual_seed(cfg.seed)                                     # identical initial weights everywhere
        with user_errors():
            model = build_model(cfg.model, **model_overrides(cfg, **info, **repa), **(model_kwargs or {}))

        # Budgets (ELIT) and stages (DFM) drawn per step; validate the ranges up front.
        if self.family == "ELIT-SiT":
            with user_errors():
                allowed_budgets(model.budget_levels, cfg.elit_min_mask_prob, cfg.elit_max_mask_prob)
        elif cfg.elit_min_mask_prob is not None or cfg.elit_max_mask_prob is not None:
            raise UserError(f"elit_min_mask_prob / elit_max_mask_prob apply to ELIT models, not {cfg.model}")
        if self.family == "DFM-SiT":
            self.loss_fn = DFMLoss(cfg.path_type, cfg.weighting, cfg.label_dropout,
                                   stage_weights=cfg.dfm_stage_weights, low_stage_location=cfg.dfm_low_stage_location)
            with user_errors():
                self.loss_fn.weights_for(model.stages)
        else:
            if cfg.dfm_stage_weights is not None:
                raise UserError(f"dfm_stage_weights applies to DFM models, not {cfg.model}")
            self.loss_fn = FlowMatchingLoss(cfg.path_type, cfg.weighting, cfg.label_dropout)

        # Model, EMA (fp32, eval mode, no grads), optimizer.
        model.to(self.device).train()
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.compile:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            model.compile_regions()
        self.model = model                                              # the bare model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema_params = list(self.ema.parameters())
        self.ema_targets = [p.detach() for p in model.parameters()]     # views: follow the in-place updates
        self.fused = self.device.type == "cuda" or hasattr(torch, "_fused_adamw_")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
            weight_decay=cfg.weight_decay, fused=self.fused or None, foreach=None if self.fused else True)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        self.ddp_model = acc.prepare_model(model)                       # DDP (+ autocast) wrapper

        # State.
        self.step = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.exp_dir = os.path.join(cfg.output_dir, cfg.exp_name)
        self.ckpt_dir = os.path.join(self.exp_dir, "checkpoints")
        self._vae = None
        self.resume()
        sampler = StepBatchSampler(len(dataset), self.micro, self.world, self.rank, seed=cfg.seed,
                                   start_micro_batch=self.step * cfg.gradient_accumulation_steps)
        self.loader = make_loader(dataset, sampler, cfg.num_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------------
    # Checkpoints.
    def resume(self) -> None:
        cfg = self.cfg
        existing = latest_checkpoint(self.ckpt_dir)
        if cfg.resume_step == 0:
            if existing is not None:
                raise UserError(f"{self.exp_dir} already holds checkpoints: pass --resume-step -1 to resume the "
                                f"latest, or choose another --exp-name")
            return
        path = existing if cfg.resume_step < 0 else os.path.join(self.ckpt_dir, f"{cfg.resume_step:07d}.pt")
        if path is None:
            raise UserError(f"--resume-step {cfg.resume_step}: no checkpoint in {self.ckpt_dir}")
        ckpt = load_checkpoint(path)
        if ckpt["arch"] != self.model.arch:
            diff = sorted(k for k in set(ckpt["arch"]) | set(self.model.arch)
                          if ckpt["arch"].get(k) != self.model.arch.get(k))
            raise UserError(f"{path} holds a different model ({', '.join(diff)} differ) than this config builds")
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.ema.load_state_dict(ckpt["ema"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
        self.step = int(ckpt["step"])
        if ckpt["data_position"] != self.step * cfg.gradient_accumulation_steps:
            raise UserError(f"{path} was written with another gradient_accumulation_steps; resume with the same one")
        set_rng_state(ckpt["rng"])
        self.log(f"resumed from {path} at step {self.step}")

    def save(self) -> str:
        """Write checkpoints/NNNNNNN.pt atomically (main process); every process waits for it."""
        self.check_finite()
        path = os.path.join(self.ckpt_dir, f"{self.step:07d}.pt")
        if self.is_main:
            atomic_save(dict(arch=self.model.arch, model=self.model.state_dict(), ema=self.ema.state_dict(),
                             optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                             step=self.step, data_position=self.step * self.cfg.gradient_accumulation_steps,
                             rng=rng_state(), config=to_dict(self.cfg), dataset=self.meta), path)
        self.accelerator.wait_for_everyone()
        return path

    def check_finite(self) -> None:
        """One host sync: stop if any step so far had a non-finite loss."""
        bad = int(self.first_bad.item())
        if bad >= 0:
            raise UserError(f"the loss became NaN/inf at step {bad + 1}; stopping without writing a checkpoint "
                            f"(the last good one is in {self.ckpt_dir})")

    # ------------------------------------------------------------------------------------------------------
    # The step.
    def micro_batches(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def step_condition(self) -> dict:
        """The step's budget (ELIT) or highest active stage (DFM): the same on every process."""
        if self.family == "ELIT-SiT":
            return dict(budget=draw_budget(self.model.budget_levels, self.cfg.elit_min_mask_prob,
                                           self.cfg.elit_max_mask_prob, self.cfg.seed, self.step))
        if self.family == "DFM-SiT":
            return dict(stage=self.loss_fn.draw_stage(self.model.stages, self.cfg.seed, self.step))
        return {}

    def draws(self, shape) -> list[tuple[dict, Optional[torch.Tensor]]]:
        """Per micro-batch, this process's rows of the step's draws (+ the latent posterior noise).

        One draw for the whole global batch from a generator seeded by (seed, step): global image j is
        micro-batch j // M, process (j % M) // L, so the numbers an image gets do not depend on how the batch
        is split over processes and accumulation steps (M = global micro-batch, L = per-process micro-batch).
        """
        g = self.generator.manual_seed(step_seed(self.cfg.seed, self.step, 0))
        G = self.cfg.global_batch_size
        if self.family == "DFM-SiT":
            draws = self.loss_fn.draw(G, pyramid_shapes(shape, self.model.stages), generator=g)
        else:
            draws = self.loss_fn.draw(G, shape, generator=g)
        posterior = (torch.randn(G, *shape, generator=g, device=self.device)
                     if self.meta["kind"] == "latents" else None)
        out = []
        for micro in range(self.cfg.gradient_accumulation_steps):
            lo = micro * self.global_micro + self.rank * self.micro
            out.append((slice_draws(draws, lo, lo + self.micro), None if posterior is None else posterior[lo:lo + self.micro]))
        return out

    def train_step(self, batches: list[dict]) -> None:
        """One optimizer step over `gradient_accumulation_steps` micro-batches already on the device."""
        cfg = self.cfg
        condition = self.step_condition()
        n = len(batches)
        step_draws = self.draws(tuple(batches[0]["x"].shape[1:]))
        for micro, (batch, (draws, posterior)) in enumerate(zip(batches, step_draws)):
            x = to_model_input(batch, self.meta, posterior)
            target = None
            if self.encoder is not None:
                size = unwrap(self.model).grid * 14                     # DINOv2 /14 patches = the model's token grid
                images = batch["image"] if "image" in batch else batch["x"].expand(-1, 3, -1, -1)
                target = encoder_features(self.encoder, images, size=size)
            sync = self.accelerator.no_sync(self.ddp_model) if micro < n - 1 else contextlib.nullcontext()
            with sync:
                out = self.loss_fn(self.ddp_model, x, batch["y"], draws=draws, target_features=target, **condition)
                total = out.loss.mean()
                if out.proj is not None:
                    total = total + cfg.proj_coeff * out.proj.mean()
                self.accelerator.backward(total / n)
            total = total.detach()
            self.loss_sum += total
            self.first_bad = torch.where(~torch.isfinite(total) & (self.first_bad < 0), self.step, self.first_bad)
        self.optimizer_step()
        self.step += 1

    def optimizer_step(self) -> None:
        cfg = self.cfg
        grads = [p.grad for p in self.params if p.grad is not None]
        if cfg.max_grad_norm > 0 or self.fused:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))        # fp32, on device
        if self.fused:
            # grads / grad_scale inside the kernel == torch.nn.utils.clip_grad_norm_; found_inf skips the update
            if cfg.max_grad_norm > 0:
                self.optimizer.grad_scale = 1.0 / torch.clamp(cfg.max_grad_norm / (norm + 1e-6), max=1.0)
            self.optimizer.found_inf = (~torch.isfinite(norm)).float()
            self.optimizer.step()
            self.optimizer.__dict__.pop("grad_scale", None)
            del self.optimizer.found_inf
        else:
            if cfg.max_grad_norm > 0:
                torch._foreach_mul_(grads, torch.clamp(cfg.max_grad_norm / (norm + 1e-6), max=1.0))
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        torch._foreach_lerp_(self.ema_params, self.ema_targets, 1.0 - cfg.ema_decay)

    # ------------------------------------------------------------------------------------------------------
    # Sample grids.
    def vae(self):
        if self._vae is None and self.meta["kind"] == "latents":
            from vae import load_vae
            self._vae = load_vae(self.meta["vae"], self.device)
        return self._vae

    @torch.no_grad()
    def sample_grids(self, n: int = 16) -> list[str]:
        """EMA samples from fixed noise and labels: full budget, and a low budget for ELIT (main process)."""
        paths = []
        if self.is_main:
            C, size = self.model.in_channels, self.model.input_size
            g = torch.Generator().manual_seed(self.cfg.seed)
            noise = torch.randn(n, C, size, size, generator=g).to(self.device)
            y = (torch.arange(n) % self.model.num_classes).to(self.device)
            dtype = torch.bfloat16 if self.device.type == "cuda" and self.cfg.mixed_precision == "bf16" else None
            budgets = [None, self.cfg.sample_low_budget] if self.family == "ELIT-SiT" else [None]
            try:
                vae = self.vae()
            except UserError as e:
                self.log(f"sample grid skipped: {e}")
                return paths
            for budget in budgets:
                if self.family == "DFM-SiT":                            # independent N(0, I) noise per stage
                    shapes = pyramid_shapes(noise.shape[1:], self.model.stages)
                    stage_noise = [torch.randn(n, *shape, generator=g).to(self.device) for shape in shapes]
                    steps, thresholds = default_dfm_schedule(self.cfg.sample_num_steps, self.model.stages)
                    x = sample_dfm(self.ema, stage_noise, y, steps_per_stage=steps,
                                   thresholds=thresholds, cfg_scale=self.cfg.sample_cfg_scale,
                                   path_type=self.cfg.path_type, autocast_dtype=dtype)
                else:
                    x = sample(self.ema, noise, y, num_steps=self.cfg.sample_num_steps,
                               cfg_scale=self.cfg.sample_cfg_scale, path_type=self.cfg.path_type,
                               budget=budget, autocast_dtype=dtype)
                name = f"{self.step:07d}" + ("" if budget is None else f"_budget{budget:g}") + ".png"
                path = os.path.join(self.exp_dir, "samples", name)
                save_grid(to_uint8(x, self.meta, vae), path)
                paths.append(path)
        self.accelerator.wait_for_everyone()
        return paths

    # ------------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.is_main:
            os.makedirs(self.exp_dir, exist_ok=True)
            with open(os.path.join(self.exp_dir, "log.txt"), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def fit(self) -> None:
        """Train to max_train_steps: log, checkpoint and sample on schedule; final checkpoint and grid."""
        from tqdm import tqdm
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            save_config(cfg, os.path.join(self.exp_dir, "config.yaml"))
            n_params = sum(p.numel() for p in self.params)
            self.log(f"{cfg.model}: {n_params / 1e6:.1f}M parameters, {self.world} process(es), global batch "
                     f"{cfg.global_batch_size} = {self.world} x {cfg.gradient_accumulation_steps} x {self.micro}, "
                     f"data {cfg.data_dir} ({self.meta['kind']}, {len(self.dataset)} items)")
        acc.init_trackers(cfg.exp_name.replace("/", "_"), config={k: v for k, v in to_dict(cfg).items()
                                                                  if isinstance(v, (int, float, str, bool))})
        bar = tqdm(total=cfg.max_train_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   dynamic_ncols=True)
        batches = self.micro_batches()
        t0, s0 = time.time(), self.step
        while self.step < cfg.max_train_steps:
            self.train_step([next(batches) for _ in range(cfg.gradient_accumulation_steps)])
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_train_steps:
                self.check_finite()
                loss = acc.reduce(self.loss_sum, "mean").item() / ((self.step - s0) * cfg.gradient_accumulation_steps)
                rate = (self.step - s0) * cfg.global_batch_size / (time.time() - t0)
                lr = self.scheduler.get_last_lr()[0]
                acc.log({"loss": loss, "img_per_s": rate, "lr": lr}, step=self.step)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
                self.log(f"step {self.step}: loss {loss:.5f}, {rate:.1f} img/s, lr {lr:.3g}")
                self.loss_sum.zero_()
                t0, s0 = time.time(), self.step
            if self.step % cfg.checkpointing_steps == 0 or self.step == cfg.max_train_steps:
                self.log(f"saved {self.save()}")
            if cfg.sample_every and self.step % cfg.sample_every == 0 or self.step == cfg.max_train_steps:
                for path in self.sample_grids():
                    self.log(f"sample grid {path}")
        bar.close()
        acc.end_training()
