"""The pipeline steps of the study, each a function of the run's `Study`: data import, the feature classifier,
training both models (probe, then resumed to the step cap), loading the EMA weights with their held-out loss,
sampling every row, latency, and the metrics against the test set."""

from __future__ import annotations

import copy
import gc
import os
import time

import numpy as np
import torch
from accelerate import Accelerator

from models.checkpoint import latest_checkpoint, load_checkpoint
from dataio.codec import Codec
from dataio.dataset import load_dataset
from evaluation import evaluate, load_network, reference_statistics
from evaluation.batches import write_npz
from loss import FlowMatchingLoss, per_sample_mse, slice_draws
from models.graphs import fast_inference
from samplers import guided_velocity
from studies.fmnist.classifier import load_split, train_classifier
from studies.fmnist.costs import HARD_DEADLINE_S, flop_table, row_gflops, training_gflops
from studies.fmnist.options import GROUP_SIZE, MODELS, SMOKE_CLASSIFIER, SMOKE_ELIT, SMOKE_MODEL, ClassifierConfig
from studies.fmnist.rows import fmt
from studies.fmnist.state import Study, median_or_none
from studies.fmnist.tools import generate_images, guided_step_fn, import_fashion_mnist, load_for_sampling, median_time
from training import Trainer
from training.options import TrainConfig
from utils.errors import UserError

HELDOUT_SEED_OFFSET = 1_000_003


def import_data(study: Study) -> None:
    for split in ("train", "test"):
        import_fashion_mnist(study.cfg.source, study.data_dir, split)
    train, test = (load_dataset(os.path.join(study.data_dir, s)) for s in ("train", "test"))
    study.results["data"] = dict(source=os.path.abspath(study.cfg.source), folder=study.data_dir,
                                 train=len(train), test=len(test), resolution=train.meta["resolution"],
                                 channels=train.meta["channels"], classes=train.meta["class_names"])
    study.say(f"data: {len(train)} train, {len(test)} test images, 32x32x1")


def fit_classifier(study: Study) -> None:
    defaults = ClassifierConfig()
    kw = dict(SMOKE_CLASSIFIER) if study.cfg.smoke else {}
    ccfg = ClassifierConfig(data=study.data_dir, out=study.classifier_path,
                            epochs=study.p.classifier_epochs or defaults.epochs,
                            max_train_items=study.p.classifier_items, seed=study.cfg.seed, device=str(study.device),
                            **kw)
    study.results["classifier"] = train_classifier(ccfg, log=study.say)


def train_config(study: Study, name: str, steps: int, resume: bool) -> TrainConfig:
    """Both models train identically; the ELIT model ("elit") multibudget over all GROUP_SIZE^2 levels."""
    cfg, p = study.cfg, study.p
    elit = name == "elit"
    return TrainConfig(
        model=MODELS[name], data_dir=os.path.join(study.data_dir, "train"), exp_name=name,
        output_dir=os.path.join(study.work, "runs"), global_batch_size=p.global_batch_size, max_train_steps=steps,
        learning_rate=p.learning_rate, warmup_steps=p.warmup_steps, ema_decay=p.ema_decay,
        label_dropout=cfg.label_dropout, weighting=cfg.weighting, seed=cfg.seed, mixed_precision="bf16",
        compile=cfg.compile, checkpointing_steps=10**9, resume_step=-1 if resume else 0, report_to="none",
        log_every=p.log_every, sample_every=0, progress=False, num_workers=p.num_workers,
        sample_num_steps=p.sampling_steps, sample_cfg_scale=cfg.guidance_scale,
        elit_group_size=GROUP_SIZE if elit else None, elit_min_mask_prob=0.0 if elit else None,
        elit_max_mask_prob=1.0 - 1.0 / GROUP_SIZE**2 if elit else None)


def fit(study: Study, name: str, steps: int, probe: bool = False) -> None:
    """Train model `name` to `steps` (resuming its run in WORK exactly when there is one). A probe of a run
    that is already past `steps` (a rerun in the same WORK) does nothing."""
    latest = latest_checkpoint(os.path.join(study.run_dir(name), "checkpoints"))
    if latest is not None and int(load_checkpoint(latest)["step"]) > steps:
        if probe:
            study.say(f"train {name}: {latest} is past the probe: no step time measured")
            return
        raise UserError(f"{latest} is past step {steps}: use a fresh --work for a shorter run")
    model_kwargs = (dict(SMOKE_MODEL, **(SMOKE_ELIT if name == "elit" else {}))) if study.cfg.smoke else None
    accelerator = None
    if study.device.type == "cpu" and torch.cuda.is_available():
        accelerator = Accelerator(cpu=True, mixed_precision="no")
    built = time.time()
    trainer = Trainer(train_config(study, name, steps, latest is not None), accelerator=accelerator,
                      model_kwargs=model_kwargs)
    record = study.results["training"].setdefault(name, dict(model=MODELS[name], segments=[], fit_seconds=0.0,
                                                             overhead_seconds=0.0))
    study.arch[name] = trainer.model.arch
    record.update(parameters=sum(p.numel() for p in trainer.params), batch=study.p.global_batch_size)
    first, start = trainer.step, time.time()
    record["overhead_seconds"] += start - built
    if trainer.step < steps:
        trainer.fit()
    wall = time.time() - start
    record["segments"].append(dict(from_step=first, to_step=trainer.step, seconds=round(wall, 2)))
    record["fit_seconds"] = round(record["fit_seconds"] + wall, 2)
    record["steps"] = trainer.step
    record["checkpoint"] = latest_checkpoint(os.path.join(study.run_dir(name), "checkpoints"))
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log = study.training_log(name)
    rates = [rate for step, _, rate in log if first < step <= steps]
    if rates and first < steps:                                  # the last window of this segment: warm
        study.step_seconds[name] = study.p.global_batch_size / rates[-1]
    # img/s: every logged window but each segment's first (it includes the warm-up)
    starts = [seg["from_step"] for seg in record["segments"]]
    warm = [rate for step, _, rate in log if not any(s < step <= s + study.p.log_every for s in starts)]
    record["img_per_s_median"] = median_or_none(warm or [rate for _, _, rate in log])
    record["final_logged_loss"] = log[-1][1] if log else None
    study.say(f"train {name}: step {record['steps']}, {wall:.1f} s"
              + (f", {study.step_seconds[name] * 1e3:.1f} ms/step" if study.step_seconds.get(name) else ""))
    if name not in study.flops:
        study.flops[name] = flop_table(study.arch[name])


def load_model(study: Study, name: str) -> None:
    """EMA weights of the final checkpoint; training compute; held-out loss of the model's rows."""
    record = study.results["training"][name]
    ck = load_for_sampling(record["checkpoint"], "ema", study.device)
    study.models[name] = ck
    study.arch.setdefault(name, ck.model.arch)
    if name not in study.flops:
        study.flops[name] = flop_table(study.arch[name])
    table = study.flops[name]
    record.update(training_gflops=training_gflops(study, name, ck.step), checkpoint_step=ck.step,
                  gflops_per_forward=table.get(None, table.get(1.0)))
    for row in study.rows_of(name):
        row["record"]["gflops"], row["record"]["gflops_per_sample"] = row_gflops(table, study.plan(row, ck.model))
    heldout(study, name)


@torch.no_grad()
def heldout(study: Study, name: str) -> None:
    """Held-out flow-matching loss of every row of `name` on the first `heldout_items` test images, fp32.

    The noise and times are drawn once from one seed (FlowMatchingLoss.draw), so every model, budget and
    guidance mode sees the same draws; no label dropout. Unguided rows: the training loss (per-sample
    velocity MSE). Guidance rows: the MSE of the guided velocity (samplers.guided_velocity) to the same
    target: how far guidance moves the field off the data's conditional flow (compare among themselves)."""
    ds = load_dataset(os.path.join(study.data_dir, "test"))
    n = min(study.p.heldout_items, len(ds))
    batch = torch.utils.data.default_collate(ds.__getitems__(list(range(n))))
    x0, y = Codec.from_record(ds.meta).encode(batch).to(study.device), batch["y"].to(study.device)
    loss_fn = FlowMatchingLoss("linear", study.cfg.weighting, label_dropout=0.0)
    g = torch.Generator().manual_seed(study.cfg.seed + HELDOUT_SEED_OFFSET)
    draws = loss_fn.draw(n, tuple(x0.shape[1:]), generator=g, device=study.device)
    model = study.models[name].model
    forward = lambda xs, t, y_, b: [model(xs[0], t, y_, budget=b)]                    # noqa: E731
    chunk = 500
    for row in study.rows_of(name):
        plan = study.plan(row, model)
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
    study.results["settings"]["heldout"] = dict(items=n, seed=study.cfg.seed + HELDOUT_SEED_OFFSET,
                                                time_distribution=study.cfg.weighting, precision="fp32")


def sample(study: Study, name: str) -> None:
    """`num_samples` images of every row of `name` (image i: label i % 10, seed seed + i) -> WORK/samples."""
    ck = study.models[name]
    n, b = study.num_samples, study.p.sample_batch_size
    labels = torch.arange(n) % ck.model.num_classes           # balanced: image i has label i % 10
    folder = os.path.join(study.work, "samples")
    os.makedirs(folder, exist_ok=True)
    for row in study.rows_of(name):
        rec = row["record"]
        if study.elapsed() > study.deadline + HARD_DEADLINE_S:
            rec["error"] = "skipped: past the time budget"
            study.say(f"sample {rec['key']}: skipped (past the time budget)")
            continue
        try:
            plan = study.plan(row, ck.model)
            start = time.time()
            parts = [generate_images(ck.model, range(lo, min(lo + b, n)), row["gen"], study.device,
                                     ck.dataset_meta, None, path_type=ck.path_type,
                                     labels=labels[lo:min(lo + b, n)], plan=plan)
                     for lo in range(0, n, b)]
            images = np.concatenate(parts)                   # uint8 (n, 32, 32, 3)
            rec.update(sampling_seconds=round(time.time() - start, 2), num_samples=n)
            study.samples[rec["key"]] = images
            write_npz(os.path.join(folder, f"{rec['key']}.npz"), arr_0=images, arr_1=labels.numpy())
            study.say(f"sample {rec['key']}: {n} images in {rec['sampling_seconds']:.1f} s")
        except Exception as e:                              # noqa: BLE001  (the other rows go on)
            rec["error"] = f"sampling: {type(e).__name__}: {e}"
            study.say(f"sample {rec['key']}: FAILED: {type(e).__name__}: {e}")


def latency(study: Study, name: str) -> None:
    """Forward (guided step) latency per image of every row of `name`: median of repeats after warm-up."""
    ck = study.models[name]
    runner, path = ck.model, "eager" + (" bf16 autocast" if study.device.type == "cuda" else " fp32")
    if study.device.type == "cuda" and study.cfg.cuda_graphs:
        runner, path = fast_inference(copy.deepcopy(ck.model), compile=False), "bf16 weights + CUDA graphs"
    L = study.p.latency_batch_size
    for row in study.rows_of(name):
        plan = study.plan(row, ck.model)
        try:
            try:
                fn = guided_step_fn(runner, plan, L, study.device)
                fn(), fn()
                used = path
            except Exception as e:                          # noqa: BLE001  (graph capture: fall back)
                if runner is ck.model:
                    raise
                study.say(f"latency {row['record']['key']}: {path} failed ({type(e).__name__}: {e}); eager")
                runner, path = ck.model, "eager bf16 autocast"
                fn = guided_step_fn(runner, plan, L, study.device)
                fn(), fn()
                used = path
            seconds = median_time(fn, study.device, study.p.latency_repeats)
            row["record"].update(latency_ms_per_image=1e3 * seconds / L, latency_path=used)
        except Exception as e:                              # noqa: BLE001
            row["record"]["error"] = f"latency: {type(e).__name__}: {e}"
            study.say(f"latency {row['record']['key']}: FAILED: {type(e).__name__}: {e}")
    study.results["settings"]["latency"] = dict(batch=L, repeats=study.p.latency_repeats, path=path,
                                                what="median per call / batch, after two warm-up calls")
    del runner
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def metrics(study: Study) -> None:
    """FD, precision/recall, classifier accuracy of every sampled row and of real training images."""
    test_x, test_y, _ = load_split(study.data_dir, "test", study.p.num_reference)
    ref_path = os.path.join(study.work, f"reference_test{len(test_x)}.npz")
    if not os.path.isfile(ref_path):
        write_npz(ref_path, arr_0=test_x, arr_1=test_y)
    net = load_network(feature_network=study.classifier_path, device=study.device)
    ref = reference_statistics(ref_path, net, batch_size=500)
    # Real training images, two disjoint subsets of the sample size: the FD an ideal generator would get at
    # this size, and how much it moves from one draw of images to another.
    n = study.num_samples
    train_x, train_y, _ = load_split(study.data_dir, "train", 2 * n)
    data = evaluate(train_x[:n], ref, net, labels=train_y[:n], batch_size=500)
    other = evaluate(train_x[n:], ref, net, labels=train_y[n:], batch_size=500) if len(train_x) >= 2 * n else {}
    study.results["reference"] = dict(
        test_images=len(test_x), reference_file=ref_path, network=net.info(),
        data_row=dict(label=f"real train images (n={n})", fd=data["fid"], precision=data["precision"],
                      recall=data["recall"], accuracy=data["classifier_accuracy"],
                      inception_score=data["inception_score"], num_samples=n,
                      fd_second_subset=other.get("fid")))
    study.say(f"metrics: real data FD {data['fid']:.3f} (second subset {fmt(other.get('fid'))}), "
              f"accuracy {data['classifier_accuracy']:.4f}")
    for row in study.rows:
        rec = row["record"]
        if rec["key"] not in study.samples:
            continue
        try:
            m = evaluate(study.samples[rec["key"]], ref, net, labels=np.arange(rec["num_samples"]) % 10,
                         batch_size=500)
            rec.update(fd=m["fid"], precision=m["precision"], recall=m["recall"],
                       accuracy=m["classifier_accuracy"], inception_score=m["inception_score"])
            study.say(f"metrics {rec['key']}: FD {m['fid']:.3f}, accuracy {m['classifier_accuracy']:.4f}")
        except Exception as e:                              # noqa: BLE001
            rec["error"] = f"metrics: {type(e).__name__}: {e}"
            study.say(f"metrics {rec['key']}: FAILED: {type(e).__name__}: {e}")
