"""The family table of training: one objective per family answers the trainer's questions (issue 12, point 1)."""

import pytest
import torch

from loss import OBJECTIVES, allowed_budgets, draw_budget, pyramid_shapes
from models import FAMILIES, build_model
from training.options import TrainConfig
from utils.cli import parse_config
from utils.errors import UserError

TINY = dict(hidden_size=32, depth=4, num_heads=2, input_size=8, in_channels=3, num_classes=10)
ELIT = dict(elit_group_size=2, elit_head_depth=1, elit_tail_depth=1)
NAMES = {"SiT": ("SiT-S/2", {}), "ELIT-SiT": ("ELIT-SiT-S/2", ELIT), "DFM-SiT": ("DFM-SiT-S/4", {})}


def options(model: str, *flags: str):
    return parse_config(TrainConfig, ["--model", model, *flags])


def built(family: str, *flags: str):
    name, settings = NAMES[family]
    model = build_model(name, **TINY, **settings)
    return model, OBJECTIVES[model.family].from_options(options(name, *flags), model)


def test_every_family_has_an_objective():
    assert set(OBJECTIVES) == set(FAMILIES) == set(NAMES)


def test_a_sit_objective_draws_no_condition():
    _, objective = built("SiT")
    assert all(objective.step_condition(seed, step) == {} for seed in (0, 3) for step in range(20))


def test_the_elit_budget_is_a_level_and_the_same_for_two_objectives_with_one_seed():
    flags = ("--elit-min-mask-prob", "0", "--elit-max-mask-prob", "0.75")
    model, a = built("ELIT-SiT", *flags)
    _, b = built("ELIT-SiT", *flags)
    drawn = [a.step_condition(7, step)["budget"] for step in range(200)]
    assert drawn == [b.step_condition(7, step)["budget"] for step in range(200)]
    assert set(drawn) == set(allowed_budgets(model.budget_levels, 0, 0.75)) <= set(model.budget_levels)
    assert drawn == [draw_budget(model.budget_levels, 0, 0.75, 7, step) for step in range(200)]
    assert drawn != [a.step_condition(8, step)["budget"] for step in range(200)]       # the seed matters


def test_the_elit_default_is_the_full_budget():
    _, objective = built("ELIT-SiT")
    assert {objective.step_condition(0, step)["budget"] for step in range(50)} == {1.0}


def test_dfm_stage_draws_follow_the_weights():
    _, objective = built("DFM-SiT", "--dfm-stage-weights", "0.7", "0.3")
    stages = [objective.step_condition(1, step)["stage"] for step in range(4000)]
    assert set(stages) == {0, 1}
    assert abs(stages.count(1) / len(stages) - 0.3) < 0.03
    _, again = built("DFM-SiT", "--dfm-stage-weights", "0.7", "0.3")
    assert stages[:100] == [again.step_condition(1, step)["stage"] for step in range(100)]


@pytest.mark.parametrize("family", list(NAMES))
def test_step_draws_fit_the_models_inputs(family):
    model, objective = built(family)
    shape = model.noise_shapes()[-1]                                   # the full-size model input (C, H, W)
    draws = objective.draw_step(5, shape, generator=torch.Generator().manual_seed(0))
    noise = draws["noise"] if isinstance(draws["noise"], list) else [draws["noise"]]
    assert [tuple(n.shape[1:]) for n in noise] == model.noise_shapes() == pyramid_shapes(shape, model.stages)
    assert draws["t"].shape == draws["drop"].shape == (5,)
    again = objective.draw_step(5, shape, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(noise, again["noise"] if len(noise) > 1 else [again["noise"]]))


@pytest.mark.parametrize("family,flags,message", [
    ("SiT", ("--elit-min-mask-prob", "0"), "elit_min_mask_prob / elit_max_mask_prob apply to ELIT models, not SiT-S/2"),
    ("DFM-SiT", ("--elit-max-mask-prob", "0.5"), "apply to ELIT models, not DFM-SiT-S/4"),
    ("SiT", ("--dfm-stage-weights", "1"), "dfm_stage_weights applies to DFM models, not SiT-S/2"),
    ("ELIT-SiT", ("--dfm-stage-weights", "1"), "dfm_stage_weights applies to DFM models, not ELIT-SiT-S/2"),
    ("ELIT-SiT", ("--elit-min-mask-prob", "0.99"), "no budget level has a mask probability"),
    ("DFM-SiT", ("--dfm-stage-weights", "1", "1", "1"), "one weight per stage"),
])
def test_misplaced_or_invalid_options_are_user_errors(family, flags, message):
    with pytest.raises(UserError, match=message):
        built(family, *flags)
