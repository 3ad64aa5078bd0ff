"""utils/cli.py: repeats and duplicates, layered --config files, unreadable YAML, field ranges, "did you mean"."""

import subprocess
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from conftest import ROOT
from sampling.options import GenerateConfig
from training.options import TrainConfig
from utils.cli import build_parser, opt, parse_config
from utils.errors import UserError


@dataclass
class Ranged:
    """a schema with every kind of range"""
    steps: int = opt(100, "at least one", ge=1)
    every: int = opt(10, "positive", min=1)
    lr: float = opt(1e-4, "positive", gt=0)
    beta: float = opt(0.9, "[0, 1)", ge=0, lt=1)
    prob: Optional[float] = opt(None, "[0, 1]", ge=0, le=1)
    low: float = opt(0.25, "(0, 1]", gt=0, le=1)
    scale: float = opt(1.0, "any finite number")
    limit: float = opt(1.0, "may be infinite", finite=False)
    budgets: Optional[list[float]] = opt(None, "each in (0, 1]", gt=0, le=1)
    resolution: Optional[int] = opt(None, "")
    sample_num_steps: int = opt(50, "")
    mode: Literal["a", "b"] = opt("a", "")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(fn, *words):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, (w, message)
    return message


# ----------------------------------------------------------------------------------------------------------
# Repeated flags.

@pytest.mark.parametrize("schema, argv, words", [
    (TrainConfig, ["--elit-group-size", "2", "--elit_group_size", "4"], ["--elit-group-size", "2", "4"]),
    (GenerateConfig, ["--num-steps", "2", "--num_steps", "3"], ["--num-steps", "2", "3"]),
    (GenerateConfig, ["--cfg-scale", "1", "--cfg-scale", "2"], ["--cfg-scale", "1", "2"]),
    (TrainConfig, ["--compile", "--no-compile"], ["--compile", "--no-compile"]),
    (GenerateConfig, ["--dfm-steps-per-stage", "4", "1", "--dfm_steps_per_stage", "3", "2"], ["4 1", "3 2"]),
])
def test_conflicting_repeats_of_a_flag_are_refused(schema, argv, words):
    one_line_error(lambda: parse_config(schema, argv), "conflicting repeats", *words)


def test_identical_repeats_are_accepted():
    # the public README's multibudget line repeats --elit_group_size 4
    cfg = parse_config(TrainConfig, ["--model", "ELIT-SiT-XL/2", "--elit-min-mask-prob", "0.75", "--elit_group_size",
                                     "4", "--elit-max-mask-prob", "0.9375", "--elit_group_size", "4"])
    assert cfg.elit_group_size == 4 and cfg.elit_min_mask_prob == 0.75
    cfg = parse_config(TrainConfig, ["--learning-rate", "1e-4", "--learning_rate", "0.0001", "--compile", "--compile"])
    assert cfg.learning_rate == 1e-4 and cfg.compile is True


def test_alias_and_its_target_on_the_command_line():
    one_line_error(lambda: parse_config(TrainConfig, ["--batch-size", "256", "--global-batch-size", "32"]),
                   "--batch-size", "--global-batch-size", "256", "32")
    assert parse_config(TrainConfig, ["--batch-size", "32", "--global_batch_size", "32"]).global_batch_size == 32


# ----------------------------------------------------------------------------------------------------------
# YAML: duplicates, layering, unreadable files.

def test_duplicate_yaml_key_is_refused_naming_key_and_file(tmp_path):
    path = write(tmp_path, "dup.yaml", "learning_rate: 1.0e-4\nmodel: SiT-B/2\nlearning_rate: 2.0e-4\n")
    one_line_error(lambda: parse_config(TrainConfig, ["--config", path]), "'learning_rate'", path, "lines 1 and 3")
    path = write(tmp_path, "dup2.yaml", "learning_rate: 1.0e-4\nlearning_rate: 1.0e-4\n")    # even when equal
    one_line_error(lambda: parse_config(TrainConfig, ["--config", path]), "'learning_rate'", "written twice")


def test_dash_and_underscore_spellings_in_one_yaml(tmp_path):
    path = write(tmp_path, "c.yaml", "global-batch-size: 64\nelit_group_size: 2\n")
    cfg = parse_config(TrainConfig, ["--config", path])
    assert cfg.global_batch_size == 64 and cfg.elit_group_size == 2
    path = write(tmp_path, "d.yaml", "global-batch-size: 64\nglobal_batch_size: 32\n")
    one_line_error(lambda: parse_config(TrainConfig, ["--config", path]), "global_batch_size", "64", "32")


def test_config_files_layer_in_order(tmp_path):
    a = write(tmp_path, "a.yaml", "learning_rate: 1.0e-3\nglobal_batch_size: 64\nelit_group_size: 2\n")
    b = write(tmp_path, "b.yaml", "learning_rate: 2.0e-3\nbatch_size: 32\n")
    cfg = parse_config(TrainConfig, ["--config", a, "--config", b])
    assert (cfg.learning_rate, cfg.global_batch_size, cfg.elit_group_size) == (2e-3, 32, 2)
    cfg = parse_config(TrainConfig, ["--config", b, "--config", a])
    assert (cfg.learning_rate, cfg.global_batch_size) == (1e-3, 64)
    cfg = parse_config(TrainConfig, ["--config", a, "--learning-rate", "5e-4", "--config", b])   # flags win
    assert cfg.learning_rate == 5e-4 and cfg.global_batch_size == 32


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text file"),
    (b"model: SiT-B/2\x00\x01\n", "cannot parse"),
    (b"model: [SiT\n", "cannot parse"),
])
def test_unreadable_yaml_is_one_line(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    one_line_error(lambda: parse_config(TrainConfig, ["--config", str(path)]), words, str(path))


def test_binary_yaml_through_train_py_exits_2_with_one_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    r = subprocess.run([sys.executable, "train.py", "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: cannot read") and "UTF-8" in lines[0]


def test_a_folder_as_config_is_one_line(tmp_path):
    one_line_error(lambda: parse_config(TrainConfig, ["--config", str(tmp_path)]), "config file not found")


# ----------------------------------------------------------------------------------------------------------
# Ranges and finite floats.

@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], ["'steps'", ">= 1", "got 0"]),
    (["--every", "-5"], ["'every'", ">= 1", "-5"]),
    (["--lr", "-1e-4"], ["'lr'", "> 0"]),
    (["--lr", "0"], ["'lr'", "> 0"]),
    (["--beta", "1"], ["'beta'", "in [0, 1)", "got 1.0"]),
    (["--prob", "1.5"], ["'prob'", "in [0, 1]", "1.5"]),
    (["--prob", "-0.1"], ["'prob'", "in [0, 1]"]),
    (["--low", "0"], ["'low'", "in (0, 1]"]),
    (["--low", "7"], ["'low'", "in (0, 1]"]),
    (["--budgets", "1", "0.5", "0"], ["'budgets'", "in (0, 1]", "got 0.0"]),
    (["--scale", "nan"], ["'scale'", "finite", "nan"]),
    (["--scale", "inf"], ["'scale'", "finite"]),
    (["--lr", "nan"], ["'lr'", "finite"]),
])
def test_out_of_range_values_are_one_line(tmp_path, argv, words):
    one_line_error(lambda: parse_config(Ranged, argv), *words)
    key, value = argv[0][2:], argv[1:]
    path = write(tmp_path, "r.yaml", f"{key}: [{', '.join(value)}]\n" if len(value) > 1 else
                 f"{key}: {value[0].replace('nan', '.nan').replace('inf', '.inf')}\n")
    one_line_error(lambda: parse_config(Ranged, ["--config", path]), *words[:2])


def test_in_range_values_and_allowed_infinity():
    cfg = parse_config(Ranged, ["--steps", "1", "--beta", "0", "--prob", "1", "--low", "1", "--limit", "inf"])
    assert (cfg.steps, cfg.beta, cfg.prob, cfg.low, cfg.limit) == (1, 0.0, 1.0, 1.0, float("inf"))
    assert parse_config(Ranged, ["--prob", "none"]).prob is None                 # Optional: none skips the range
    assert "[>= 1]" in build_parser(Ranged).format_help()                       # the range is in --help


def test_nan_guidance_scale_is_refused_in_generate():
    one_line_error(lambda: parse_config(GenerateConfig, ["--cfg-scale", "nan"]), "'cfg_scale'", "finite")


# ----------------------------------------------------------------------------------------------------------
# "Did you mean" only for a real near-miss.

@pytest.mark.parametrize("key, hint", [
    ("learning_rat", "learning_rate"), ("elit_group", "elit_group_size"), ("warmup_step", "warmup_steps"),
    ("prediction", None), ("sampling_steps", None), ("batch", None),
])
def test_did_you_mean_only_for_a_near_miss(tmp_path, key, hint):
    schema = TrainConfig if hint else Ranged                  # Ranged has resolution and sample_num_steps
    path = write(tmp_path, "t.yaml", f"{key}: 1\n")
    message = one_line_error(lambda: parse_config(schema, ["--config", path]), f"unknown config key '{key}'")
    assert (f"did you mean '{hint}'" in message) if hint else ("did you mean" not in message)


def test_reference_names_are_not_near_misses(tmp_path):
    path = write(tmp_path, "t.yaml", "sampling_steps: 500\nprediction: v\n")
    cfg = parse_config(TrainConfig, ["--config", path])                # aliases now, not typos
    assert cfg.sample_every == 500 and cfg.sample_num_steps == TrainConfig().sample_num_steps


def test_unknown_flag_keeps_argparse_text_and_hints(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(GenerateConfig, ["--num-step", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert "unrecognized arguments: --num-step 3" in err[0] and "did you mean --num-steps?" in err[0]
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--predictio", "v"])
    err = capsys.readouterr().err
    assert "did you mean --prediction?" in err and "resolution" not in err


# ----------------------------------------------------------------------------------------------------------
# What stays: precedence, --print-config, negatable booleans, Optional none.

def test_precedence_print_config_booleans_and_none(tmp_path, capsys):
    path = write(tmp_path, "c.yaml", "learning_rate: 2.0e-4\ncompile: true\nelit_group_size: 2\n")
    cfg = parse_config(TrainConfig, ["--config", path, "--no-compile", "--elit-group-size", "none"])
    assert cfg.learning_rate == 2e-4 and cfg.compile is False and cfg.elit_group_size is None
    assert cfg.max_train_steps == TrainConfig().max_train_steps
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, ["--config", path, "--batch-size", "8", "--print-config"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "global_batch_size: 8\n" in out and "learning_rate: 0.0002\n" in out and "batch_size: 8" not in \
        out.replace("global_batch_size", "")
