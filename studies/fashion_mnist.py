"""Do ELIT's claims hold at small scale? The paper's three rows (SiT-S/2, ELIT-SiT-S/2 trained at full budget,
ELIT-SiT-S/2 multibudget) on Fashion-MNIST as learning curves, data to published report in one command.

    python studies/fashion_mnist.py --source DIR --out OUT --time-budget-minutes 8 --max-minutes 8.5   # one GPU
    python studies/fashion_mnist.py --smoke --source DIR --work W --out O      # tiny models on the CPU, seconds

The claims tested (SPEC, "reference results"): (a) at equal training compute ELIT-SiT beats SiT (row 2 vs row 1,
read from the curves; the multibudget row against SiT at its training FLOPs too); (b) one multibudget model
trades quality for FLOPs smoothly across budgets 1 .. 1/16; (c) cheap CFG (unconditional pass at a low budget)
matches standard CFG at about a third less compute per guided step (multibudget model; the single-budget model
too). Setting: Fashion-MNIST zero-padded to 32x32, 1 channel, pixel space; patch 2 -> 16x16 tokens; ELIT group
size 4 -> 16 windows of 16 latent slots.

Stages (each prints a line with the elapsed time; results.json is rewritten after each and after every curve
point; a failing stage is recorded and the stages that do not depend on it still run): data (idx files -> memory
and device), classifier (feature network for FD / accuracy), reference (test statistics, real-image FD floor),
build (three models, identical data/batch/optimiser/schedule/seed), latency (every final row timed on bf16 +
CUDA-graph sampling models; sets the sampling estimates), warm-up (compile and time each training step, then
restore the initial state), plan (the common step count fitting --time-budget-minutes), train + curves
(round-robin to each of --eval-points points, each model measured there), final rows (all budgets and guidance
rows), then claims, figures and the report. Past --max-minutes (less a reserve) training stops at the last
completed point and rows are skipped, so the report is always written.

Output: OUT/fashion_mnist_study.md and OUT/fashion_mnist_study/{results.json, curves.png, quality_vs_gflops.png,
grids.png, study.log}: the layout of docs/, to be copied verbatim. The code: studies/fmnist/ (its __init__ lists
the files); this script parses the options and runs the study.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):        # run by path (`python studies/fashion_mnist.py`): the repository root first
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from studies.fmnist.options import FashionMnistStudyConfig, check  # noqa: E402
from studies.fmnist.state import process_start_time  # noqa: E402
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
