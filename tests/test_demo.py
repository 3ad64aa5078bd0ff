"""The CPU demo (README's main command): easy classes, a classifier that tells them apart, grids a person can read,
and a shortened run whose samples a classifier fitted on the real demo images names better than chance."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tools
from conftest import ROOT
from dataio.sources.demo import DEMO_CLASSES, make_demo_images
from dataio.writers import save_grid
from evaluation.classifier import agreement, fit_classifier, predict
from training import Trainer
from training.grids import grid_labels
from training.options import TrainConfig
from utils.cli import parse_config

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
    y, nrow = grid_labels(10, 16)                                           # Fashion-MNIST: as before
    assert nrow is None and y.tolist() == [k % 10 for k in range(16)]


# The shortened run: the README's config and data with a narrow model (width 128, depth 4: 1/20 of the
# demo's compute per step) at a higher learning rate, 300 steps of 32 images, grids of 10 Euler steps: about 15 CPU
# seconds. Over seeds 0-5 its full-budget grid agreed on 94, 85, 88, 71, 81 and 85% (chance 17%); the test asks for
# more than chance + SHORT_MARGIN (47%), well below the lowest, so that a run that learned nothing of the classes fails.
SHORT = ["--max-train-steps", "300", "--checkpointing-steps", "300", "--global-batch-size", "32",
         "--learning-rate", "3e-3", "--sample-num-steps", "10", "--elit-head-depth", "1", "--elit-tail-depth", "1",
         "--report-to", "none", "--no-progress"]
NARROW = dict(hidden_size=128, depth=4, num_heads=2)
SHORT_MARGIN = 0.3


def test_shortened_demo_run_prints_a_class_agreement_above_chance(tmp_path, capsys):
    data = str(tmp_path / "demo")
    dataset_tools.main(["demo", "--dest", data])
    cfg = parse_config(TrainConfig, ["--config", os.path.join(ROOT, "experiments_updated", "train", "demo.yaml"),
                                     "--data-dir", data, "--output-dir", str(tmp_path / "results"), *SHORT])
    assert cfg.sample_class_check
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, model_kwargs=NARROW).fit()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    lines = re.findall(r"(\S+\.png): class agreement (\d+)% \(chance (\d+)%; the classifier is right on (\d+)%", out)
    assert [os.path.basename(p) for p, *_ in lines] == ["0000300.png", "0000300_budget0.25.png"], out
    for path, agree, chance, real in lines:
        assert int(chance) == round(100 * CHANCE) and int(real) >= 95
        assert int(agree) / 100 > CHANCE + SHORT_MARGIN, out
    grid = np.array(Image.open(lines[0][0]))
    assert grid.shape[0] >= 6 * 16 * 8                                    # six rows of samples enlarged 8x
    log = open(tmp_path / "results" / "demo" / "log.txt").read()
    assert log.count("class agreement") == 2
