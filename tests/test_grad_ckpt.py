"""Gradient checkpointing (`--gradient-checkpointing`): the same loss and the same gradients as the plain path."""

import pytest
import torch

from conftest import tiny_model
from loss import OBJECTIVES
from models import FAMILIES
from training.options import TrainConfig
from utils.cli import parse_config


def loss_and_grads(model, objective, condition, x0, y, target, draws):
    model.zero_grad(set_to_none=True)
    out = objective(model, x0, y, draws=draws, target_features=target, **condition)
    total = out.loss.mean() + (0.5 * out.proj.mean() if out.proj is not None else 0.0)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpointed_blocks_give_the_same_loss_and_gradients(family):
    model = tiny_model(family, repa_depth=1, repa_z_dim=8).train()         # block 1: a head block in ELIT
    cfg = parse_config(TrainConfig, ["--model", model.arch["name"], "--label-dropout", "0.2"])
    objective = OBJECTIVES[model.family].from_options(cfg, model)
    condition = objective.step_condition(0, 0)
    if model.budget_levels:                                  # a reduced budget: the Read/Write path is used
        condition["budget"] = sorted(model.budget_levels)[len(model.budget_levels) // 2]
    if model.stages > 1:                                     # every stage active
        condition["stage"] = model.stages - 1
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, model.in_channels, model.input_size, model.input_size, generator=g)
    y = torch.randint(0, model.num_classes, (3,), generator=g)
    target = torch.randn(3, model.grid * model.grid, 8, generator=g)
    draws = objective.draw_step(3, x0.shape[1:], generator=torch.Generator().manual_seed(1))

    assert not model.gradient_checkpointing                  # off by default
    plain_loss, plain = loss_and_grads(model, objective, condition, x0, y, target, draws)
    model.gradient_checkpointing = True
    ckpt_loss, ckpt = loss_and_grads(model, objective, condition, x0, y, target, draws)

    assert set(ckpt) == set(plain) and any(n.startswith("blocks.") for n in plain)
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-6, atol=1e-7)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_really_recomputes_the_blocks(monkeypatch):
    """With the switch on, each block runs twice per training step (forward + recompute in backward)."""
    model = tiny_model("SiT").train()
    calls = []
    for block in model.blocks:       # count the forward calls themselves (the recompute skips module hooks)
        def counted(*args, _forward=block.forward):
            calls.append(1)
            return _forward(*args)
        monkeypatch.setattr(block, "forward", counted)
    x, t, y = model.example_inputs(2)
    for on, expected in ((False, model.depth), (True, 2 * model.depth)):
        calls.clear()
        model.gradient_checkpointing = on
        model(x, t, y).square().mean().backward()
        assert len(calls) == expected
    with torch.no_grad():                                     # sampling: no recomputation, no overhead
        calls.clear()
        model(x, t, y)
        assert len(calls) == model.depth


def test_train_option_is_off_by_default_and_not_an_architecture_setting():
    assert parse_config(TrainConfig, []).gradient_checkpointing is False
    assert parse_config(TrainConfig, ["--gradient-checkpointing"]).gradient_checkpointing is True
    assert "gradient_checkpointing" not in tiny_model("SiT").arch
