"""The shipped accelerate configs (experiments_updated/accelerate/): accelerate's own loader reads them, its launcher
takes every value from them (no "values were not passed" warning), and a 2-process CPU run trains with them.

Multi-node cannot run on one machine; what can be checked is that the README's multi-node flags, given with the
same file, reach accelerate's launcher as values for two machines.
"""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from accelerate.commands.config import default_config_file
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from conftest import ROOT, script_env, write_tiny_pixels

CONFIGS = os.path.join(ROOT, "experiments_updated", "accelerate")
ONE_GPU, ONE_NODE = os.path.join(CONFIGS, "one_gpu.yaml"), os.path.join(CONFIGS, "one_node.yaml")
NOT_PASSED = "were not passed to `accelerate launch`"


def validated(argv, caplog):
    """accelerate launch's own argument resolution of `argv` -> (resolved args, its log text)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="accelerate.commands.launch"):
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv + ["train.py"]))
    return args, caplog.text


def test_configs_parse_with_accelerates_loader():
    one, node = load_config_from_file(ONE_GPU), load_config_from_file(ONE_NODE)
    assert (one.distributed_type.value, one.num_processes, one.num_machines) == ("NO", 1, 1)
    assert (node.distributed_type.value, node.num_processes, node.num_machines, node.gpu_ids) == ("MULTI_GPU", 8, 1, "all")


@pytest.mark.parametrize("path", [ONE_GPU, ONE_NODE])
def test_launcher_takes_every_value_from_the_file(path, caplog, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args, log = validated(["--config_file", path], caplog)
    assert NOT_PASSED not in log
    assert args.num_processes == load_config_from_file(path).num_processes and args.num_machines == 1
    if not os.path.isfile(default_config_file):          # control: without a config the warning is there
        assert NOT_PASSED in validated([], caplog)[1]


def test_readme_multi_node_flags_reach_the_launcher(caplog, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    readme = open(os.path.join(ROOT, "README.md")).read()
    command = re.search(r"accelerate launch --config_file experiments_updated/accelerate/one_node\.yaml[^\n]*"
                        r"--num_machines 2[^\n]*", readme)
    assert command, "README's multi-node command"
    for flag in ("--machine_rank", "--main_process_ip", "--main_process_port", "--num_processes"):
        assert flag in command.group(0)
    args, log = validated(["--config_file", ONE_NODE, "--num_machines", "2", "--num_processes", "16",
                           "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29500"],
                          caplog)
    assert NOT_PASSED not in log
    assert (args.num_machines, args.num_processes, args.machine_rank, args.main_process_ip) == (2, 16, 1, "10.0.0.1")
    assert args.multi_gpu


def test_two_process_cpu_run_uses_the_config(tmp_path):
    """accelerate launch with one_node.yaml and 2 processes on a machine without GPUs: DDP over gloo on the CPU.

    (accelerate's --cpu flag selects its single-process launcher, which would start one process: the run
    therefore hides the GPUs instead, as a CPU-only machine has none.)"""
    data = str(tmp_path / "px8")
    write_tiny_pixels(data, 64, 8)
    env = dict(script_env(), TINY_MODEL=json.dumps(dict(hidden_size=32, depth=2, num_heads=2)))
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", ONE_NODE,
                          "--num_processes", "2", "--main_process_port", "29541", "tests/train_tiny.py",
                          "--data-dir", data, "--output-dir", str(tmp_path / "out"), "--exp-name", "run",
                          "--model", "SiT-S/2", "--global-batch-size", "8", "--max-train-steps", "2",
                          "--checkpointing-steps", "2", "--sample-every", "0", "--sample-num-steps", "1",
                          "--report-to", "none", "--num-workers", "0", "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert NOT_PASSED not in out.stderr + out.stdout
    log = open(tmp_path / "out" / "run" / "log.txt").read()
    assert "2 process(es)" in log and "step 2: loss" in log
    assert os.path.isfile(tmp_path / "out" / "run" / "checkpoints" / "0000002.pt")
