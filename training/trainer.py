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
naming that step, without writing a checkpoint. SIGTERM, SIGINT and SIGUSR1 (a preempting scheduler, Ctrl-C)
finish the step in flight, save it on every rank and end the run (`utils/signals.py`); `training/resume.py`
says which checkpoint a run continues and which options may change on resume.

The trainer compares no family name and never asks the data kind. The model's family picks its
objective once (`loss.OBJECTIVES`), which validates the options and draws each step's condition and noise; the
model says what DDP needs (`may_leave_parameters_unused`) and what the grids draw (`training/grids.py`). Pixels
vs latents is the dataset's codec (`dataio/codec.py`): the trainer's `encode` / `decode` ask it. Seeds, RNG
state and the checkpoint's contents are `training/state.py`; the REPA target encoder is `training/repa.py`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from typing import Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from tqdm import tqdm

from dataio.codec import Codec
from dataio.dataset import load_dataset
from dataio.loader import StepBatchSampler, make_loader
from loss import OBJECTIVES, slice_draws
from models import build_model
from models.checkpoint import atomic_save, load_checkpoint
from training.compile import compile_for_training
from training.grids import class_check_line, fit_class_check, grid_low_budget, write_sample_grids
from training.options import TrainConfig, experiment_dir, model_overrides
from training.repa import load_repa_encoders, target_features
from training.resume import apply_optimizer_settings, check_changes, checkpoint_to_resume
from training.state import checkpoint_state, restore_state, step_seed
from training.tracking import grid_tags, open_tracker
from utils.atomic import remove_stale_temps, writable_dir
from utils.cli import save_config, to_dict
from utils.device import use_attention_backend
from utils.errors import UserError, user_errors
from utils.signals import StopRequest


class Trainer:
    """Builds everything a run needs from a TrainConfig; `fit()` trains, `train_step()` is the hot path."""

    def __init__(self, cfg: TrainConfig, accelerator=None, dataset=None, model_kwargs: Optional[dict] = None):
        """`model_kwargs` override registry sizes (tests and benchmarks use tiny models; the CLI does not)."""
        self.cfg = cfg
        on_gpu = torch.cuda.is_available()
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
        self.exp_dir = experiment_dir(cfg)
        writable_dir(self.exp_dir, "output folder")                     # a file or read-only: refused now

        # Data first: the model's input size, channels and classes come from the dataset's metadata.
        if dataset is None:
            if not cfg.data_dir:
                raise UserError("no data: pass --data-dir (a folder written by dataset_tools.py)")
            dataset = load_dataset(cfg.data_dir, with_images=cfg.proj_coeff > 0)
        self.dataset, self.meta = dataset, dataset.meta
        # The codec answers every pixels-vs-latents question (model shape, encode, decode; dataio/codec.py).
        self.codec = Codec.from_record(self.meta)
        info = self.codec.model_settings()
        if cfg.resolution is not None:
            self.codec.check_fits(self.codec.model_input_size(cfg.resolution), info["in_channels"],
                                  f"{cfg.model} at resolution {cfg.resolution}")

        # REPA target encoder (frozen), fed the training images; its width sets the projector's. Loaded on the
        # CPU: the model is built before the accelerator (the model tells DDP what it needs), then both move.
        self.encoder, repa = None, {}
        if cfg.proj_coeff > 0:
            if not cfg.repa_depth:
                raise UserError("proj_coeff > 0 needs repa_depth (the block whose tokens the projector reads)")
            self.encoder = load_repa_encoders(cfg.repa_encoder, cfg.repa_encoder_path, "cpu")
            repa = dict(repa_depth=cfg.repa_depth, repa_z_dim=self.encoder.embed_dim)
        elif cfg.repa_depth:
            repa = dict(repa_depth=cfg.repa_depth)

        torch.manual_seed(cfg.seed)                                     # identical initial weights everywhere
        with user_errors():
            model = build_model(cfg.model, **model_overrides(cfg, **info, **repa), **(model_kwargs or {}))
        # The family's objective checks its options now; per step it draws the condition (budget, stage) and noise.
        self.objective = OBJECTIVES[model.family].from_options(cfg, model)
        if cfg.sample_num_steps < model.stages:                         # the grids fail only after training
            raise UserError(f"sample_num_steps {cfg.sample_num_steps} is too few for {model.stages} stages")
        self.loss_fn = self.objective                   # the per-micro-batch loss (tests wrap it to watch or poison it)
        # The grids' low budget, checked now rather than after the last step (clamped or refused; training/grids.py).
        self.grid_low_budget, self.grid_note = grid_low_budget(model, cfg.sample_low_budget)

        # A model that may leave parameters without gradient on a step (DFM: the stages above the drawn one)
        # needs DDP to look for them.
        ddp = ([DistributedDataParallelKwargs(find_unused_parameters=True)]
               if model.may_leave_parameters_unused else [])
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision if on_gpu else "no", cpu=not on_gpu,
            project_dir=os.path.join(self.exp_dir, "logs"), kwargs_handlers=ddp)
        acc = self.accelerator
        self.device, self.world, self.rank = acc.device, acc.num_processes, acc.process_index
        self.codec.device = self.device
        self.is_main = acc.is_main_process
        per_step = self.world * cfg.gradient_accumulation_steps
        if cfg.global_batch_size % per_step:
            raise UserError(f"global_batch_size {cfg.global_batch_size} is not divisible by processes x "
                            f"gradient_accumulation_steps = {per_step}")
        self.micro = cfg.global_batch_size // per_step                  # images per process per micro-batch
        self.global_micro = self.micro * self.world
        if self.encoder is not None:
            self.encoder.to(self.device)

        # Model, EMA (fp32, eval mode, no grads), optimizer.
        model.gradient_checkpointing = cfg.gradient_checkpointing        # run-time switch, not in `arch`
        model.to(self.device).train()
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.bf16_residual and on_gpu and cfg.mixed_precision == "bf16":
            model.residual_dtype = torch.bfloat16                       # opt-in numerics change (models/sit.py)
        use_attention_backend(cfg.attention_backend)                    # before compile: traced with it
        if cfg.compile:
            compile_for_training(model, cfg, self.exp_dir)
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
        self.checker = None                                             # the class check's classifier, when asked
        self.ckpt_dir = os.path.join(self.exp_dir, "checkpoints")
        self.resume()
        sampler = StepBatchSampler(len(dataset), self.micro, self.world, self.rank, seed=cfg.seed,
                                   start_micro_batch=self.step * cfg.gradient_accumulation_steps)
        self.loader = make_loader(dataset, sampler, cfg.num_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------------
    # Checkpoints.
    def resume(self) -> None:
        """Restore `cfg.resume_step`'s checkpoint (training/resume.py: which one, which changes may apply)."""
        cfg = self.cfg
        if self.is_main:                                                # partial saves of a killed run
            remove_stale_temps(self.ckpt_dir)
        path, said = checkpoint_to_resume(cfg, self.ckpt_dir, self.exp_dir)
        if path is not None:
            ckpt = load_checkpoint(path)
            changes = check_changes(ckpt.get("config", {}), cfg, path)
            self.step = restore_state(path, self.model, self.ema, self.optimizer, self.scheduler,
                                      cfg.gradient_accumulation_steps, ckpt=ckpt)
            apply_optimizer_settings(self.optimizer, self.scheduler, cfg)   # the options' values, used for real
            for name, old, new in changes:
                self.log(f"resume: {name} changed from {old!r} to {new!r} (--allow-resume-change)")
            said += f" at step {self.step}"
        self.log(said)
        if self.is_main and cfg.resume_step != 0:
            print(said, flush=True)

    def save(self) -> str:
        """Write checkpoints/NNNNNNN.pt atomically (main process); every process waits for it."""
        self.check_finite()
        path = os.path.join(self.ckpt_dir, f"{self.step:07d}.pt")
        if self.is_main:
            atomic_save(checkpoint_state(self.model, self.ema, self.optimizer, self.scheduler, self.step,
                                         self.cfg.gradient_accumulation_steps, to_dict(self.cfg), self.meta), path)
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
        """The step's budget (ELIT), highest active stage (DFM) or nothing (SiT): the same on every process."""
        return self.objective.step_condition(self.cfg.seed, self.step)

    def draws(self, shape) -> list[tuple[dict, Optional[torch.Tensor]]]:
        """Per micro-batch, this process's rows of the step's draws (+ the latent posterior noise).

        One draw for the whole global batch from a generator seeded by (seed, step): global image j is
        micro-batch j // M, process (j % M) // L, so the numbers an image gets do not depend on how the batch
        is split over processes and accumulation steps (M = global micro-batch, L = per-process micro-batch).
        """
        g = self.generator.manual_seed(step_seed(self.cfg.seed, self.step, 0))
        G = self.cfg.global_batch_size
        draws = self.objective.draw_step(G, shape, generator=g)
        posterior = self.codec.encode_noise((G, *shape), generator=g, device=self.device)
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
            x = self.encode(batch, posterior)
            target = None if self.encoder is None else target_features(self.encoder, batch, self.model.grid)
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
    # The codec: model input from a batch, uint8 images from model output.
    def encode(self, batch: dict, noise: Optional[torch.Tensor]) -> torch.Tensor:
        return self.codec.encode(batch, noise)

    def load_decoder(self) -> None:
        """Load the decoder now (a UserError when it cannot be had, e.g. a hub VAE offline)."""
        self.codec.load_vae()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(x)

    # ------------------------------------------------------------------------------------------------------
    # Sample grids.
    def sample_grids(self, n: int = 16) -> list[str]:
        """EMA samples from fixed noise and labels: full budget, and a low budget for models with budget levels
        (main process; the others wait)."""
        paths = []
        if self.is_main:
            try:
                self.load_decoder()
            except UserError as e:
                self.log(f"sample grid skipped: {e}")
            else:
                cfg = self.cfg
                dtype = torch.bfloat16 if self.device.type == "cuda" and cfg.mixed_precision == "bf16" else None
                paths = write_sample_grids(self.ema, os.path.join(self.exp_dir, "samples"), self.step, self.decode,
                                           seed=cfg.seed, low_budget=self.grid_low_budget, device=self.device,
                                           n=n, num_steps=cfg.sample_num_steps, cfg_scale=cfg.sample_cfg_scale,
                                           path_type=cfg.path_type, autocast_dtype=dtype,
                                           judge=self.class_check if cfg.sample_class_check else None)
        self.accelerator.wait_for_everyone()
        return paths

    def class_check(self, path: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Print and log how often a tiny classifier fitted on the real images names each sample's class."""
        if self.checker is None:
            self.checker = fit_class_check(self.dataset, lambda b: self.decode(self.encode(b, None).to(self.device)),
                                           self.ema.num_classes, self.cfg.seed)
        line = class_check_line(*self.checker, path, images, labels)
        tqdm.write(line)
        self.log(line)

    # ------------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.is_main:
            os.makedirs(self.exp_dir, exist_ok=True)
            with open(os.path.join(self.exp_dir, "log.txt"), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def fit(self) -> None:
        """Train to max_train_steps: log, checkpoint and sample on schedule; final checkpoint and grid."""
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            save_config(cfg, os.path.join(self.exp_dir, "config.yaml"))
            n_params = sum(p.numel() for p in self.params)
            self.log(f"{cfg.model}: {n_params / 1e6:.1f}M parameters, {self.world} process(es), global batch "
                     f"{cfg.global_batch_size} = {self.world} x {cfg.gradient_accumulation_steps} x {self.micro}, "
                     f"data {getattr(self.dataset, 'data_dir', cfg.data_dir)} ({self.codec.kind}, "
                     f"{len(self.dataset)} items)")
            if self.grid_note:                                          # also on the console: it changes outputs
                self.log(self.grid_note)
                print(f"note: {self.grid_note}", file=sys.stderr, flush=True)
        # Scalars and sample grids (training/tracking.py); a missing tracker package stops the run here.
        tracker = open_tracker(cfg.report_to, os.path.join(self.exp_dir, "logs"), cfg.exp_name, to_dict(cfg),
                               enabled=self.is_main)
        bar = tqdm(total=cfg.max_train_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   dynamic_ncols=True)
        batches = self.micro_batches()
        t0, s0 = time.time(), self.step
        stop = StopRequest().install(self.device)
        try:
            self.loop(bar, batches, stop, t0, s0, tracker)
        except BaseException:
            stop.close(wait=False)                  # other ranks may never start the matching reduction
            raise
        stop.close()
        bar.close()
        tracker.close()
        acc.end_training()
        if stop.stopped_by and self.is_main:
            print(f"stopped by {stop.name} after step {self.step}: saved {self.last_saved}; resume with the same "
                  f"command and --resume-step auto (or -1)", flush=True)

    def loop(self, bar, batches, stop: StopRequest, t0: float, s0: int, tracker) -> None:
        """Steps until max_train_steps or an agreed stop request (then a checkpoint of the last whole step)."""
        cfg, acc = self.cfg, self.accelerator
        while self.step < cfg.max_train_steps:
            self.train_step([next(batches) for _ in range(cfg.gradient_accumulation_steps)])
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_train_steps:
                self.check_finite()
                loss = acc.reduce(self.loss_sum, "mean").item() / ((self.step - s0) * cfg.gradient_accumulation_steps)
                rate = (self.step - s0) * cfg.global_batch_size / (time.time() - t0)
                lr = self.scheduler.get_last_lr()[0]
                tracker.log_scalars({"loss": loss, "img_per_s": rate, "lr": lr}, step=self.step)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
                self.log(f"step {self.step}: loss {loss:.5f}, {rate:.1f} img/s, lr {lr:.3g}")
                self.loss_sum.zero_()
                t0, s0 = time.time(), self.step
            stopping = stop.agreed()
            if stopping or self.step % cfg.checkpointing_steps == 0 or self.step == cfg.max_train_steps:
                self.last_saved = self.save()
                self.log(f"saved {self.last_saved}" + (f" (stop requested by {stop.name})" if stopping else ""))
            if stopping:
                return
            if cfg.sample_every and self.step % cfg.sample_every == 0 or self.step == cfg.max_train_steps:
                paths = self.sample_grids()
                for path in paths:
                    self.log(f"sample grid {path}")
                tracker.log_images(grid_tags(paths), step=self.step)
