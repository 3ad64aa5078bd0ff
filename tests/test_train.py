"""train.py / training.py: demo run, exact resume, world-size independence, accumulation, fused clipping,
NaN stop, bad input, configs."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, later_flags_win, write_tiny_pixels
from training.options import TrainConfig, model_overrides
from utils.cli import parse_config
from utils.errors import UserError
from models import build_model

TINY = dict(hidden_size=32, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    """A 64-image 8x8 RGB demo dataset."""
    dest = str(tmp_path_factory.mktemp("data") / "px8")
    write_tiny_pixels(dest, 64, 8)
    return dest


def tiny_cfg(data, out, *extra, model="ELIT-SiT-S/2", steps=4):
    args = ["--model", model, "--data-dir", data, "--output-dir", str(out), "--exp-name", "run",
            "--global-batch-size", "8", "--max-train-steps", str(steps), "--log-every", "1",
            "--checkpointing-steps", "2", "--sample-every", "0", "--sample-num-steps", "2", "--report-to", "none",
            "--num-workers", "0", "--no-progress", "--learning-rate", "1e-3"]
    if model.startswith("ELIT"):
        args += ["--elit-group-size", "2", "--elit-head-depth", "1", "--elit-tail-depth", "1",
                 "--elit-min-mask-prob", "0", "--elit-max-mask-prob", "0.75"]
    return parse_config(TrainConfig, later_flags_win(args + list(extra)))


def fit(cfg):
    from training import Trainer
    trainer = Trainer(cfg, model_kwargs=TINY)
    trainer.fit()
    return trainer


def final_state(out, step):
    return torch.load(os.path.join(out, "run", "checkpoints", f"{step:07d}.pt"), weights_only=True)


def assert_same_state(a, b, exact=True, atol=0.0):
    for key in ("model", "ema"):
        for name in a[key]:
            if exact:
                assert torch.equal(a[key][name], b[key][name]), (key, name)
            else:
                torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=atol, msg=f"{key} {name}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            if exact:
                assert torch.equal(sa[i][k], sb[i][k]), (i, k)


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["ELIT-SiT-S/2", "DFM-SiT-S/4"])
def test_resume_is_exact(pixels, tmp_path, model):
    """2N steps straight == N steps, stop, --resume-step -1, N more (model, EMA, optimizer state)."""
    fit(tiny_cfg(pixels, tmp_path / "a", model=model, steps=4))
    fit(tiny_cfg(pixels, tmp_path / "b", model=model, steps=2))
    fit(tiny_cfg(pixels, tmp_path / "b", "--resume-step", "-1", model=model, steps=4))
    a, b = final_state(tmp_path / "a", 4), final_state(tmp_path / "b", 4)
    assert a["step"] == b["step"] == 4 and a["data_position"] == b["data_position"]
    assert_same_state(a, b)
    c = final_state(tmp_path / "a", 2)                   # and the run did move
    assert not torch.equal(c["model"]["blocks.0.mlp.fc1.weight"], a["model"]["blocks.0.mlp.fc1.weight"])


def test_fresh_run_refuses_to_overwrite(pixels, tmp_path):
    fit(tiny_cfg(pixels, tmp_path, steps=2))
    with pytest.raises(UserError, match="resume-step -1"):
        fit(tiny_cfg(pixels, tmp_path, steps=2))


def test_gradient_accumulation_matches_one_big_batch(pixels, tmp_path):
    fit(tiny_cfg(pixels, tmp_path / "a", steps=2))
    fit(tiny_cfg(pixels, tmp_path / "b", "--gradient-accumulation-steps", "2", steps=2))
    assert_same_state(final_state(tmp_path / "a", 2), final_state(tmp_path / "b", 2), exact=False, atol=2e-6)


def test_fused_clipping_equals_torch_clip_grad_norm(pixels, tmp_path, monkeypatch):
    """The clip folded into the fused AdamW kernel equals clip_grad_norm_ + a plain foreach AdamW."""
    from training import Trainer
    runs = []
    # A large Adam epsilon makes the update proportional to the gradient, so the clip coefficient shows.
    for fused, clip in ((True, "0.05"), (False, "0.05"), (True, "0")):
        cfg = tiny_cfg(pixels, tmp_path / f"{fused}{clip}", "--max-grad-norm", clip, "--adam-epsilon", "0.1", steps=3)
        trainer = Trainer(cfg, model_kwargs=TINY)
        if not fused:
            trainer.fused = False
            trainer.optimizer = torch.optim.AdamW(trainer.params, lr=cfg.learning_rate, eps=0.1, foreach=True)
            trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
        assert trainer.fused == fused
        trainer.fit()
        runs.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(runs[0][k], runs[2][k], rtol=1e-3, atol=1e-4) for k in runs[0])   # clip mattered


def test_nan_loss_stops_naming_the_step(pixels, tmp_path):
    from training import Trainer
    cfg = tiny_cfg(pixels, tmp_path, "--checkpointing-steps", "1", steps=6)
    trainer = Trainer(cfg, model_kwargs=TINY)
    original = trainer.loss_fn

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if trainer.step == 2:                               # the third step
            out.loss = out.loss * float("nan")
        return out
    poisoned.draw = original.draw
    trainer.loss_fn = poisoned
    with pytest.raises(UserError, match="NaN/inf at step 3"):
        trainer.fit()
    saved = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tmp_path, "run", "checkpoints", "*.pt")))
    assert saved == ["0000001.pt", "0000002.pt"]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())    # the bad update was skipped


def test_budget_and_draws_do_not_depend_on_world_size(pixels, tmp_path):
    """The per-step budget and this rank's draws are slices of one global draw."""
    from training import Trainer
    trainer = Trainer(tiny_cfg(pixels, tmp_path, steps=1), model_kwargs=TINY)
    (full, _), = trainer.draws((3, 8, 8))
    trainer.world, trainer.micro = 2, trainer.micro // 2
    for rank in range(2):
        trainer.rank = rank
        (half, _), = trainer.draws((3, 8, 8))
        lo = rank * trainer.micro
        torch.testing.assert_close(half["noise"], full["noise"][lo:lo + trainer.micro], rtol=0, atol=0)
    budgets = {trainer.step_condition()["budget"] for trainer.step in range(40)}
    assert budgets == {0.25, 0.5, 0.75, 1.0}


# ---------------------------------------------------------------------------------------------------------
# Through the command line.

def run(args, env=None, timeout=600):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_two_processes_match_one(pixels, tmp_path):
    common = ["--data-dir", pixels, "--global-batch-size", "8", "--max-train-steps", "3", "--log-every", "1",
              "--checkpointing-steps", "3", "--sample-every", "0", "--sample-num-steps", "2", "--report-to", "none",
              "--num-workers", "0", "--no-progress", "--model", "ELIT-SiT-S/2", "--elit-group-size", "2",
              "--elit-head-depth", "1", "--elit-tail-depth", "1", "--elit-min-mask-prob", "0",
              "--elit-max-mask-prob", "0.75", "--exp-name", "run", "--learning-rate", "1e-3"]
    env = {"TINY_MODEL": json.dumps(TINY), "OMP_NUM_THREADS": "1"}
    one = run(["tests/train_tiny.py", "--output-dir", str(tmp_path / "one")] + common, env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "tests/train_tiny.py", "--output-dir", str(tmp_path / "two")] + common, env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in open(tmp_path / "two" / "run" / "log.txt").read()
    assert_same_state(final_state(tmp_path / "one", 3), final_state(tmp_path / "two", 3), exact=False, atol=1e-5)


@pytest.mark.parametrize("config", ["demo.yaml", "demo_dfm.yaml"])
def test_demo_configs_run(tmp_path, config):
    """The README's main command, shortened: a checkpoint, sample grids (ELIT: full and low budget), a log."""
    data = str(tmp_path / "demo")
    made = run(["dataset_tools.py", "demo", "--dest", data, "--num-images", "64"])
    assert made.returncode == 0, made.stderr
    out = run(["train.py", "--config", f"experiments_updated/train/{config}", "--data-dir", data,
               "--output-dir", str(tmp_path / "results"), "--max-train-steps", "2", "--checkpointing-steps", "2",
               "--global-batch-size", "4", "--sample-num-steps", "2", "--no-progress"])
    assert out.returncode == 0, out.stderr[-3000:]
    exp = glob.glob(str(tmp_path / "results" / "*"))[0]
    assert os.path.isfile(os.path.join(exp, "checkpoints", "0000002.pt"))
    grids = sorted(os.path.basename(p) for p in glob.glob(os.path.join(exp, "samples", "*.png")))
    assert grids == (["0000002.png", "0000002_budget0.25.png"] if config == "demo.yaml" else ["0000002.png"])
    assert "step 2: loss" in open(os.path.join(exp, "log.txt")).read()
    assert os.path.isfile(os.path.join(exp, "config.yaml"))


@pytest.mark.parametrize("case", ["missing-data", "wrong-size", "corrupt-checkpoint", "unknown-model", "bad-budget"])
def test_bad_input_is_one_line(pixels, tmp_path, case):
    base = ["train.py", "--data-dir", pixels, "--output-dir", str(tmp_path), "--exp-name", "run",
            "--report-to", "none", "--no-progress", "--max-train-steps", "1", "--model", "SiT-S/2"]
    if case == "missing-data":
        base[2] = str(tmp_path / "nowhere")
    elif case == "wrong-size":
        base += ["--resolution", "16"]
    elif case == "corrupt-checkpoint":
        os.makedirs(tmp_path / "run" / "checkpoints")
        (tmp_path / "run" / "checkpoints" / "0000001.pt").write_bytes(b"not a checkpoint")
        base += ["--resume-step", "-1"]
    elif case == "unknown-model":
        base[-1] = "SiT-XXL/2"
    elif case == "bad-budget":
        base[-1] = "ELIT-SiT-S/2"
        base += ["--elit-min-mask-prob", "0.99"]
    out = run(base)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert {"missing-data": "nowhere", "wrong-size": "16x16", "corrupt-checkpoint": "0000001.pt",
            "unknown-model": "SiT-XXL/2", "bad-budget": "mask probabilit"}[case] in lines[0]


# ---------------------------------------------------------------------------------------------------------
# Configs.

TRAIN_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments_updated", "train", "*.yaml")))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_train_configs_parse_and_build(path):
    cfg = parse_config(TrainConfig, ["--config", path])
    if cfg.resolution:                                   # ImageNet latents
        info = dict(input_size=cfg.resolution // 8, in_channels=4, num_classes=1000)
    else:                                                # demo data: 32x32 RGB, 10 classes
        info = dict(input_size=32, in_channels=3, num_classes=10)
    with torch.device("meta"):
        model = build_model(cfg.model, **model_overrides(cfg, **info))
    if model.family == "ELIT-SiT":
        from loss import allowed_budgets
        assert allowed_budgets(model.budget_levels, cfg.elit_min_mask_prob, cfg.elit_max_mask_prob)


def test_train_configs_cover_the_matrix():
    names = {os.path.basename(p)[:-5] for p in TRAIN_CONFIGS}
    for size in ("b", "xl"):
        for res in (256, 512):
            for fam in ("sit", "elit_sit", "dfm_sit"):
                assert f"{fam}_{size}_{res}" in names
            assert f"elit_sit_{size}_{res}_multibudget" in names
    assert {"elit_sit_xl_256_reference", "demo", "demo_dfm"} <= names


@pytest.mark.parametrize("text,key", [("learning_rat: 1.0\n", "learning_rat"), ("max_train_steps: many\n", "max_train_steps"),
                                      ("compile: 3\n", "compile")])
def test_bad_yaml_is_rejected_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=key):
        parse_config(TrainConfig, ["--config", str(path)])


def test_cli_overrides_yaml_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2.0e-4\nglobal_batch_size: 64\nelit_group_size: 2\n")
    cfg = parse_config(TrainConfig, ["--config", str(path), "--global_batch_size", "32", "--no-compile",
                                     "--elit-write-dropped-latents"])
    assert cfg.learning_rate == 2e-4 and cfg.global_batch_size == 32 and cfg.elit_group_size == 2
    assert cfg.compile is False and cfg.elit_write_dropped_latents is True
    assert cfg.max_train_steps == TrainConfig().max_train_steps
    assert parse_config(TrainConfig, ["--compile"]).compile is True
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--learning-rat", "1"])         # no abbreviations: typos fail
