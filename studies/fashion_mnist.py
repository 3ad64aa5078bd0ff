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

The code: studies/fmnist/ (options and presets, stages, claims, report; its __init__ lists the files). This
script parses the options and runs the study.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):        # run by path (`python studies/fashion_mnist.py`): the repository root first
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from studies.fmnist.claims import claim_sentence, judge_claims  # noqa: E402,F401 (names tests/test_study.py uses)
from studies.fmnist.options import MODELS, PRESETS, FashionMnistStudyConfig, check  # noqa: E402,F401
from studies.fmnist.state import OUT_FILES, process_start_time  # noqa: E402,F401
from studies.fmnist.study import run_study  # noqa: E402
from utils.cli import parse_config  # noqa: E402
from utils.errors import run_main  # noqa: E402


def main(argv=None) -> dict:
    cfg = parse_config(FashionMnistStudyConfig, argv, description=__doc__.split("\n\n")[0])
    check(cfg)
    # As a command the time budget counts from process start (imports included); called from Python, from now.
    return run_study(cfg, start=process_start_time() if argv is None else None)


if __name__ == "__main__":
    run_main(main)
