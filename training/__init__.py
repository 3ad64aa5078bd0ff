"""Training: the options of train.py, the Trainer that runs the one accelerate loop, and what it is made of.

    options.py   TrainConfig (the schema of train.py) and model_overrides
    trainer.py   Trainer: build a run from a TrainConfig, `fit()`, the hot path `train_step()`
    state.py     per-step seeds, RNG state, the checkpoint's contents and exact resume
    repa.py      the frozen REPA target encoder (DINOv2) and the features the projector aligns with
    grids.py     the periodic EMA sample grids
"""

from .trainer import Trainer

__all__ = ["Trainer"]
