"""The public ELIT README's commands (`../shared/seed_commands.md`), each run as written with only flags that
shrink the run added, on the CPU; generate.py under a 2-process torchrun. A line that stops working fails here.

One module-scoped workspace holds what that README's user has: ImageNet-like class folders (208 classes, so
that `--class-label 207` exists), TARGET_PATH with `images/` (convert) and `vae-sd/` (encode, with a tiny local
AutoencoderKL that downsamples 8x like the SD-VAE: 256 px images -> 32x32x4 latents, the README's 256 px
setting), the config folder and the entry scripts (symlinks), and the `exps/` folder the training lines fill.
Training lines run train.py's `main` in this process with the registry's sizes shrunk (`TINY`: a line costs
seconds); the config line runs under `accelerate launch` at its real size (the ELIT-SiT-S/8 demo model).

Substitutions, besides the README's placeholders: the step of a checkpoint path is the shrunk run's last step
(0000002 for 0400000), and the README's `exps/elit-sit-b-2-256px` (a name its user chose) is the folder the
training YAML's own exp_name gives, `exps/elit_sit_b_256`. Flags added to shrink a run: SHRINK_* below,
`--budgets 1 0.25` for the multibudget line, `--no-compile` for the B/2 YAML (torch.compile on a CPU), and
`--vae LOCAL_DIR` for encode (offline, as the README's encode line alone is a clear error).
"""

import argparse
import contextlib
import glob
import io
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tools
import elit_multibudget_inference
import generate
import train
from conftest import FIXTURES, ROOT, script_env
from dataio.dataset import resolve_data_dir
from models import build_model
from models.checkpoint import load_checkpoint
from models.convert import infer_elit_depths, main as convert_main
from sampling.load import load_for_sampling
from training import grids, trainer
from utils.errors import UserError, run_main

TINY = dict(hidden_size=32, depth=6, num_heads=2)                 # every family; ELIT head/tail default 2 + 2
SHRINK_TRAIN = ["--max-train-steps", "2", "--global-batch-size", "4", "--sample-num-steps", "2", "--num-workers", "0"]
SHRINK_GEN = ["--num-samples", "4", "--per-proc-batch-size", "2", "--num-steps", "2"]
LAST = "0000002.pt"                                                 # the checkpoint of a 2-step run
SCRIPTS = ("train.py", "generate.py", "elit_multibudget_inference.py", "dataset_tools.py", "evaluate.py")
BIN = os.path.dirname(sys.executable)

# The README's lines, verbatim (its placeholders substituted by `argv`).
CONVERT = ("python dataset_tools.py convert --source=[YOUR_DOWNLOAD_PATH]/ILSVRC/Data/CLS-LOC/train "
           "--dest=[TARGET_PATH]/images --resolution=256x256 --transform=center-crop-dhariwal")
ENCODE = "python dataset_tools.py encode --source=[TARGET_PATH]/images --dest=[TARGET_PATH]/vae-sd"
TRAIN_CLI = "accelerate launch train.py --model [MODEL_NAME] --exp-name [EXP_NAME] --data-dir [DATA_DIR]"
TRAIN_YAML = "accelerate launch train.py --config [CONFIG_PATH] --data-dir [DATA_DIR]"
XL = "accelerate launch train.py --model ELIT-SiT-XL/2 --exp-name elit-sit-xl-2-256px --data-dir [DATA_DIR]"
TRAIN_B_YAML = "accelerate launch train.py --config experiments_updated/train/elit_sit_b_256.yaml --data-dir [DATA_DIR]"
ALL_BUDGETS = f"{XL} --elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 --elit_group_size 4"
ALL_BUDGETS_512 = ("accelerate launch train.py --model ELIT-SiT-XL/2 --exp-name elit-sit-xl-2-512px --data-dir "
                   "[DATA_DIR] --elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 --elit_group_size 8")
HALF_TO_QUARTER = f"{XL} --elit-min-mask-prob 0.5 --elit-max-mask-prob 0.75 --elit_group_size 4"
SINGLE_75 = f"{XL} --elit-max-mask-prob 0.75 --elit_group_size 4"
MULTI_75 = f"{XL} --elit-min-mask-prob 0.75 --elit_group_size 4 --elit-max-mask-prob 0.9375 --elit_group_size 4"
DFM = "accelerate launch train.py --model DFM-SiT-XL/2 --exp-name dfm-sit-xl-2-256px --data-dir [DATA_DIR]"
GEN_CLI = ("torchrun --nproc_per_node=8 generate.py --model ELIT-SiT-XL/2 "
           "--ckpt exps/elit-sit-xl-2-256px/checkpoints/0400000.pt")
GEN_YAML = ("torchrun --nproc_per_node=8 generate.py --config experiments_updated/generation/elit_sit_b_256.yaml "
            "--ckpt exps/elit-sit-b-2-256px/checkpoints/0400000.pt")
GEN_BUDGET = ("torchrun --nproc_per_node=8 generate.py --config experiments_updated/generation/elit_sit_b_256.yaml "
              "--ckpt path/to/ckpt.pt --inference-budget {}")
MULTIBUDGET = ("python elit_multibudget_inference.py --model ELIT-SiT-XL/2 --ckpt path/to/ckpt.pt --resolution 256 "
               "--class-label 207 --output-dir multibudget_results")
EVAL = "bash experiments_updated/evaluation/eval_elit_sit_b_256.sh"

PLACEHOLDERS = {"[YOUR_DOWNLOAD_PATH]": "download", "[TARGET_PATH]": "target", "[DATA_DIR]": "target",
                "[MODEL_NAME]": "SiT-XL/2", "[EXP_NAME]": "sit-xl-2-256px",
                "[CONFIG_PATH]": "experiments_updated/train/demo.yaml",
                "exps/elit-sit-b-2-256px/checkpoints/0400000.pt": f"exps/elit_sit_b_256/checkpoints/{LAST}",
                "0400000.pt": LAST}


def argv(line: str, ckpt: str = "") -> list:
    """A README line -> its words, placeholders substituted (`path/to/ckpt.pt` -> `ckpt`)."""
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    return shlex.split(line.replace("path/to/ckpt.pt", ckpt))


def script_args(words: list) -> list:
    """The arguments after the entry script of `accelerate launch X.py ...`, `torchrun ... X.py ...`, `python X.py`."""
    return words[next(i for i, w in enumerate(words) if w.endswith(".py")) + 1:]


def in_process(main, args) -> tuple[int, str]:
    """Run an entry script's `main(args)` as its `__main__` does (under run_main): (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            run_main(lambda: main(list(args)))
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def ok(result):
    code, err = result
    assert code == 0, err[-3000:]
    return err


def error_line(result) -> str:
    """The one 'error: ...' line of a refused command (exit status 2)."""
    code, err = result
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def run(words: list, env=None, timeout=300) -> subprocess.CompletedProcess:
    """A README line as a subprocess in the workspace (`accelerate`/`torchrun` from this interpreter's bin)."""
    if words[0] in ("accelerate", "torchrun"):
        words = [os.path.join(BIN, words[0]), *words[1:]]
    return subprocess.run(words, env=env or ENV, capture_output=True, text=True, timeout=timeout)


ENV = dict(script_env(), HF_HUB_OFFLINE="1")


def tiny_sd_vae(path: str):
    """A random-init AutoencoderKL with the SD-VAE's layout in miniature: 4 latent channels, 8x downsampling."""
    from diffusers import AutoencoderKL                                  # heavy optional package, only here
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, sample_size=256).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# The workspace: data as lines 1-2 leave it, and the two checkpoints the sampling lines read.

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                             # tiny models: fastest on one thread
    w = tmp_path_factory.mktemp("seed")
    for name in ("experiments_updated", *SCRIPTS):
        os.symlink(os.path.join(ROOT, name), w / name)
    rng = np.random.default_rng(0)
    for c in range(208):                                                 # ImageNet's layout, one image a class
        folder = w / "download" / "ILSVRC" / "Data" / "CLS-LOC" / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"n{c:08d}_1.JPEG")
    vae = tiny_sd_vae(str(w / "vae"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(w)
        mp.setenv("HF_HUB_OFFLINE", "1")
        real_build = trainer.build_model                                 # train.py's model, registry sizes shrunk
        mp.setattr(trainer, "build_model", lambda name, **kw: real_build(name, **{**kw, **TINY}))
        ok(in_process(dataset_tools.main, argv(CONVERT)[2:] + ["--max-images", "16", "--num-workers", "1"]))
        offline = error_line(in_process(dataset_tools.main, argv(ENCODE)[2:]))       # the hub VAE, offline
        assert "stabilityai/sd-vae-ft-ema" in offline and not os.path.exists(w / "target" / "vae-sd")
        ok(in_process(dataset_tools.main, argv(ENCODE)[2:] + ["--vae", vae, "--num-workers", "0"]))
        yield w
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(work):
    """Lines 5 and 6: the checkpoints lines 13-19 sample."""
    ok(in_process(train.main, script_args(argv(XL)) + SHRINK_TRAIN))
    ok(in_process(train.main, script_args(argv(TRAIN_B_YAML)) + SHRINK_TRAIN + ["--no-compile"]))
    return dict(xl=f"exps/elit-sit-xl-2-256px/checkpoints/{LAST}", b=f"exps/elit_sit_b_256/checkpoints/{LAST}")


# ---------------------------------------------------------------------------------------------------------
# Data and training.

def test_data_lines_write_images_and_latents(work):
    images = json.load(open(work / "target" / "images" / "dataset.json"))
    latents = json.load(open(work / "target" / "vae-sd" / "dataset.json"))
    assert images["kind"] == "images" and images["resolution"] == [256, 256] and images["num_classes"] == 208
    assert latents["kind"] == "latents" and latents["latent_shape"] == [4, 32, 32] and latents["count"] == 16
    assert latents["num_classes"] == 208                                 # every class folder, 16 of their images


def test_data_dir_names_the_dataset_or_the_folder_holding_it(work):
    assert resolve_data_dir("target") == os.path.join("target", "vae-sd")
    assert resolve_data_dir("target/vae-sd") == "target/vae-sd"
    os.makedirs("only-images")
    os.symlink(os.path.abspath("target/images"), "only-images/images")
    with pytest.raises(UserError, match="only images written by `convert`.*dataset_tools.py encode"):
        resolve_data_dir("only-images")
    os.makedirs("two")
    for name in ("a", "b"):
        os.symlink(os.path.abspath("target/vae-sd"), f"two/{name}")
    with pytest.raises(UserError, match=r"several datasets \(a, b\)"):
        resolve_data_dir("two")


def test_training_lines_write_under_exps(work, trained):
    # 5 and 6: `exps/EXP/checkpoints/NNNNNNN.pt`, the path the README's generate lines read.
    for exp, model in (("elit-sit-xl-2-256px", "ELIT-SiT-XL/2"), ("elit_sit_b_256", "ELIT-SiT-B/2")):
        ckpt = load_checkpoint(os.path.join("exps", exp, "checkpoints", LAST))
        assert ckpt["arch"]["name"] == model and ckpt["step"] == 2
        assert sorted(os.listdir(os.path.join("exps", exp, "samples"))) == ["0000002.png", "0000002_budget0.25.png"]
    # 3: TARGET_PATH (images/ + vae-sd/) as the data folder; the log names the latents it found.
    ok(in_process(train.main, script_args(argv(TRAIN_CLI)) + SHRINK_TRAIN))
    log = open("exps/sit-xl-2-256px/log.txt").read()
    assert os.path.join("target", "vae-sd") in log and os.path.isfile(f"exps/sit-xl-2-256px/checkpoints/{LAST}")


def test_config_line_under_accelerate_launch(work):
    # 4: a YAML (the CPU demo's, real model size) and the latents folder itself as the data folder.
    words = argv(TRAIN_YAML.replace("[DATA_DIR]", "target/vae-sd")) + SHRINK_TRAIN
    out = run(words)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(f"results/demo/checkpoints/{LAST}")              # demo.yaml's own output_dir


@pytest.mark.parametrize("line", [ALL_BUDGETS, HALF_TO_QUARTER, SINGLE_75, MULTI_75],
                         ids=["all-budgets", "half-to-quarter", "single-0.75", "multi-0.75"])
def test_lines_reusing_an_exp_name_stop_with_the_collision_message(work, trained, line):
    # After line 5, each of these README lines reuses its --exp-name: one line saying how to continue or rename,
    # nothing of the earlier run touched. (The message comes once the options are validated and the model built.)
    args = script_args(argv(line)) + SHRINK_TRAIN
    before = sorted(os.listdir("exps/elit-sit-xl-2-256px/checkpoints"))
    message = error_line(in_process(train.main, args))
    assert "exps/elit-sit-xl-2-256px already holds checkpoints of an earlier run (latest 0000002.pt)" in message
    assert "--resume-step -1 to continue it" in message and "--exp-name NEW_NAME" in message
    assert sorted(os.listdir("exps/elit-sit-xl-2-256px/checkpoints")) == before
    if line == ALL_BUDGETS:                                              # renamed as the message says: it runs
        renamed = [a.replace("elit-sit-xl-2-256px", "elit-sit-xl-2-256px-all") for a in args]
        ok(in_process(train.main, renamed))
        assert os.path.isfile(f"exps/elit-sit-xl-2-256px-all/checkpoints/{LAST}")
        shutil.rmtree("exps/elit-sit-xl-2-256px-all")


def test_continuing_a_run_with_resume_step(work, trained):
    ok(in_process(train.main, script_args(argv(XL)) + later(SHRINK_TRAIN, "--max-train-steps", "3")
                  + ["--resume-step", "-1"]))
    assert os.path.isfile("exps/elit-sit-xl-2-256px/checkpoints/0000003.pt")
    os.remove("exps/elit-sit-xl-2-256px/checkpoints/0000003.pt")           # the sampling lines read step 2


@pytest.mark.parametrize("line, exp", [(ALL_BUDGETS_512, "elit-sit-xl-2-512px"), (DFM, "dfm-sit-xl-2-256px")],
                         ids=["512px-all-budgets", "dfm"])
def test_other_training_lines(work, line, exp):
    ok(in_process(train.main, script_args(argv(line)) + SHRINK_TRAIN))
    assert os.path.isfile(os.path.join("exps", exp, "checkpoints", LAST))


def test_elit_on_a_small_grid_finishes_its_sample_grids(work):
    # ELIT-SiT-XL/8 on 32x32 latents: 4x4 tokens, 16 windows of 1 latent -- the default low budget 0.25 keeps
    # none. The run says so before training and writes the full-budget grid only (was: a crash after the checkpoint).
    err = ok(in_process(train.main, ["--model", "ELIT-SiT-XL/8", "--exp-name", "small-grid", "--data-dir", "target",
                                     *SHRINK_TRAIN]))
    assert "sample_low_budget 0.25 keeps no latent" in err
    assert "sample_low_budget 0.25 keeps no latent" in open("exps/small-grid/log.txt").read()
    assert os.listdir("exps/small-grid/samples") == ["0000002.png"]
    # Not a budget fraction: refused before any step.
    bad = error_line(in_process(train.main, ["--model", "ELIT-SiT-XL/8", "--exp-name", "small-grid-bad",
                                             "--data-dir", "target", "--sample-low-budget", "0", *SHRINK_TRAIN]))
    assert "sample_low_budget" in bad and "(0, 1]" in bad
    assert not os.path.exists("exps/small-grid-bad/checkpoints")


def test_grid_low_budget_is_clamped_to_the_lowest_level():
    four = build_model("ELIT-SiT-S/2", input_size=8, elit_group_size=2, **TINY)        # 4 windows of 4 latents
    assert grids.grid_low_budget(four, 0.25) == (0.25, None)
    budget, note = grids.grid_low_budget(four, 0.1)
    assert budget == 0.25 and "lowest level, 0.25" in note
    one = build_model("ELIT-SiT-S/2", input_size=8, elit_group_size=1, **TINY)         # 16 windows of 1 latent
    assert grids.grid_low_budget(one, 0.25)[0] is None
    assert grids.grid_low_budget(build_model("SiT-S/2", input_size=8, **TINY), 0.25) == (None, None)


# ---------------------------------------------------------------------------------------------------------
# Sampling and evaluation.

def read_npz(path: str) -> np.ndarray:
    with np.load(path) as f:
        return f["arr_0"]


def test_generate_with_model_name_under_torchrun(work, trained):
    words = argv(GEN_CLI.replace("--nproc_per_node=8", "--nproc_per_node=2")) + SHRINK_GEN
    out = run(words)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    assert read_npz(out.stdout.strip().splitlines()[-1]).shape == (4, 256, 256, 3)
    # --model is checked against the checkpoint's architecture: one line on a mismatch, nothing written.
    wrong = [a.replace("ELIT-SiT-XL/2", "ELIT-SiT-B/2") for a in script_args(words)]
    message = error_line(in_process(generate.main, wrong + ["--sample-dir", "wrong"]))
    assert "model 'ELIT-SiT-B/2' does not match the checkpoint, which holds model 'ELIT-SiT-XL/2'" in message
    assert not os.path.exists("wrong")


def test_generate_with_the_generation_yaml(work, trained, capsys):
    # In this process (torchrun's own workings are the line above's; the evaluation script below runs this YAML
    # under torchrun again).
    ok(in_process(generate.main, script_args(argv(GEN_YAML)) + SHRINK_GEN))
    npz = capsys.readouterr().out.strip().splitlines()[-1]
    assert os.path.dirname(npz) == str(work / "results")                   # the YAML's sample_dir
    assert read_npz(npz).shape == (4, 256, 256, 3)


@pytest.mark.parametrize("budget", ["1.0", "0.5", "0.25"])
def test_generate_at_a_budget(work, trained, budget):
    args = script_args(argv(GEN_BUDGET.format(budget), ckpt=trained["b"])) + SHRINK_GEN
    ok(in_process(generate.main, args))
    (npz,) = glob.glob(f"results/*-b{float(budget):g}-*.npz")
    assert read_npz(npz).shape == (4, 256, 256, 3)


def test_multibudget_line(work, trained):
    args = script_args(argv(MULTIBUDGET, ckpt=trained["xl"])) + [
        "--num-steps", "2", "--num-images", "1", "--latency-batch-size", "1", "--latency-repeats", "1",
        "--budgets", "1", "0.25"]
    ok(in_process(elit_multibudget_inference.main, args))
    results = json.load(open("multibudget_results/results.json"))
    assert results["image_resolution"] == 256 and [r["budget"] for r in results["budgets"]] == [1.0, 0.25]


class MeanColour(torch.nn.Module):
    """A cheap feature network (per-channel means and spreads) standing in for Inception."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) / 255                 # (B, 6)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_eval_script(work, trained):
    # As written: it needs the ADM reference batch and says so in one line.
    bare = run(argv(EVAL))
    assert bare.returncode == 2 and "set REF to an ADM reference batch" in bare.stderr
    # With the reference batch, the run's checkpoint and size-shrinking settings: samples under results/, metrics.
    torch.jit.script(MeanColour()).save("colour.pt")
    np.savez("ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (8, 256, 256, 3), dtype=np.uint8))
    env = dict(ENV, REF="ref.npz", TORCH_HOME=str(work / "torch_home"), HF_HOME=str(work / "hf_home"))
    env.pop("ELIT_DINOV2_WEIGHTS", None)
    out = run(argv(EVAL) + [f"CKPT={trained['b']}", "NUM_SAMPLES=6", "NPROC=1",
                            f"EVAL_ARGS=--feature-network colour.pt --device cpu",
                            "GEN_ARGS=--num-steps 2 --per-proc-batch-size 2"], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (metrics,) = glob.glob("results/*_vs_ref_colour.json")
    assert np.isfinite(json.load(open(metrics))["fid"])


# ---------------------------------------------------------------------------------------------------------
# Reference checkpoints straight into generate.py and the multibudget script.

def reference_checkpoint(path, drop=("encoder_depth", "dit_decoder_depth"), **extra):
    """The tiny ELIT reference fixture saved as the reference's train.py saves (args: an argparse.Namespace),
    without the saved args in `drop` (real reference checkpoints never save dit_decoder_depth)."""
    fx = torch.load(os.path.join(FIXTURES, "upstream_elit_shared.pt"), map_location="cpu", weights_only=False)
    kw = fx["upstream_kwargs"]
    args = dict(model="ELIT-SiT-S/2", resolution=8 * kw["input_size"], path_type="linear", **{
        k: kw[k] for k in ("hidden_size", "depth", "num_heads", "num_classes", "group_size", "qk_norm",
                           "encoder_depth", "dit_decoder_depth")})
    args = {k: v for k, v in {**args, **extra}.items() if k not in drop}
    noise = {k: v + 1.0 for k, v in fx["state_dict"].items()}           # 'model' differs from 'ema'
    torch.save({"model": noise, "ema": fx["state_dict"], "opt": {}, "args": argparse.Namespace(**args), "steps": 7},
               path)
    return fx


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_reference_checkpoint_loads_converted_with_inferred_depths(tmp_path):
    fx = reference_checkpoint(tmp_path / "ref.pt")
    ck = load_for_sampling(str(tmp_path / "ref.pt"))
    assert (ck.model.head_depth, ck.model.tail_depth) == (fx["config"]["elit_head_depth"],
                                                          fx["config"]["elit_tail_depth"])
    x, t, y = fx["inputs"]["x"], fx["inputs"]["t"], fx["inputs"]["y"]
    with torch.no_grad():
        for budget, expected in fx["outputs"].items():
            assert rel_err(ck.model(x, t, y, budget=budget), expected) < 1e-5
    # The converter command infers the same depths.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        convert_main(["--ckpt", str(tmp_path / "ref.pt"), "--out", str(tmp_path / "ours.pt")])
    assert "elit_head_depth=2, elit_tail_depth=2" in out.getvalue()
    assert load_checkpoint(str(tmp_path / "ours.pt"))["arch"] == ck.model.arch


def test_tail_depth_is_inferred_from_the_block_count():
    # A real reference checkpoint saves encoder_depth (the head) but never dit_decoder_depth (the tail): the
    # reference's factories fix it, 4 blocks for its 28-block XL, 2 for its 12-block B.
    blocks = lambda n: {f"blocks.{i}.attn.qkv.weight": torch.zeros(1) for i in range(n)}    # noqa: E731
    assert infer_elit_depths(blocks(28), {"elit_head_depth": 8}) == {"elit_tail_depth": 4}
    assert infer_elit_depths(blocks(12), {"elit_head_depth": 4}) == {"elit_tail_depth": 2}
    assert infer_elit_depths(blocks(28), {}) == {"elit_head_depth": 4, "elit_tail_depth": 4}
    assert infer_elit_depths(blocks(28), {"elit_head_depth": 8, "elit_tail_depth": 2}) == {}


def test_reference_checkpoint_straight_into_generate_and_multibudget(tmp_path):
    reference_checkpoint(tmp_path / "ref.pt")
    vae = tiny_sd_vae(str(tmp_path / "vae"))                             # 8x8 latents -> 64 px images
    code, err = in_process(generate.main, ["--ckpt", str(tmp_path / "ref.pt"), "--vae", vae, *SHRINK_GEN,
                                           "--sample-dir", str(tmp_path / "s")])
    assert code == 0, err
    assert "is a reference checkpoint, converted on load to ELIT-SiT-S/2" in err
    (npz,) = glob.glob(str(tmp_path / "s" / "*.npz"))
    assert read_npz(npz).shape == (4, 64, 64, 3)
    ok(in_process(elit_multibudget_inference.main, [
        "--model", "ELIT-SiT-S/2", "--ckpt", str(tmp_path / "ref.pt"), "--resolution", "64", "--vae", vae,
        "--class-label", "3", "--output-dir", str(tmp_path / "mb"), "--num-steps", "1", "--num-images", "1",
        "--latency-batch-size", "1", "--latency-repeats", "1", "--budgets", "1", "0.5"]))
    assert os.path.isfile(tmp_path / "mb" / "results.json")


def test_reference_checkpoint_that_cannot_convert_points_to_the_converter(tmp_path):
    reference_checkpoint(tmp_path / "ref.pt", drop=("model",))             # args without the model name
    message = error_line(in_process(generate.main, ["--ckpt", str(tmp_path / "ref.pt"), "--sample-dir",
                                                    str(tmp_path / "s")]))
    assert "does not name its model" in message and "python -m models.convert" in message
    assert "corrupt" not in message
    # Args without the sizes: the registry's ELIT-SiT-S/2 does not fit the tiny weights -- one line, the converter.
    reference_checkpoint(tmp_path / "sizes.pt", drop=("hidden_size", "depth", "num_heads"))
    message = error_line(in_process(generate.main, ["--ckpt", str(tmp_path / "sizes.pt"), "--sample-dir",
                                                    str(tmp_path / "s")]))
    assert "cannot convert" in message and "ELIT-SiT-S/2" in message and "--set KEY=VALUE" in message
    assert "corrupt" not in message and not os.path.exists(tmp_path / "s")
    # --model names it: converted on load (the expectation then holds).
    vae = tiny_sd_vae(str(tmp_path / "v"))
    code, err = in_process(generate.main, ["--model", "ELIT-SiT-S/2", "--ckpt", str(tmp_path / "ref.pt"),
                                           "--sample-dir", str(tmp_path / "s"), "--vae", vae, *SHRINK_GEN])
    assert code == 0, err


def test_path_type_of_a_reference_generation_yaml_is_checked(tmp_path):
    reference_checkpoint(tmp_path / "ref.pt")                                  # trained with path_type linear
    (tmp_path / "gen.yaml").write_text("path_type: cosine\nnum_fid_samples: 4\nglobal_seed: 0\n")
    for flag in ("--config", "--eval-config"):
        message = error_line(in_process(generate.main, [flag, str(tmp_path / "gen.yaml"), "--ckpt",
                                                        str(tmp_path / "ref.pt"), "--sample-dir", str(tmp_path / "s")]))
        assert "path_type 'cosine' does not match the checkpoint, which holds path_type 'linear'" in message
    assert not os.path.exists(tmp_path / "s")


# ---------------------------------------------------------------------------------------------------------

def later(argv_list, *overrides):
    """`argv_list` with the flags in `overrides` replaced (the CLI refuses a flag given twice with two values)."""
    out, skip = [], set(o for o in overrides if o.startswith("--"))
    it = iter(argv_list)
    for a in it:
        if a in skip:
            next(it)
        else:
            out.append(a)
    return out + list(overrides)
