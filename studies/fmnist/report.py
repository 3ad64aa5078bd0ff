"""What the study publishes, rendered from results.json by code (no number is retyped): the markdown report
OUT/fashion_mnist_study.md, whose figures and data lie in OUT/fashion_mnist_study/ (the layout of docs/), and
the README's one-line verdicts (`readme_verdicts`)."""

from __future__ import annotations

from studies.fmnist.claims import NAMES, claim_sentence, threshold_text
from studies.fmnist.options import MODELS
from studies.fmnist.rows import fmt
from studies.fmnist.state import FILES_DIR

NEEDED = ("To test the claims properly: several training seeds per model (the spread between seeds, not only "
          "between image draws, is the error bar of a curve), far longer schedules (the paper trains 400K steps; "
          "here a few thousand), the paper's scale (XL models on ImageNet latents, where ELIT's FLOP savings were "
          "measured), more samples per point (FD at 1-2k images is biased upwards), and a sweep of guidance scales.")


def _pf(gflops) -> str:
    return fmt(gflops / 1e6 if gflops is not None else None, ".2f")


def readme_verdicts(results: dict) -> list[str]:
    """One line per claim for the README's summary: the verdict and the numbers it rests on."""
    claims, lines = results.get("claims", {}), []
    for key, title in NAMES.items():
        c = claims.get(key, {})
        verdict = c.get("verdict", "not evaluated")
        if c.get("reason"):
            detail = "samples not recognisable"
        elif verdict == "not evaluated":
            detail = "numbers missing"
        elif key in ("a", "a_multi"):
            detail = f"FD {c['fd_model']:.2f} vs SiT {c['fd_base']:.2f} at {c['flops'] / 1e6:.2f} training PFLOPs"
        elif key == "b":
            detail = "FD " + " -> ".join(f"{v:.2f}" for v in c["fd"]) + " from b=1 down"
        else:
            detail = f"FD {c['fd_cheap']:.2f} (cheap) vs {c['fd_cfg']:.2f} (CFG), {c['gflops_saving']:.0%} fewer GFLOPs"
        lines.append(f"{title}: **{verdict}** ({detail}).")
    return lines


def _verdict_lists(claims: dict) -> list[str]:
    groups = {"held": [], "did not hold": [], "inconclusive": [], "not evaluated": []}
    for key, title in NAMES.items():
        v = claims.get(key, {}).get("verdict", "not evaluated")
        groups[{"holds": "held", "does not hold": "did not hold"}.get(v, v)].append(title)
    return [f"- **{name.capitalize()}:** " + ("; ".join(items) if items else "none") + "."
            for name, items in groups.items()]


def _replanned(r) -> str:
    if not r:
        return ""
    return (f"; re-planned after the first curve point (step {r['at_step']}) from its measured costs "
            f"({fmt(r['seconds_per_step_all_models'] * 1e3, '.1f')} ms per step of all three, "
            f"{fmt(r['curve_eval_s'], '.1f')} s per curve point): {r['from_steps']} -> {r['steps']} steps, "
            f"{fmt(r['available_training_s'], '.0f')} s for the remaining training")


def render_report(results: dict) -> str:
    """OUT/fashion_mnist_study.md from results.json."""
    s, tr, claims = results["settings"], results.get("training", {}), results.get("claims", {})
    clf, ref, plan = results.get("classifier", {}), results.get("reference", {}), tr.get("plan", {})
    cfg = results["config"]
    lines = [
        "# Fashion-MNIST study: do ELIT's claims hold at small scale?", "",
        f"Card: **{results['device_name']}** (torch {results['torch']}, CUDA {results.get('cuda')}). Whole command, "
        f"data to report: {results.get('total_seconds', 0) / 60:.2f} min wall clock = **{results.get('gpu_minutes')} "
        f"GPU minutes** (one GPU), mode `{results['mode']}`, started {results['started']}.", "",
        f"Command: `{results.get('command', '')}`", "",
        "## Verdicts", "", *[f"- {line}" for line in readme_verdicts(results)], "", *_verdict_lists(claims), "",
        NEEDED, "",
        "## Setting", "",
        f"Fashion-MNIST padded to 32x32, 1 channel, pixel space in [-1, 1]; patch 2 (16x16 = 256 tokens). The "
        f"paper's three rows at S size: {', '.join(m['label'] for m in MODELS.values())} (ELIT group size "
        f"{s['group_size']}: 16 windows of 16 latent slots; single budget = `elit_max_mask_prob 0`, multibudget = "
        f"all 16 levels, one drawn uniformly per step). Identical for all three: {plan.get('steps', 'n/a')} steps "
        f"(curve points at steps {plan.get('points', 'n/a')}), batch {s['global_batch_size']}, AdamW lr "
        f"{s['learning_rate']:g} constant after {s['warmup_steps']} warm-up steps, gradient clipping "
        f"{cfg['max_grad_norm']:g}, EMA {s['ema_decay']:g} (warmed up), label dropout {cfg['label_dropout']:g}, "
        f"{cfg['weighting']} times, seed {cfg['seed']} (the same batches, noise and times for every model), bf16 "
        f"autocast on GPU. Sampling: EMA weights, Euler ODE {s['sampling_steps']} steps; image i has label i mod 10 "
        f"and seed {cfg['seed']} + i, so every configuration and curve point starts from the same noise.", "",
        f"Metrics: Frechet distance (FD) and precision/recall in the {clf.get('feature_dim', '?')}-d penultimate "
        f"features of a small CNN trained on the training set (test accuracy **{fmt(clf.get('test_accuracy'), '.4f')}**), "
        f"against {ref.get('test_images', '?')} test images; accuracy = the classifier's agreement with the drawn "
        f"label; held-out loss = flow-matching loss of the EMA weights on {s.get('heldout', {}).get('items', '?')} "
        "test images with one fixed draw of noise and times. GFLOPs per image from `models.flops` (torch's flop "
        "counter); training FLOPs = 3 x forward x batch summed over the steps' drawn budgets.", "",
        "## Training", "",
        "| model | parameters | GFLOPs / forward (b=1) | steps | training PFLOPs | train s | img/s | compile | warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for key, spec in MODELS.items():
        t = tr.get(key, {})
        w = t.get("warmup", {})
        lines.append(f"| {spec['label']} | {fmt((t.get('parameters') or 0) / 1e6, '.1f')}M | "
                     f"{fmt(t.get('gflops_per_forward'), '.2f')} | {t.get('steps', 'n/a')} | "
                     f"{_pf(t.get('training_gflops'))} | {fmt(t.get('seconds'), '.1f')} | {fmt(t.get('img_per_s'), '.0f')} | "
                     f"{t.get('compiled', w.get('compiled', 'n/a'))} | {fmt(w.get('seconds'), '.1f')} |")
    lines += ["", f"Plan: {fmt(plan.get('seconds_per_step_all_models', 0) * 1e3, '.1f')} ms per step of all three "
              f"after warm-up; {fmt(plan.get('available_training_s'), '.0f')} s planned for training ("
              f"{plan.get('limit', 'n/a')})" + _replanned(plan.get("replanned"))
              + (f"; the hard limit stopped training at step {plan['stopped_at']}"
                 if plan.get("stopped_at") is not None else "") + ".", "",
              "## Learning curves", "", f"![learning curves]({FILES_DIR}/curves.png)", "",
              "| model | step | training PFLOPs | samples | FD ↓ | accuracy ↑ | FD, curve size | held-out loss ↓ | training loss |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, curve in results.get("curves", {}).items():
        for p in curve:
            lines.append(f"| {MODELS[key]['label']} | {p['step']} | {_pf(p['training_gflops'])} | {p['num_samples']} | "
                         f"{fmt(p.get('fd'))} | {fmt(p.get('accuracy'), '.4f')} | {fmt(p.get('fd_small'))} | "
                         f"{fmt(p.get('heldout_loss'), '.4f')} | {fmt(p.get('train_loss'), '.4f')} |")
    lines += ["", f"FD, curve size: every point at {s.get('curve_n')} samples (the last from the first images of "
              "its full-size sample, the same seeds): the comparison of claim (a) uses this column, so that sample "
              "size does not change along a curve."]
    lines += ["", "Sampling-noise floor (real training images against the same test statistics, two disjoint "
              "subsets per sample size): " + "; ".join(
                  f"n={n}: FD {f['fd_a']:.3f} / {f['fd_b']:.3f} (spread {f['spread']:.3f}), accuracy "
                  f"{f['accuracy_a']:.4f}" for n, f in ref.get("floor", {}).items()) + ". Differences between curves "
              "that are not large against the spread, and against the point-to-point wiggle of one curve, are not "
              "evidence; one training seed per model.", "",
              "## Final configurations", "",
              "| configuration | GFLOPs | latency ms/img | FD ↓ | precision | recall | accuracy ↑ | held-out loss ↓ | samples |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['label']} | {fmt(r['gflops'], '.2f')} | {fmt(r['latency_ms_per_image'], '.4f')} | "
                     f"{fmt(r['fd'])} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['accuracy'], '.4f')} | "
                     f"{fmt(r['heldout_loss'], '.4f')}{'' if r['guidance'] is None else ' (guided)'} | "
                     f"{r.get('num_samples') or 'n/a'} |")
    lat = results.get("latency", {})
    lines += ["", f"Guidance rows: scale {cfg['guidance_scale']:g}, conditional pass at full budget; GFLOPs and "
              "latency per guided step; their held-out loss is the MSE of the guided velocity to the flow-matching "
              f"target (comparable among guidance rows only). Latency: batch {lat.get('batch', 'n/a')}, median of "
              f"{lat.get('repeats', 'n/a')} calls ({', '.join(sorted(set(lat.get('paths', {}).values()))) or 'n/a'}).", "",
              f"![quality vs GFLOPs]({FILES_DIR}/quality_vs_gflops.png)", "",
              f"![samples per configuration]({FILES_DIR}/grids.png)", "", "## Claims in detail", ""]
    for key, title in NAMES.items():
        c = claims.get(key, {})
        lines.append(f"- **{title}: {c.get('verdict', 'not evaluated').upper()}.** {claim_sentence(key, c)} "
                     f"Threshold: {threshold_text(key)}.")
    lines += [""]
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- `{k}`: {v}" for k, v in results["errors"].items()] + [""]
    row_errors = [f"- `{r['key']}`: {r['error']}" for r in results["rows"] if r.get("error")]
    if row_errors:
        lines += ["## Row errors", ""] + row_errors + [""]
    lines += ["## Reproduce", "", "```bash",
              "python studies/fashion_mnist.py --source DIR_WITH_THE_4_IDX_FILES --work /tmp/fm-work --out OUT \\",
              "    --time-budget-minutes 8 --max-minutes 8.5        # one GPU; a longer budget trains longer",
              "python studies/fashion_mnist.py --smoke --source DIR --work W --out O     # CPU, tiny models",
              "```", "", "The command writes this page as `OUT/fashion_mnist_study.md` and its files in "
              f"`OUT/{FILES_DIR}/` (the layout of `docs/`). Code: `studies/fmnist/` (its `__init__` lists the files). "
              "Limits of this evidence: one seed per model, S size, pixels instead of VAE latents, a few thousand "
              "steps, one guidance scale; latency at S size is far from the large-model regime of the paper.", "",
              "## Stage times (s)", "", " | ".join(f"{k} {v:.1f}" for k, v in results.get("timings", {}).items()
                                                  if k != "report"), "",          # (its own time comes after it)
              f"Every number above is rendered from `{FILES_DIR}/results.json` by `studies/fmnist/report.py`; the "
              f"progress log is `{FILES_DIR}/study.log`.", ""]
    return "\n".join(lines)
