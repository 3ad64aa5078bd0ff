"""Experiment tracking (training/tracking.py): TensorBoard and wandb (offline) receive the scalars and the sample
grids; a missing package is a one-line error before training, never a run without logs."""

import glob
import os
import sys

import numpy as np
import pytest

from conftest import later_flags_win, write_tiny_pixels
from training.options import TrainConfig
from training.tracking import Tracker, grid_tags, open_tracker
from utils.cli import parse_config
from utils.errors import UserError

IMAGE = (np.arange(6 * 8 * 3) % 256).astype(np.uint8).reshape(6, 8, 3)


def _scalars(log_dir):
    """{tag: [(step, value)]} and {tag: [step]} of images, read back from the TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"]}
    return scalars, images


def test_tensorboard_records_scalars_and_images(tmp_path):
    tracker = open_tracker("tensorboard", str(tmp_path), "run/a", {"lr": 1e-4, "model": "SiT-S/2", "x": [1]})
    tracker.log_scalars({"loss": 0.5, "lr": 1e-4}, step=1)
    tracker.log_scalars({"loss": 0.25, "lr": 1e-4}, step=2)
    tracker.log_images({"samples/full": IMAGE}, step=2)
    tracker.close()
    scalars, images = _scalars(str(tmp_path / "run_a"))
    assert scalars["loss"] == [(1, 0.5), (2, 0.25)]
    assert images == {"samples/full": [2]}


@pytest.mark.parametrize("kind, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_is_a_one_line_error(kind, module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)                     # import fails as if not installed
    with pytest.raises(UserError, match=f"report_to {kind} needs the {kind} package") as err:
        open_tracker(kind, str(tmp_path), "run", {})
    assert "\n" not in str(err.value)
    assert not os.listdir(tmp_path)                                    # nothing started


def test_none_and_other_processes_log_nothing(tmp_path):
    assert type(open_tracker("none", str(tmp_path), "run")) is Tracker
    assert type(open_tracker("tensorboard", str(tmp_path), "run", enabled=False)) is Tracker
    assert not os.listdir(tmp_path)
    with pytest.raises(UserError, match="report_to must be one of"):
        open_tracker("mlflow", str(tmp_path), "run")
    assert grid_tags(["s/0000004.png", "s/0000004_budget0.25.png"]) == {
        "samples/full": "s/0000004.png", "samples/budget0.25": "s/0000004_budget0.25.png"}


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = open_tracker("wandb", str(tmp_path), "run", {"lr": 1e-4})
    tracker.log_scalars({"loss": 0.5}, step=1)
    tracker.log_images({"samples/full": IMAGE}, step=1)
    tracker.close()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    assert glob.glob(os.path.join(runs[0], "run-*.wandb"))            # the run's records, for `wandb sync`
    assert glob.glob(os.path.join(runs[0], "files", "media", "images", "samples", "*.png"))


# ---------------------------------------------------------------------------------------------------------
# Through the training loop.

@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("data") / "px8")
    write_tiny_pixels(dest, 16, 8)
    return dest


def _fit(data, out, report_to, steps=2):
    from training import Trainer
    cfg = parse_config(TrainConfig, later_flags_win([
        "--model", "SiT-S/2", "--data-dir", data, "--output-dir", str(out), "--exp-name", "run",
        "--global-batch-size", "4", "--max-train-steps", str(steps), "--log-every", "1", "--checkpointing-steps",
        "100", "--sample-every", "1", "--sample-num-steps", "1", "--num-workers", "0", "--no-progress",
        "--report-to", report_to]))
    trainer = Trainer(cfg, model_kwargs=dict(hidden_size=32, depth=2, num_heads=2))
    trainer.fit()
    return trainer


def test_training_logs_every_scalar_and_grid_to_tensorboard(pixels, tmp_path):
    _fit(pixels, tmp_path, "tensorboard")
    scalars, images = _scalars(str(tmp_path / "run" / "logs" / "run"))
    assert [s for s, _ in scalars["loss"]] == [1, 2] and set(scalars) >= {"loss", "img_per_s", "lr"}
    assert all(np.isfinite(v) for _, v in scalars["loss"])
    assert images == {"samples/full": [1, 2]}                          # every periodic grid, at its step


def test_training_with_wandb_offline(pixels, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _fit(pixels, tmp_path, "wandb", steps=1)
    runs = glob.glob(str(tmp_path / "run" / "logs" / "wandb" / "offline-run-*"))
    assert len(runs) == 1 and glob.glob(os.path.join(runs[0], "files", "media", "images", "samples", "*.png"))


def test_training_without_the_package_stops_before_the_first_step(pixels, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="needs the wandb package"):
        _fit(pixels, tmp_path, "wandb")
    assert not glob.glob(str(tmp_path / "run" / "checkpoints" / "*.pt"))
