"""Train SiT, ELIT-SiT or DFM-SiT with one accelerate loop (CPU, one GPU, several GPUs or nodes).

    accelerate launch train.py --config experiments_updated/train/elit_sit_xl_256.yaml
    accelerate launch train.py --model ELIT-SiT-XL/2 --exp-name NAME --data-dir DIR \\
        --elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 --elit_group_size 4
    python train.py --config experiments_updated/train/demo.yaml          # the CPU demo

Outputs go to OUTPUT_DIR/EXP_NAME: config.yaml, log.txt, checkpoints/NNNNNNN.pt, samples/*.png and the
tracker's logs. `--resume-step -1` continues the latest checkpoint exactly. See training/trainer.py for the loop.
"""

import os

from training import Trainer
from training.options import TrainConfig
from utils.cli import parse_config
from utils.errors import run_main


def main(argv=None) -> None:
    cfg = parse_config(TrainConfig, argv)
    if cfg.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")            # offline machines keep their logs locally
    Trainer(cfg).fit()


if __name__ == "__main__":
    run_main(main)
