"""Training: the options of train.py and the Trainer that runs the one accelerate loop."""

from .trainer import Trainer

__all__ = ["Trainer"]
