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

from sampling.multibudget import run
from sampling.options import InferenceConfig
from utils.cli import parse_config
from utils.errors import run_main


def main(argv=None) -> None:
    run_main(lambda: run(parse_config(InferenceConfig, argv, description=__doc__.split("\n\n")[0])))


if __name__ == "__main__":
    main()
