"""Issue 14: every bad input is one line and a non-zero exit before any work; resume never misrecords; killed
saves leave nothing behind; a full disk keeps the old file; a corrupted checkpoint is refused; one
generate.py run per folder. The table below is the new-user probe, kept as tests (each CLI run in-process
through its `main(argv)` under `run_main`, as `python SCRIPT.py` runs it)."""

import argparse
import errno
import glob
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import FIXTURES, write_checkpoint, write_tiny_pixels
from models.checkpoint import atomic_save, load_checkpoint
from training.options import TrainConfig
from training.resume import POLICY
from utils.atomic import folder_lock, remove_stale_temps, write_json
from utils.cli import parse_config
from utils.errors import UserError, run_main

TINY = dict(hidden_size=32, depth=4, num_heads=2)
PROGRESS_BAR = re.compile(r"^\s*(\w+: +)?\d+%\|")             # a tqdm line (stderr), not an error

# ---------------------------------------------------------------------------------------------------------
# The probe's table: (cli, argv merged over the cli's base arguments, phrase of the one error line).

BASE = {
    "train": ["--model", "SiT-S/2", "--data-dir", "{data}", "--output-dir", "{out}", "--exp-name", "run",
              "--report-to", "none", "--no-progress", "--max-train-steps", "1", "--num-workers", "0",
              "--global-batch-size", "4", "--sample-num-steps", "2", "--checkpointing-steps", "1"],
    "generate": ["--ckpt", "{ckpt}", "--sample-dir", "{out}", "--num-samples", "2", "--per-proc-batch-size", "2",
                 "--num-steps", "2", "--device", "cpu"],
    "inference": ["--ckpt", "{ckpt}", "--output-dir", "{out}", "--num-images", "1", "--num-steps", "2",
                  "--device", "cpu", "--latency-batch-size", "1", "--latency-repeats", "1"],
    "evaluate": ["--samples", "{samples}", "--ref", "{ref_npz}", "--feature-network", "{net}", "--device", "cpu"],
    "demo": ["demo", "--dest", "{out}/demo", "--num-images", "8", "--resolution", "8"],
    "encode": ["encode", "--source", "{images}", "--dest", "{out}/lat", "--vae", "{vae}", "--device", "cpu",
               "--num-workers", "0", "--batch-size", "2"],
    "convert": ["--ckpt", "{ref_ckpt}", "--out", "{out}/c.pt", "--set", "{ref_set}"],
}
ENTRY = {"train": "train", "generate": "generate", "inference": "elit_multibudget_inference",
         "evaluate": "evaluate", "demo": "dataset_tools", "encode": "dataset_tools", "convert": "models.convert"}

CASES = [
    # train: ranges in the schema
    ("train", ["--checkpointing-steps", "0"], "checkpointing_steps"),
    ("train", ["--log-every", "0"], "log_every"),
    ("train", ["--learning-rate", "-1e-4"], "learning_rate"),
    ("train", ["--adam-beta1", "1"], "adam_beta1"),
    ("train", ["--adam-beta2", "1.5"], "adam_beta2"),
    ("train", ["--label-dropout", "1.5"], "label_dropout"),
    ("train", ["--num-workers", "-1"], "num_workers"),
    ("train", ["--sample-low-budget", "0"], "sample_low_budget"),
    ("train", ["--sample-low-budget", "7"], "sample_low_budget"),
    ("train", ["--sample-num-steps", "0"], "sample_num_steps"),
    ("train", ["--model", "DFM-SiT-S/2", "--sample-num-steps", "1"], "sample_num_steps"),
    ("train", ["--model", "ELIT-SiT-S/2", "--elit-min-mask-prob", "1.5"], "elit_min_mask_prob"),
    ("train", ["--model", "ELIT-SiT-S/2", "--elit-max-mask-prob", "-0.1"], "elit_max_mask_prob"),
    ("train", ["--max-train-steps", "0"], "max_train_steps"),
    ("train", ["--max-train-steps", "-5"], "max_train_steps"),
    ("train", ["--ema-decay", "2"], "ema_decay"),
    ("train", ["--warmup-steps", "-1"], "warmup_steps"),
    ("train", ["--max-grad-norm", "-1"], "max_grad_norm"),
    ("train", ["--seed", "-1"], "seed"),
    ("train", ["--learning-rate", "nan"], "learning_rate"),
    ("train", ["--resume-step", "later"], "resume_step"),
    ("train", ["--resume-step", "3"], "no checkpoint"),
    # train: paths, repeats, YAML
    ("train", ["--exp-name", "../../escape"], "inside output_dir"),
    ("train", ["--exp-name", "/tmp/abs"], "inside output_dir"),
    ("train", ["--output-dir", "{file}"], "output folder"),
    ("train", ["--model", "ELIT-SiT-S/2", "--elit-group-size", "2", "--elit_group_size", "4"], "conflicting repeats"),
    ("train", ["--config", "{dup_yaml}"], "written twice"),
    ("train", ["--config", "{bin_yaml}"], "UTF-8"),
    # generate
    ("generate", ["--cfg-scale", "nan"], "cfg_scale"),
    ("generate", ["--cfg-scale", "inf"], "cfg_scale"),
    ("generate", ["--guidance-low", "-0.1"], "guidance_low"),
    ("generate", ["--guidance-high", "1.5"], "guidance_high"),
    ("generate", ["--guidance-low", "0.8", "--guidance-high", "0.2"], "guidance interval"),
    ("generate", ["--device", "banana"], "device"),
    ("generate", ["--num-steps", "2", "--num_steps", "3"], "conflicting repeats"),
    ("generate", ["--num-steps", "0"], "num_steps"),
    ("generate", ["--inference-budget", "0"], "inference_budget"),
    ("generate", ["--per-proc-batch-size", "0"], "per_proc_batch_size"),
    ("generate", ["--sample-dir", "{file}"], "is a file"),
    ("generate", ["--ckpt", "{flipped_ckpt}"], "CRC-32"),
    ("generate", ["--ckpt", "{truncated_ckpt}"], "truncated"),
    ("generate", ["--ckpt", "{tmp}/missing.pt"], "not found"),
    # elit_multibudget_inference
    ("inference", ["--output-dir", "{file}"], "is a file"),
    ("inference", ["--device", "banana"], "device"),
    ("inference", ["--budgets", "0"], "budgets"),
    ("inference", ["--cfg-scale", "nan"], "cfg_scale"),
    ("inference", ["--ckpt", "{flipped_ckpt}"], "CRC-32"),
    # evaluate
    ("evaluate", ["--batch-size", "0"], "batch_size"),
    ("evaluate", ["--device", "banana"], "device"),
    ("evaluate", ["--samples", "{samples16}"], "resolution"),
    ("evaluate", ["--samples", "{tmp}/none.npz"], "not found"),
    # dataset_tools
    ("demo", ["--dest", "{file}"], "is a file"),
    ("demo", ["--num-images", "0"], "num_images"),
    ("demo", ["--resolution", "0"], "resolution"),
    ("encode", ["--source", "{truncated_png}"], "cannot read image"),
    ("encode", ["--batch-size", "0"], "batch_size"),
    ("encode", ["--device", "banana"], "device"),
    # models.convert
    ("convert", ["--ckpt", "{tmp}/missing.pt"], "not found"),
    ("convert", ["--ckpt", "{truncated_ref}"], "corrupt"),
    ("convert", ["--ckpt", "{garbage}"], "corrupt"),
    ("convert", ["--model", "SiT-XXL/2"], "SiT-XXL/2"),
    ("convert", ["--model", "DFM-SiT-S/2"], "holds a ELIT-SiT model"),
    ("convert", ["--entry", "opt"], "no 'opt' entry"),
]


def merged(base: list, case: list) -> list:
    """The base arguments without the flags the case gives, then the case (repeats of the case kept)."""
    given = {tok for tok in case if tok.startswith("--")}
    out, skipping = [], False
    for tok in base:
        if tok.startswith("--"):
            skipping = tok in given
        if not skipping:
            out.append(tok)
    return out + case


def run_cli(cli: str, argv: list):
    """(exit code, stderr lines) of `python ENTRY argv` run in-process."""
    module = importlib.import_module(ENTRY[cli])
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(argv))
    return exit_info.value.code


def flip_one_byte(src: str, dest: str) -> str:
    """A copy of checkpoint `src` with one bit flipped inside its largest tensor (the zip stays readable)."""
    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    open(dest, "wb").write(bytes(data))
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files the table's placeholders name."""
    root = tmp_path_factory.mktemp("world")
    w = {"tmp": str(root)}
    w["data"] = str(root / "px8")
    write_tiny_pixels(w["data"], 16, 8)
    (root / "a_file").write_text("not a folder")
    w["file"] = str(root / "a_file")
    w["ckpt"] = write_checkpoint(str(root / "tiny.pt"), family="ELIT-SiT")
    w["flipped_ckpt"] = flip_one_byte(w["ckpt"], str(root / "flipped.pt"))
    raw = open(w["ckpt"], "rb").read()
    (root / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    w["truncated_ckpt"] = str(root / "truncated.pt")
    (root / "dup.yaml").write_text("learning_rate: 1e-4\nseed: 1\nlearning_rate: 2e-4\n")
    w["dup_yaml"] = str(root / "dup.yaml")
    (root / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    w["bin_yaml"] = str(root / "bin.yaml")
    rng = np.random.default_rng(0)
    for name, side in (("samples", 8), ("samples16", 16), ("ref_npz", 8)):
        np.savez(root / f"{name}.npz", arr_0=rng.integers(0, 256, (4, side, side, 3), dtype=np.uint8))
        w[name] = str(root / f"{name}.npz")
    w["net"] = str(root / "net.pt")                 # any file: every evaluate case fails before it is loaded
    (root / "net.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(os.urandom(4096))
    w["garbage"] = str(root / "garbage.pt")
    fx = torch.load(os.path.join(FIXTURES, "upstream_elit_shared.pt"), map_location="cpu", weights_only=False)
    kw = fx["upstream_kwargs"]
    ref_args = argparse.Namespace(model="ELIT-SiT-S/2", resolution=8 * kw["input_size"],
                                  encoder_depth=kw["encoder_depth"], dit_decoder_depth=kw["dit_decoder_depth"],
                                  group_size=kw["group_size"], num_classes=kw["num_classes"], qk_norm=False)
    torch.save({"ema": fx["state_dict"], "model": fx["state_dict"], "args": ref_args}, root / "ref.pt")
    w["ref_ckpt"] = str(root / "ref.pt")
    w["ref_set"] = [f"hidden_size={kw['hidden_size']}", f"depth={kw['depth']}", f"num_heads={kw['num_heads']}"]
    raw = open(w["ref_ckpt"], "rb").read()
    (root / "ref_truncated.pt").write_bytes(raw[:len(raw) // 3])
    w["truncated_ref"] = str(root / "ref_truncated.pt")
    return w


@pytest.fixture(scope="module")
def encode_world(world, tmp_path_factory):
    """A converted image folder with one truncated PNG, a good one, and a tiny local AutoencoderKL."""
    import shutil

    import dataset_tools
    from diffusers import AutoencoderKL          # optional heavy dependency, as in tests/test_data.py
    from PIL import Image
    root = tmp_path_factory.mktemp("enc")
    tree = root / "tree" / "c0"
    tree.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tree / f"{i}.png")
    good = str(root / "images")
    dataset_tools.main(["convert", "--source", str(root / "tree"), "--dest", good, "--resolution", "8x8",
                        "--num-workers", "1"])
    bad = str(root / "bad")
    shutil.copytree(good, bad)
    png = sorted(glob.glob(os.path.join(bad, "**", "*.png"), recursive=True))[1]
    raw = open(png, "rb").read()
    open(png, "wb").write(raw[:len(raw) // 2])
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=8)
    vae.save_pretrained(root / "vae")
    return {"images": good, "truncated_png": bad, "vae": str(root / "vae")}


def fill(argv: list, w: dict) -> list:
    out = []
    for tok in argv:
        if tok == "{ref_set}":
            out += w["ref_set"]
            continue
        for key, value in w.items():
            if isinstance(value, str):
                tok = tok.replace("{" + key + "}", value)
        out.append(tok)
    return out


@pytest.mark.parametrize("cli,argv,phrase", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line(cli, argv, phrase, world, tmp_path, capsys, request, one_thread):
    w = dict(world, out=str(tmp_path / "out"))
    if cli == "encode":
        w.update(request.getfixturevalue("encode_world"))
    capsys.readouterr()
    code = run_cli(cli, fill(merged(BASE[cli], argv), w))
    # (encode finds a truncated image while working: its progress bar may have started, nothing else)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert code not in (0, None), err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert phrase in err[0], err[0]
    if cli == "train":                            # before any work: no checkpoint, no config written
        assert not glob.glob(os.path.join(w["out"], "run", "checkpoints", "*.pt"))


@pytest.mark.parametrize("cli,flag", [("train", "--output-dir"), ("generate", "--sample-dir"),
                                      ("inference", "--output-dir"), ("demo", "--dest")])
def test_read_only_output_folder_is_one_line(cli, flag, world, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:                         # root writes anyway: the folder answers as a read-only one would
        import tempfile
        real = tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and str(dir).startswith(str(ro)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    code = run_cli(cli, fill(merged(BASE[cli], [flag, str(ro / "x")]), dict(world, out=str(tmp_path))))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write" in err[0], err


# ---------------------------------------------------------------------------------------------------------
# Checkpoint integrity, full disk, temp files, locks.

def test_bit_flipped_checkpoint_is_refused_and_a_good_one_loads(world):
    assert load_checkpoint(world["ckpt"])["step"] == 12
    with pytest.raises(UserError, match="CRC-32"):
        load_checkpoint(world["flipped_ckpt"])


@pytest.mark.parametrize("kind", ["checkpoint", "png", "npz", "json"])
def test_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, kind):
    from sampling.shards import save_png, write_npz_from_shards
    path = str(tmp_path / {"checkpoint": "c.pt", "png": "i.png", "npz": "s.npz", "json": "g.json"}[kind])
    shard = str(tmp_path / "shard.npy")
    np.save(shard, np.zeros((2, 4, 4, 3), np.uint8))
    write = {"checkpoint": lambda v: atomic_save({"v": torch.tensor(v)}, path),
             "png": lambda v: save_png(np.full((4, 4, 3), v, np.uint8), path),
             "npz": lambda v: write_npz_from_shards(path, [shard], (2, 4, 4, 3)),
             "json": lambda v: write_json(path, {"v": v})}[kind]
    write(1)
    before = open(path, "rb").read()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as e:
        write(2)
    assert path in str(e.value) and "No space left" in str(e.value) and "\n" not in str(e.value)
    assert open(path, "rb").read() == before
    assert not glob.glob(str(tmp_path / ".tmp-*"))


def test_full_disk_in_demo_is_one_line(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    code = run_cli("demo", ["demo", "--dest", str(tmp_path / "demo"), "--num-images", "8", "--resolution", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "demo.partial" in err[0] and "No space left" in err[0], err
    assert not (tmp_path / "demo").exists()                       # no dataset claims to be finished


def test_stale_temp_files_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".tmp-{dead.pid}@{host}~abc.pt"
    live = tmp_path / f".tmp-{os.getpid()}@{host}~def.pt"
    foreign = tmp_path / ".tmp-123@elsewhere~ghi.pt"             # another host, fresh: kept
    for p in (stale, live, foreign):
        p.write_bytes(b"partial")
    assert remove_stale_temps(str(tmp_path)) == [str(stale)]
    assert live.exists() and foreign.exists()


def test_folder_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    lock = str(tmp_path / "f.lock")
    with folder_lock(lock) as note:
        assert note is None
        with pytest.raises(UserError, match=f"process {os.getpid()}"):
            with folder_lock(lock):
                pass
    assert not os.path.exists(lock)                                # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    open(lock, "w").write(json.dumps(dict(pid=dead.pid, host=socket.gethostname())))
    with folder_lock(lock) as note:
        assert "took over" in note


def test_second_generate_into_one_folder_is_refused_and_ctrl_c_is_one_line(world, tmp_path, capsys, monkeypatch,
                                                                           one_thread):
    import generate
    from sampling import shards
    argv = fill(BASE["generate"], dict(world, out=str(tmp_path)))
    generate.main(argv)                                            # a finished run: find its folder
    npz = glob.glob(str(tmp_path / "*.npz"))[0]
    os.unlink(npz)
    folder = npz[:-4]
    # a live process (this one's parent) holds the lock: refused, nothing written
    open(folder + ".lock", "w").write(json.dumps(dict(pid=os.getppid(), host=socket.gethostname())))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        generate.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "lock" in err[0] and str(os.getppid()) in err[0], err
    assert not os.path.exists(npz)
    os.unlink(folder + ".lock")

    def interrupted(self, j, images, write_png):
        raise KeyboardInterrupt
    monkeypatch.setattr(shards.Batches, "save", interrupted)
    for shard in glob.glob(os.path.join(folder, "batches", "*")) + glob.glob(os.path.join(folder, "*.png")):
        os.unlink(shard)
    with pytest.raises(SystemExit) as e:
        generate.main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert e.value.code == 2 and len(err) == 1 and "interrupted" in err[0] and "rerun" in err[0], err
    assert not os.path.exists(folder + ".lock")                    # released on the way out


# ---------------------------------------------------------------------------------------------------------
# Resume: which checkpoint, which changes.

def train_cfg(data, out, *extra, steps=2):
    args = ["--model", "SiT-S/2", "--data-dir", data, "--output-dir", str(out), "--exp-name", "run",
            "--global-batch-size", "4", "--max-train-steps", str(steps), "--log-every", "1",
            "--checkpointing-steps", "2", "--sample-every", "0", "--sample-num-steps", "2", "--report-to", "none",
            "--num-workers", "0", "--no-progress"]
    return parse_config(TrainConfig, merged(args, list(extra)))


def fit(cfg):
    from training import Trainer
    trainer = Trainer(cfg, model_kwargs=TINY)
    trainer.fit()
    return trainer


def test_policy_covers_every_option():
    import dataclasses
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(POLICY)


def test_resume_auto_starts_fresh_then_resumes_and_removes_killed_saves(world, tmp_path, capsys, one_thread):
    fit(train_cfg(world["data"], tmp_path, "--resume-step", "auto", steps=2))
    assert "no checkpoint" in capsys.readouterr().out
    ckpts = tmp_path / "run" / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = ckpts / f".tmp-{dead.pid}@{socket.gethostname()}~x.pt"
    partial.write_bytes(b"half a checkpoint")
    trainer = fit(train_cfg(world["data"], tmp_path, "--resume-step", "auto", steps=4))
    assert "resuming from" in capsys.readouterr().out and trainer.step == 4
    assert not partial.exists()


@pytest.mark.parametrize("change,refusal", [
    (["--learning-rate", "3e-4"], "learning_rate was 0.0001, now 0.0003"), (["--adam-beta2", "0.95"], "adam_beta2 was"),
    (["--global-batch-size", "8"], "global_batch_size was 4, now 8"), (["--seed", "3"], "seed was 0, now 3"),
    (["--label-dropout", "0.2"], "label_dropout was"), (["--ema-decay", "0.99"], "ema_decay was"),
    (["--qk-norm"], "different model (qk_norm"), (["--max-train-steps", "3"], None), (["--num-workers", "1"], None),
    (["--checkpointing-steps", "1"], None), (["--resolution", "8"], None)])      # 8: the data's, the same model
def test_changed_settings_are_refused_naming_the_key_or_allowed(world, tmp_path, change, refusal, one_thread):
    fit(train_cfg(world["data"], tmp_path, steps=2))
    steps = int(change[1]) if change[0] == "--max-train-steps" else 2
    cfg = train_cfg(world["data"], tmp_path, "--resume-step", "-1", *change, steps=steps)
    if refusal is None:
        fit(cfg)
        return
    with pytest.raises(UserError, match=re.escape(refusal)):
        fit(cfg)


def test_allowed_change_is_applied_to_the_optimizer_and_recorded(world, tmp_path, one_thread):
    import yaml
    fit(train_cfg(world["data"], tmp_path, steps=2))
    trainer = fit(train_cfg(world["data"], tmp_path, "--resume-step", "-1", "--learning-rate", "3e-4",
                            "--adam-beta2", "0.95", "--allow-resume-change", "learning_rate,adam_beta2", steps=3))
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(3e-4) and group["betas"][1] == 0.95
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "0000003.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
    assert ckpt["config"]["learning_rate"] == 3e-4
    recorded = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert recorded["learning_rate"] == 3e-4 and recorded["adam_beta2"] == 0.95
    assert "learning_rate changed from 0.0001 to 0.0003" in open(tmp_path / "run" / "log.txt").read()


def test_allow_resume_change_refuses_unknown_and_fixed_keys(world, tmp_path, one_thread):
    fit(train_cfg(world["data"], tmp_path, steps=2))
    for key, phrase in (("learning_rat", "unknown setting"), ("global_batch_size", "cannot change")):
        with pytest.raises(UserError, match=phrase):
            fit(train_cfg(world["data"], tmp_path, "--resume-step", "-1", "--allow-resume-change", key, steps=3))
