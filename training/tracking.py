"""Experiment tracking for train.py: scalars and sample-grid images to TensorBoard or Weights & Biases.

    tracker = open_tracker("wandb", log_dir, run_name, config, enabled=is_main)   # checks the package now
    tracker.log_scalars({"loss": 0.12, "lr": 1e-4}, step)
    tracker.log_images({"samples/full": "exps/run/samples/0001000.png"}, step)    # PNG paths or uint8 HWC arrays
    tracker.close()

`report_to` (the reference's option, default `wandb` there, `tensorboard` here) picks the backend; `none` logs
nothing. A backend whose package is missing is a one-line UserError when the run starts, never a run without
the logs asked for. Both work offline: TensorBoard writes event files under `log_dir`; wandb honours
`WANDB_MODE=offline` (its run folder `log_dir/wandb/offline-run-*` is synced later with `wandb sync`), and a
wandb that cannot start (no login, no network) stops the run with one line saying so. Only the main process
logs (`enabled=False` elsewhere gives the no-op tracker).
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from utils.errors import UserError

WANDB_PROJECT = "elit"                          # the project of the runs, unless WANDB_PROJECT says otherwise


class Tracker:
    """The no-op tracker (`report_to none`, and every process but the main one)."""

    kind = "none"

    def log_scalars(self, values: dict, step: int) -> None:
        pass

    def log_images(self, images: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _image_array(image: Union[str, np.ndarray]) -> np.ndarray:
    """A PNG path or an array -> uint8 (H, W, 3)."""
    if isinstance(image, str):
        from PIL import Image  # optional dependency (pillow), needed only for image logging
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(image, dtype=np.uint8)


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, log_dir: str, run_name: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional heavy dependency: tensorboard
        except ImportError as e:
            raise UserError(f"report_to tensorboard needs the tensorboard package ({e}): pip install tensorboard, "
                            "or pass --report-to none / wandb") from None
        self.writer = SummaryWriter(log_dir=os.path.join(log_dir, run_name))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)

    def log_scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_images(self, images: dict, step: int) -> None:
        for key, image in images.items():
            self.writer.add_image(key, _image_array(image), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    kind = "wandb"

    def __init__(self, log_dir: str, run_name: str, config: dict):
        try:
            import wandb  # optional heavy dependency: only --report-to wandb needs it
        except ImportError as e:
            raise UserError(f"report_to wandb needs the wandb package ({e}): pip install wandb==0.31.0 "
                            "(requirements.txt), or pass --report-to tensorboard / none") from None
        self.wandb = wandb
        os.makedirs(log_dir, exist_ok=True)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=run_name,
                                  dir=log_dir, config=config, reinit="finish_previous")
        except Exception as e:  # login, network or service failures: say how to log without them
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"wandb could not start ({type(e).__name__}: {first[:200]}): set WANDB_MODE=offline to "
                            "log locally (sync later with `wandb sync`), run `wandb login`, or pass --report-to "
                            "tensorboard") from None
        self.dir = self.run.dir

    def log_scalars(self, values: dict, step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_images(self, images: dict, step: int) -> None:
        self.run.log({k: self.wandb.Image(_image_array(v)) for k, v in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"none": Tracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_tracker(kind: str, log_dir: str, run_name: str, config: Optional[dict] = None,
                 enabled: bool = True) -> Tracker:
    """The tracker of `report_to` = kind; plain config values (numbers, strings, booleans) are recorded."""
    if kind not in BACKENDS:
        raise UserError(f"report_to must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if not enabled or kind == "none":
        return Tracker()
    plain = {k: v for k, v in (config or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
    return BACKENDS[kind](log_dir, run_name.replace("/", "_"), plain)


def grid_tags(paths: list[str]) -> dict:
    """Sample-grid PNGs -> {'samples/full': path, 'samples/budget0.25': path} (the step is logged separately)."""
    out = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        _, _, suffix = stem.partition("_")
        out[f"samples/{suffix or 'full'}"] = path
    return out
