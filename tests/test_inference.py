"""elit_multibudget_inference.py: every budget from the same noise, GFLOPs, latency, guidance rows, plots, grid."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import later_flags_win, ROOT, script_env, write_checkpoint
from sampling.options import GenerateConfig, InferenceConfig
from utils.cli import parse_config
from utils.errors import UserError
from conftest import generate_images
from sampling import multibudget as mbi
from sampling.load import load_for_sampling

FAST = ["--class-label", "3", "--num-steps", "3", "--num-images", "2", "--latency-batch-size", "2",
        "--latency-repeats", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def elit_ckpt(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "elit.pt"), "ELIT-SiT")   # 4 windows x 4 slots


def infer(*argv):
    return mbi.run(parse_config(InferenceConfig, later_flags_win(argv)))


def test_multibudget_results_plots_and_grid(elit_ckpt, tmp_path):
    out = tmp_path / "mb"
    results = infer("--ckpt", elit_ckpt, "--model", "ELIT-SiT-S/2", "--class-label", "3", "--output-dir", str(out),
                    *FAST)
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["model"] == "ELIT-SiT-S/2" and saved["device_type"] == "cpu" and saved["dtype"] == "float32"
    assert saved["settings"]["class_label"] == 3 and saved["settings"]["latency_batch_size"] == 2

    # Every valid level, full first, with FLOPs falling with the budget and a measured latency.
    rows = saved["budgets"]
    assert [r["budget"] for r in rows] == [1.0, 0.75, 0.5, 0.25]
    assert [r["latents_per_window"] for r in rows] == [4, 3, 2, 1]
    assert [r["latent_tokens"] for r in rows] == [16, 12, 8, 4]
    gflops = [r["gflops_per_forward"] for r in rows]
    assert all(a > b > 0 for a, b in zip(gflops, gflops[1:]))
    assert rows[0]["relative_gflops"] == 1.0 and rows[0]["relative_latency"] == 1.0
    for r in rows:
        assert r["forward_latency_ms_per_image"] > 0 and r["sampling_s_per_image"] > 0
        assert r["gflops_per_step"] == r["gflops_per_forward"]                        # cfg_scale 1
        assert r["gflops_per_sample"] == pytest.approx(3 * r["gflops_per_forward"])    # 3 Euler steps

    # Guidance rows: 3 modes at every budget, with the step cost each mode implies.
    flops = {r["budget"]: r["gflops_per_forward"] for r in rows}
    guid = saved["guidance"]
    assert sorted((g["mode"], g["budget"]) for g in guid) == sorted(
        (m, b) for m in ("cfg", "cheap_cfg", "autoguidance") for b in flops)
    for g in guid:
        b = g["budget"]
        expected = 2 * flops[b] if g["mode"] == "cfg" else flops[1.0] + flops[b]
        assert g["gflops_per_step"] == pytest.approx(expected)
        assert g["conditional_budget"] == (b if g["mode"] == "cfg" else 1.0)
        assert g["guidance_label"] == ("real" if g["mode"] == "autoguidance" else "null")
        assert g["step_latency_ms_per_image"] > 0 and g["sampling_s_per_image"] > 0 and g["cfg_scale"] == 4.0
    cheap = next(g for g in guid if g["mode"] == "cheap_cfg" and g["budget"] == 0.25)
    assert cheap["relative_gflops_per_step"] < 1

    # Files: plots, grids, the images of every row (same noise: rows differ only through the budget).
    for key in ("gflops_plot", "latency_plot", "grid", "grid_guidance", "images"):
        assert os.path.isfile(out / saved["files"][key])
    for key in ("gflops_plot", "latency_plot", "grid", "grid_guidance"):
        with Image.open(out / saved["files"][key]) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with np.load(out / "images.npz") as f:
        budget_rows, guidance_rows = f["budget_rows"], f["guidance_rows"]
        np.testing.assert_allclose(f["budgets"], [1.0, 0.75, 0.5, 0.25])
    assert budget_rows.shape == (4, 2, 8, 8, 3) and budget_rows.dtype == np.uint8
    assert guidance_rows.shape == (4, 3, 2, 8, 8, 3)
    assert not np.array_equal(budget_rows[0], budget_rows[3])
    assert not np.array_equal(guidance_rows[3, 0], guidance_rows[3, 1])           # cfg vs cheap CFG at 1/4

    # The full-budget row is exactly what generate.py's core makes for these seeds and this label.
    ck = load_for_sampling(elit_ckpt)
    gen_cfg = parse_config(GenerateConfig, ["--num-steps", "3"])
    direct = generate_images(ck.model, [0, 1], gen_cfg, "cpu", ck.dataset_meta, labels=torch.tensor(3))
    np.testing.assert_array_equal(direct, budget_rows[0])
    assert results["budgets"] == rows


def test_budget_subset_and_deduplication(elit_ckpt, tmp_path):
    results = infer("--ckpt", elit_ckpt, "--budgets", "0.5", "8", "0.25", "--output-dir", str(tmp_path), *FAST)
    assert [r["budget"] for r in results["budgets"]] == [0.5, 0.25]          # 8 latent tokens = 2 of 4 per window
    assert results["reference"]["forward_gflops"] > results["budgets"][0]["gflops_per_forward"]
    assert len(results["guidance"]) == 6


@pytest.mark.parametrize("argv, message", [
    (["--model", "ELIT-SiT-B/2"], "does not match the checkpoint's model ELIT-SiT-S/2"),
    (["--resolution", "16"], "does not match the checkpoint's 8 px"),
    (["--budgets", "0.1"], "valid fractions are 1/4, 2/4, 3/4, 4/4"),
    (["--inference-budget", "0.5"], "inference_budget is swept by this script"),
    (["--class-label", "10"], "class_label must be in [0, 9]"),
])
def test_checks(elit_ckpt, tmp_path, argv, message):
    with pytest.raises(UserError) as e:
        infer("--ckpt", elit_ckpt, "--output-dir", str(tmp_path), *FAST, *argv)
    assert message in str(e.value)
    assert not os.path.exists(tmp_path / "results.json")


def test_random_init_measures_cost_only(tmp_path):
    # ELIT-SiT-S/2 at 128 px: 16x16 SD-VAE latents, 8x8 tokens -> 16 windows of 2 x 2 = 4 latents.
    out = tmp_path / "cost"
    results = infer("--model", "ELIT-SiT-S/2", "--resolution", "128", "--budgets", "0.25", "--output-dir",
                    str(out), *FAST, "--num-steps", "1", "--num-images", "1")
    assert results["checkpoint"] is None and results["image_resolution"] == 128 and results["windows"] == 16
    assert [r["latents_per_window"] for r in results["budgets"]] == [1]
    assert 0 < results["budgets"][0]["relative_gflops"] < 1
    assert sorted(results["files"]) == ["gflops_plot", "latency_plot"]
    assert sorted(os.listdir(out)) == ["budget_vs_gflops.png", "budget_vs_latency.png", "results.json"]


def test_command_line(elit_ckpt, tmp_path):
    ok = subprocess.run([sys.executable, "elit_multibudget_inference.py", "--ckpt", elit_ckpt, "--budgets", "1", "0.5",
                         "--output-dir", str(tmp_path), *FAST], cwd=ROOT, env=script_env(), capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == str(tmp_path / "results.json")
    bad = subprocess.run([sys.executable, "elit_multibudget_inference.py", "--model", "SiT-XL/2", "--output-dir",
                          str(tmp_path / "x")], cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs an ELIT-SiT model" in lines[0]
