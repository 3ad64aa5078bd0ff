"""Model contracts, each checked against an independent construction: the noise shapes a model asks for, the
REPA features it returns, and what `import models` loads."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_model
from models import FAMILIES
from models.convert import CONVERSIONS
from models.pyramid import decompose

# (family, patch, settings): every family, DFM with 2 and 3 stages (3 needs a patch size divisible by 4).
SHAPE_CASES = [("SiT", 2, {}), ("ELIT-SiT", 2, {}), ("DFM-SiT", 2, {"dfm_stages": 2}),
               ("DFM-SiT", 4, {"dfm_stages": 3})]


@pytest.mark.parametrize("family,patch,kw", SHAPE_CASES)
def test_noise_shapes_are_the_pyramid_of_an_image(family, patch, kw):
    model = tiny_model(family, patch=patch, **kw)
    x = torch.randn(1, model.in_channels, model.input_size, model.input_size)
    stages = kw.get("dfm_stages", 1)
    expected = [tuple(p.shape[1:]) for p in decompose(x, stages)] if family == "DFM-SiT" else [tuple(x.shape[1:])]
    assert model.noise_shapes() == expected
    assert len(expected) == model.stages == stages


@pytest.mark.parametrize("family,patch,kw", SHAPE_CASES)
def test_outputs_have_the_noise_shapes(family, patch, kw):
    """A sampler draws noise of `noise_shapes()` and integrates velocities of the same shapes."""
    model = tiny_model(family, patch=patch, **kw)
    with torch.no_grad():
        out = model(*model.example_inputs(2))
    outs = out if isinstance(out, list) else [out]
    assert [tuple(o.shape[1:]) for o in outs] == model.noise_shapes()


# ---------------------------------------------------------------------------------------------------------
# REPA features = the projector applied to the tokens after block `repa_depth`, in raster order.

def raster_of_window_order(grid: int, group: int) -> torch.Tensor:
    """Raster position of each token in ELIT's window order (window-major, row-major inside a window)."""
    n = grid // group
    return torch.arange(grid * grid).view(n, group, n, group).permute(0, 2, 1, 3).flatten()


REPA_CASES = [
    ("SiT", 2, dict(repa_depth=2), {}),
    ("SiT", 2, dict(repa_depth=4), {}),
    ("ELIT-SiT", 2, dict(repa_depth=1), dict(budget=0.5)),                       # a head block
    ("ELIT-SiT", 2, dict(repa_depth=4), dict(budget=0.25)),                      # a tail block
    ("ELIT-SiT", 2, dict(repa_depth=4, elit_write_dropped_latents=True), dict(budget=0.5)),
    ("DFM-SiT", 2, dict(repa_depth=2), dict(active=1)),
    ("DFM-SiT", 4, dict(repa_depth=3, dfm_stages=3), dict(active=2)),
]


@pytest.mark.parametrize("family,patch,kw,call", REPA_CASES)
def test_repa_features_are_the_projected_block_output(family, patch, kw, call):
    model = tiny_model(family, patch=patch, repa_z_dim=8, **kw)
    captured = []
    hook = model.blocks[model.repa_depth - 1].register_forward_hook(lambda m, args, out: captured.append(out))
    inputs = model.example_inputs(2)
    with torch.no_grad():
        out, feats = model(*inputs, **call, return_features=True)
        plain = model(*inputs, **call)
        expected = model.projector(captured[0])                        # (B, N, z) in the model's token order
    hook.remove()
    if family == "ELIT-SiT":                                           # window order -> raster order
        feats = feats[:, raster_of_window_order(model.grid, model.group_size)]
    assert feats.shape == (2, model.grid ** 2, 8)
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)
    outs, plains = (out, plain) if isinstance(out, list) else ([out], [plain])
    for a, b in zip(outs, plains):                                     # recording does not change the output
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_return_features_without_projector_is_rejected(family):
    model = tiny_model(family)
    with pytest.raises(ValueError, match="return_features needs a REPA projector"):
        model(*model.example_inputs(1), return_features=True)


def test_every_family_has_a_reference_conversion():
    assert set(CONVERSIONS) == set(FAMILIES.values())


# ---------------------------------------------------------------------------------------------------------
# `import models` loads nothing else of ours.

def repository_modules() -> set:
    """Top-level module and package names of this repository, from its files."""
    names = set()
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isdir(path) and not entry.startswith(".") and any(f.endswith(".py") for f in os.listdir(path)):
            names.add(entry)
    return names


def test_import_models_loads_no_other_repository_module():
    ours = sorted(repository_modules() - {"models"})
    assert {"utils", "training", "sampling", "loss", "samplers", "dataio"} <= set(ours)
    code = ("import json, sys, models; "
            f"ours = set({ours!r}); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ours or "
            "m in ('models.checkpoint', 'models.convert'))))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
