"""Objective: path identities, explicit randomness, label dropout, REPA, budget and stage draws, overfitting."""

import random
import urllib.error

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import loss as loss_module
import samplers
from conftest import tiny_model
from utils.errors import UserError
from loss import FlowMatchingLoss, LossOutput, allowed_budgets, draw_budget, draw_stage, repa_projection_loss, slice_draws
from training.repa import encoder_features, load_repa_encoder
from paths import PATHS, get_path

PATH_NAMES = list(PATHS)


# ---------------------------------------------------------------------------------------------------------
# The path.

@pytest.mark.parametrize("name", PATH_NAMES)
def test_coefficient_derivatives_match_autograd(name):
    path = get_path(name)
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64, requires_grad=True)
    for coef, deriv in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        (grad,) = torch.autograd.grad(coef(t).sum(), t)
        torch.testing.assert_close(grad, deriv(t.detach()))


@pytest.mark.parametrize("name", PATH_NAMES)
def test_velocity_is_the_time_derivative_of_the_path(name):
    path = get_path(name)
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    _, dxdt = torch.autograd.functional.jvp(lambda s: path.interpolate(x0, eps, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(dxdt, path.velocity(x0, eps, t))


@pytest.mark.parametrize("name", PATH_NAMES)
def test_x0_eps_and_score_recovery(name):
    """From (x_t, v) the conversions recover x0 and eps; the score equals the Gaussian score of a point mass."""
    path = get_path(name)
    x0, eps = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    x_t, v = path.interpolate(x0, eps, t), path.velocity(x0, eps, t)
    torch.testing.assert_close(path.x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(path.eps_from_velocity(x_t, v, t), eps)
    # data = a point mass at x0: p_t = N(alpha x0, sigma^2 I), score = -(x_t - alpha x0) / sigma^2
    a, s = path.alpha(t).view(-1, 1, 1, 1), path.sigma(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(path.score_from_velocity(x_t, v, t), -(x_t - a * x0) / s ** 2)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_float_and_tensor_times_agree(name):
    path = get_path(name)
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for fn in (path.interpolate, path.velocity):
        torch.testing.assert_close(fn(x0, eps, 0.3), fn(x0, eps, torch.full((2,), 0.3)))
    x_t, v = path.interpolate(x0, eps, 0.3), path.velocity(x0, eps, 0.3)
    torch.testing.assert_close(path.score_from_velocity(x_t, v, 0.3),
                               path.score_from_velocity(x_t, v, torch.full((2,), 0.3)))
    assert path.alpha(0.0) == pytest.approx(1.0) and path.sigma(1.0) == pytest.approx(1.0)
    assert path.sigma(0.0) == pytest.approx(0.0) and abs(path.alpha(1.0)) < 1e-12


def test_get_path_is_a_cached_singleton_and_rejects_unknown_names():
    assert get_path("linear") is get_path("linear") and get_path("cosine") is not get_path("linear")
    with pytest.raises(ValueError, match="valid: linear, cosine"):
        get_path("sigmoid")


def test_loss_and_samplers_use_the_same_path_object(monkeypatch):
    path = get_path("cosine")
    assert FlowMatchingLoss("cosine").path is path
    used = []
    for method in ("interpolate", "velocity", "score_from_velocity"):
        original = getattr(path, method)
        monkeypatch.setattr(path, method, lambda *a, _m=method, _f=original: used.append(_m) or _f(*a))
    model = tiny_model("SiT")
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    FlowMatchingLoss("cosine")(model, x0, y)
    assert {"interpolate", "velocity"} <= set(used)
    samplers.sample(model, torch.randn(2, 4, 8, 8), y, mode="sde", num_steps=3, path_type="cosine")
    assert "score_from_velocity" in used


# ---------------------------------------------------------------------------------------------------------
# Flow-matching loss.

class Spy(nn.Module):
    """Records the inputs of every call and forwards to a real model."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_classes, self.calls = inner, inner.num_classes, []

    def forward(self, x, t, y, budget=None, **kw):
        self.calls.append(dict(x=x.detach().clone(), t=t.detach().clone(), y=y.clone(), budget=budget))
        return self.inner(x, t, y, budget=budget, **kw)


def test_loss_is_the_per_sample_velocity_error():
    model = Spy(tiny_model("ELIT-SiT"))
    fm = FlowMatchingLoss("linear", label_dropout=0.0)
    x0, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 5, 9])
    draws = fm.draw(3, x0.shape[1:], generator=torch.Generator().manual_seed(1))
    out = fm(model, x0, y, budget=0.5, draws=draws)
    assert isinstance(out, LossOutput) and out.loss.shape == (3,) and out.proj is None
    t, noise = draws["t"].view(-1, 1, 1, 1), draws["noise"]
    x_t = (1 - t) * x0 + t * noise                                    # linear path, written out
    torch.testing.assert_close(model.calls[0]["x"], x_t)
    assert model.calls[0]["budget"] == 0.5
    with torch.no_grad():
        expected = ((model.inner(x_t, draws["t"], y, budget=0.5) - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(fm(model, x0, y, budget=0.25, draws=draws).loss, out.loss)


def test_draws_are_reproducible_and_rank_slices_agree():
    """The global micro-batch drawn once and sliced per rank gives each sample the loss it has in one process."""
    fm = FlowMatchingLoss("linear", weighting="lognormal", label_dropout=0.5)
    a = fm.draw(6, (4, 8, 8), generator=torch.Generator().manual_seed(3))
    b = fm.draw(6, (4, 8, 8), generator=torch.Generator().manual_seed(3))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    model = tiny_model("SiT")
    x0, y = torch.randn(6, 4, 8, 8), torch.arange(6)
    with torch.no_grad():
        whole = fm(model, x0, y, draws=a).loss
        parts = [fm(model, x0[i:i + 3], y[i:i + 3], draws=slice_draws(a, i, i + 3)).loss for i in (0, 3)]
    torch.testing.assert_close(torch.cat(parts), whole)


def test_label_dropout_uses_the_null_label():
    model = Spy(tiny_model("SiT"))
    fm = FlowMatchingLoss(label_dropout=0.5)
    draws = fm.draw(4, (4, 8, 8))
    draws["drop"] = torch.tensor([True, False, True, False])
    fm(model, torch.randn(4, 4, 8, 8), torch.tensor([1, 2, 3, 4]), draws=draws)
    assert model.calls[0]["y"].tolist() == [10, 2, 10, 4]
    drops = FlowMatchingLoss(label_dropout=0.1).draw(20000, (1,), generator=torch.Generator().manual_seed(0))["drop"]
    assert abs(drops.float().mean().item() - 0.1) < 0.01


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = FlowMatchingLoss(weighting="uniform").draw(20000, (1,), generator=g)["t"]
    lognormal = FlowMatchingLoss(weighting="lognormal").draw(20000, (1,), generator=g)["t"]
    for t in (uniform, lognormal):
        assert 0 <= t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02
    # logit-normal(0, 1): P(|logit t| < logit(0.75)) = P(|Z| < 1.0986) = 0.728 (uniform: 0.5)
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()   # noqa: E731
    assert abs(middle(uniform) - 0.5) < 0.02 and abs(middle(lognormal) - 0.728) < 0.02
    with pytest.raises(ValueError, match="weighting"):
        FlowMatchingLoss(weighting="beta")


# ---------------------------------------------------------------------------------------------------------
# REPA.

@pytest.mark.parametrize("family", ["SiT", "ELIT-SiT"])
def test_repa_term_is_negative_cosine_similarity(family):
    model = tiny_model(family, repa_depth=1, repa_z_dim=8)
    fm = FlowMatchingLoss(label_dropout=0.0)
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    draws = fm.draw(2, x0.shape[1:])
    with torch.no_grad():
        _, feats = model(fm.path.interpolate(x0, draws["noise"], draws["t"]), draws["t"], y, return_features=True)
    out = fm(model, x0, y, draws=draws, target_features=feats)       # aligned with itself
    torch.testing.assert_close(out.proj, torch.full((2,), -1.0))
    target = torch.randn_like(feats)
    out = fm(model, x0, y, draws=draws, target_features=target)
    torch.testing.assert_close(out.proj, -F.cosine_similarity(feats, target, dim=-1).mean(dim=1))
    out.proj.mean().backward()
    assert model.projector[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match"):
        repa_projection_loss(feats, target[:, :3])


class TinyEncoder(nn.Module):
    """A random stand-in for DINOv2 with its `forward_features` dict interface (patch 14, z = 8)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 14, 14)
        self.norm = nn.LayerNorm(8)
        self.seen = None

    def forward_features(self, x):
        self.seen = x
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": self.norm(tokens), "x_norm_clstoken": tokens.mean(1)}


def test_encoder_features_preprocessing():
    enc = TinyEncoder().eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    feats = encoder_features(enc, images)
    assert feats.shape == (2, 16 * 16, 8)
    assert enc.seen.shape == (2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected_in = F.interpolate((images / 255.0 - mean) / std, size=224, mode="bicubic")
    torch.testing.assert_close(enc.seen, expected_in)
    as_float = images.float() / 127.5 - 1                              # the same images in [-1, 1]
    torch.testing.assert_close(encoder_features(enc, as_float), feats, rtol=1e-4, atol=1e-4)


HUBCONF = """
import torch
class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, 14, 14)
    def forward_features(self, x):
        return {"x_norm_patchtokens": self.patch(x).flatten(2).transpose(1, 2)}
def dinov2_vitb14(pretrained=True, **kwargs):
    return Encoder()
"""


def test_load_repa_encoder_from_a_local_hub_folder_and_a_weights_file(tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    enc = load_repa_encoder("dinov2_vitb14", path=str(repo))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert encoder_features(enc, torch.zeros(1, 3, 16, 16)).shape == (1, 256, 8)
    # A weights file: the architecture comes from torch.hub's cached repo, the weights from the file.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = tmp_path / "w.pt"
    torch.save({k: torch.full_like(v, 0.5) for k, v in enc.state_dict().items()}, weights)
    loaded = load_repa_encoder("dinov2_vitb14", path=str(weights))
    assert all((v == 0.5).all() for v in loaded.state_dict().values())


def test_load_repa_encoder_offline_is_a_one_line_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    monkeypatch.setattr(torch.hub, "load", offline)                   # never touch the network in tests
    for path in (None, str(tmp_path / "missing.pt")):
        with pytest.raises(UserError, match="cannot load REPA encoder") as err:
            load_repa_encoder("dinov2_vitb14", path=path)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# Budget and stage draws.

LEVELS = [j / 16 for j in range(1, 17)]


def test_draw_budget_is_a_pure_function_of_seed_and_step():
    """Same (seed, step) -> same budget whatever the process's RNG state (i.e. on every rank)."""
    random.seed(1)
    torch.manual_seed(1)
    state_py, state_torch = random.getstate(), torch.get_rng_state()
    first = [draw_budget(LEVELS, 0.0, None, seed=7, step=s) for s in range(50)]
    assert random.getstate() == state_py and torch.equal(torch.get_rng_state(), state_torch)
    random.seed(2)
    torch.manual_seed(2)                                              # another "rank"
    assert [draw_budget(LEVELS, 0.0, None, seed=7, step=s) for s in range(50)] == first
    assert [draw_budget(LEVELS, 0.0, None, seed=8, step=s) for s in range(50)] != first
    assert len(set(first)) > 5


def test_draw_budget_covers_exactly_the_allowed_levels():
    drawn = [draw_budget(LEVELS, 0.5, 0.75, seed=0, step=s) for s in range(2000)]
    assert set(drawn) == {j / 16 for j in range(4, 9)}                # mask prob in [0.5, 0.75]
    counts = [drawn.count(b) for b in sorted(set(drawn))]
    assert max(counts) / min(counts) < 1.3                            # uniform over the levels
    assert set(draw_budget(LEVELS, 0.0, None, 0, s) for s in range(2000)) == set(LEVELS)   # min only: max = 15/16
    assert {draw_budget(LEVELS, None, None, 0, s) for s in range(100)} == {1.0}            # neither: full budget
    assert {draw_budget(LEVELS, None, 0.5, 0, s) for s in range(100)} == {0.5}
    assert allowed_budgets([0.25, 0.5, 0.75, 1.0], 0.0, 0.5) == [0.5, 0.75, 1.0]


def test_draw_budget_empty_range_names_the_valid_mask_probs():
    with pytest.raises(ValueError, match="valid mask probabilities are 0.75, 0.5, 0.25, 0"):
        draw_budget([0.25, 0.5, 0.75, 1.0], 0.1, 0.2, seed=0, step=0)


def test_draw_stage_follows_the_weights():
    draws = [draw_stage((0.9, 0.1), seed=0, step=s) for s in range(5000)]
    assert abs(draws.count(1) / 5000 - 0.1) < 0.015
    draws = [draw_stage((1, 2, 1), seed=3, step=s) for s in range(8000)]
    for stage, p in enumerate((0.25, 0.5, 0.25)):
        assert abs(draws.count(stage) / 8000 - p) < 0.02
    assert [draw_stage((1, 2, 1), 3, s) for s in range(100)] == draws[:100]
    with pytest.raises(ValueError, match="non-negative"):
        draw_stage((0.5, -0.1), 0, 0)


# ---------------------------------------------------------------------------------------------------------
# Learning.

@pytest.mark.parametrize("family,budget", [("SiT", None), ("ELIT-SiT", 0.5)])
def test_tiny_model_overfits_one_batch(family, budget):
    model = tiny_model(family, randomize=False).train()               # DiT init: the output starts at 0
    fm = FlowMatchingLoss(label_dropout=0.0)
    x0, y = torch.randn(4, 4, 8, 8), torch.arange(4)
    draws = fm.draw(4, x0.shape[1:], generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        value = fm(model, x0, y, budget=budget, draws=draws).loss.mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        losses.append(value.item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])


def test_module_has_no_hidden_global_draws_when_draws_are_given():
    """With explicit draws the loss consumes no global RNG: the step is reproducible from its draws alone."""
    fm = FlowMatchingLoss()
    model = tiny_model("SiT")
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    draws = fm.draw(2, x0.shape[1:], generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    with torch.no_grad():
        fm(model, x0, y, draws=draws)
    assert torch.equal(torch.get_rng_state(), state)
    assert loss_module.unwrap(nn.parallel.DataParallel(model)) is model
