"""Samplers: ODE/Heun/SDE invariants, guidance (CFG, cheap CFG, autoguidance), budget schedule, bf16, DFM."""

import pytest
import torch
import torch.nn as nn

from conftest import OpLog, tiny_model
from models.dfm import decompose, recompose
from paths import get_path
from samplers import budget_at, dfm_schedule, guidance_scale, sample, sample_dfm

B, SHAPE = 3, (4, 8, 8)


# ---------------------------------------------------------------------------------------------------------
# Toy models and a recorder.

class Recorder(nn.Module):
    """Forwards to a model and records batch size, times, labels, budget / active stages of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_classes, self.calls = inner, inner.num_classes, []
        self.stages = getattr(inner, "stages", None)
        self.family = getattr(inner, "family", "toy")

    def forward(self, x, t, y, **kw):
        first = x[0] if isinstance(x, list) else x
        self.calls.append(dict(batch=first.shape[0], t=t.clone(), y=y.clone(),
                               autocast=torch.is_autocast_enabled("cpu"), **kw))
        return self.inner(x, t, y, **kw)


class LabelVelocity(nn.Module):
    """v = budget * table[y] in every channel (independent of x and t): a sample is noise - (guided row)."""

    num_classes = 10

    def __init__(self, channels=4):
        super().__init__()
        self.table = nn.Parameter(torch.randn(self.num_classes + 1, channels))

    def forward(self, x, t, y, budget=None):
        return (1.0 if budget is None else budget) * self.table[y][:, :, None, None].expand_as(x).clone()


class ZeroVelocity(nn.Module):
    num_classes = 10

    def forward(self, x, t, y, budget=None):
        return torch.zeros_like(x)


class GaussianVelocity(nn.Module):
    """The exact velocity E[v | x_t] for data x0 ~ N(m, s^2) per coordinate, on the given path.

    x_t = a x0 + sig eps is Gaussian with variance a^2 s^2 + sig^2; Gaussian conditioning gives
    E[x0 | x_t] = m + a s^2 (x_t - a m) / var and E[eps | x_t] = sig (x_t - a m) / var.
    """

    num_classes = 10

    def __init__(self, path, m=0.7, s=0.5):
        super().__init__()
        self.path, self.m, self.s = path, m, s

    def forward(self, x, t, y, budget=None):
        t = t.view(-1, 1, 1, 1)
        a, sig = self.path.alpha(t), self.path.sigma(t)
        var = a ** 2 * self.s ** 2 + sig ** 2
        x0 = self.m + a * self.s ** 2 * (x - a * self.m) / var
        eps = sig * (x - a * self.m) / var
        return self.path.d_alpha(t) * x0 + self.path.d_sigma(t) * eps


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *SHAPE, generator=g), torch.tensor([1, 4, 7])


# ---------------------------------------------------------------------------------------------------------
# Integrators.

def euler_reference(model, x, y, n, budget=None, heun=False):
    """A plain Euler / Heun loop written independently of samplers.py."""
    ts = torch.linspace(1, 0, n + 1).tolist()
    v = lambda x, t: model(x, torch.full((x.shape[0],), t), y, budget=budget)   # noqa: E731
    for i in range(n):
        d = v(x, ts[i])
        x_next = x + (ts[i + 1] - ts[i]) * d
        if heun and i < n - 1:
            x_next = x + (ts[i + 1] - ts[i]) * (d + v(x_next, ts[i + 1])) / 2
        x = x_next
    return x


@pytest.mark.parametrize("heun", [False, True])
def test_cfg_scale_one_equals_unguided(heun):
    model = tiny_model("ELIT-SiT")
    noise, y = inputs()
    with torch.no_grad():
        expected = euler_reference(model, noise, y, 6, budget=0.5, heun=heun)
    out = sample(model, noise, y, num_steps=6, heun=heun, cfg_scale=1.0, budget=0.5, unconditional_budget=0.25)
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("kw", [{}, {"unconditional_budget": 0.25},
                                {"unconditional_budget": 0.25, "autoguidance": True}])
def test_guidance_changes_every_channel_exactly(kw):
    model = LabelVelocity()
    noise, y = inputs()
    s = 3.0
    out = sample(model, noise, y, num_steps=5, cfg_scale=s, **kw)
    c = model.table[y][:, :, None, None]
    u = model.table[y if kw.get("autoguidance") else torch.full_like(y, 10)][:, :, None, None]
    u = u * kw.get("unconditional_budget", 1.0)
    torch.testing.assert_close(out, noise - (u + s * (c - u)))       # sum of dt = -1
    unguided = sample(model, noise, y, num_steps=5)
    assert ((out - unguided).abs().amax(dim=(0, 2, 3)) > 1e-3).all()  # every channel is guided


@pytest.mark.parametrize("kw", [dict(), dict(heun=True), dict(cfg_scale=4.0), dict(heun=True, cfg_scale=2.0)])
def test_zero_velocity_returns_the_input(kw):
    noise, y = inputs()
    torch.testing.assert_close(sample(ZeroVelocity(), noise, y, num_steps=7, **kw), noise, rtol=0, atol=0)


@pytest.mark.parametrize("mode,heun,expected", [("ode", False, 5), ("ode", True, 9), ("sde", False, 5)])
def test_number_of_model_calls(mode, heun, expected):
    model = Recorder(tiny_model("SiT"))
    sample(model, *inputs(), mode=mode, heun=heun, num_steps=5)
    assert len(model.calls) == expected
    ts = [c["t"][0].item() for c in model.calls]
    if mode == "sde":                                                  # linspace(1, 0.04, 5), then 0.04 -> 0
        assert ts == pytest.approx([1.0, 0.76, 0.52, 0.28, 0.04])
    elif not heun:
        assert ts == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
@pytest.mark.parametrize("mode,steps", [("ode", 40), ("sde", 120)])
def test_samplers_reach_the_data_distribution(path_type, mode, steps):
    """With the exact velocity of Gaussian data, ODE and SDE samples have the data's mean and std.
    The SDE uses the score from paths.py: a wrong sign or scale would shift the statistics."""
    model = GaussianVelocity(get_path(path_type), m=0.7, s=0.5)
    noise = torch.randn(2000, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample(model, noise, torch.zeros(2000, dtype=torch.long), mode=mode, num_steps=steps, path_type=path_type)
    assert abs(out.mean().item() - 0.7) < 0.03 and abs(out.std().item() - 0.5) < 0.03, (out.mean(), out.std())


# ---------------------------------------------------------------------------------------------------------
# Guidance passes.

def test_cfg_is_one_batched_forward_per_guided_step():
    model = Recorder(tiny_model("ELIT-SiT"))
    noise, y = inputs()
    out = sample(model, noise, y, num_steps=4, cfg_scale=4.0, budget=0.5)
    assert len(model.calls) == 4
    for call in model.calls:
        assert call["batch"] == 2 * B and call["budget"] == 0.5
        assert call["y"].tolist() == y.tolist() + [10] * B
    # One step from t = 1: batched CFG equals two separate passes combined.
    one = sample(model.inner, noise, y, num_steps=1, cfg_scale=4.0, budget=0.5)
    with torch.no_grad():
        t = torch.ones(B)
        c, u = model.inner(noise, t, y, budget=0.5), model.inner(noise, t, torch.full_like(y, 10), budget=0.5)
    torch.testing.assert_close(one, noise - (u + 4.0 * (c - u)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, sample(model.inner, noise, y, num_steps=4, budget=0.5))


@pytest.mark.parametrize("autoguidance", [False, True])
def test_cheap_cfg_and_autoguidance_passes(autoguidance):
    model = Recorder(tiny_model("ELIT-SiT"))
    noise, y = inputs()
    sample(model, noise, y, num_steps=3, cfg_scale=2.0, budget=0.75, unconditional_budget=0.25,
           autoguidance=autoguidance)
    assert len(model.calls) == 6
    assert [c["budget"] for c in model.calls] == [0.75, 0.25] * 3
    assert all(c["batch"] == B for c in model.calls)
    weak_label = y.tolist() if autoguidance else [10] * B
    for cond, weak in zip(model.calls[0::2], model.calls[1::2]):
        assert cond["y"].tolist() == y.tolist() and weak["y"].tolist() == weak_label


def test_autoguidance_needs_an_unconditional_budget():
    with pytest.raises(ValueError, match="autoguidance needs unconditional_budget"):
        sample(tiny_model("ELIT-SiT"), *inputs(), num_steps=2, cfg_scale=2.0, autoguidance=True)


def test_only_the_conditional_pass_runs_outside_the_guidance_interval():
    model = Recorder(tiny_model("SiT"))
    sample(model, *inputs(), num_steps=4, cfg_scale=3.0, guidance_low=0.3, guidance_high=0.6)
    ts = [c["t"][0].item() for c in model.calls]                      # the grid is 1, .75, .5, .25
    assert ts == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert [c["batch"] for c in model.calls] == [B, B, 2 * B, B]
    assert guidance_scale(0.3, 3.0, 0.3, 0.6) == 3.0 and guidance_scale(0.61, 3.0, 0.3, 0.6) == 1.0


def test_budget_schedule_picks_the_budget_per_t():
    model = Recorder(tiny_model("ELIT-SiT"))
    schedule = [(0.7, 0.25), (0.0, 1.0)]
    sample(model, *inputs(), num_steps=4, budget=0.5, budget_schedule=schedule,
           cfg_scale=2.0, unconditional_budget=0.5)
    cond = model.calls[0::2]
    assert [c["budget"] for c in cond] == [0.25, 0.25, 1.0, 1.0]       # t = 1, .75 | .5, .25
    assert {c["budget"] for c in model.calls[1::2]} == {0.5}           # the unconditional budget is its own
    assert budget_at(0.1, 0.5, [(0.7, 0.25)]) == 0.5                   # below every threshold: `budget`
    with pytest.raises(ValueError, match="descending"):
        sample(model, *inputs(), num_steps=2, budget_schedule=[(0.0, 1.0), (0.7, 0.25)])


def test_sde_noise_makes_sde_sampling_deterministic():
    model = tiny_model("SiT")
    noise, y = inputs()
    steps = 6
    sde_noise = torch.randn(B, steps, *SHAPE, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    a = sample(model, noise, y, mode="sde", num_steps=steps, sde_noise=sde_noise)
    torch.manual_seed(2)
    b = sample(model, noise, y, mode="sde", num_steps=steps, sde_noise=sde_noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, sample(model, noise, y, mode="sde", num_steps=steps, sde_noise=sde_noise.flip(0)))
    # Per-image noise: image 0 does not depend on the noise of the other images.
    other = sde_noise.clone()
    other[1:] = torch.randn_like(other[1:])
    torch.testing.assert_close(sample(model, noise, y, mode="sde", num_steps=steps, sde_noise=other)[0], a[0])
    with pytest.raises(ValueError, match="sde_noise must have shape"):
        sample(model, noise, y, mode="sde", num_steps=steps, sde_noise=sde_noise[:, :2])


def test_bf16_autocast_keeps_a_float32_state():
    model = Recorder(tiny_model("ELIT-SiT"))
    noise, y = inputs()
    ref = sample(model.inner, noise, y, num_steps=4, cfg_scale=2.0)
    out = sample(model, noise, y, num_steps=4, cfg_scale=2.0, autocast_dtype=torch.bfloat16)
    assert all(c["autocast"] for c in model.calls) and out.dtype == torch.float32
    assert not torch.equal(out, ref)                                   # the model really ran in bf16
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kw", [dict(cfg_scale=2.0, guidance_high=0.5), dict(mode="sde", cfg_scale=2.0),
                                dict(heun=True, unconditional_budget=0.25, cfg_scale=2.0,
                                     budget_schedule=[(0.5, 0.5), (0.0, 1.0)])])
def test_sampling_loop_has_no_host_sync(kw):
    with OpLog() as log:
        sample(tiny_model("ELIT-SiT"), *inputs(), num_steps=4, **kw)
    assert not log.syncs, log.syncs


# ---------------------------------------------------------------------------------------------------------
# DFM.

def test_dfm_schedule_40_10():
    schedule = dfm_schedule((40, 10), (0.1,))
    assert len(schedule) == 50
    assert [a for _, _, a in schedule] == [1] * 40 + [2] * 10
    assert all(t0[1] == t1[1] == 1.0 for t0, t1, _ in schedule[:40])   # stage 1 waits at t = 1
    assert schedule[39][1][0] == pytest.approx(0.1) and schedule[0][0] == [1.0, 1.0]
    assert schedule[-1][1] == [0.0, 0.0]
    for s in range(2):                                                 # times never increase, steps are even
        dts = [round(t0[s] - t1[s], 9) for t0, t1, _ in schedule if t0[s] != t1[s]]
        assert all(d > 0 for d in dts)
    assert {round(t0[0] - t1[0], 9) for t0, t1, _ in schedule[:40]} == {round(0.9 / 40, 9)}
    assert {round(t0[0] - t1[0], 9) for t0, t1, _ in schedule[40:]} == {round(0.1 / 10, 9)}


def test_dfm_schedule_three_stages():
    schedule = dfm_schedule((3, 2, 2), (0.6, 0.2))
    assert [a for _, _, a in schedule] == [1, 1, 1, 2, 2, 3, 3]
    t_after = [t1 for _, t1, _ in schedule]
    assert t_after[2] == pytest.approx([0.6, 1.0, 1.0]) and t_after[4][1] == pytest.approx(0.2)
    assert t_after[-1] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("steps,thresholds,match", [((40,), (0.1,), "need 0 stage thresholds"),
                                                    ((40, 10), (), "need 1 stage thresholds"),
                                                    ((40, 10), (1.0,), "inside"),
                                                    ((5, 5, 5), (0.2, 0.5), "decreasing"),
                                                    ((40, 0), (0.1,), "positive integers")])
def test_dfm_schedule_validation(steps, thresholds, match):
    with pytest.raises(ValueError, match=match):
        dfm_schedule(steps, thresholds)


def test_dfm_sampler_calls_and_active_stages():
    model = Recorder(tiny_model("DFM-SiT"))
    noise = decompose(torch.randn(B, *SHAPE), 2)
    out = sample_dfm(model, noise, torch.tensor([1, 2, 3]), steps_per_stage=(40, 10), thresholds=(0.1,))
    assert out.shape == (B, *SHAPE) and torch.isfinite(out).all()
    assert len(model.calls) == 50
    assert [c["active"] for c in model.calls] == [1] * 40 + [2] * 10
    schedule = dfm_schedule((40, 10), (0.1,))
    for call, (t0, _, _) in zip(model.calls, schedule):
        torch.testing.assert_close(call["t"], torch.tensor(t0).expand(B, 2))
    with pytest.raises(ValueError, match="one entry per stage"):
        sample_dfm(model, noise, torch.tensor([1, 2, 3]), steps_per_stage=(40,), thresholds=())


def test_dfm_sampler_three_stages_runs():
    model = tiny_model("DFM-SiT", patch=4, dfm_stages=3)
    noise = decompose(torch.randn(2, *SHAPE), 3)
    assert [n.shape[-1] for n in noise] == [2, 4, 8]
    out = sample_dfm(model, noise, torch.tensor([0, 5]), steps_per_stage=(4, 3, 2), thresholds=(0.5, 0.2),
                     cfg_scale=2.0)
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


class LabelVelocityDFM(nn.Module):
    """Per-stage v = table_s[y] in every channel."""

    num_classes, stages, family = 10, 2, "toy-DFM"

    def __init__(self):
        super().__init__()
        self.tables = nn.Parameter(torch.randn(2, 11, 4))

    def forward(self, xs, t, y, active=None):
        return [self.tables[s, y][:, :, None, None].expand_as(x).clone() for s, x in enumerate(xs)]


def test_dfm_guidance_is_per_stage():
    """Each stage's velocity is guided exactly on the steps where its own time is inside the interval."""
    model = Recorder(LabelVelocityDFM())
    noise = decompose(torch.randn(B, *SHAPE), 2)
    y, scale, low, high = torch.tensor([1, 2, 3]), 3.0, 0.0, 0.5
    out = sample_dfm(model, noise, y, steps_per_stage=(4, 4), thresholds=(0.3,), cfg_scale=scale,
                     guidance_low=low, guidance_high=high)
    tables = model.inner.tables.detach()
    expected = [n.clone() for n in noise]
    schedule = dfm_schedule((4, 4), (0.3,))
    for t0, t1, active in schedule:
        for s in range(active):
            c, u = tables[s, y][:, :, None, None], tables[s, 10][None, :, None, None]
            v = u + scale * (c - u) if low <= t0[s] <= high else c
            expected[s] = expected[s] + (t1[s] - t0[s]) * v
    torch.testing.assert_close(out, recompose(expected))
    guided = [any(low <= t0[s] <= high for s in range(a)) for t0, _, a in schedule]
    assert [c["batch"] for c in model.calls] == [2 * B if g else B for g in guided]
    assert guided.count(True) not in (0, len(guided))                 # the test covers both cases


def test_dfm_zero_velocity_returns_recomposed_noise():
    class Zero(LabelVelocityDFM):
        def forward(self, xs, t, y, active=None):
            return [torch.zeros_like(x) for x in xs]
    noise = decompose(torch.randn(B, *SHAPE), 2)
    out = sample_dfm(Zero(), noise, torch.tensor([1, 2, 3]), steps_per_stage=(3, 2), thresholds=(0.4,), cfg_scale=2.0)
    torch.testing.assert_close(out, recompose(noise))


def test_dfm_sampling_loop_has_no_host_sync():
    model = tiny_model("DFM-SiT", patch=4, dfm_stages=3)
    noise = decompose(torch.randn(2, *SHAPE), 3)
    with OpLog() as log:
        sample_dfm(model, noise, torch.tensor([0, 5]), steps_per_stage=(2, 2, 2), thresholds=(0.5, 0.2),
                   cfg_scale=2.0, guidance_high=0.6)
    assert not log.syncs, log.syncs


def test_cheap_cfg_step_costs_at_least_30_percent_less():
    """FLOPs of one guided sampler step of ELIT-SiT-XL/2 (256 px), counted on the meta device: standard CFG
    (one batched forward of 2 images) vs cheap CFG with the unconditional pass at 1/16."""
    from torch.utils.flop_counter import FlopCounterMode
    from models import build_model
    with torch.device("meta"):
        model = build_model("ELIT-SiT-XL/2").requires_grad_(False)
        noise, y = torch.randn(1, 4, 32, 32), torch.zeros(1, dtype=torch.long)

    def step_flops(**kw):
        with FlopCounterMode(display=False) as counter:
            sample(model, noise, y, num_steps=1, **kw)
        return counter.get_total_flops()
    standard, unguided = step_flops(cfg_scale=4.0), step_flops(cfg_scale=1.0)
    cheap = step_flops(cfg_scale=4.0, unconditional_budget=1 / 16)
    assert standard == pytest.approx(2 * unguided, rel=1e-3)   # (shared Read-query projections run once)
    assert cheap <= 0.7 * standard, (cheap / 1e9, standard / 1e9)
