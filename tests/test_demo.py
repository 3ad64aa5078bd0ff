"""The CPU demo (README's main command): easy classes, a classifier that tells them apart, grids a person can read,
and a shortened run whose samples a classifier fitted on the real demo images names better than chance."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from dataio.sources.demo import DEMO_CLASSES, make_demo_images
from dataio.writers import save_grid
from evaluation.classifier import agreement, fit_classifier, predict
from training.grids import grid_labels

CHANCE = 1 / len(DEMO_CLASSES)


@pytest.fixture(scope="module")
def classifier():
    images, labels, _ = make_demo_images(1200, 16, seed=0)
    return fit_classifier(images, labels, len(DEMO_CLASSES))


def test_classifier_separates_real_demo_images(classifier):
    images, labels, _ = make_demo_images(300, 16, seed=1)            # other images than it was fitted on
    assert agreement(classifier, images, labels) > 0.95


def test_classifier_is_at_chance_on_noise_and_on_shuffled_labels(classifier):
    rng = np.random.default_rng(0)
    labels = np.arange(600) % len(DEMO_CLASSES)
    noise = rng.integers(0, 256, (600, 16, 16, 3), dtype=np.uint8)
    # Labels independent of the images: the expected agreement is chance whatever it predicts (binomial sd 0.015).
    assert abs(agreement(classifier, noise, labels) - CHANCE) < 0.07
    images, real, _ = make_demo_images(600, 16, seed=2)
    assert abs(agreement(classifier, images, rng.permutation(real)) - CHANCE) < 0.07
    assert predict(classifier, noise).shape == (600,)


def test_classifier_fit_is_deterministic_and_leaves_the_global_rng_alone():
    images, labels, _ = make_demo_images(200, 16, seed=0)
    torch.manual_seed(5)
    a = fit_classifier(images, labels, len(DEMO_CLASSES), steps=5)
    after = torch.rand(1)
    torch.manual_seed(5)
    b = fit_classifier(images, labels, len(DEMO_CLASSES), steps=5)
    assert torch.equal(after, torch.rand(1))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_grid_enlarges_by_pixel_repetition(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    save_grid(images, str(tmp_path / "g.png"), nrow=3, pad=2, scale=4)
    grid = np.array(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 * (20 + 2) + 2, 3 * (16 + 2) + 2, 3)
    cell = grid[2 + 22:2 + 22 + 20, 2 + 18:2 + 18 + 16]                      # row 1, column 1: image 4
    assert np.array_equal(cell, images[4].repeat(4, 0).repeat(4, 1))


def test_grid_has_one_row_per_class_for_small_label_sets():
    y, nrow = grid_labels(len(DEMO_CLASSES), 16)
    assert nrow == 8 and y.tolist() == [k for k in range(len(DEMO_CLASSES)) for _ in range(8)]
    y, nrow = grid_labels(1000, 16)                                         # ImageNet: 16 images, as before
    assert nrow is None and y.tolist() == list(range(16))


def run(args, timeout=600):
    env = {**{k: v for k, v in os.environ.items() if k != "ELIT_DEBUG"}, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


SHORT_STEPS = 40                # a shortened run: see the comment of test_shortened_demo_run_beats_chance
SHORT_MARGIN = 0.15


def test_shortened_demo_run_beats_chance(tmp_path):
    """The README's main command with fewer steps and a smaller batch prints a class agreement above chance.

    Over seeds 0-3 a run of SHORT_STEPS steps agreed on ...; the test asks for chance + SHORT_MARGIN.
    """
    data = str(tmp_path / "demo")
    run(["dataset_tools.py", "demo", "--dest", data])
    out = run(["train.py", "--config", "experiments_updated/train/demo.yaml", "--data-dir", data,
               "--output-dir", str(tmp_path / "results"), "--max-train-steps", str(SHORT_STEPS),
               "--checkpointing-steps", str(SHORT_STEPS), "--no-progress"])
    lines = re.findall(r"(\S+\.png): class agreement (\d+)% \(chance (\d+)%", out.stdout)
    assert [os.path.basename(p) for p, _, _ in lines] == [f"{SHORT_STEPS:07d}.png", f"{SHORT_STEPS:07d}_budget0.25.png"]
    full = int(lines[0][1]) / 100
    assert int(lines[0][2]) == round(100 * CHANCE)
    assert full > CHANCE + SHORT_MARGIN, out.stdout
    grid = np.array(Image.open(lines[0][0]))
    assert grid.shape[0] > 6 * 16 * 4                                     # six rows of enlarged samples
    assert "class agreement" in open(tmp_path / "results" / "demo" / "log.txt").read()
