"""Models: registry, reference parity, ELIT budget semantics, cost, purity of forward."""

import os

import pytest
import torch
import torch.distributed as dist

from conftest import FIXTURES, OpLog, tiny_model
from models import ELIT_REFERENCE_LAYOUT, MODEL_NAMES, build_from_arch, build_model, parse_model_name
from models.convert import config_from_reference, convert_reference
from models.flops import gflops_per_image


# ---------------------------------------------------------------------------------------------------------
# Registry.

def test_registry_is_every_family_size_patch():
    assert len(MODEL_NAMES) == 3 * 4 * 3
    assert {"SiT-XL/2", "ELIT-SiT-S/8", "DFM-SiT-L/4"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_name_builds_on_meta(name):
    with torch.device("meta"):
        model = build_model(name)
    family, size, patch = parse_model_name(name)
    assert model.family == family and model.patch_size == patch
    assert model.arch["name"] == name


def test_sit_xl_parameter_count():
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model("SiT-XL/2").parameters())
    assert abs(n - 675.1e6) / 675.1e6 < 1e-3, n


@pytest.mark.parametrize("bad", ["SiT-XXL/2", "SiT-XL/3", "ELIT-DiT-B/2", "", "sit-xl/2"])
def test_unknown_model_name_lists_valid_names(bad):
    with pytest.raises(ValueError, match="valid names are"):
        build_model(bad)


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="elit_group_size"):
        build_model("SiT-S/2", elit_group_size=4)


@pytest.mark.parametrize("family", ["SiT", "ELIT-SiT", "DFM-SiT"])
def test_every_family_runs_at_S_size(family):
    model = build_model(f"{family}-S/2", input_size=8, num_classes=10).eval()
    inputs = model.example_inputs(2)
    with torch.no_grad():
        out = model(*inputs)
    expected = inputs[0]
    if family == "DFM-SiT":
        assert [o.shape for o in out] == [e.shape for e in expected]
    else:
        assert out.shape == expected.shape


@pytest.mark.parametrize("family", ["SiT", "ELIT-SiT", "DFM-SiT"])
def test_arch_rebuilds_the_same_model(family):
    model = tiny_model(family)
    clone = build_from_arch(model.arch).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    inputs = model.example_inputs(2)
    with torch.no_grad():
        a, b = model(*inputs), clone(*inputs)
    for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Parity with the public reference (fixtures made by its code).

def load_fixture(name):
    return torch.load(os.path.join(FIXTURES, f"upstream_{name}_shared.pt"), map_location="cpu", weights_only=False)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", ["sit", "elit"])
def test_reference_parity(name):
    fx = load_fixture(name)
    model = convert_reference(fx["family"], fx["state_dict"], fx["config"])
    x, t, y = fx["inputs"]["x"], fx["inputs"]["t"], fx["inputs"]["y"]
    assert len(fx["outputs"]) >= 1
    for budget, expected in fx["outputs"].items():
        with torch.no_grad():
            out = model(x, t, y, budget=budget)
        assert rel_err(out, expected) < 1e-5, (budget, rel_err(out, expected))


def test_reference_parity_dfm():
    fx = load_fixture("dfm")
    model = convert_reference(fx["family"], fx["state_dict"], fx["config"])
    xs = [fx["inputs"]["x"][s] for s in sorted(fx["inputs"]["x"])]
    for mask, expected in fx["outputs"].items():
        assert list(mask) == sorted(mask, reverse=True)      # a prefix of stages is active
        with torch.no_grad():
            outs = model(xs, fx["inputs"]["t"], fx["inputs"]["y"], active=sum(mask))
        for s, out in enumerate(outs):
            assert rel_err(out, expected[s]) < 1e-5, (mask, s)


@pytest.mark.parametrize("name", ["sit", "elit", "dfm"])
def test_reference_vocabulary_maps_to_ours(name):
    fx = load_fixture(name)
    mapped = config_from_reference(fx["family"], fx["upstream_kwargs"])
    for key, value in mapped.items():
        if key in fx["config"]:
            assert fx["config"][key] == value, key


def test_parity_fails_for_a_wrong_layout():
    """The parity check can fail: the same weights under our default Write (kept latents only) differ."""
    fx = load_fixture("elit")
    model = convert_reference(fx["family"], fx["state_dict"], dict(fx["config"], elit_write_dropped_latents=False))
    x, t, y = fx["inputs"]["x"], fx["inputs"]["t"], fx["inputs"]["y"]
    with torch.no_grad():
        assert rel_err(model(x, t, y, budget=0.25), fx["outputs"][0.25]) > 1e-3
        assert rel_err(model(x, t, y, budget=1.0), fx["outputs"][1.0]) < 1e-5


def test_converter_rejects_a_wrong_grid():
    fx = load_fixture("sit")
    with pytest.raises(ValueError, match="pos_embed"):
        convert_reference("SiT", fx["state_dict"], dict(fx["config"], input_size=16))


# ---------------------------------------------------------------------------------------------------------
# ELIT budgets.

def test_budget_levels_and_parsing():
    model = tiny_model("ELIT-SiT")                       # 4 windows of 4 latents
    assert model.budget_levels == [0.25, 0.5, 0.75, 1.0]
    assert model.latents_per_window(None) == 4
    assert model.latents_per_window(1) == 4
    assert model.latents_per_window(0.5) == 2
    assert model.latents_per_window(0.3) == 1            # floor(0.3 * 4)
    assert model.latents_per_window(8) == 2               # a total of 8 latent tokens over 4 windows
    assert model.latents_per_window(16) == 4


@pytest.mark.parametrize("bad", [0, 1.5, 0.2, -1, 6, 20])
def test_invalid_budget_names_valid_levels(bad):
    model = tiny_model("ELIT-SiT")
    with pytest.raises(ValueError, match="valid fractions are 1/4, 2/4, 3/4, 4/4"):
        model.latents_per_window(bad)
    with pytest.raises(ValueError, match="valid fractions"):
        model(*model.example_inputs(1), budget=bad)


def test_budget_tensor_is_rejected():
    model = tiny_model("ELIT-SiT")
    with pytest.raises(TypeError):
        model(*model.example_inputs(1), budget=torch.tensor(0.5))


def test_sit_rejects_budgets():
    model = tiny_model("SiT")
    model(*model.example_inputs(1), budget=1)
    with pytest.raises(ValueError, match="no compute budgets"):
        model(*model.example_inputs(1), budget=0.5)


@pytest.mark.parametrize("write_dropped", [False, True])
@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75, 1.0, None])
def test_core_sees_G_times_k_tokens(budget, write_dropped):
    model = tiny_model("ELIT-SiT", elit_write_dropped_latents=write_dropped)
    seen = []
    core = model.blocks[model.head_depth:model.depth - model.tail_depth]
    assert len(core) == model.depth - 2
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1])) for b in core]
    with torch.no_grad():
        model(*model.example_inputs(2), budget=budget)
    for h in hooks:
        h.remove()
    k = model.latents_per_window(budget)
    assert seen == [model.windows * k] * len(core)


def test_full_budget_is_independent_of_write_dropped_latents():
    a = tiny_model("ELIT-SiT", elit_write_dropped_latents=False)
    b = tiny_model("ELIT-SiT", elit_write_dropped_latents=True)
    b.load_state_dict(a.state_dict())
    inputs = a.example_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(a(*inputs, budget=1.0), b(*inputs, budget=None), rtol=0, atol=0)
        assert not torch.allclose(a(*inputs, budget=0.5), b(*inputs, budget=0.5))


def test_read_computes_only_kept_queries_exactly():
    """Queries do not interact in Read: computing k of K slots equals slicing the K computed ones."""
    model = tiny_model("ELIT-SiT")
    x, t, y = model.example_inputs(2)
    c = model.condition(t, y)
    h = model.embed(x).view(2, model.windows, model.slots, -1) + model.read.window_pos
    with torch.no_grad():
        full = model.read(h, c, model.slots)
        for k in range(1, model.slots + 1):
            torch.testing.assert_close(model.read(h, c, k), full[:, :, :k])


def test_eval_is_deterministic_without_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    model = tiny_model("ELIT-SiT")
    inputs = model.example_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), model(*inputs), rtol=0, atol=0)


def test_train_mode_forward_is_deterministic_too():
    """No hidden randomness (no dropout, no budget draws) even in train mode."""
    model = tiny_model("ELIT-SiT").train()
    inputs = model.example_inputs(2)
    torch.testing.assert_close(model(*inputs, budget=0.5), model(*inputs, budget=0.5), rtol=0, atol=0)


@pytest.mark.parametrize("family,kw", [("SiT", {}), ("ELIT-SiT", {"budget": 0.5}), ("ELIT-SiT", {}),
                                        ("DFM-SiT", {"active": 1})])
def test_forward_has_no_host_sync_and_no_batch_loop(family, kw):
    model = tiny_model(family).train()
    logs = []
    for batch in (2, 5):
        model.zero_grad(set_to_none=True)
        inputs = model.example_inputs(batch)
        with OpLog() as log:
            out = model(*inputs, **kw)
            (sum(o.sum() for o in out) if isinstance(out, list) else out.sum()).backward()
        assert not log.syncs, log.syncs
        logs.append(log.ops)
    assert logs[0] == logs[1]                           # the same ops for any batch size: no loop over it


# ---------------------------------------------------------------------------------------------------------
# Cost.

def test_flops_fall_with_budget_tiny():
    model = tiny_model("ELIT-SiT")
    costs = [gflops_per_image(model, budget=b) for b in model.budget_levels]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    ref = tiny_model("ELIT-SiT", elit_write_dropped_latents=True)
    assert gflops_per_image(ref, budget=0.25) > gflops_per_image(model, budget=0.25)
    assert gflops_per_image(ref, budget=1.0) == pytest.approx(gflops_per_image(model, budget=1.0))


def test_elit_xl_cost_at_one_sixteenth():
    with torch.device("meta"):
        model = build_model("ELIT-SiT-XL/2")
        reference = build_model("ELIT-SiT-XL/2", **ELIT_REFERENCE_LAYOUT)
    full = gflops_per_image(model)
    assert gflops_per_image(model, budget=1 / 16) <= 0.40 * full
    assert gflops_per_image(reference, budget=1 / 16) > gflops_per_image(model, budget=1 / 16)
    with torch.device("meta"):
        sit = build_model("SiT-XL/2")
    assert full == pytest.approx(gflops_per_image(sit), rel=0.05)   # the interface is cheap at full budget


# ---------------------------------------------------------------------------------------------------------
# REPA features.

def test_elit_repa_features_are_in_raster_order():
    """ELIT keeps tokens in window order; its REPA features must equal SiT's for the same head weights."""
    elit = tiny_model("ELIT-SiT", repa_depth=1, repa_z_dim=8)
    sit = tiny_model("SiT", repa_depth=1, repa_z_dim=8, seed=1)
    shared = {k: v for k, v in elit.state_dict().items() if k in sit.state_dict()}
    sit.load_state_dict(shared, strict=False)
    inputs = elit.example_inputs(2)
    with torch.no_grad():
        _, fe = elit(*inputs, return_features=True)
        _, fs = sit(*inputs, return_features=True)
    torch.testing.assert_close(fe, fs, rtol=1e-4, atol=1e-4)


def test_repa_depth_in_the_core_is_rejected():
    with pytest.raises(ValueError, match="latent core"):
        tiny_model("ELIT-SiT", repa_depth=2)


# ---------------------------------------------------------------------------------------------------------
# Initialisation.

def test_init_is_adaln_zero_and_write_is_identity():
    torch.manual_seed(0)
    model = build_model("ELIT-SiT-S/2", input_size=8, num_classes=10, elit_group_size=2)
    x, t, y = model.example_inputs(2)
    with torch.no_grad():
        assert model(x, t, y).abs().max() == 0           # zeroed final layer
        h = torch.randn(2, model.windows, model.slots, model.hidden_size)
        lat = torch.randn(2, model.windows, 1, model.hidden_size)
        torch.testing.assert_close(model.write(h, lat), h + model.write.window_pos)


def test_convert_command_line_on_a_reference_checkpoint(tmp_path):
    """A reference-style training checkpoint (ema + pickled argparse.Namespace) -> our checkpoint -> same outputs."""
    import argparse
    import subprocess
    import sys

    from models.checkpoint import model_from_checkpoint
    from conftest import ROOT, script_env
    fx = load_fixture("elit")
    kw = fx["upstream_kwargs"]
    args = argparse.Namespace(model="ELIT-SiT-S/2", resolution=8 * kw["input_size"], encoder_depth=kw["encoder_depth"],
                              dit_decoder_depth=kw["dit_decoder_depth"], group_size=kw["group_size"],
                              num_classes=kw["num_classes"], qk_norm=False)
    noise = {k: v + 1.0 for k, v in fx["state_dict"].items()}            # 'model' differs from 'ema'
    torch.save({"model": noise, "ema": fx["state_dict"], "opt": {}, "args": args, "steps": 7}, tmp_path / "ref.pt")
    out = subprocess.run([sys.executable, "-m", "models.convert", "--ckpt", str(tmp_path / "ref.pt"),
                          "--out", str(tmp_path / "ours.pt"), "--set", f"hidden_size={kw['hidden_size']}",
                          f"depth={kw['depth']}", f"num_heads={kw['num_heads']}"],
                         cwd=ROOT, capture_output=True, text=True, env=script_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    model = model_from_checkpoint(str(tmp_path / "ours.pt"))            # weights_only load of our format
    assert model.write_dropped_latents and model.arch["name"] == "ELIT-SiT-S/2"
    x, t, y = fx["inputs"]["x"], fx["inputs"]["t"], fx["inputs"]["y"]
    with torch.no_grad():
        for budget, expected in fx["outputs"].items():
            assert rel_err(model(x, t, y, budget=budget), expected) < 1e-5


def test_reference_loader_allows_only_the_namespace(tmp_path):
    from models.convert import load_reference_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    torch.save({"ema": {}, "args": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_reference_checkpoint(str(tmp_path / "evil.pt"))
