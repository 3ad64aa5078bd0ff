"""The Fashion-MNIST study (studies/fashion_mnist.py) in smoke mode, and its classifier as an evaluator feature
network (studies/classifier.py + evaluate.py --feature-network). Synthetic idx files: no download."""

import dataclasses
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
from studies.fmnist.options import FashionMnistStudyConfig
from studies import classifier as clf
from studies import fashion_mnist as study

ROW_KEYS = ["sit", "elit_b1", "elit_b0.5", "elit_b0.25", "elit_b0.125", "elit_b0.0625", "cfg", "cheap_cfg",
            "autoguidance"]
METRICS = ["fd", "accuracy", "heldout_loss", "gflops", "latency_ms_per_image"]


def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def synthetic_fashion_mnist(folder, n_train=240, n_test=120):
    """Idx files of 28x28 images whose class shows as a bright bar at a class-dependent height."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.permutation(np.arange(n) % 10)
        x = rng.integers(0, 60, (n, 28, 28))
        for c in range(10):
            x[y == c, 2 + 2 * c:6 + 2 * c, 4:24] += 150
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), np.clip(x, 0, 255))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), y)
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    source = synthetic_fashion_mnist(str(root / "fm"))
    work, out = root / "work", root / "out"
    results = study.main(["--smoke", "--source", source, "--work", str(work), "--out", str(out), "--device", "cpu"])
    return results, work, out


def test_smoke_run_has_every_row_and_output(smoke):
    results, work, out = smoke
    assert results["errors"] == {}, results["errors"]
    assert all(v == "ok" for v in results["status"].values())
    files = sorted(os.listdir(out))
    assert len(files) <= 8
    assert set(study.OUT_FILES) <= set(files)
    on_disk = json.load(open(out / "results.json"))
    assert [r["key"] for r in on_disk["rows"]] == ROW_KEYS
    for row in on_disk["rows"]:
        assert row["error"] is None, row
        for key in METRICS:
            assert isinstance(row[key], float) and np.isfinite(row[key]), (row["key"], key, row[key])
        assert row["num_samples"] == results["settings"]["num_samples"]
    assert on_disk["classifier"]["test_accuracy"] is not None
    assert on_disk["reference"]["data_row"]["fd"] is not None
    for name in study.MODELS:
        t = on_disk["training"][name]
        assert t["steps"] == on_disk["training"]["step_cap"]["cap"] == 6
        assert [s["to_step"] for s in t["segments"]] == [3, 6]                  # probe, then resumed to the cap
    report = (out / "report.md").read_text()
    for claim in "abc":
        assert on_disk["claims"][claim]["verdict"] in ("holds", "does not hold", "inconclusive", "not evaluated")
        assert f"({claim})" in report
    for row in on_disk["rows"]:
        assert row["label"] in report


def test_smoke_costs_agree_with_flop_table(smoke):
    results, _, _ = smoke
    rows = {r["key"]: r for r in results["rows"]}
    curve = [rows[k]["gflops"] for k in ROW_KEYS[1:6]]
    assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1]          # FLOPs fall with the budget
    full, low = rows["elit_b1"]["gflops"], rows["elit_b0.0625"]["gflops"]
    assert rows["cfg"]["gflops"] == pytest.approx(2 * full)                       # both passes at full budget
    assert rows["cheap_cfg"]["gflops"] == pytest.approx(full + low)
    assert rows["autoguidance"]["gflops"] == pytest.approx(full + low)
    steps = results["settings"]["sampling_steps"]
    assert rows["sit"]["gflops_per_sample"] == pytest.approx(steps * rows["sit"]["gflops"])
    t = results["training"]
    assert t["sit"]["training_gflops"] == pytest.approx(3 * t["sit"]["batch"] * 6 * rows["sit"]["gflops"])
    assert t["elit"]["training_gflops"] < 3 * t["elit"]["batch"] * 6 * full      # multibudget: cheaper steps


def test_sample_batches_evaluate_the_same_through_the_cli(smoke):
    """The evaluator's documented --feature-network option on the study's own files gives the study's numbers."""
    results, work, _ = smoke
    ref = results["reference"]["reference_file"]
    row = next(r for r in results["rows"] if r["key"] == "cheap_cfg")
    metrics = evaluate_script.main(["--samples", str(work / "samples" / "cheap_cfg.npz"), "--ref", ref,
                                    "--feature-network", str(work / "classifier.pt"), "--device", "cpu",
                                    "--out", str(work / "cli.json")])
    assert metrics["network"]["kind"] == "torchscript" and metrics["sfid"] is None
    assert metrics["fid"] == pytest.approx(row["fd"], rel=1e-6)
    assert metrics["classifier_accuracy"] == pytest.approx(row["accuracy"])       # labels from arr_1


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*is deprecated")
def test_classifier_cli_torchscript_feature_network(smoke, tmp_path):
    _, work, _ = smoke
    out = tmp_path / "net.pt"
    info = clf.main(["--data", str(work / "data"), "--out", str(out), "--epochs", "1", "--width", "4",
                     "--feature-dim", "8", "--batch-size", "64", "--device", "cpu"])
    assert 0 <= info["test_accuracy"] <= 1 and info["feature_dim"] == 8 and out.is_file()
    # The scripted file computes what the eager network does, for grey and RGB-replicated input.
    net = torch.jit.load(str(out)).eval()
    torch.manual_seed(0)
    eager = clf.FashionClassifier(width=4, feature_dim=8)
    eager.load_state_dict(net.state_dict())
    eager.eval()
    x = torch.randint(0, 256, (3, 1, 32, 32)).float()
    with torch.no_grad():
        feats, logits = net(x)
        assert feats.shape == (3, 8) and logits.shape == (3, 10)
        torch.testing.assert_close(net(x.expand(-1, 3, -1, -1))[0], feats)
        torch.testing.assert_close(eager(x)[0], feats)
    # evaluate.py accepts it on tiny ADM-format batches (grey reference, RGB samples with labels).
    rng = np.random.default_rng(1)
    ref = tmp_path / "ref.npz"
    samples = tmp_path / "samples.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (24, 32, 32, 1), dtype=np.uint8))
    grey = rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    np.savez(samples, arr_0=np.repeat(grey, 3, axis=-1), arr_1=np.arange(16) % 10)
    metrics = evaluate_script.main(["--samples", str(samples), "--ref", str(ref), "--feature-network", str(out),
                                    "--device", "cpu", "--out", str(tmp_path / "m.json")])
    assert np.isfinite(metrics["fid"]) and metrics["classifier_accuracy"] is not None
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1


def test_presets_match_the_documented_values():
    """The numbers --help shows for the None-means-preset options are the ones PRESETS uses."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(FashionMnistStudyConfig)}
    for mode, preset in study.PRESETS.items():
        assert set(preset) <= set(helps)
        for key, value in preset.items():
            assert getattr(FashionMnistStudyConfig(), key) is None, key
            if value is not None:
                assert f"{mode}: {value:g}" in helps[key], (key, mode, helps[key])


def _results(fd, acc, gflops, training=(100.0, 80.0)):
    keys = ROW_KEYS
    budgets = [None, 1.0, 0.5, 0.25, 0.125, 0.0625, 1.0, 1.0, 1.0]
    guidance = [None] * 6 + ["cfg", "cheap_cfg", "autoguidance"]
    rows = [dict(key=k, model="sit" if k == "sit" else "elit", budget=b, guidance=g, fd=f, accuracy=a, gflops=x,
                 heldout_loss=0.1, latency_ms_per_image=1.0)
            for k, b, g, f, a, x in zip(keys, budgets, guidance, fd, acc, gflops)]
    return dict(rows=rows, training=dict(sit=dict(training_gflops=training[0], steps=10),
                                         elit=dict(training_gflops=training[1], steps=10)))


GFLOPS = [12.0, 13.0, 8.5, 6.5, 5.5, 5.0, 26.0, 18.0, 18.0]


def test_claim_verdicts_follow_the_stated_thresholds():
    good = _results(fd=[10, 8, 9, 11, 15, 25, 6, 6.3, 7], acc=[.8, .85, .84, .8, .7, .6, .9, .9, .88], gflops=GFLOPS)
    claims = study.judge_claims(good)
    assert [claims[k]["verdict"] for k in "abc"] == ["holds", "holds", "holds"]
    assert claims["b"]["cheapest_budget_matching_sit_fd"] == 0.5
    assert claims["c"]["gflops_saving"] == pytest.approx(1 - 18 / 26)

    close = _results(fd=[10, 9.8, 9, 11, 15, 25, 6, 7, 7], acc=[.8] * 9, gflops=GFLOPS)
    assert study.judge_claims(close)["a"]["verdict"] == "inconclusive"          # within 5%
    assert study.judge_claims(close)["c"]["verdict"] == "does not hold"         # 7 > 1.1 x 6
    costly = _results(fd=[10, 8, 9, 11, 15, 25, 6, 6, 6], acc=[.8] * 9, gflops=GFLOPS, training=(80.0, 100.0))
    assert study.judge_claims(costly)["a"]["verdict"] == "does not hold"        # more training FLOPs
    cliff = _results(fd=[10, 8, 9, 11, 30, 35, 6, 6, 6], acc=[.8] * 9, gflops=GFLOPS)
    assert study.judge_claims(cliff)["b"]["graceful"] is False                  # 11 -> 30: more than 2x
    bumpy = _results(fd=[10, 8, 9, 7, 12, 14, 6, 6, 6], acc=[.8] * 9, gflops=GFLOPS)
    assert study.judge_claims(bumpy)["b"]["monotone"] is False                  # 9 -> 7 at lower FLOPs
    missing = _results(fd=[None] * 9, acc=[None] * 9, gflops=GFLOPS)
    assert {v["verdict"] for v in study.judge_claims(missing).values()} == {"not evaluated"}
    chance = _results(fd=[800, 810, 810, 810, 811, 811, 809, 809, 810], acc=[.1] * 9, gflops=GFLOPS)
    judged = study.judge_claims(chance)                  # unrecognisable samples: nothing is judged
    assert {v["verdict"] for v in judged.values()} == {"not evaluated"}
    assert judged["c"]["verdict_from_numbers"] == "holds" and "not recognisable" in judged["c"]["reason"]
    assert "Not judged" in study.claim_sentence("c", judged["c"])
