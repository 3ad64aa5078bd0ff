"""The guidance sweep (sampling/sweep.py, `python -m sampling.sweep`): CFG vs cheap CFG vs autoguidance over
guidance scales -- GFLOPs per guided step and per sample, images from the same noise, a plot and a grid."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, later_flags_win, script_env, write_checkpoint
from models.flops import gflops_per_image
from sampling import sweep
from sampling.load import Decoder, load_for_sampling
from sampling.plan import resolve_plan
from sampling.run import sample_latents
from utils.cli import parse_config
from utils.errors import UserError

FAST = ["--num-steps", "3", "--num-images", "2"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def elit_ckpt(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "elit.pt"), "ELIT-SiT")   # 4 windows x 4 slots


def run_sweep(*argv):
    return sweep.run(parse_config(sweep.SweepConfig, later_flags_win(list(argv))))


def test_sweep_rows_costs_plot_and_grid(elit_ckpt, tmp_path):
    out = tmp_path / "sw"
    results = run_sweep("--ckpt", elit_ckpt, "--cfg-scales", "1", "2", "3", "4", "5", "--output-dir", str(out),
                        "--class-label", "3", *FAST)
    with open(out / "results.json") as f:
        assert json.load(f)["rows"] == results["rows"]
    rows = {(r["mode"], r["cfg_scale"]): r for r in results["rows"]}
    assert set(rows) == {(m, s) for m in sweep.MODES for s in (1.0, 2.0, 3.0, 4.0, 5.0)}

    # GFLOPs: one forward per budget counted on the meta device; a guided step as the mode composes it.
    model = load_for_sampling(elit_ckpt).model
    full, low = gflops_per_image(model, budget=1.0), gflops_per_image(model, budget=0.25)   # lowest level: 1/4
    assert low < full and results["settings"]["low_budget"] == 0.25
    for (mode, s), r in rows.items():
        expected = full if s == 1 else (2 * full if mode == "cfg" else full + low)
        assert r["gflops_per_step"] == pytest.approx(expected)
        assert r["gflops_per_sample"] == pytest.approx(3 * expected)   # 3 Euler steps, all inside the interval
        assert r["sampling_s_per_image"] > 0
        if s != 1:
            assert r["guidance_label"] == ("real" if mode == "autoguidance" else "null")
            assert r["relative_to_cfg"] == pytest.approx(1.0 if mode == "cfg" else (full + low) / (2 * full))

    # Images: the same noise in every cell; scale 1 is unguided for every mode; the modes differ when guided.
    npz = np.load(out / "images.npz")
    images = npz["images"]                                              # (modes, scales, n, H, W, 3)
    assert images.shape == (3, 5, 2, 8, 8, 3) and images.dtype == np.uint8
    assert list(npz["modes"]) == list(sweep.MODES)
    assert (images[:, 0] == images[0, 0]).all()
    assert not (images[0, 3] == images[1, 3]).all() and not (images[1, 3] == images[2, 3]).all()
    for name in ("guidance_gflops.png", "grid.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_a_cell_is_what_generate_samples_with_the_same_options(elit_ckpt, tmp_path):
    """Cheap CFG at scale 4 in the sweep == the plan generate.py builds from the same flags (two ways agree)."""
    run_sweep("--ckpt", elit_ckpt, "--cfg-scales", "4", "--modes", "cheap_cfg", "--output-dir", str(tmp_path),
              "--class-label", "5", *FAST)
    ck = load_for_sampling(elit_ckpt)
    opts = dataclasses.replace(parse_config(sweep.SweepConfig, FAST), cfg_scale=4.0,
                               unconditional_inference_budget=0.25)
    plan = resolve_plan(ck.model, opts, "cpu", ck.path_type)
    x = sample_latents(ck.model, plan, [0, 1], seed=0, labels=torch.full((2,), 5), device="cpu")
    expected = Decoder(ck.dataset_meta).load(ck.model, "cpu")(x)
    np.testing.assert_array_equal(np.load(tmp_path / "images.npz")["images"][0, 0], expected)


def test_guidance_interval_and_gflops_only_without_a_checkpoint(tmp_path):
    results = run_sweep("--model", "ELIT-SiT-XL/2", "--resolution", "256", "--output-dir", str(tmp_path),
                        "--num-steps", "10", "--guidance-high", "0.5", "--unconditional-inference-budget", "0.0625")
    assert not os.path.exists(tmp_path / "grid.png") and os.path.exists(tmp_path / "guidance_gflops.png")
    rows = {(r["mode"], r["cfg_scale"]): r for r in results["rows"]}
    unguided, cfg, cheap = rows["cfg", 1.0], rows["cfg", 4.0], rows["cheap_cfg", 4.0]
    assert cheap["gflops_per_step"] < cfg["gflops_per_step"] == pytest.approx(2 * unguided["gflops_per_step"])
    # Only the steps with t <= 0.5 are guided: the per-sample cost lies strictly between unguided and all-guided.
    assert 10 * unguided["gflops_per_step"] < cfg["gflops_per_sample"] < 10 * cfg["gflops_per_step"]
    assert cheap["sampling_s_per_image"] is None


@pytest.mark.parametrize("argv, message", [
    (["--cfg-scale", "4"], "pass the scales as --cfg-scales"),
    (["--autoguidance"], "one of the swept modes"),
    (["--modes", "cfg", "pag"], "modes must be distinct names"),
    (["--class-label", "99"], "class_label must be in"),
])
def test_checks(elit_ckpt, tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run_sweep("--ckpt", elit_ckpt, "--output-dir", str(tmp_path), *FAST, *argv)


def test_a_model_without_budgets_sweeps_cfg_only(tmp_path):
    sit = write_checkpoint(str(tmp_path / "sit.pt"), "SiT")
    with pytest.raises(UserError, match="cheap_cfg and autoguidance need a model with compute budgets"):
        run_sweep("--ckpt", sit, "--output-dir", str(tmp_path / "a"), *FAST)
    results = run_sweep("--ckpt", sit, "--modes", "cfg", "--cfg-scales", "1", "3", "--output-dir",
                        str(tmp_path / "b"), *FAST)
    steps = [r["gflops_per_step"] for r in results["rows"]]
    assert steps[1] == pytest.approx(2 * steps[0])


def test_command_line(elit_ckpt, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "sampling.sweep", "--ckpt", elit_ckpt, "--cfg-scales", "1", "2",
                           "3", "4", "5", "--output-dir", str(out), *FAST], cwd=ROOT, env=script_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out / "results.json")
    bad = subprocess.run([sys.executable, "-m", "sampling.sweep", "--ckpt", elit_ckpt, "--modes", "x"], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
