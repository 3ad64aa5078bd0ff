"""The configuration folders: every training YAML has a generation YAML of the same stem and an evaluation script
named like the reference's (`eval_<stem>.sh`), each script runs eval.sh with its generation YAML and the training
run's last checkpoint, and the ImageNet generation YAMLs follow the headline protocol (no guidance, 50 steps)."""

import glob
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, script_env, write_checkpoint
from sampling.options import GenerateConfig
from utils.cli import parse_config

CONFIGS = os.path.join(ROOT, "experiments_updated")
TRAIN = sorted(glob.glob(os.path.join(CONFIGS, "train", "*.yaml")))
GENERATION = sorted(glob.glob(os.path.join(CONFIGS, "generation", "*.yaml")))
SCRIPTS = sorted(glob.glob(os.path.join(CONFIGS, "evaluation", "*.sh")))
stem = lambda path: os.path.splitext(os.path.basename(path))[0]

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def test_the_seed_readme_names_exist():
    assert os.path.isfile(os.path.join(CONFIGS, "generation", "elit_sit_b_256.yaml"))
    assert os.path.isfile(os.path.join(CONFIGS, "evaluation", "eval_elit_sit_b_256.sh"))
    assert len(TRAIN) >= 19


@pytest.mark.parametrize("train", TRAIN, ids=stem)
def test_every_training_config_has_a_generation_config_and_an_eval_script(train):
    cfg = yaml.safe_load(open(train))
    gen = os.path.join(CONFIGS, "generation", f"{stem(train)}.yaml")
    script = os.path.join(CONFIGS, "evaluation", f"eval_{stem(train)}.sh")
    assert os.path.isfile(gen) and os.path.isfile(script)
    text = open(script).read()
    # The default checkpoint is where that training run writes its last one (output folder default: exps).
    ckpt = f"{cfg.get('output_dir', 'exps')}/{cfg['exp_name']}/checkpoints/{cfg['max_train_steps']:07d}.pt"
    assert f'CKPT="${{CKPT:-{ckpt}}}"' in text
    assert f"generation/{stem(train)}.yaml" in text and 'bash "$HERE/eval.sh"' in text
    if cfg.get("resolution") in (256, 512):                             # ImageNet: the headline protocol
        g = parse_config(GenerateConfig, ["--config", gen])
        assert (g.cfg_scale, g.num_steps, g.mode, g.heun, g.num_samples, g.weights, g.seed) == \
            (1.0, 50, "ode", False, 50_000, "ema", 0)
        assert g.inference_budget is None and g.sample_dir == "results"
        if cfg["model"].startswith("DFM"):
            assert g.dfm_steps_per_stage == [40, 10] and g.dfm_stage_thresholds == [0.1]
        assert f"VIRTUAL_imagenet{cfg['resolution']}" in text


@pytest.mark.parametrize("gen", GENERATION, ids=stem)
def test_every_generation_config_parses(gen):
    cfg = parse_config(GenerateConfig, ["--config", gen])
    assert cfg.num_samples > 0 and cfg.num_steps > 0


@pytest.mark.parametrize("script", SCRIPTS, ids=stem)
def test_every_eval_script_is_valid_bash_and_names_existing_configs(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    for name in re.findall(r"generation/([A-Za-z0-9_]+\.yaml)", open(script).read()):
        assert os.path.isfile(os.path.join(CONFIGS, "generation", name)), name
    if stem(script) != "eval":
        assert "eval.sh" in open(script).read()


class MeanColour(torch.nn.Module):
    """A cheap feature network (per-channel means and spreads) standing in for Inception."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) / 255                 # (B, 6)


def test_multibudget_eval_script_end_to_end_on_cpu(tmp_path):
    """eval_elit_sit_b_256_multibudget.sh as a user runs it (CKPT and the size-shrinking settings given): one
    generation + evaluation per budget, each with the generation YAML's settings and its own metrics JSON with an
    FDD entry (skipped here: no DINOv2 weights), and a wrong DINOv2 file stops it before any sampling."""
    ckpt = write_checkpoint(str(tmp_path / "elit.pt"), "ELIT-SiT")
    net = tmp_path / "colour.pt"
    torch.jit.script(MeanColour()).save(str(net))
    np.savez(tmp_path / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    env = dict(script_env(), TORCH_HOME=str(tmp_path / "torch_home"), HF_HOME=str(tmp_path / "hf_home"),
               REF=str(tmp_path / "ref.npz"), BUDGETS="1.0 0.5")
    env.pop("ELIT_DINOV2_WEIGHTS", None)
    script = os.path.join(CONFIGS, "evaluation", "eval_elit_sit_b_256_multibudget.sh")
    args = [f"CKPT={ckpt}", "NUM_SAMPLES=6", "NPROC=1", f"EVAL_ARGS=--feature-network {net} --device cpu",
            f"GEN_ARGS=--sample-dir {tmp_path / 'samples'} --num-steps 2 --per-proc-batch-size 3"]
    out = subprocess.run(["bash", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("FDD skipped") == 4                         # --check before sampling, then the result
    assert out.stdout.count("FDD (DINOv2)") == 2
    written = sorted(glob.glob(str(tmp_path / "samples" / "*_vs_ref_colour.json")))
    assert len(written) == 2, os.listdir(tmp_path / "samples")
    budgets = []
    for path in written:
        metrics = json.load(open(path))
        assert metrics["fdd"] is None and np.isfinite(metrics["fid"]) and metrics["num_samples"] == 6
        budgets.append(re.search(r"-b([0-9.]+)-", os.path.basename(path)).group(1))
    assert sorted(budgets) == ["0.5", "1"]
    # A DINOv2 file that is not one: one line, before generate.py runs.
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    out = subprocess.run(["bash", script, *args, f"DINOV2={bad}", "BUDGET=0.5"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 2 and "cannot read DINOv2 weights" in out.stderr and "torchrun" not in out.stderr
