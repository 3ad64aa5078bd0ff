"""REPA target encoders by name (training/encoders.py, training/repa.py): the timm architecture of every name,
name and path validation before anything loads, local weights (random-init, saved to tmp files), the real
forward of a ViT-S through the training loss, and several encoders averaged as REPA does."""

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import tiny_model, write_tiny_pixels
from loss import FlowMatchingLoss, repa_projection_loss
from models.blocks import MultiProjector, repa_projector
from training.encoders import (CLIP_MEAN, ENCODERS, IMAGENET_MEAN, build_timm_encoder, encoder_names, weight_paths)
from training.options import TrainConfig
from training import repa
from training.repa import RepaEncoders, load_repa_encoders, target_features
from utils.cli import parse_config
from utils.errors import UserError

timm = pytest.importorskip("timm")

# timm's own pretrained tags for the weights each name stands for: their configs are an independent record of
# the architecture's input side and normalisation (MoCo v3 has no timm weights).
TIMM_TAGS = {"dinov2": "lvd142m", "dinov1": "dino", "clip": "openai", "mae": "mae", "jepa": "in1k_ijepa"}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_name_builds_its_timm_architecture(name):
    spec = ENCODERS[name]
    model = build_timm_encoder(spec, device="meta")                    # the real size, at no cost
    assert isinstance(model, timm.models.VisionTransformer)
    assert model.patch_embed.patch_size == (spec.patch, spec.patch)
    assert model.embed_dim == spec.embed_dim and model.num_features == spec.embed_dim
    assert model.num_prefix_tokens == spec.prefix
    assert model.pos_embed.shape[1] in ((spec.img_size // spec.patch) ** 2, (spec.img_size // spec.patch) ** 2 + 1)
    assert isinstance(model.head, torch.nn.Identity)                   # features, no classifier
    kind = name.split("-")[0]
    if kind == "mocov3" and name.endswith("-s"):
        assert model.blocks[0].attn.num_heads == 12                    # MoCo v3's ViT-S, not timm's 6 heads
    if name.endswith("-reg"):
        assert model.num_reg_tokens == 4
    if kind == "clip":
        assert type(model.blocks[0].mlp.act).__name__ == "QuickGELU"  # OpenAI CLIP's activation
    if kind in TIMM_TAGS:
        cfg = timm.models.get_pretrained_cfg(f"{spec.arch}.{TIMM_TAGS[kind]}")
        assert cfg is not None, f"{spec.arch} has no .{TIMM_TAGS[kind]} weights in timm"
        assert tuple(cfg.mean) == pytest.approx(spec.mean) and tuple(cfg.std) == pytest.approx(spec.std)
        assert cfg.input_size[-1] == spec.img_size


def test_reference_names_and_lists_are_validated_before_anything_loads():
    for name in ("dinov2-vit-b", "dinov2-vit-b-reg", "dinov1-vit-b", "clip-vit-L", "mocov3-vit-b", "mae-vit-l",
                 "jepa-vit-h"):                                        # the reference's examples
        assert encoder_names(name) == [name.lower()]
    assert encoder_names("dinov2-vit-b, clip-vit-L") == ["dinov2-vit-b", "clip-vit-l"]
    assert encoder_names("dinov2_vitb14") == ["dinov2_vitb14"]        # the torch.hub path stays
    for bad, match in (("dinov5-vit-b", "unknown REPA encoder 'dinov5-vit-b'"), ("dinov2-vit-b,", "empty name"),
                       ("mae-vit-l,MAE-vit-L", "listed twice")):
        with pytest.raises(UserError, match=match) as err:
            encoder_names(bad)
        assert "\n" not in str(err.value)
    # Read from the options: the reference's enc_type and our repa_encoder, flag and YAML.
    cfg = parse_config(TrainConfig, ["--enc-type", "dinov2-vit-b,clip-vit-L"])
    assert cfg.repa_encoder == "dinov2-vit-b,clip-vit-L"
    with pytest.raises(UserError, match="unknown REPA encoder 'clip-vit-Q'"):
        parse_config(TrainConfig, ["--repa-encoder", "clip-vit-Q"])


def test_weights_paths_are_local_and_checked_first(tmp_path):
    names = ["dinov2-vit-s", "mae-vit-l"]
    with pytest.raises(UserError, match="needs a local weights file.*nothing is downloaded"):
        weight_paths(names, None)
    with pytest.raises(UserError, match="lists 3 paths for 2 encoders"):
        weight_paths(names, "a,b,c")
    (tmp_path / "dinov2-vit-s.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="no weights for REPA encoder 'mae-vit-l'"):
        weight_paths(names, str(tmp_path))
    (tmp_path / "mae-vit-l.pth").write_bytes(b"x")
    assert weight_paths(names, str(tmp_path)) == [str(tmp_path / "dinov2-vit-s.safetensors"),
                                                  str(tmp_path / "mae-vit-l.pth")]
    with pytest.raises(UserError, match="weights file not found: .*missing.pt"):
        weight_paths(names, f"{tmp_path / 'mae-vit-l.pth'},{tmp_path / 'missing.pt'}")
    assert weight_paths(["dinov2_vitb14"], None) == [None]            # torch.hub: its own cache


def test_a_missing_second_file_fails_before_the_first_encoder_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(repa, "load_timm_encoder", lambda n, p: built.append(n))
    (tmp_path / "a.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="not found"):
        load_repa_encoders("dinov2-vit-s,mocov3-vit-s", f"{tmp_path / 'a.pt'},{tmp_path / 'b.pt'}")
    assert built == []


def _random_weights(name, seed=0):
    """A random state dict of the real architecture (filled directly: timm's own init takes seconds on a CPU)."""
    torch.manual_seed(seed)
    model = build_timm_encoder(ENCODERS[name], device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.state_dict()


@pytest.fixture(scope="module")
def vit_s(tmp_path_factory):
    """dinov2-vit-s with random weights, as timm-layout safetensors; a second draw for the -reg variant."""
    folder = tmp_path_factory.mktemp("encoders")
    weights = {n: _random_weights(n, seed=i) for i, n in enumerate(["dinov2-vit-s", "dinov2-vit-s-reg"])}
    for n, state in weights.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{n}.safetensors"))
    return folder, weights


def test_local_weights_load_strictly_in_timm_and_release_layouts(vit_s, tmp_path):
    folder, weights = vit_s
    enc = load_repa_encoders("dinov2-vit-s", str(folder / "dinov2-vit-s.safetensors"))
    assert isinstance(enc, RepaEncoders) and enc.embed_dim == 384
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    for k, v in enc.encoders[0].state_dict().items():
        assert torch.equal(v, weights["dinov2-vit-s"][k]), k
    # MoCo v3's release layout (a {'state_dict'} of `module.base_encoder.` keys with its heads) -> timm's.
    moco = _random_weights("mocov3-vit-s", seed=3)
    release = {f"module.base_encoder.{k}": v for k, v in moco.items()}
    release["module.base_encoder.head.weight"] = torch.zeros(10, 384)
    release["module.predictor.0.weight"] = torch.zeros(4, 4)
    torch.save({"epoch": 1, "state_dict": release}, tmp_path / "moco.pth")
    enc = load_repa_encoders("mocov3-vit-s", str(tmp_path / "moco.pth"))
    assert all(torch.equal(v, moco[k]) for k, v in enc.encoders[0].state_dict().items())
    # Weights of another architecture: one line naming the encoder and the file.
    with pytest.raises(UserError, match="cannot load REPA encoder 'mae-vit-b'") as err:
        load_repa_encoders("mae-vit-b", str(folder / "dinov2-vit-s.safetensors"))
    assert "\n" not in str(err.value)


def test_timm_features_preprocess_like_repa(vit_s):
    """Input: [0, 1], the encoder's mean/std, bicubic to grid * patch; output: patch tokens after the norm."""
    folder, _ = vit_s
    enc = load_repa_encoders("dinov2-vit-s", str(folder / "dinov2-vit-s.safetensors"))
    vit = enc.encoders[0]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    grid = 4
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = F.interpolate((images / 255.0 - mean) / std, size=grid * 14, mode="bicubic")
    with torch.no_grad():
        expected = vit.forward_features(x)[:, 1:]                        # drop the class token
    feats = target_features(enc, {"image": images}, grid)
    assert feats.shape == (2, grid * grid, 384)
    torch.testing.assert_close(feats, expected)
    assert CLIP_MEAN != IMAGENET_MEAN                                  # CLIP rows use their own statistics
    assert ENCODERS["clip-vit-l"].mean == CLIP_MEAN


@pytest.mark.parametrize("family", ["SiT", "ELIT-SiT"])
def test_a_real_vit_s_through_the_training_loss(vit_s, family):
    folder, _ = vit_s
    enc = load_repa_encoders("dinov2-vit-s", str(folder / "dinov2-vit-s.safetensors"))
    model = tiny_model(family, repa_depth=1, repa_z_dim=enc.embed_dim).train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    target = target_features(enc, {"image": images}, model.grid)
    out = FlowMatchingLoss(label_dropout=0.0)(model, x0, y, target_features=target)
    assert out.proj.shape == (2,) and torch.isfinite(out.proj).all() and (out.proj.abs() <= 1).all()
    out.proj.mean().backward()
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert "projector.0.weight" in model.state_dict()                  # one encoder: the keys of before


def test_several_encoders_average_the_per_encoder_losses(vit_s):
    """Concatenated unit-normalised projections and targets give REPA's mean over encoders (two ways agree)."""
    folder, _ = vit_s
    enc = load_repa_encoders("dinov2-vit-s,dinov2-vit-s-reg", str(folder))
    assert enc.embed_dim == [384, 384]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    target = target_features(enc, {"image": images}, 4)                 # (B, 16, 768)
    singles = [target_features(RepaEncoders([n], [e]), {"image": images}, 4) for n, e in zip(enc.names, enc.encoders)]
    proj = repa_projector(32, enc.embed_dim)
    assert isinstance(proj, MultiProjector)
    h = torch.randn(3, 16, 32)
    combined = repa_projection_loss(proj(h), target)
    mean = sum(repa_projection_loss(head(h), z) for head, z in zip(proj.heads, singles)) / 2
    torch.testing.assert_close(combined, mean)
    # Through the model and the loss: one head per encoder, both trained.
    model = tiny_model("SiT", repa_depth=1, repa_z_dim=enc.embed_dim).train()
    assert {"projector.heads.0.4.weight", "projector.heads.1.4.weight"} <= set(model.state_dict())
    out = FlowMatchingLoss(label_dropout=0.0)(model, torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2]),
                                              target_features=target)
    out.proj.mean().backward()
    assert all(head[0].weight.grad.abs().sum() > 0 for head in model.projector.heads)
    assert repa_projector(32, [384])[0].weight.shape == (2048, 32)    # a one-element list: the plain MLP


def test_training_with_two_timm_encoders_writes_both_heads(vit_s, tmp_path):
    from training import Trainer
    folder, _ = vit_s
    data = str(tmp_path / "px8")
    write_tiny_pixels(data, 16, 8)
    cfg = parse_config(TrainConfig, [
        "--model", "SiT-S/2", "--data-dir", data, "--output-dir", str(tmp_path / "out"), "--exp-name", "run",
        "--global-batch-size", "4", "--max-train-steps", "2", "--log-every", "1", "--checkpointing-steps", "2",
        "--sample-every", "0", "--sample-num-steps", "1", "--report-to", "none", "--num-workers", "0",
        "--no-progress", "--proj-coeff", "0.5", "--repa-depth", "1", "--enc-type", "dinov2-vit-s,dinov2-vit-s-reg",
        "--repa-encoder-path", str(folder)])
    trainer = Trainer(cfg, model_kwargs=dict(hidden_size=32, depth=2, num_heads=2))
    trainer.fit()
    state = torch.load(os.path.join(tmp_path, "out", "run", "checkpoints", "0000002.pt"), weights_only=True)
    assert state["arch"]["repa_z_dim"] == [384, 384]
    assert {"projector.heads.0.0.weight", "projector.heads.1.0.weight"} <= set(state["model"])
