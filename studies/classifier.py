"""A small Fashion-MNIST classifier, saved as a feature network of the evaluator (`evaluate.py --feature-network`).

    python dataset_tools.py fashion-mnist --dest data/fashion-mnist --split train      # and --split test
    python studies/classifier.py --data data/fashion-mnist --out fm_classifier.pt [--epochs 4]
    python evaluate.py --samples S.npz --ref R.npz --feature-network fm_classifier.pt

The network, its training and its interface: studies/fmnist/classifier.py; the options: ClassifierConfig in
studies/fmnist/options.py.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):        # run by path (`python studies/classifier.py`): the repository root first
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from studies.fmnist.classifier import FashionClassifier, train_classifier  # noqa: E402,F401 (tests use the class)
from studies.fmnist.options import ClassifierConfig  # noqa: E402
from utils.cli import parse_config  # noqa: E402
from utils.errors import run_main  # noqa: E402


def main(argv=None) -> dict:
    return train_classifier(parse_config(ClassifierConfig, argv))


if __name__ == "__main__":
    run_main(main)
