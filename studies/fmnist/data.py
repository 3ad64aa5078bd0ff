"""The study's data stages: Fashion-MNIST read straight from the idx files into memory (and onto the device),
the feature classifier, the reference statistics of the test set, and the sampling-noise floor of FD."""

from __future__ import annotations

import os

import numpy as np
import torch

from dataio.sources.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_pixels
from evaluation import evaluate, load_network, reference_statistics
from evaluation.batches import write_npz
from studies.fmnist.classifier import fit_classifier
from studies.fmnist.options import SMOKE_CLASSIFIER, ClassifierConfig
from studies.fmnist.state import Study


def load_data(study: Study) -> None:
    """Both splits at 32x32x1 (zero-padded, dataio.sources.fashion_mnist) as numpy; the training images and
    labels also on the device (uint8 (N, 1, 32, 32): 61 MB), where the training loop draws its batches."""
    for split in ("train", "test"):
        x, y = fashion_mnist_pixels(study.cfg.source, split, resolution=32, channels=1)
        study.data[split] = (x, y)
    x, y = study.data["train"]
    study.data["device"] = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(study.device),
                            torch.from_numpy(y).to(study.device))
    study.results["data"] = dict(source=os.path.abspath(study.cfg.source), train=len(x),
                                 test=len(study.data["test"][0]), resolution=32, channels=1,
                                 classes=FASHION_MNIST_CLASSES, on_device=str(study.device))
    study.say(f"data: {len(x)} train, {len(study.data['test'][0])} test images, 32x32x1, on {study.device}")


def train_feature_classifier(study: Study) -> None:
    defaults = ClassifierConfig()
    kw = dict(SMOKE_CLASSIFIER) if study.cfg.smoke else {}
    ccfg = ClassifierConfig(out=os.path.join(study.work, "classifier.pt"),
                            epochs=study.p.classifier_epochs or defaults.epochs,
                            max_train_items=study.p.classifier_items, seed=study.cfg.seed, device=str(study.device),
                            **kw)
    (tx, ty), (vx, vy) = study.data["train"], study.data["test"]
    study.results["classifier"] = fit_classifier(ccfg, tx, ty, vx, vy, log=study.say)


def reference(study: Study) -> None:
    """Test-set statistics in the classifier's feature space, and the FD floor: real training images, two
    disjoint subsets at each sample size the curves use, against the same statistics. An ideal generator
    would score the floor; the gap between the two subsets is how much FD moves with the draw of images."""
    test_x, test_y = study.data["test"]
    n_ref = len(test_x) if study.p.num_reference is None else min(study.p.num_reference, len(test_x))
    ref_path = os.path.join(study.work, f"reference_test{n_ref}.npz")
    write_npz(ref_path, arr_0=test_x[:n_ref], arr_1=test_y[:n_ref])
    study.net = load_network(feature_network=os.path.join(study.work, "classifier.pt"), device=study.device)
    study.ref = reference_statistics(ref_path, study.net, batch_size=500)
    train_x, train_y = study.data["train"]
    floor = {}
    for n in sorted({study.curve_n, study.final_n}):
        if 2 * n > len(train_x):
            continue
        a = evaluate(train_x[:n], study.ref, study.net, labels=train_y[:n], batch_size=500)
        b = evaluate(train_x[n:2 * n], study.ref, study.net, labels=train_y[n:2 * n], batch_size=500)
        floor[str(n)] = dict(fd_a=a["fid"], fd_b=b["fid"], spread=abs(a["fid"] - b["fid"]),
                             accuracy_a=a["classifier_accuracy"], accuracy_b=b["classifier_accuracy"],
                             precision_a=a["precision"], recall_a=a["recall"])
        study.say(f"floor n={n}: real-image FD {a['fid']:.3f} / {b['fid']:.3f} (two disjoint subsets), "
                  f"accuracy {a['classifier_accuracy']:.4f}")
    study.results["reference"] = dict(test_images=n_ref, reference_file=ref_path, network=study.net.info(),
                                      floor=floor)


def grid_reference(study: Study) -> np.ndarray:
    """20 real test images, two per class, in the grids' order (labels 0..9, 0..9), as RGB uint8."""
    x, y = study.data["test"]
    idx = [int(np.flatnonzero(y == c)[r]) for r in range(2) for c in range(10)]
    return np.repeat(x[idx], 3, axis=-1)
