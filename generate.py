"""Sample images from a checkpoint: one process or torchrun/DDP -> a PNG folder + an ADM-compatible .npz.

    torchrun --nproc_per_node=8 generate.py --config experiments_updated/generation/elit_xl_256_cfg.yaml \\
        --ckpt exps/elit-xl/checkpoints/0400000.pt [--inference-budget 0.5] \\
        [--unconditional-inference-budget 0.0625] [--autoguidance]
    torchrun --nproc_per_node=8 generate.py --model ELIT-SiT-XL/2 --ckpt exps/elit-xl/checkpoints/0400000.pt
    python generate.py --ckpt CKPT --num-samples 1000 --cfg-scale 4        # one process, no process group

The model and its decoding come from the checkpoint alone (sampling/load.py). Architecture values given anyway
(`--model`, or `path_type` / `resolution` in a reference generation YAML) are checked against the checkpoint: a
mismatch is one line. A checkpoint of the public reference implementation is converted on load (or one line
points to `python -m models.convert`). Image i has its own seed (seed + i), so the .npz is byte-identical for
1 and N processes and after resuming (sampling/run.py).

Output. `sample_dir/NAME/` with NAME encoding the checkpoint and every sampling knob (sampling/plan.py), e.g.
    elit-xl-step400000-3fa4c21b-ema-ode50-cfg4-gi0to1-ucb0.0625-b1-bf16-seed0-n50000-batch32
holds `generation.json` (the resolved sampling settings, the config and the checkpoint), one PNG per image
(`000123.png`, optional: --no-write-png) and, while running, one `.npy` shard per finished batch
(`batches/000007.npy`); at the end `sample_dir/NAME.npz` holds `arr_0`, uint8 (N, H, W, 3) in index order
(grey models replicated to RGB, rounded not truncated); the shards are then removed (sampling/shards.py).

Resume. Rerunning the same command skips every batch whose shard (or every PNG) exists and never rewrites
it; a finished .npz is never rewritten. A folder whose generation.json holds other settings is refused.
The last line on stdout is the .npz. On CUDA, matmuls may use TF32 and the model runs under bf16 autocast
(`--precision fp32` to turn it off); CPU runs are fp32.
"""

from __future__ import annotations

import sys

from sampling.distributed import dist_env
from sampling.options import GenerateConfig
from sampling.run import run_generation
from utils.cli import parse_config
from utils.errors import UserError, run_main


def main(argv=None) -> None:
    def body():
        cfg = parse_config(GenerateConfig, argv, description=__doc__.split("\n\n")[0])
        try:
            run_generation(cfg)
        except UserError:
            if dist_env().rank != 0:                          # one copy of the message, from rank 0
                sys.exit(2)
            raise
    run_main(body)


if __name__ == "__main__":
    main()
