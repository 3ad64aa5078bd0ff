"""Test helper: train.py's loop with a tiny model (registry sizes overridden by $TINY_MODEL as JSON).

    python -m torch.distributed.run --nproc_per_node 2 tests/train_tiny.py --data-dir D --exp-name E ...
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.options import TrainConfig  # noqa: E402
from utils.cli import parse_config  # noqa: E402
from utils.errors import run_main  # noqa: E402


def main():
    from training import Trainer
    Trainer(parse_config(TrainConfig), model_kwargs=json.loads(os.environ.get("TINY_MODEL", "{}"))).fit()


if __name__ == "__main__":
    run_main(main)
