"""ELIT multibudget inference: one model at every budget -- images from the same noise, GFLOPs, latency, plots.

    python elit_multibudget_inference.py --model ELIT-SiT-XL/2 --ckpt CKPT --resolution 256 \\
        --class-label 207 --output-dir DIR [--budgets 1 0.5 0.25] [--cfg-scale 1] [--guidance-scale 4]
    python elit_multibudget_inference.py --model ELIT-SiT-XL/2 --resolution 512 --output-dir DIR   # cost only

Budget rows (every valid budget or --budgets: images from the same noise, GFLOPs, latency, sampling time) and
guidance rows (CFG, cheap CFG, autoguidance at every budget, with --guidance-scale); see sampling/multibudget.py.
Without --ckpt a random-init model of --model at --resolution measures cost only (no images). Outputs in
--output-dir: results.json, budget_vs_gflops.png, budget_vs_latency.png, grid.png, grid_guidance.png and
images.npz. The last line on stdout is results.json.
"""

from __future__ import annotations

from sampling.cost import guided_step_fn as _guided_step_fn
from sampling.cost import measure
from sampling.cost import sample_gflops as _sample_gflops
from sampling.cost import step_gflops as _step_gflops
from sampling.multibudget import run
from sampling.options import InferenceConfig
from sampling.plan import SamplingPlan
from utils.cli import parse_config
from utils.errors import run_main
from utils.plots import plot_grid, savefig


def main(argv=None) -> None:
    run_main(lambda: run(parse_config(InferenceConfig, argv, description=__doc__.split("\n\n")[0])))


# ----------------------------------------------------------------------------------------------------------
# Temporary shim (floor-plan renovation): the names that studies/fashion_mnist.py and tests import from this
# script, with their old signatures (plans as dicts). The lead removes this block and points those imports
# at sampling/ (multibudget.run, cost.*, utils.plots).

_savefig = savefig
__all__ = ["run", "main", "plot_grid", "_savefig", "median_time", "guided_step_fn", "step_gflops", "sample_gflops"]


def _plan(plan) -> SamplingPlan:
    return plan if isinstance(plan, SamplingPlan) else SamplingPlan.from_dict(plan)


def median_time(fn, device, repeats: int) -> float:
    return measure(fn, device, repeats)[0]


def guided_step_fn(model, plan, batch: int, device):
    return _guided_step_fn(model, _plan(plan), batch, device)


def step_gflops(plan, flops: dict) -> float:
    return _step_gflops(_plan(plan), flops)


def sample_gflops(plan, flops: dict) -> float:
    return _sample_gflops(_plan(plan), flops)


if __name__ == "__main__":
    main()
