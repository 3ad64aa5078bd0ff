"""DFM objective: per-stage times, active stages, summed stage losses, S = 2 and S = 3, learning."""

import pytest
import torch
import torch.nn as nn

from conftest import OpLog, tiny_model
from loss import DFMLoss, FlowMatchingLoss, pyramid_shapes, slice_draws
from models.dfm import decompose

SHAPE = (4, 8, 8)


def dfm(stages):
    """Tiny DFM: 2 stages at /2, 3 stages at /4 (patch sizes [1, 2, 4])."""
    return tiny_model("DFM-SiT", patch=2 if stages == 2 else 4, dfm_stages=stages)


def weights(stages):
    return (0.9, 0.1) if stages == 2 else (0.5, 0.3, 0.2)


class Spy(nn.Module):
    """Records (inputs, t, active) and can add `offset` to the outputs of inactive stages."""

    def __init__(self, inner, offset=0.0):
        super().__init__()
        self.inner, self.num_classes, self.stages = inner, inner.num_classes, inner.stages
        self.offset, self.calls = offset, []

    def forward(self, xs, t, y, active=None, **kw):
        self.calls.append(dict(xs=[x.detach().clone() for x in xs], t=t.detach().clone(), y=y.clone(), active=active))
        outs = self.inner(xs, t, y, active=active, **kw)
        if kw.get("return_features"):
            return outs
        return [o + self.offset if s >= active else o for s, o in enumerate(outs)]


def test_pyramid_shapes_match_decompose():
    for stages in (1, 2, 3):
        expected = [tuple(x.shape[1:]) for x in decompose(torch.randn(1, *SHAPE), stages)]
        assert pyramid_shapes(SHAPE, stages) == expected


@pytest.mark.parametrize("stages", [2, 3])
def test_dfm_loss_runs_for_every_stage(stages):
    model = dfm(stages).train()
    fm = DFMLoss(stage_weights=weights(stages))
    x0, y = torch.randn(3, *SHAPE), torch.tensor([1, 2, 3])
    for stage in range(stages):
        out = fm(model, x0, y, stage)
        assert out.loss.shape == (3,) and torch.isfinite(out.loss).all() and (out.loss > 0).all()
        assert out.proj is None
        model.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        assert model.final_layer[stage].linear.weight.grad is not None


@pytest.mark.parametrize("stages", [2, 3])
def test_stage_times_and_inactive_stages(stages):
    """Below s*: logit-normal(-2) times; s*: the run's time; above: t = 1 (pure noise) and inactive."""
    fm = DFMLoss(stage_weights=weights(stages), label_dropout=0.0)
    x0, y = torch.randn(4, *SHAPE), torch.arange(4)
    draws = fm.draw(4, pyramid_shapes(SHAPE, stages), generator=torch.Generator().manual_seed(0))
    for stage in range(stages):
        model = Spy(dfm(stages))
        fm(model, x0, y, stage, draws=draws)
        call = model.calls[0]
        assert call["active"] == stage + 1
        t = call["t"]
        assert t.shape == (4, stages)
        torch.testing.assert_close(t[:, :stage], draws["t_low"][:, :stage])
        torch.testing.assert_close(t[:, stage], draws["t"])
        assert (t[:, stage + 1:] == 1).all()
        for s in range(stage + 1, stages):                             # inactive stages hold pure noise
            torch.testing.assert_close(call["xs"][s], draws["noise"][s])


def test_low_stage_times_are_logit_normal_at_minus_two():
    fm = DFMLoss(stage_weights=(0.5, 0.5), weighting="uniform")
    d = fm.draw(20000, pyramid_shapes((1, 2, 2), 2), generator=torch.Generator().manual_seed(0))
    logit = torch.logit(d["t_low"].double())
    assert abs(logit.mean().item() + 2) < 0.03 and abs(logit.std().item() - 1) < 0.03
    assert abs(d["t"].mean().item() - 0.5) < 0.01                    # the run's (uniform) distribution


@pytest.mark.parametrize("stages", [2, 3])
def test_loss_sums_the_active_stages_only(stages):
    fm = DFMLoss(stage_weights=weights(stages), label_dropout=0.0)
    x0, y = torch.randn(2, *SHAPE), torch.tensor([3, 4])
    draws = fm.draw(2, pyramid_shapes(SHAPE, stages), generator=torch.Generator().manual_seed(1))
    inner = dfm(stages)
    for stage in range(stages):
        with torch.no_grad():
            out = fm(Spy(inner), x0, y, stage, draws=draws)
            shifted = fm(Spy(inner, offset=100.0), x0, y, stage, draws=draws)   # garbage on inactive stages
            torch.testing.assert_close(shifted.loss, out.loss)
            # Written out: sum over active stages of the per-sample MSE to alpha' x + sigma' eps (linear: eps - x).
            xs = decompose(x0, stages)
            t = torch.cat([draws["t_low"][:, :stage], draws["t"][:, None], torch.ones(2, stages - stage - 1)], 1)
            x_t = [(1 - t[:, s, None, None, None]) * xs[s] + t[:, s, None, None, None] * draws["noise"][s]
                   for s in range(stages)]
            preds = inner(x_t, t, y, active=stage + 1)
            expected = sum(((preds[s] - (draws["noise"][s] - xs[s])) ** 2).mean(dim=(1, 2, 3))
                           for s in range(stage + 1))
        torch.testing.assert_close(out.loss, expected)


def test_stage_weights_must_match_the_number_of_stages():
    assert DFMLoss().weights_for(2) == (0.9, 0.1)
    with pytest.raises(ValueError, match="one weight per stage"):
        DFMLoss()(dfm(3), torch.randn(1, *SHAPE), torch.tensor([0]), DFMLoss().draw_stage(3, 0, 0))
    assert DFMLoss(stage_weights=(1, 1, 2)).draw_stage(3, seed=0, step=5) in (0, 1, 2)
    draws = [DFMLoss().draw_stage(2, seed=1, step=s) for s in range(4000)]
    assert abs(sum(draws) / 4000 - 0.1) < 0.02
    with pytest.raises(ValueError, match="stage must be in"):
        DFMLoss()(dfm(2), torch.randn(1, *SHAPE), torch.tensor([0]), 2)


def test_dfm_draws_slice_per_rank():
    fm = DFMLoss(stage_weights=(0.5, 0.3, 0.2), label_dropout=0.3)
    model = dfm(3)
    x0, y = torch.randn(4, *SHAPE), torch.arange(4)
    draws = fm.draw(4, pyramid_shapes(SHAPE, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = fm(model, x0, y, 2, draws=draws).loss
        parts = [fm(model, x0[i:i + 2], y[i:i + 2], 2, draws=slice_draws(draws, i, i + 2)).loss for i in (0, 2)]
    torch.testing.assert_close(torch.cat(parts), whole)


def test_dfm_label_dropout_and_repa():
    model = Spy(tiny_model("DFM-SiT", repa_depth=1, repa_z_dim=8))
    fm = DFMLoss(label_dropout=0.5)
    draws = fm.draw(2, pyramid_shapes(SHAPE, 2))
    draws["drop"] = torch.tensor([True, False])
    out = fm(model, torch.randn(2, *SHAPE), torch.tensor([3, 4]), 1, draws=draws,
             target_features=torch.randn(2, 16, 8))
    assert model.calls[0]["y"].tolist() == [10, 4]
    assert out.proj.shape == (2,) and ((out.proj >= -1) & (out.proj <= 1)).all()


def test_training_a_tiny_three_stage_dfm_reduces_the_loss():
    torch.manual_seed(0)
    model = tiny_model("DFM-SiT", patch=4, dfm_stages=3, randomize=False).train()
    fm = DFMLoss(stage_weights=(1, 1, 1), label_dropout=0.0)
    x0, y = torch.randn(4, *SHAPE), torch.arange(4)
    draws = fm.draw(4, pyramid_shapes(SHAPE, 3), generator=torch.Generator().manual_seed(0))
    total = lambda: sum(fm(model, x0, y, s, draws=draws).loss.mean().item() for s in range(3))   # noqa: E731
    with torch.no_grad():
        before = total()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(60):
        stage = fm.draw_stage(3, seed=0, step=step)
        value = fm(model, x0, y, stage, draws=draws).loss.mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    with torch.no_grad():
        after = total()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("family", ["DFM-SiT", "ELIT-SiT"])
def test_loss_step_has_no_host_sync(family):
    model = dfm(3) if family == "DFM-SiT" else tiny_model(family)
    x0, y = torch.randn(2, *SHAPE), torch.tensor([1, 2])
    with OpLog() as log:
        if family == "DFM-SiT":
            out = DFMLoss(stage_weights=(1, 1, 1))(model, x0, y, 1)
        else:
            out = FlowMatchingLoss(weighting="lognormal")(model, x0, y, budget=0.5)
        out.loss.mean().backward()
    assert not log.syncs, log.syncs


@pytest.mark.parametrize("stages", [2, 3])
def test_pyramid_round_trip_is_exact(stages):
    from models.dfm import recompose
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64) * 3
    parts = decompose(x, stages)
    assert [p.shape[-1] for p in parts] == [32 // 2 ** (stages - 1 - s) for s in range(stages)]
    torch.testing.assert_close(recompose(parts), x, rtol=0, atol=1e-6)
    low = x
    for _ in range(stages - 1):                  # bilinear x1/2 (align_corners=False) = the mean of each 2x2 block
        low = torch.nn.functional.avg_pool2d(low, 2)
    torch.testing.assert_close(parts[0], low, rtol=0, atol=1e-12)          # stage 0 is the coarsest low-pass
    assert parts[-1].abs().mean() < x.abs().mean()                           # the finest stage is a residual


def test_stage_draws_are_identical_in_two_processes():
    """Two 'ranks' (separate interpreters, different torch seeds) draw the same stage per step."""
    import subprocess
    import sys

    from conftest import ROOT, script_env
    code = ("import sys, torch; sys.path.insert(0, '.'); from loss import DFMLoss; torch.manual_seed(int(sys.argv[1])); "
            "print([DFMLoss().draw_stage(2, 7, s) for s in range(200)])")
    outs = [subprocess.run([sys.executable, "-c", code, str(rank)], cwd=ROOT, capture_output=True, text=True,
                           env=script_env(), timeout=120).stdout for rank in (0, 1)]
    assert outs[0] == outs[1] and outs[0].count("1") > 0 and outs[0].count("0") > 100
