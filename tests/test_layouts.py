"""Public SiT (willisma/SiT) and REPA (sihyun-yu/REPA) state dicts -> our models, with the same outputs.

The tiny "public" checkpoints are built here from the facts of their layouts (key names, shapes, the frozen
sin-cos pos_embed, SiT's learn_sigma head and time direction; models/layouts.py has the table), and their
outputs are computed by `reference_forward`, an independent functional forward written from the same facts
(convolutional patch embedding, explicit softmax attention, einsum unpatchify). Nothing is downloaded.
"""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TINY, TINY_ELIT, script_env, tiny_model
from models.checkpoint import model_from_checkpoint
from models.convert import convert_state_dict
from models.layouts import detect_layout, infer_settings
from sampling.load import load_for_sampling

D, C, P, GRID, DEPTH, CLASSES, HEADS, Z = 384, 4, 2, 4, 2, 10, 6, 8   # D = 384: the S width, 6 heads


def sincos_table(dim, grid):
    """MAE/DiT 2-D sin-cos table (grid*grid, dim): first half encodes the column, second the row."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    def enc(pos):
        a = pos.flatten().double()[:, None] * omega[None]
        return torch.cat([a.sin(), a.cos()], 1)
    return torch.cat([enc(cols), enc(rows)], 1).float()


def public_state_dict(layout, projector=False, seed=0):
    """Random weights in the public layout: 'sit' (learn_sigma head of 2C) or 'repa' (C, optional projector)."""
    g = torch.Generator().manual_seed(seed)
    out_ch = 2 * C if layout == "sit" else C
    shapes = {"x_embedder.proj.weight": (D, C, P, P), "x_embedder.proj.bias": (D,),
              "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
              "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
              "y_embedder.embedding_table.weight": (CLASSES + 1, D),
              "final_layer.linear.weight": (P * P * out_ch, D), "final_layer.linear.bias": (P * P * out_ch,),
              "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    for i in range(DEPTH):
        shapes.update({f"blocks.{i}.attn.qkv.weight": (3 * D, D), f"blocks.{i}.attn.qkv.bias": (3 * D,),
                       f"blocks.{i}.attn.proj.weight": (D, D), f"blocks.{i}.attn.proj.bias": (D,),
                       f"blocks.{i}.mlp.fc1.weight": (4 * D, D), f"blocks.{i}.mlp.fc1.bias": (4 * D,),
                       f"blocks.{i}.mlp.fc2.weight": (D, 4 * D), f"blocks.{i}.mlp.fc2.bias": (D,),
                       f"blocks.{i}.adaLN_modulation.1.weight": (6 * D, D), f"blocks.{i}.adaLN_modulation.1.bias": (6 * D,)})
    if projector:
        for j, (o, i) in zip((0, 2, 4), ((2048, D), (2048, 2048), (Z, 2048))):
            shapes.update({f"projectors.0.{j}.weight": (o, i), f"projectors.0.{j}.bias": (o,)})
    sd = {k: torch.randn(s, generator=g) / math.sqrt(s[-1]) for k, s in shapes.items()}
    sd["pos_embed"] = sincos_table(D, GRID)[None]
    return sd


def reference_forward(sd, x, t, y, encoder_depth=0):
    """The public models' forward from their layout facts -> (output (B, out_ch, H, W), REPA features or None)."""
    lin = lambda v, name: F.linear(v, sd[name + ".weight"], sd[name + ".bias"])
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]                       # (B, N, D)
    B, N, _ = h.shape
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    angles = t[:, None].float() * freqs[None]
    temb = lin(F.silu(lin(torch.cat([angles.cos(), angles.sin()], 1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    norm = lambda v: F.layer_norm(v, (D,), eps=1e-6)
    feats = None
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sa, ca, ga, sm, cm, gm = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, -1)
        a = norm(h) * (1 + ca[:, None]) + sa[:, None]
        q, k, v = lin(a, b + "attn.qkv").view(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), -1)
        h = h + ga[:, None] * lin((w @ v).transpose(1, 2).reshape(B, N, D), b + "attn.proj")
        m = norm(h) * (1 + cm[:, None]) + sm[:, None]
        h = h + gm[:, None] * lin(F.gelu(lin(m, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        if i + 1 == encoder_depth:
            z = lin(F.silu(lin(F.silu(lin(h, "projectors.0.0")), "projectors.0.2")), "projectors.0.4")
            feats = z
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, -1)
    out = lin(norm(h) * (1 + scale[:, None]) + shift[:, None], "final_layer.linear")
    ch = out.shape[-1] // (P * P)
    out = torch.einsum("nhwpqc->nchpwq", out.view(B, GRID, GRID, P, P, ch)).reshape(B, ch, GRID * P, GRID * P)
    return out, feats


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, C, GRID * P, GRID * P, generator=g), torch.rand(3, generator=g),
            torch.randint(0, CLASSES, (3,), generator=g))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------------------------------------------------

def test_layouts_are_told_apart_and_settings_read_from_the_shapes():
    assert detect_layout(public_state_dict("sit")) == "sit"
    assert detect_layout(public_state_dict("repa")) == "repa"
    assert detect_layout(public_state_dict("repa", projector=True)) == "repa"
    assert detect_layout(tiny_model("SiT").state_dict()) == "ours"
    s = infer_settings(public_state_dict("repa", projector=True))
    assert s == dict(hidden_size=D, in_channels=C, patch_size=P, depth=DEPTH, num_classes=CLASSES, mlp_ratio=4.0,
                     qk_norm=False, num_heads=HEADS, input_size=GRID * P, repa_z_dim=Z)


def test_public_xl_shapes_give_sit_xl_2():
    """The shapes of the public SiT-XL/2 (on the meta device: no memory) -> our SiT-XL/2 settings."""
    with torch.device("meta"):
        sd = {"x_embedder.proj.weight": torch.empty(1152, 4, 2, 2), "pos_embed": torch.empty(1, 256, 1152),
              "y_embedder.embedding_table.weight": torch.empty(1001, 1152),
              "final_layer.linear.weight": torch.empty(2 * 2 * 8, 1152),
              **{f"blocks.{i}.mlp.fc1.weight": torch.empty(4608, 1152) for i in range(28)}}
    assert detect_layout(sd) == "sit"
    s = infer_settings(sd)
    assert (s["depth"], s["hidden_size"], s["num_heads"], s["patch_size"], s["input_size"], s["num_classes"]) == \
        (28, 1152, 16, 2, 32, 1000)


def test_public_sit_gives_our_velocity():
    """SiT's velocity points to data at t = 1 and its head has a sigma half: ours(x, t) = -SiT(x, 1 - t)[:C]."""
    sd = public_state_dict("sit")
    model, notes = convert_state_dict(sd)
    assert model.arch["name"] == "SiT-S/2" and model.depth == DEPTH and model.out_channels == C and not notes
    x, t, y = inputs()
    with torch.no_grad():
        ref, _ = reference_forward(sd, x, 1 - t, y)
        ours = model(x, t, y)
    assert ref.shape[1] == 2 * C
    assert rel_err(ours, -ref[:, :C]) < 1e-5


@pytest.mark.parametrize("projector", [False, True])
def test_public_repa_gives_the_same_outputs_and_features(projector):
    sd = public_state_dict("repa", projector=projector)
    settings = dict(repa_depth=1) if projector else {}
    model, notes = convert_state_dict(sd, None, settings)
    x, t, y = inputs()
    with torch.no_grad():
        ref, ref_feats = reference_forward(sd, x, t, y, encoder_depth=1 if projector else 0)
        if projector:
            ours, feats = model(x, t, y, return_features=True)
            assert rel_err(feats, ref_feats) < 1e-5
        else:
            ours = model(x, t, y)
    assert rel_err(ours, ref) < 1e-5 and not notes


def test_repa_projector_without_its_depth_is_dropped_with_a_note():
    sd = public_state_dict("repa", projector=True)
    model, notes = convert_state_dict(sd)
    assert model.projector is None and len(notes) == 1 and "repa_depth" in notes[0]
    x, t, y = inputs()
    with torch.no_grad():
        assert rel_err(model(x, t, y), reference_forward(sd, x, t, y)[0]) < 1e-5


def test_plain_state_dicts_of_ours():
    sit = tiny_model("SiT")
    model, _ = convert_state_dict(sit.state_dict(), settings=dict(input_size=8, num_heads=TINY["num_heads"]))
    elit = tiny_model("ELIT-SiT")
    converted, _ = convert_state_dict(elit.state_dict(), "ELIT-SiT-S/2", dict(TINY, **TINY_ELIT))
    x, t, y = sit.example_inputs(3)
    with torch.no_grad():
        assert torch.equal(model(x, t, y), sit(x, t, y))
        for budget in elit.budget_levels:
            assert torch.equal(converted(x, t, y, budget=budget), elit(x, t, y, budget=budget))


def test_bad_plain_state_dicts_are_clear_errors():
    with pytest.raises(ValueError, match="depth=2, SiT-XL/2 has 28"):
        convert_state_dict(public_state_dict("repa"), "SiT-XL/2")
    with pytest.raises(ValueError, match="pass --resolution"):
        convert_state_dict(tiny_model("SiT").state_dict(), settings=dict(num_heads=2))
    with pytest.raises(ValueError, match="not a SiT-family state dict"):
        convert_state_dict({"weight": torch.zeros(3)})


def test_sampling_loader_names_the_converter_for_an_incomplete_state_dict(tmp_path):
    from utils.errors import UserError
    torch.save(tiny_model("SiT").state_dict(), tmp_path / "bare.pt")         # ours: no pos_embed, no input size
    with pytest.raises(UserError, match="python -m models.convert"):
        load_for_sampling(str(tmp_path / "bare.pt"))


def test_convert_command_line_and_generate_load_public_files(tmp_path):
    """`python -m models.convert` on the public SiT file; sampling's loader reads the file itself."""
    sd = public_state_dict("sit")
    torch.save(sd, tmp_path / "SiT-XL-2-256x256.pt")
    out = subprocess.run([sys.executable, "-m", "models.convert", "--ckpt", str(tmp_path / "SiT-XL-2-256x256.pt"),
                          "--out", str(tmp_path / "ours.pt")], cwd=ROOT, capture_output=True, text=True,
                         env=script_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "willisma/SiT" in out.stdout
    x, t, y = inputs()
    with torch.no_grad():
        expected = -reference_forward(sd, x, 1 - t, y)[0][:, :C]
        assert rel_err(model_from_checkpoint(str(tmp_path / "ours.pt"))(x, t, y), expected) < 1e-5
        ck = load_for_sampling(str(tmp_path / "SiT-XL-2-256x256.pt"))       # generate.py / multibudget path
        assert rel_err(ck.model(x, t, y), expected) < 1e-5
    assert ck.dataset_meta["kind"] == "latents" and ck.dataset_meta["vae_class"] == "AutoencoderKL"
    torch.save(public_state_dict("repa", projector=True), tmp_path / "last.pt")
    ck = load_for_sampling(str(tmp_path / "last.pt"))
    assert ck.model.projector is None and ck.label == "last"


def test_generate_samples_a_public_state_dict(tmp_path):
    from test_generate import gen, load_npz, tiny_vae
    vae_dir = str(tmp_path / "vae")
    tiny_vae(vae_dir)
    torch.save(public_state_dict("repa"), tmp_path / "last.pt")
    out = gen("--ckpt", str(tmp_path / "last.pt"), "--num-samples", "2", "--per-proc-batch-size", "2",
              "--num-steps", "2", "--sample-dir", str(tmp_path / "s"), "--vae", vae_dir)
    assert load_npz(out)["arr_0"].shape[0] == 2


def test_convert_reads_a_sit_training_checkpoint(tmp_path, capsys):
    """willisma/SiT's train.py saves {model, ema, opt, args}: its ema entry converts like the public file."""
    import argparse
    from models.convert import main
    sd = public_state_dict("sit")
    torch.save({"model": {k: v + 1 for k, v in sd.items()}, "ema": sd, "opt": {},
                "args": argparse.Namespace(model="SiT-XL/2", image_size=256)}, tmp_path / "0400000.pt")
    main(["--ckpt", str(tmp_path / "0400000.pt"), "--out", str(tmp_path / "ours.pt")])
    assert "willisma/SiT" in capsys.readouterr().out
    x, t, y = inputs()
    with torch.no_grad():
        ours = model_from_checkpoint(str(tmp_path / "ours.pt"))(x, t, y)
    assert rel_err(ours, -reference_forward(sd, x, 1 - t, y)[0][:, :C]) < 1e-5
