"""Dataset tools: build the folders that train.py reads (formats: see dataio/format.py).

    python dataset_tools.py convert --source imagenet/train --dest data/in256 --resolution 256x256
    python dataset_tools.py encode  --source data/in256 --dest data/in256-sdvae      # GPU when present
    torchrun --nproc_per_node 8 dataset_tools.py encode --source ... --dest ...     # sharded, one output
    python dataset_tools.py demo    --dest data/demo                                  # no download, seconds
    python dataset_tools.py fashion-mnist --dest data/fashion-mnist --split train     # -> data/fashion-mnist/train

Each subcommand takes `--config FILE.yaml` and flags (`--help` lists them). Outputs are written into
`DEST.partial` and renamed to DEST when complete, so a `dataset.json` in DEST always means a finished
dataset; rerunning a finished command is a no-op, and a different finished dataset is never overwritten.
`encode` resumes an interrupted run from its last progress point, with any number of processes.
"""

from __future__ import annotations

import sys

from dataio.options import ConvertConfig, DemoConfig, EncodeConfig, FashionMnistConfig
from dataio.sources.demo import demo
from dataio.sources.encode import encode
from dataio.sources.fashion_mnist import fashion_mnist
from dataio.sources.imagenet import convert
from utils.cli import parse_config
from utils.errors import UserError, run_main

COMMANDS = {"convert": (ConvertConfig, convert), "encode": (EncodeConfig, encode), "demo": (DemoConfig, demo),
            "fashion-mnist": (FashionMnistConfig, fashion_mnist)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    command = argv[0].replace("_", "-")
    if command not in COMMANDS:
        raise UserError(f"unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}")
    schema, fn = COMMANDS[command]
    fn(parse_config(schema, argv[1:], description=f"dataset_tools.py {command}: {schema.__doc__}"))


if __name__ == "__main__":
    run_main(main)
