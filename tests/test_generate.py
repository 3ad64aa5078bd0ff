"""generate.py: per-image seeds (1 vs 2 processes byte-identical), resume, npz layout, folder naming, errors,
DFM / SDE / latent (tiny VAE) checkpoints, and the generation YAMLs."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import later_flags_win, ROOT, pixel_meta, script_env, tiny_model, write_checkpoint
from sampling.options import GenerateConfig
from utils.cli import parse_config
from utils.errors import UserError
import generate
from conftest import generate_images, plan_dict, sample_latents
from dataio.codec import Codec
from sampling.load import load_for_sampling
from sampling.run import SETTINGS_FILE, draw_inputs, run_generation
from sampling.shards import SHARD_DIR

GEN_DIR = os.path.join(ROOT, "experiments_updated", "generation")
DEMO = os.path.join(GEN_DIR, "demo.yaml")
SMALL = ["--num-samples", "10", "--per-proc-batch-size", "4", "--num-steps", "3"]


# ---------------------------------------------------------------------------------------------------------
# Fixtures: tiny checkpoints as train.py writes them.

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return dict(elit=write_checkpoint(str(d / "elit.pt"), "ELIT-SiT"),
                sit=write_checkpoint(str(d / "sit.pt"), "SiT"),
                dfm=write_checkpoint(str(d / "dfm.pt"), "DFM-SiT"))


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(*argv, max_batches=None):
    return run_generation(parse_config(GenerateConfig, later_flags_win(argv)), max_batches=max_batches)


def load_npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------------------------------------------------
# Layout, per-image seeds.

def test_npz_layout_pngs_and_settings(ckpts, tmp_path):
    out = gen("--config", DEMO, "--ckpt", ckpts["elit"], *SMALL, "--sample-dir", str(tmp_path))
    folder = out[:-len(".npz")]
    assert out.endswith(".npz") and os.path.isdir(folder)
    arrays = load_npz(out)
    assert list(arrays) == ["arr_0"]
    images = arrays["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (10, 8, 8, 3)
    assert images.std() > 0
    from PIL import Image
    pngs = sorted(glob.glob(os.path.join(folder, "*.png")))
    assert [os.path.basename(p) for p in pngs] == [f"{i:06d}.png" for i in range(10)]
    for i, p in enumerate(pngs):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), images[i])
    assert not os.path.exists(os.path.join(folder, SHARD_DIR))          # merged into the npz
    with open(os.path.join(folder, SETTINGS_FILE)) as f:
        saved = json.load(f)
    assert saved["settings"]["budget"] == 1.0 and saved["settings"]["cfg_scale"] == 2.0
    assert saved["settings"]["num_samples"] == 10 and saved["config"]["ckpt"] == ckpts["elit"]

    # Without PNGs (per-batch shards only) the npz is the same, byte for byte.
    bare = gen("--config", DEMO, "--ckpt", ckpts["elit"], *SMALL, "--sample-dir", str(tmp_path / "bare"),
               "--no-write-png")
    assert os.path.basename(bare) == os.path.basename(out) and open(bare, "rb").read() == open(out, "rb").read()
    assert not glob.glob(os.path.join(bare[:-4], "*.png"))


def test_pixel_rounding_and_grey_replication():
    x = torch.tensor([-1.0, -0.9961, 0.0, 0.00393, 1.0, 1.5]).view(1, 1, 1, 6)        # (B, C=1, H, W)
    img = Codec.from_record(pixel_meta(channels=1)).decode(x)
    assert img.shape == (1, 1, 6, 3)
    # (x + 1) * 127.5 = 0, 0.497, 127.5, 128.0, 255, 318.75 -> rounded (half to even), clamped
    assert img[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]
    assert torch.equal(img[..., 0], img[..., 2])


def test_each_image_has_its_own_seed(ckpts):
    model = load_for_sampling(ckpts["sit"]).model
    noise, labels, sde = draw_inputs(model, range(6), seed=5, num_classes=10, sde_steps=3)
    noise1, labels1, sde1 = draw_inputs(model, [4], seed=5, num_classes=10, sde_steps=3)
    assert torch.equal(noise[0][4], noise1[0][0]) and labels[4] == labels1[0] and torch.equal(sde[4], sde1[0])
    flat = noise[0].flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(6)).min() > 0                # every image its own noise
    noise2, labels2, _ = draw_inputs(model, [4], seed=5, num_classes=10)      # no SDE noise: same noise, label
    assert torch.equal(noise2[0][0], noise1[0][0]) and labels2[0] == labels1[0]
    other, _, _ = draw_inputs(model, [4], seed=6, num_classes=10)
    assert not torch.equal(other[0][0], noise1[0][0])
    _, few, _ = draw_inputs(model, range(200), seed=0, num_classes=3)
    assert set(few.tolist()) == {0, 1, 2}


def test_image_does_not_depend_on_its_batch(ckpts, tmp_path):
    out = gen("--config", DEMO, "--ckpt", ckpts["elit"], *SMALL, "--sample-dir", str(tmp_path),
              "--inference-budget", "0.5")
    images = load_npz(out)["arr_0"]
    ck = load_for_sampling(ckpts["elit"])
    cfg = parse_config(GenerateConfig, ["--config", DEMO, *SMALL, "--inference-budget", "0.5"])
    alone = generate_images(ck.model, [7, 2], cfg, "cpu", ck.dataset_meta)     # other batch, other order
    assert np.abs(alone.astype(int) - images[[7, 2]].astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------------------
# Distributed and resume.

def test_one_and_two_processes_give_identical_npz(ckpts, tmp_path):
    args = ["generate.py", "--config", DEMO, "--ckpt", ckpts["elit"], *SMALL, "--cfg-scale", "3",
            "--unconditional-inference-budget", "0.25"]
    one = subprocess.run([sys.executable, *args, "--sample-dir", str(tmp_path / "one")], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args, "--sample-dir", str(tmp_path / "two")], cwd=ROOT, env=script_env(),
                         capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert "2 process(es)" in two.stdout
    npz_one, npz_two = one.stdout.strip().splitlines()[-1], two.stdout.strip().splitlines()[-1]
    assert npz_one.endswith(".npz") and npz_two.endswith(".npz")
    assert os.path.basename(npz_one) == os.path.basename(npz_two)        # the name does not encode processes
    with open(npz_one, "rb") as a, open(npz_two, "rb") as b:
        assert a.read() == b.read()
    assert len(glob.glob(os.path.join(npz_two[:-4], "*.png"))) == 10


def test_interrupted_run_resumes_to_the_same_npz(ckpts, tmp_path):
    args = ["--config", DEMO, "--ckpt", ckpts["dfm"], *SMALL, "--cfg-scale", "2"]
    reference = gen(*args, "--sample-dir", str(tmp_path / "ref"))
    ref_bytes = open(reference, "rb").read()

    # Interrupted after one batch: its PNGs and shard exist, no npz.
    assert gen(*args, "--sample-dir", str(tmp_path / "run"), max_batches=1) is None
    folder = glob.glob(str(tmp_path / "run" / "*"))[0]
    assert os.path.isfile(os.path.join(folder, SHARD_DIR, "000000.npy"))
    assert not os.path.exists(folder + ".npz")
    first = os.path.join(folder, "000000.png")
    stamp = os.stat(first).st_mtime_ns
    out = gen(*args, "--sample-dir", str(tmp_path / "run"))
    assert open(out, "rb").read() == ref_bytes
    assert os.stat(first).st_mtime_ns == stamp                               # finished work is not rewritten

    # A finished npz is not rewritten.
    npz_stamp = os.stat(out).st_mtime_ns
    assert gen(*args, "--sample-dir", str(tmp_path / "run")) == out
    assert os.stat(out).st_mtime_ns == npz_stamp

    # Resuming from PNGs alone (npz and some PNGs lost): only the incomplete batch is sampled again.
    os.unlink(out)
    os.unlink(os.path.join(folder, "000005.png"))
    kept = os.stat(os.path.join(folder, "000004.png")).st_mtime_ns
    assert gen(*args, "--sample-dir", str(tmp_path / "run")) == out
    assert open(out, "rb").read() == ref_bytes
    assert os.stat(first).st_mtime_ns == stamp
    assert os.stat(os.path.join(folder, "000004.png")).st_mtime_ns != kept   # batch 1 was regenerated


def test_incomplete_npz_and_other_settings_are_refused(ckpts, tmp_path):
    args = ["--config", DEMO, "--ckpt", ckpts["sit"], *SMALL, "--sample-dir", str(tmp_path)]
    assert gen(*args, max_batches=1) is None
    folder = glob.glob(str(tmp_path / "*"))[0]
    path = os.path.join(folder, SETTINGS_FILE)
    saved = json.load(open(path))
    saved["settings"]["path_type"] = "cosine"
    json.dump(saved, open(path, "w"))
    with pytest.raises(UserError, match="other settings.*path_type"):
        gen(*args)
    os.unlink(path)
    np.savez(folder + ".npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="not a complete sample batch"):
        gen(*args)
    assert load_npz(folder + ".npz")["arr_0"].shape == (3, 8, 8, 3)            # left as it was


# ---------------------------------------------------------------------------------------------------------
# Names and knobs.

def test_folder_names_encode_every_knob(ckpts, tmp_path):
    variants = [[], ["--inference-budget", "0.5"], ["--inference-budget", "0.25"], ["--cfg-scale", "2"],
                ["--cfg-scale", "3"], ["--cfg-scale", "2", "--guidance-high", "0.7"],
                ["--cfg-scale", "2", "--unconditional-inference-budget", "0.25"],
                ["--cfg-scale", "2", "--unconditional-inference-budget", "0.5"],
                ["--cfg-scale", "2", "--unconditional-inference-budget", "0.25", "--autoguidance"],
                ["--budget-schedule", "0.5:0.25,0:1"], ["--budget-schedule", "0.7:0.25,0:1"],
                ["--mode", "sde"], ["--heun"], ["--num-steps", "4"], ["--seed", "1"], ["--num-samples", "9"],
                ["--per-proc-batch-size", "5"], ["--weights", "model"], ["--num-classes-sampled", "3"]]
    names = []
    for extra in variants:
        sub = tmp_path / str(len(names))
        gen("--ckpt", ckpts["elit"], *SMALL, "--cfg-scale", "1", *extra, "--sample-dir", str(sub), max_batches=0)
        (name,) = os.listdir(sub)
        names.append(name)
    assert len(set(names)) == len(names), names
    assert "b0.5" in names[1] and "ucb0.25" in names[6] and "ag0.25" in names[8] and "gi0to0.7" in names[5]
    assert names[0].startswith("elit-step12-") and "-ema-ode3-cfg1-b1-fp32-seed0-n10-batch4" in names[0]

    # Different checkpoints (same file name, step and architecture) get different folders.
    other = write_checkpoint(str(tmp_path / "x" / "elit.pt"), "ELIT-SiT", seed=1)
    gen("--ckpt", other, *SMALL, "--sample-dir", str(tmp_path / "other"), max_batches=0)
    assert os.listdir(tmp_path / "other")[0] != names[0]


def test_equivalent_settings_share_a_folder(ckpts, tmp_path):
    elit = load_for_sampling(ckpts["elit"]).model                          # 4 windows of 4 latents
    base = parse_config(GenerateConfig, [])
    plan = lambda **kw: plan_dict(elit, dataclasses.replace(base, **kw))   # noqa: E731
    assert plan(inference_budget=8.0) == plan(inference_budget=0.5)         # 8 latent tokens = 2 per window
    assert plan(inference_budget=None) == plan(inference_budget=1.0)
    warnings = []
    unguided = plan_dict(elit, dataclasses.replace(base, unconditional_inference_budget=0.25),
                                warn=warnings.append)
    assert unguided == plan() and warnings                                  # no guidance: nothing to make cheap
    with pytest.raises(UserError, match="valid fractions are 1/4, 2/4, 3/4, 4/4"):
        plan(inference_budget=0.1)
    with pytest.raises(UserError, match="autoguidance needs"):
        plan(cfg_scale=2.0, autoguidance=True)
    with pytest.raises(UserError, match="exclude each other"):
        plan(inference_budget=0.5, budget_schedule="0.5:0.25,0:1")
    sit = load_for_sampling(ckpts["sit"]).model
    for key, value in [("inference_budget", 1.0), ("unconditional_inference_budget", 0.25),
                       ("budget_schedule", "0:1")]:
        with pytest.raises(UserError, match=f"{key} applies to ELIT-SiT models"):
            plan_dict(sit, dataclasses.replace(base, cfg_scale=2.0, **{key: value}))
    with pytest.raises(UserError, match="dfm_steps_per_stage applies to DFM-SiT"):
        plan_dict(sit, dataclasses.replace(base, dfm_steps_per_stage=[4, 1]))


def test_guidance_knobs_change_the_images(ckpts):
    ck = load_for_sampling(ckpts["elit"])
    base = parse_config(GenerateConfig, ["--num-steps", "3"])
    run = lambda **kw: sample_latents(ck.model, range(3), dataclasses.replace(base, **kw), "cpu")  # noqa: E731
    results = [run(), run(inference_budget=0.25), run(cfg_scale=3.0),
               run(cfg_scale=3.0, unconditional_inference_budget=0.25),
               run(cfg_scale=3.0, unconditional_inference_budget=0.25, autoguidance=True),
               run(budget_schedule="0.5:0.25,0:1")]
    for i in range(len(results)):
        for j in range(i):
            assert not torch.allclose(results[i], results[j]), (i, j)
    # cheap CFG at the full budget is standard CFG (two forwards instead of one batched forward)
    torch.testing.assert_close(run(cfg_scale=3.0, unconditional_inference_budget=1.0), results[2])


# ---------------------------------------------------------------------------------------------------------
# Families, decoding, errors.

def test_dfm_and_sde_checkpoints_generate(ckpts, tmp_path):
    dfm = load_npz(gen("--config", DEMO, "--ckpt", ckpts["dfm"], *SMALL, "--sample-dir", str(tmp_path),
                       "--dfm-steps-per-stage", "2", "1", "--dfm-stage-thresholds", "0.3"))["arr_0"]
    sde = load_npz(gen("--config", DEMO, "--ckpt", ckpts["sit"], *SMALL, "--mode", "sde",
                       "--sample-dir", str(tmp_path)))["arr_0"]
    for images in (dfm, sde):
        assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8 and len(np.unique(images)) > 10
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.npz")))
    assert any("dfm2+1-thr0.3" in n for n in names) and any("-sde3-" in n for n in names)
    with pytest.raises(UserError, match="DFM-SiT samples with its own Euler schedule"):
        gen("--ckpt", ckpts["dfm"], *SMALL, "--mode", "sde", "--sample-dir", str(tmp_path))


def tiny_vae(path: str):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=8, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    vae.save_pretrained(path)
    return vae


def test_latent_checkpoints_decode_with_their_vae(tmp_path, monkeypatch):
    vae_dir = str(tmp_path / "vae")
    vae = tiny_vae(vae_dir).eval()
    meta = dict(kind="latents", latent_scale=0.5, latent_shift=0.1, vae=vae_dir, image_resolution=[8, 8],
                latent_shape=[4, 8, 8], num_classes=10, count=100, class_names=[f"c{i}" for i in range(10)],
                precision="fp32")
    ckpt = write_checkpoint(str(tmp_path / "latent.pt"), "SiT", dataset=meta)
    args = ["--ckpt", ckpt, *SMALL, "--sample-dir", str(tmp_path / "s")]
    images = load_npz(gen(*args))["arr_0"]
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8

    # The same as decoding the sampled latents by hand with the dataset's normalisation.
    ck = load_for_sampling(ckpt)
    x = sample_latents(ck.model, range(4), parse_config(GenerateConfig, SMALL), "cpu")
    with torch.no_grad():
        img = vae.decode(x / 0.5 + 0.1).sample
    manual = img.mul(127.5).add(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(manual.astype(int) - images[:4].astype(int)).max() <= 1

    # A converted checkpoint (no dataset metadata) decodes with --vae and that VAE's own scaling factor.
    conv = write_checkpoint(str(tmp_path / "converted.pt"), "SiT", dataset=None)
    out = gen("--ckpt", conv, *SMALL, "--sample-dir", str(tmp_path / "s"), "--vae", vae_dir)
    assert load_npz(out)["arr_0"].shape == (10, 8, 8, 3) and "-vae-vae" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="neither a local folder nor in the local Hugging Face cache"):
        gen("--ckpt", conv, *SMALL, "--sample-dir", str(tmp_path / "s"), "--vae", "nobody/no-such-vae-xyz")


def test_invalid_budget_is_one_line_exit_2(ckpts, tmp_path):
    r = subprocess.run([sys.executable, "generate.py", "--ckpt", ckpts["elit"], "--inference-budget", "0.1",
                        "--sample-dir", str(tmp_path)], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: inference_budget") and "1/4, 2/4, 3/4, 4/4" in lines[0]
    assert not os.listdir(tmp_path)                                         # nothing written


@pytest.mark.parametrize("argv, message", [
    (["--inference-budget", "0.5"], "inference_budget applies to ELIT-SiT models"),
    (["--ckpt", "MISSING"], "checkpoint not found"),
    (["--ckpt", "CORRUPT"], "cannot read checkpoint"),
    (["--num-step", "3"], "unrecognized arguments"),
    (["--mode", "sde", "--heun"], "heun applies to the ODE sampler only"),
    (["--num-classes-sampled", "11"], "num_classes_sampled must be in"),
])
def test_errors_are_one_line(ckpts, tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    argv = [{"MISSING": str(tmp_path / "missing.pt"), "CORRUPT": str(corrupt)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        generate.main(later_flags_win(["--ckpt", ckpts["sit"], "--sample-dir", str(tmp_path / "s"), *argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


# ---------------------------------------------------------------------------------------------------------
# The generation YAMLs.

@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GEN_DIR, "*.yaml"))), ids=os.path.basename)
def test_generation_yamls_parse_and_resolve(path):
    cfg = parse_config(GenerateConfig, ["--config", path])
    name = os.path.basename(path)
    family = {"sit": "SiT", "elit": "ELIT-SiT", "dfm": "DFM-SiT"}.get(name.split("_")[0])
    if family is None:                                       # demo.yaml: every family
        assert name in ("demo.yaml", "demo_dfm.yaml") and cfg.num_samples <= 64 and cfg.num_steps <= 10
        models = [tiny_model(f) for f in ("SiT", "ELIT-SiT", "DFM-SiT")]
    else:
        assert cfg.num_samples == 50_000                     # the ADM protocol
        # g = 4 on a 4x4 token grid: 16 latents per window, like ELIT-SiT-XL/2 at 256 px
        models = [tiny_model(family, **({"elit_group_size": 4} if family == "ELIT-SiT" else {}))]
    for model in models:
        plan = plan_dict(model, cfg)
        assert plan["family"] == model.family
    if "cheap_cfg" in name or "autoguidance" in name:
        assert plan["unconditional_budget"] == 0.0625 and plan["cfg_scale"] > 1
        assert plan["autoguidance"] == ("autoguidance" in name)
