"""Issue 14, preemption: SIGTERM / SIGINT / SIGUSR1 during training save the last whole step on every rank and exit
0 with a resume hint; the resumed run equals an uninterrupted one bit for bit; launchers leave no orphan.

Runs real processes (torchrun with 2 CPU/gloo ranks, accelerate launch, plain python) of a tiny model whose
steps are slowed down (SLOW_STEP_S) so that the signal lands mid-run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, write_tiny_pixels

TINY = dict(hidden_size=32, depth=3, num_heads=2)
STEPS = 8

HELPER = '''
import os, sys, time
sys.path.insert(0, {root!r})
from training import Trainer
from training.options import TrainConfig
from utils.cli import parse_config
from utils.errors import run_main

slow = float(os.environ.get("SLOW_STEP_S", "0"))
original = Trainer.train_step

def train_step(self, batches):
    original(self, batches)
    time.sleep(slow)

Trainer.train_step = train_step
run_main(lambda: Trainer(parse_config(TrainConfig), model_kwargs={tiny!r}).fit())
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sig")
    data = str(root / "px8")
    write_tiny_pixels(data, 32, 8)
    helper = root / "train_helper.py"
    helper.write_text(HELPER.format(root=ROOT, tiny=TINY))
    return dict(root=root, data=data, helper=str(helper))


def args(setup, out, *extra):
    return [setup["helper"], "--model", "ELIT-SiT-S/2", "--elit-group-size", "2", "--elit-head-depth", "1",
            "--elit-tail-depth", "1", "--elit-min-mask-prob", "0", "--elit-max-mask-prob", "0.75",
            "--data-dir", setup["data"], "--output-dir", str(out), "--exp-name", "run", "--global-batch-size", "8",
            "--max-train-steps", str(STEPS), "--log-every", "1", "--checkpointing-steps", "100",
            "--sample-every", "0", "--sample-num-steps", "2", "--report-to", "none", "--num-workers", "0",
            "--no-progress", "--learning-rate", "1e-3", "--resume-step", "auto", *extra]


def env(slow=0.0):
    e = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, SLOW_STEP_S=str(slow))
    e.pop("ELIT_DEBUG", None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]


def processes_running(marker: str) -> list[int]:
    """Pids whose command line names `marker` (this test's helper script, a unique tmp path)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def interrupt(cmd, out, sig, after_step=2, timeout=300):
    """Start `cmd`, send `sig` to it once the run logged `after_step`, wait; returns the CompletedProcess-like."""
    log = out / "run" / "log.txt"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(slow=0.4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and f"step {after_step}: loss" in log.read_text():
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def checkpoints(out):
    folder = out / "run" / "checkpoints"
    return sorted(p for p in os.listdir(folder) if p.endswith(".pt")) if folder.exists() else []


def state(out, step):
    return torch.load(out / "run" / "checkpoints" / f"{step:07d}.pt", weights_only=True)


def assert_equal_states(a, b):
    assert a["step"] == b["step"] and a["data_position"] == b["data_position"]
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for i, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)


def test_sigterm_to_torchrun_saves_on_every_rank_and_resume_is_bit_exact(setup, tmp_path):
    straight = subprocess.run(torchrun() + args(setup, tmp_path / "a"), cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    code, stdout, stderr = interrupt(torchrun() + args(setup, tmp_path / "b"), tmp_path / "b", signal.SIGTERM)
    saved = checkpoints(tmp_path / "b")
    assert len(saved) == 1 and 2 <= int(saved[0][:7]) < STEPS, (saved, stderr[-3000:])
    hint = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(hint) == 1 and "--resume-step auto" in hint[0], stdout
    assert "stop requested by SIGTERM" in (tmp_path / "b" / "run" / "log.txt").read_text()
    time.sleep(0.5)
    assert processes_running(setup["helper"]) == []                   # no rank outlives torchrun
    assert not [p for p in os.listdir(tmp_path / "b" / "run" / "checkpoints") if p.startswith(".tmp-")]

    resumed = subprocess.run(torchrun() + args(setup, tmp_path / "b"), cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_equal_states(state(tmp_path / "a", STEPS), state(tmp_path / "b", STEPS))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1])
def test_one_process_stops_cleanly_with_exit_0(setup, tmp_path, sig):
    code, stdout, stderr = interrupt([sys.executable] + args(setup, tmp_path), tmp_path, sig)
    assert code == 0, stderr[-3000:]
    saved = checkpoints(tmp_path)
    assert len(saved) == 1 and int(saved[0][:7]) < STEPS
    assert [line for line in stdout.splitlines() if line.startswith(f"stopped by {signal.Signals(sig).name}")]
    assert "Traceback" not in stderr


def test_sigterm_to_accelerate_launch_reaches_the_trainer(setup, tmp_path):
    """accelerate launch (one process) does not forward SIGTERM: the trainer follows its parent (no orphan)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"] + args(setup, tmp_path)
    code, stdout, stderr = interrupt(cmd, tmp_path, signal.SIGTERM)
    deadline = time.time() + 120
    while processes_running(setup["helper"]) and time.time() < deadline:
        time.sleep(0.2)
    assert processes_running(setup["helper"]) == []
    saved = checkpoints(tmp_path)
    assert len(saved) == 1 and int(saved[0][:7]) < STEPS, stderr[-3000:]
    assert "stop requested by SIGTERM" in (tmp_path / "run" / "log.txt").read_text()
