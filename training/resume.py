"""Resuming a run: which checkpoint (`--resume-step N | -1 | auto | 0`), which settings may change, leftovers.

A resumed run is built from the *new* options and the checkpoint's state. Every recorded value must be the
value used, so each option has a policy (`POLICY`, checked complete by tests/test_reliability.py):

    free       may change on resume and takes effect by construction (the trainer reads it from the options):
               run length, intervals, workers, trackers, precision and compilation, where outputs go
    override   refused unless named in `--allow-resume-change KEY[,KEY]`; then applied for real (optimizer
               hyper-parameters are written into the restored optimizer and scheduler: `apply_optimizer_settings`),
               logged, and recorded in config.yaml and the next checkpoints
    fixed      refused: the checkpoint cannot continue under another value (the batch layout)
    arch       the model's settings: compared through the model they build (`restore_state` refuses a checkpoint
               whose `arch` differs, naming the settings), so `elit_head_depth: 2` matches a default of 2

A refusal is one line naming the key, the checkpoint's value and the new one.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from models.checkpoint import latest_checkpoint
from utils.errors import UserError

FREE, OVERRIDE, FIXED, ARCH = "free", "override", "fixed", "arch"

POLICY = {
    # run control
    "exp_name": FREE, "output_dir": FREE, "resume_step": FREE, "allow_resume_change": FREE, "report_to": FREE,
    "progress": FREE, "max_train_steps": FREE, "checkpointing_steps": FREE, "log_every": FREE,
    "sample_every": FREE, "sample_low_budget": FREE, "sample_num_steps": FREE, "sample_cfg_scale": FREE,
    "num_workers": FREE, "mixed_precision": FREE, "allow_tf32": FREE, "compile": FREE, "repa_encoder_path": FREE,
    "compile_cache": FREE, "compile_dynamic": FREE, "compile_mode": FREE, "compile_scope": FREE,
    "bf16_residual": FREE, "attention_backend": FREE, "gradient_checkpointing": FREE, "sample_class_check": FREE,
    # training hyper-parameters: an intended change is allowed by name and applied
    "learning_rate": OVERRIDE, "adam_beta1": OVERRIDE, "adam_beta2": OVERRIDE, "adam_epsilon": OVERRIDE,
    "weight_decay": OVERRIDE, "warmup_steps": OVERRIDE, "max_grad_norm": OVERRIDE, "ema_decay": OVERRIDE,
    "path_type": OVERRIDE, "weighting": OVERRIDE, "label_dropout": OVERRIDE, "proj_coeff": OVERRIDE,
    "elit_min_mask_prob": OVERRIDE, "elit_max_mask_prob": OVERRIDE, "dfm_stage_weights": OVERRIDE,
    "dfm_low_stage_location": OVERRIDE, "repa_encoder": OVERRIDE, "seed": OVERRIDE, "data_dir": OVERRIDE,
    # the checkpoint's model (compared as built) and batch layout
    "model": ARCH, "resolution": ARCH, "qk_norm": ARCH, "elit_group_size": ARCH, "elit_head_depth": ARCH,
    "elit_tail_depth": ARCH, "elit_write_depth": ARCH, "elit_write_dropped_latents": ARCH, "dfm_stages": ARCH,
    "repa_depth": ARCH, "global_batch_size": FIXED, "gradient_accumulation_steps": FIXED,
}

# Optimizer settings live in the restored optimizer's param groups: name -> (group key, value from the options).
OPTIMIZER_SETTINGS: dict[str, tuple[str, Callable]] = {
    "learning_rate": ("lr", lambda c: c.learning_rate),
    "adam_beta1": ("betas", lambda c: (c.adam_beta1, c.adam_beta2)),
    "adam_beta2": ("betas", lambda c: (c.adam_beta1, c.adam_beta2)),
    "adam_epsilon": ("eps", lambda c: c.adam_epsilon),
    "weight_decay": ("weight_decay", lambda c: c.weight_decay),
}


def checkpoint_to_resume(cfg, ckpt_dir: str, exp_dir: str) -> tuple[Optional[str], str]:
    """(path or None for a fresh start, a line saying which) for `cfg.resume_step`: 0 fresh (refused when the
    folder holds checkpoints), -1 the latest, N that step, 'auto' the latest or fresh when there is none."""
    latest = latest_checkpoint(ckpt_dir)
    step = cfg.resume_step
    if step == "auto":
        if latest is None:
            return None, f"--resume-step auto: no checkpoint in {ckpt_dir}, starting fresh"
        return latest, f"--resume-step auto: resuming from {latest}"
    if step == 0:
        if latest is not None:
            raise UserError(f"{exp_dir} already holds checkpoints of an earlier run (latest "
                            f"{os.path.basename(latest)}): pass --resume-step -1 to continue it (auto: the same for a "
                            f"requeued job), or --exp-name NEW_NAME to start a new run beside it")
        return None, "starting fresh"
    path = latest if step < 0 else os.path.join(ckpt_dir, f"{step:07d}.pt")
    if path is None or not os.path.isfile(path):
        raise UserError(f"--resume-step {step}: no checkpoint {'' if step < 0 else os.path.basename(path) + ' '}"
                        f"in {ckpt_dir} (--resume-step auto starts fresh when there is none)")
    return path, f"resuming from {path}"


def allowed_changes(cfg) -> set:
    """The keys of --allow-resume-change, each checked against the policy."""
    names = {k.strip().replace("-", "_") for k in (cfg.allow_resume_change or "").split(",") if k.strip()}
    for name in sorted(names):
        if name not in POLICY:
            raise UserError(f"--allow-resume-change: unknown setting '{name}'")
        if POLICY[name] in (FIXED, ARCH):
            raise UserError(f"--allow-resume-change: '{name}' cannot change on resume (the checkpoint's model or "
                            f"batch layout depends on it); start a new run")
    return names


def check_changes(saved: dict, cfg, path: str) -> list[tuple[str, object, object]]:
    """The (key, old, new) that differ from the checkpoint's recorded options and may; a UserError for the rest."""
    allowed = allowed_changes(cfg)
    changes = []
    for name, policy in POLICY.items():
        if name not in saved or policy in (FREE, ARCH):
            continue
        old, new = saved[name], getattr(cfg, name)
        if old == new:
            continue
        if policy == FIXED or name not in allowed:
            hint = "start a new run" if policy == FIXED else f"pass --allow-resume-change {name} to apply the change"
            raise UserError(f"resume from {path}: {name} was {old!r}, now {new!r}; {hint}")
        changes.append((name, old, new))
    return changes


def apply_optimizer_settings(optimizer, scheduler, cfg) -> None:
    """Write the options' optimizer settings into a restored optimizer (which restores the checkpoint's) and
    recompute the scheduled learning rate from the new base rate and warm-up."""
    for key, value in {k: v(cfg) for k, v in OPTIMIZER_SETTINGS.values()}.items():
        for group in optimizer.param_groups:
            group[key] = value
    scheduler.base_lrs = [cfg.learning_rate for _ in optimizer.param_groups]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
