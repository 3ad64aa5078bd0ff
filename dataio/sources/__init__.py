"""Where datasets come from: demo shapes, Fashion-MNIST, image folders (ImageNet), VAE encoding.

One module per `dataset_tools.py` subcommand, each ending in the function the script calls with its parsed
options: `demo.demo`, `fashion_mnist.fashion_mnist`, `imagenet.convert`, `encode.encode`.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, **kw):
    """A progress bar on stderr, redrawn at most once a second."""
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, mininterval=1.0, **kw)
