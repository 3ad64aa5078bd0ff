"""The study's one door to the library functions that still live in entry scripts.

Every use of generate.py, elit_multibudget_inference.py and dataset_tools.py by the study goes through this
module, so that the switch to their library homes touches one file.
TODO(floor plan): imports move to sampling.* / utils.plots (and dataset_tools' importer to dataio.sources)
after the floor-plan merge; `sampling_plan` then builds the frozen SamplingPlan instead of patching a dict.
"""

from __future__ import annotations

from typing import Callable

import dataset_tools
import elit_multibudget_inference as multibudget
import generate
from dataio.options import FashionMnistConfig

# Sampling (generate.py): checkpoint loading and the per-image seeded sampler.
load_for_sampling = generate.load_for_sampling
generate_images = generate.generate_images

# Cost accounting, timing and figures (elit_multibudget_inference.py).
guided_step_fn = multibudget.guided_step_fn
median_time = multibudget.median_time
step_gflops = multibudget.step_gflops
sample_gflops = multibudget.sample_gflops
plot_grid = multibudget.plot_grid
savefig = multibudget._savefig                                  # atomic PNG write, closes the figure


def sampling_plan(model, gen, device, warn: Callable[[str], None]) -> dict:
    """generate.py's sampling plan of one row's options, with the budget keys every family reads here:
    SiT's plan has no budget, unconditional budget or autoguidance; guided_step_fn and step_gflops read them."""
    plan = generate.resolve_sampling(model, gen, device, "linear", warn=warn)
    plan.setdefault("budget", None)
    plan.setdefault("unconditional_budget", None)
    plan.setdefault("autoguidance", False)
    return plan


def import_fashion_mnist(source: str, dest: str, split: str) -> None:
    """`dataset_tools.py fashion-mnist` at 32x32, 1 channel: DEST/split (idempotent)."""
    dataset_tools.fashion_mnist(FashionMnistConfig(source=source, dest=dest, split=split, resolution=32, channels=1))
