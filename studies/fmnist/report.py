"""What the study publishes: the figures (fd_vs_gflops.png, grids.png, loss_curves.png), report.md rendered
from results.json, and study.log's tail of training logs. results.json itself is written by Study.save_results."""

from __future__ import annotations

import os

import numpy as np

from dataio.sources.fashion_mnist import FASHION_MNIST_CLASSES
from studies.fmnist.claims import claim_sentence
from studies.fmnist.classifier import load_split
from studies.fmnist.options import MODELS
from studies.fmnist.rows import fmt, fraction
from studies.fmnist.state import Study
from studies.fmnist.tools import plot_grid, savefig
from utils.atomic import write_text

MULTIBUDGET_NOTE = " (multibudget: mean over drawn budgets)"    # legend of a model trained over budget levels


def plots(study: Study) -> None:
    """The three figures; a failing one does not stop the others (the stage then fails, naming them)."""
    failures = []
    for what, fn in (("fd_vs_gflops.png",
                      lambda: plot_quality(study.results, os.path.join(study.out, "fd_vs_gflops.png"))),
                     ("grids.png", lambda: plot_grids(study)),
                     ("loss_curves.png", lambda: plot_loss_curves(
                         {loss_label(study, n): study.training_log(n) for n in MODELS},
                         os.path.join(study.out, "loss_curves.png")))):
        try:
            fn()
        except Exception as e:                              # noqa: BLE001  (the other plots go on)
            failures.append(f"{what}: {type(e).__name__}: {e}")
            study.say(f"plot {what}: FAILED: {type(e).__name__}: {e}")
    if failures:
        raise RuntimeError("; ".join(failures))


def loss_label(study: Study, name: str) -> str:
    """Legend of a model's loss curve: its registry name, and a note when it trained over budget levels."""
    multibudget = None not in study.flops.get(name, {None: None})       # FLOP table keyed by budget levels
    return MODELS[name] + (MULTIBUDGET_NOTE if multibudget else "")


def plot_grids(study: Study) -> None:
    """One labelled row per configuration: 2 images per class, classes as columns (same noise in every row)."""
    panels, labels = [], []
    test_x, test_y, _ = load_split(study.data_dir, "test", 2000)
    real = [i for c in range(10) for i in np.flatnonzero(test_y == c)[:2]]
    if len(real) == 20:
        real = np.asarray(real).reshape(10, 2).T.reshape(-1)  # row 1: one per class, row 2: the second
        panels.append(class_panel(np.repeat(test_x[real], 3, axis=-1)))
        labels.append("real (test)")
    for row in study.rows:
        images = study.samples.get(row["record"]["key"])
        if images is not None and len(images) >= 20:
            panels.append(class_panel(images[:20]))
            labels.append(row["record"]["label"])
    if not panels:
        raise RuntimeError("no samples to show")
    plot_grid([p[None, None] for p in panels], labels, os.path.join(study.out, "grids.png"),
              col_labels=["columns: " + ", ".join(FASHION_MNIST_CLASSES)])


def write_report(study: Study) -> None:
    write_text(os.path.join(study.out, "report.md"), render_report(study.results))


def append_logs(study: Study) -> None:
    """The Trainers' logs at the end of study.log (one file comes back instead of three)."""
    with open(study.log_path, "a") as f:
        for name in MODELS:
            path = os.path.join(study.run_dir(name), "log.txt")
            if os.path.isfile(path):
                f.write(f"\n===== {path} =====\n")
                with open(path) as g:
                    f.write(g.read())


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
    import matplotlib                                           # heavy, and only the figures need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
            ax.plot([r[xk] for r in elit], [r[yk] for r in elit], "o-", color="tab:blue", label=f"{MODELS['elit']} (one model)")
            for r in elit:
                ax.annotate(f"b={fraction(r['budget'])}", (r[xk], r[yk]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for r in rows:
            if r["model"] == "sit" and ok(r):
                ax.plot(r[xk], r[yk], "*", color="tab:red", markersize=14, label=MODELS["sit"])
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
    savefig(fig, path)


def plot_loss_curves(logs: dict, path: str) -> None:
    """Training loss (mean over each log window) vs step, one line per model: `logs` maps a legend label to
    the (step, loss, img/s) lines of read_training_log."""
    import matplotlib                                           # heavy, and only the figures need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, log in logs.items():
        last = {}
        for step, loss, _ in log:                               # a resumed segment repeats nothing, but be safe
            last[step] = loss
        if last:
            steps = sorted(last)
            ax.plot(steps, [last[s] for s in steps], label=name)
    if not ax.lines:
        plt.close(fig)
        raise RuntimeError("no training log lines")
    ax.set(xlabel="step", ylabel="training loss", title="training loss (flow matching, EMA-free model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    savefig(fig, path)


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
        f"features of a small CNN trained on the training set (test accuracy **{fmt(clf.get('test_accuracy'), '.4f')}**), "
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
        lines.append(f"| {r['label']} | {fmt(r['gflops'], '.2f')} | {fmt(r['latency_ms_per_image'], '.4f')} | "
                     f"{fmt(r['fd'])} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['accuracy'], '.4f')} | "
                     f"{fmt(r['heldout_loss'], '.4f')}{'' if r['guidance'] is None else ' (guided)'} |")
    if data:
        lines.append(f"| {data['label']} | | | {fmt(data['fd'])} | {fmt(data['precision'])} | {fmt(data['recall'])} | "
                     f"{fmt(data['accuracy'], '.4f')} | |")
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
        lines.append(f"| {label} | {fmt(params / 1e6 if params else None, '.1f')}M | {t.get('steps', 'n/a')} | "
                     f"{fmt(t.get('fit_seconds'), '.1f')} | {fmt(t.get('img_per_s_median'), '.0f')} | "
                     f"{fmt(pf / 1e6 if pf else None, '.1f')} | {fmt(t.get('final_logged_loss'), '.4f')} |")
    cap = tr.get("step_cap", {})
    lines += ["", f"Step cap: {cap.get('cap', 'n/a')} of {cap.get('requested', 'n/a')} requested ({cap.get('reason', 'n/a')}). "
              f"Classifier: {clf.get('epochs', 'n/a')} epochs, {fmt(clf.get('seconds'), '.1f')} s.", "",
              "![training loss](loss_curves.png)", "", "## Claims", ""]
    names = {"a": "(a) at equal training compute ELIT-SiT beats SiT",
             "b": "(b) one multibudget model trades quality for FLOPs smoothly",
             "c": "(c) cheap CFG matches CFG at about a third less compute per guided step"}
    for key, title in names.items():
        c = claims.get(key, {})
        lines.append(f"- **{title}: {c.get('verdict', 'not evaluated').upper()}.** {claim_sentence(key, c)} "
                     f"Threshold: {c.get('threshold', 'n/a')}.")
    lines += ["", f"Scale of FD: {data.get('num_samples', '?')} real training images score {fmt(data.get('fd'))} against "
              f"the test set (a second, disjoint subset: {fmt(data.get('fd_second_subset'))}): what an ideal generator "
              "would get at this sample size, and how much FD moves with the draw of images alone. One training seed "
              "per model: differences between rows that are not large against this are not evidence.", ""]
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- `{k}`: {v}" for k, v in results["errors"].items()] + [""]
    row_errors = [f"- `{r['key']}`: {r['error']}" for r in results["rows"] if r.get("error")]
    if row_errors:
        lines += ["## Row errors", ""] + row_errors + [""]
    lines += ["## Stage times (s)", "", " | ".join(f"{k} {v:.1f}" for k, v in results.get("timings", {}).items()), ""]
    return "\n".join(lines)
