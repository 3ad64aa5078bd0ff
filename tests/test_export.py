"""models/export.py: EMA weights as safetensors + model.json, loaded with no pickle by every consumer."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, script_env, write_checkpoint
from models import FAMILIES, build_from_arch
from models.checkpoint import load_checkpoint, model_from_checkpoint
from models.export import export_checkpoint, load_export, load_exported_model
from sampling import multibudget as mbi
from sampling.load import load_for_sampling
from sampling.options import InferenceConfig
from utils.cli import parse_config
from utils.errors import UserError


def outputs(model, **kw):
    torch.manual_seed(5)
    x, t, y = model.example_inputs(3)
    with torch.no_grad():
        return model(x, t, y, **kw)


def same(a, b) -> bool:
    """Outputs equal: one tensor, or one per stage (DFM)."""
    a, b = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (a, b))
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def no_pickle(monkeypatch):
    """Make every pickle-based load fail: what still loads, loads without one."""
    def refuse(*a, **k):
        raise AssertionError("torch.load (pickle) called")
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_gives_the_same_model(family, tmp_path, monkeypatch):
    path = write_checkpoint(str(tmp_path / "ck.pt"), family, dataset="pixels")
    ckpt = load_checkpoint(path)
    ckpt["model"] = {k: v + 1 for k, v in ckpt["model"].items()}           # exports must take the EMA
    export_checkpoint(ckpt, str(tmp_path / "release"), source=path)
    original = model_from_checkpoint(ckpt, "ema")
    assert sorted(os.listdir(tmp_path / "release")) == ["model.json", "model.safetensors"]
    with open(tmp_path / "release" / "model.json") as f:
        info = json.load(f)
    assert info["arch"] == json.loads(json.dumps(original.arch)) and info["dataset"] == ckpt["dataset"]
    assert info["step"] == 12 and info["path_type"] == "linear"

    no_pickle(monkeypatch)
    for where in ("release", "release/model.safetensors"):
        model = load_exported_model(str(tmp_path / where))
        assert model.arch == build_from_arch(info["arch"]).arch
        kw = dict(budget=model.budget_levels[0]) if model.budget_levels else {}
        assert same(outputs(model, **kw), outputs(original, **kw))
    ck = load_for_sampling(str(tmp_path / "release"))                   # generate.py's loader
    assert ck.dataset_meta == ckpt["dataset"] and ck.step == 12 and ck.label == "release"
    for k, v in original.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)


def test_safetensors_file_alone_carries_its_description(tmp_path, monkeypatch):
    path = write_checkpoint(str(tmp_path / "ck.pt"), "SiT", dataset=None)
    export_checkpoint(load_checkpoint(path), str(tmp_path / "release"))
    os.replace(tmp_path / "release" / "model.safetensors", tmp_path / "alone.safetensors")
    expected = outputs(model_from_checkpoint(path))
    no_pickle(monkeypatch)
    ckpt = load_export(str(tmp_path / "alone.safetensors"))
    assert ckpt["dataset"] is None and ckpt["arch"]["name"] == "SiT-S/2"
    assert same(outputs(load_exported_model(str(tmp_path / "alone.safetensors"))), expected)


def test_multibudget_script_reads_an_export(tmp_path, monkeypatch):
    path = write_checkpoint(str(tmp_path / "elit.pt"), "ELIT-SiT")
    export_checkpoint(load_checkpoint(path), str(tmp_path / "release"))
    expected = outputs(model_from_checkpoint(path), budget=0.5)
    no_pickle(monkeypatch)
    cfg = parse_config(InferenceConfig, ["--ckpt", str(tmp_path / "release"), "--model", "ELIT-SiT-S/2"])
    model, ck = mbi.load_model(cfg, "cpu")                           # the script's loader (checks --model too)
    assert ck.path.endswith("release") and same(outputs(model, budget=0.5), expected)


def test_command_line_and_bad_inputs(tmp_path):
    path = write_checkpoint(str(tmp_path / "ck.pt"), "SiT")
    out = subprocess.run([sys.executable, "-m", "models.export", path, str(tmp_path / "rel")], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(tmp_path / "rel" / "model.safetensors")
    with pytest.raises(UserError, match="no exported weights"):
        load_export(str(tmp_path / "empty"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        load_export(str(tmp_path / "junk.safetensors"))
    bad = subprocess.run([sys.executable, "-m", "models.export", str(tmp_path / "none.pt"), str(tmp_path / "o")],
                         cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "not found" in bad.stderr
