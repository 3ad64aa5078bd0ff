"""Building the three runs, the time plan, the learning curves and the final rows.

Time plan: the three models first time their step eagerly and, where it pays, compile and time it again
(`ModelRun.warm_up`, outside the run, leaving no trace; `decide_compile`), and
every final row's (guided) step is timed on the sampling models (latency; the same call captures the graphs
that sampling replays). The common step count is then the largest that fits the planned budget after
subtracting everything measured so far and the estimated evaluation cost (curve points at `curve_samples`,
final rows at `num_samples`, from the measured step times x SAFETY). After the first curve point the plan is
made again from what that point cost (`replan`: measured seconds per training step and per curve evaluation,
the evaluation overhead calibrated from it), so the run ends close to the planned budget instead of spending
the estimates' margins idle; the remaining points are spread evenly up to the new step count.
Training runs round-robin: every model
to the next curve point, then each is measured, so a hard stop (before a segment that would not fit the hard
limit) leaves all three at the same step. Rows are sampled in priority order and skipped when they no longer
fit; if the estimate of all rows does not fit, the sample count is reduced equally for every row first.
"""

from __future__ import annotations

import math
import time

from studies.fmnist import measure
from studies.fmnist.fastloop import ModelRun
from studies.fmnist.options import MODELS, SMOKE_ELIT, SMOKE_MODEL
from studies.fmnist.rows import FULL_ROW, define_rows
from studies.fmnist.state import Study

SAFETY = 1.15                  # measured step times x this, for the plan
TRAIN_SAFETY = 1.12            # measured training seconds per step x this, when re-planning (on the H200 the
                               # last training segments ran up to 12% slower than the first)
EVAL_OVERHEAD_S = 1.0          # per measurement before any was made: held-out loss, features, Frechet distance
MIN_OVERHEAD_S = 0.3           # per measurement, at least, after calibration
POST_S = 10.0                  # plots, report, last save (planned budget; 4 s on the H200)
COMPILE_SHARE = 0.4            # no compile for a model whose warm-up starts after this share of the plan
COMPILE_COST = {False: 0.5, True: 1.5}   # compile cost relative to the first model's: one level / several levels


def build(study: Study) -> None:
    """The three runs (identical data, batch, optimiser, schedule, seed), their FLOP tables, sampling models
    and final rows with their GFLOPs."""
    images, labels = study.data["device"]
    study.flops = {}
    for key, spec in MODELS.items():
        kwargs = None
        if study.cfg.smoke:
            kwargs = dict(SMOKE_MODEL, **(SMOKE_ELIT if spec["mask"] is not None else {}))
        run = ModelRun(key, spec, images, labels, study.p, study.cfg, study.device, model_kwargs=kwargs)
        study.runs[key] = run
        study.flops[key] = measure.flop_table(run.arch)
        measure.make_sampling_model(study, key)
        table = study.flops[key]
        study.results["training"][key] = dict(
            model=spec["model"], label=spec["label"], arch=run.arch, parameters=sum(q.numel() for q in run.params),
            batch=study.p.global_batch_size, budgets_trained=run.allowed,
            gflops_per_forward=table.get(None, table.get(1.0)))
    study.rows = define_rows(study.cfg, study.p.sampling_steps)
    for row in study.rows:
        measure.row_costs(study, row)


def time_rows(study: Study) -> None:
    """Latency of every row (initial weights: cost does not depend on them), which also sets the estimates."""
    for row in study.rows:
        try:
            measure.latency(study, row)
        except Exception as e:                              # noqa: BLE001  (the row is still sampled, eager)
            row["record"]["error"] = f"latency: {type(e).__name__}: {e}"
            study.say(f"latency {row['record']['key']}: FAILED: {type(e).__name__}: {e}")
    study.results["latency"] = dict(batch=study.p.sample_batch_size, repeats=study.p.latency_repeats,
                                    what="median per (guided) step call / batch, after two warm-up calls",
                                    paths={k: v["path"] for k, v in study.evals.items()})


def warm_up(study: Study) -> None:
    """Time every model's step eagerly, then compile it if that pays: the first model always (its eager and
    compiled step times and compile cost are the reference); a later one if the steps expected in the
    remaining plan x the time compile saves per step (the reference's ratio) exceed its estimated compile
    cost (the reference's x COMPILE_COST: a model with one level reuses the compiled blocks, a multibudget
    one compiles three shapes of its latent regions and a dynamic block). No compile once COMPILE_SHARE of
    the plan is gone. Steps stay equal whichever models are compiled."""
    done: dict = {}
    for key, run in study.runs.items():
        if study.cfg.compile and study.elapsed() > COMPILE_SHARE * study.planned:
            study.say(f"warm-up {key}: {study.elapsed():.0f} s gone, more than {COMPILE_SHARE:.0%} of the plan: eager")
            run.allow_compile = False
        info = run.warm_up(study.say, decide=lambda eager, k=key: decide_compile(study, k, eager, done))
        done[key] = info
        study.results["training"][key]["warmup"] = info
        study.say(f"warm-up {key}: {info['seconds']:.1f} s ({info['compiled']}), eager "
                  f"{info['eager_step_seconds'] * 1e3:.1f} ms/step, used {info['step_seconds'] * 1e3:.1f} ms/step")


def decide_compile(study: Study, key: str, eager: float, done: dict) -> bool:
    ref = next((i for i in done.values() if i["compiled"].startswith("regional")), None)
    if not done:
        return True
    if ref is None or ref["step_seconds"] >= ref["eager_step_seconds"]:
        study.say(f"warm-up {key}: no compile (it did not pay for the first model)")
        return False
    speedup = ref["eager_step_seconds"] / ref["step_seconds"]
    per_step = sum(i["step_seconds"] for i in done.values()) + eager / speedup * (len(study.runs) - len(done))
    left = study.planned - study.elapsed() - final_seconds(study, study.final_n) \
        - (study.cfg.eval_points - 1) * curve_eval_seconds(study) - POST_S
    steps = max(left, 0.0) / (per_step * SAFETY)
    if study.p.steps is not None:
        steps = min(steps, study.p.steps)
    saving = steps * eager * (1 - 1 / speedup)
    cost = ref["compile_seconds"] * COMPILE_COST[len(study.runs[key].allowed) > 1]
    study.say(f"warm-up {key}: compile saves ~{saving:.0f} s over ~{steps:.0f} steps (x{speedup:.2f}), costs "
              f"~{cost:.0f} s: {'compile' if saving > cost else 'eager'}")
    return saving > cost


def row_by_key(study: Study, key: str) -> dict:
    return next(r for r in study.rows if r["record"]["key"] == key)


def full_rows(study: Study) -> list[dict]:
    """Every model's full-budget row, unguided: the rows its curve points sample."""
    return [row_by_key(study, FULL_ROW[k]) for k in study.runs]


def overhead(study: Study) -> float:
    """Seconds per measurement beyond sampling: calibrated by `replan`, EVAL_OVERHEAD_S before."""
    return study.calibration.get("eval_overhead_s", EVAL_OVERHEAD_S)


def curve_eval_seconds(study: Study) -> float:
    """One curve point of every model: measured by `replan` once there was one, else estimated."""
    measured = study.calibration.get("curve_eval_s")
    if measured is not None:
        return measured
    return sum(measure.sampling_seconds(study, row, study.curve_n) * SAFETY + overhead(study)
               for row in full_rows(study))


def final_seconds(study: Study, n: int, rows=None) -> float:
    return sum(measure.sampling_seconds(study, r, n) * SAFETY + overhead(study) for r in (rows or study.rows))


def plan_steps(study: Study) -> None:
    """The common step count and the curve points (at least eval_points, evenly spaced in steps)."""
    P = study.cfg.eval_points
    per_step = sum(study.results["training"][k]["warmup"]["step_seconds"] for k in study.runs)
    curve, final = curve_eval_seconds(study), final_seconds(study, study.final_n)
    available = study.planned - study.elapsed() - final - (P - 1) * curve - POST_S
    steps = max(P, math.floor(available / (per_step * SAFETY)))
    if study.p.steps is not None:
        steps = min(steps, study.p.steps)
    steps = max(steps, P)
    study.points = sorted({round(k * steps / P) for k in range(1, P + 1)})
    study.plan = dict(steps=steps, points=study.points, seconds_per_step_all_models=per_step,
                      estimated_curve_eval_s=round(curve, 1), estimated_final_rows_s=round(final, 1),
                      available_training_s=round(available, 1), elapsed_at_plan_s=round(study.elapsed(), 1),
                      limit=f"--steps {study.p.steps}" if study.p.steps is not None and steps == study.p.steps
                      else "time budget")
    study.results["training"]["plan"] = study.plan
    study.say(f"plan: {steps} steps per model, curve points at {study.points} "
              f"({per_step * 1e3:.1f} ms per step of all three, {available:.0f} s for training)")


def replan(study: Study, train_seconds: float, curve_seconds: float) -> None:
    """After the first curve point (at study.points[0]; `train_seconds` of all three models' training to it,
    `curve_seconds` of their measurements): the step count again from the measured costs, the remaining
    points evenly spaced from the first to it. Nothing changes when --steps set the count."""
    first, P = study.points[0], len(study.points)
    if study.plan.get("limit", "").startswith("--steps") or P < 2:
        return
    sampled = sum(measure.sampling_seconds(study, row, study.curve_n) for row in full_rows(study))
    study.calibration = dict(curve_eval_s=curve_seconds,
                             eval_overhead_s=max(MIN_OVERHEAD_S, (curve_seconds - sampled) / len(study.runs)))
    per_step = train_seconds / first
    available = (study.planned - study.elapsed() - final_seconds(study, study.final_n)
                 - (P - 2) * curve_seconds - POST_S)
    steps = first + max(P - 1, math.floor(available / (per_step * TRAIN_SAFETY)))
    if study.p.steps is not None:
        steps = min(steps, study.p.steps)
    steps = max(steps, first + P - 1)
    study.points = [first] + [first + round(k * (steps - first) / (P - 1)) for k in range(1, P)]
    study.plan.update(replanned=dict(at_step=first, steps=steps, points=study.points, from_steps=study.plan["steps"],
                                     seconds_per_step_all_models=per_step, curve_eval_s=round(curve_seconds, 2),
                                     eval_overhead_s=round(study.calibration["eval_overhead_s"], 2),
                                     available_training_s=round(available, 1), elapsed_s=round(study.elapsed(), 1)))
    study.plan.update(steps=steps, points=study.points)
    study.say(f"re-plan at step {first}: {steps} steps per model (was {study.plan['replanned']['from_steps']}), "
              f"curve points at {study.points} ({per_step * 1e3:.1f} ms per step of all three measured, "
              f"{curve_seconds:.1f} s per curve point, {available:.0f} s for training)")


def train_segment(study: Study, key: str, until: int) -> float:
    """Train `key` to step `until`; a failure of compiled code falls back to eager once. Seconds spent."""
    run = study.runs[key]
    start = time.time()
    try:
        run.train(until)
    except Exception as e:                                  # noqa: BLE001
        if run.compiled.startswith("eager"):
            raise
        study.say(f"train {key}: compiled step failed at step {run.step} ({type(e).__name__}: {str(e)[:300]}); "
                  "eager from here")
        run.uncompile()
        run.optimizer.zero_grad(set_to_none=True)
        run.train(until)
    run.sync()
    return time.time() - start


def train_curves(study: Study) -> None:
    """Round-robin training to each curve point; every point but the last measured at curve_samples (the last
    is measured with the final rows, at num_samples)."""
    prev, per_step = 0, study.plan["seconds_per_step_all_models"]
    for key in study.runs:
        study.results["curves"][key] = []
        study.results["training"][key].update(seconds=0.0, steps=0)
    final_min = final_seconds(study, study.final_n, full_rows(study))
    for i in range(len(study.points)):                      # replan moves the later points (not their number)
        s, last = study.points[i], i == len(study.points) - 1
        need = (s - prev) * per_step * SAFETY + (0.0 if last else curve_eval_seconds(study)) + final_min
        if i > 0 and need > study.left():
            study.plan["stopped_at"] = prev
            study.say(f"hard limit: training stops at step {prev} ({need:.0f} s needed, {study.left():.0f} s left)")
            break
        spent, each = 0.0, {}
        for key in study.runs:
            seconds = train_segment(study, key, s)
            spent += seconds
            each[key] = round(seconds, 2)
            rec = study.results["training"][key]
            rec.update(seconds=round(rec["seconds"] + seconds, 2), steps=s, loss_log=study.runs[key].loss_log,
                       compiled=study.runs[key].compiled)
            rec.setdefault("segments", []).append([s, round(seconds, 2)])
            rec["img_per_s"] = s * study.p.global_batch_size / rec["seconds"] if rec["seconds"] else None
        per_step = spent / max(s - prev, 1)                 # measured: the guard's next estimate
        study.say(f"step {s}: " + ", ".join(f"{k} loss {r.loss_log[-1][1]:.4f} ({each[k]:.1f} s)"
                                            for k, r in study.runs.items() if r.loss_log) + f", {spent:.1f} s")
        prev = s
        if not last:
            measured = 0.0
            for key in study.runs:
                point = measure.curve_point(study, key, study.curve_n)
                measured += point["seconds"]
                study.results["curves"][key].append(point)
                study.say(f"curve {key} step {s}: FD {point['fd']:.3f}, accuracy {point['accuracy']:.4f}, "
                          f"held-out {point['heldout_loss']:.4f} ({point['seconds']:.1f} s)")
            if i == 0:
                replan(study, spent, measured)
                final_min = final_seconds(study, study.final_n, full_rows(study))   # recalibrated
        study.save_results()
    study.final_step = prev
    for key in study.runs:
        rec = study.results["training"][key]
        rec.update(training_gflops=measure.training_gflops(study, key, prev),
                   budget_counts={str(b): c for b, c in study.runs[key].budget_counts.items()})


def final_rows(study: Study) -> None:
    """Every row at num_samples (reduced equally if the estimate does not fit), in priority order; the three
    full-budget rows become the curves' last points."""
    for key in study.runs:
        measure.refresh(study, key)
    n, b = study.final_n, study.p.sample_batch_size
    estimate = final_seconds(study, n)
    if estimate > study.left() and n > b:
        n = max(b, int(n * max(study.left(), 0) / estimate) // b * b)
        study.say(f"final rows: estimated {estimate:.0f} s, {study.left():.0f} s left: {n} images per row")
    study.results["settings"]["num_samples_used"] = n
    for row in study.rows:
        rec = row["record"]
        if study.left() < measure.sampling_seconds(study, row, n) * SAFETY + EVAL_OVERHEAD_S:
            rec["error"] = "skipped: past the time limit"
            study.say(f"row {rec['key']}: skipped (past the time limit)")
            continue
        try:
            start = time.time()
            images = measure.sample(study, row, n)
            rec.update(measure.metrics(study, images), num_samples=n,
                       heldout_loss=measure.heldout(study, rec["model"], row),
                       sampling_seconds=round(time.time() - start, 2))
            if rec["key"] in FULL_ROW.values():           # the curve's last point at the curve's size too
                small = measure.metrics(study, images[:study.curve_n]) if n > study.curve_n else rec
                rec.update(fd_curve_size=small["fd"], accuracy_curve_size=small["accuracy"])
            study.samples[rec["key"]] = images[:20]
            study.say(f"row {rec['key']}: FD {rec['fd']:.3f}, accuracy {rec['accuracy']:.4f}, "
                      f"{rec['gflops']:.2f} GFLOPs ({rec['sampling_seconds']:.1f} s)")
        except Exception as e:                              # noqa: BLE001  (the other rows go on)
            rec["error"] = f"{type(e).__name__}: {e}"
            study.say(f"row {rec['key']}: FAILED: {type(e).__name__}: {e}")
        study.save_results()
    for key in study.runs:
        rec = row_by_key(study, FULL_ROW[key])["record"]
        if rec.get("fd") is None:
            continue
        run, curve = study.runs[key], study.results["curves"][key]
        point = dict(step=run.step, images=run.step * study.p.global_batch_size,
                     training_gflops=measure.training_gflops(study, key, run.step), num_samples=rec["num_samples"],
                     train_loss=run.loss_log[-1][1] if run.loss_log else None, heldout_loss=rec["heldout_loss"],
                     fd=rec["fd"], precision=rec["precision"], recall=rec["recall"], accuracy=rec["accuracy"],
                     fd_small=rec["fd_curve_size"], accuracy_small=rec["accuracy_curve_size"],
                     small_size=min(study.curve_n, rec["num_samples"]), final=True)
        if curve and curve[-1]["step"] == run.step:     # stopped early: that point was measured already
            curve[-1] = dict(point, fd_small=curve[-1]["fd"], accuracy_small=curve[-1]["accuracy"])
        else:
            curve.append(point)
