"""The public README's ELIT training lines draw the budgets its table says (SPEC 2.3, issue 11's first fix).

Each line is run through the real Trainer (tiny widths, 32x32 pixel data so g = 4 gives 16 windows of 16 latents
and g = 8 gives 4 windows of 64), and the set of budget levels its steps draw is compared with the table's rule:
neither mask flag -> full budget only; min set, max not -> max = 1 - 1/g^2; max set, min not -> a single budget.
"""

import shlex

import pytest

from conftest import write_tiny_pixels
from training.options import TrainConfig
from utils.cli import parse_config

TINY = dict(hidden_size=32, depth=4, num_heads=2)
STEPS = 3000                # draws per line: every one of 64 levels appears with overwhelming probability

# (the seed README's flags after --data-dir, the levels as k/K it must draw)
LINES = [
    ("", {16}),                                                                               # table default
    ("--elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 --elit_group_size 4", set(range(1, 17))),
    ("--elit-min-mask-prob 0 --elit-max-mask-prob 0.9375 --elit_group_size 8", set(range(4, 65))),
    ("--elit-min-mask-prob 0.5 --elit-max-mask-prob 0.75 --elit_group_size 4", set(range(4, 9))),
    ("--elit-max-mask-prob 0.75 --elit_group_size 4", {4}),
    ("--elit-min-mask-prob 0.75 --elit_group_size 4 --elit-max-mask-prob 0.9375 --elit_group_size 4",
     set(range(1, 5))),
    ("--elit-min-mask-prob 0 --elit_group_size 4", set(range(1, 17))),                       # max not set
]


@pytest.fixture(scope="module")
def pixels32(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("data") / "px32")
    write_tiny_pixels(dest, 16, 32)
    return dest


@pytest.mark.parametrize("flags,levels", LINES, ids=[f or "no-mask-flags" for f, _ in LINES])
def test_seed_training_line_draws_the_tables_budgets(pixels32, tmp_path, flags, levels):
    from training import Trainer
    argv = ["--model", "ELIT-SiT-XL/2", "--exp-name", "elit-sit-xl-2-256px", "--data-dir", pixels32,
            *shlex.split(flags), "--output-dir", str(tmp_path), "--global-batch-size", "4",
            "--report-to", "none", "--num-workers", "0", "--no-progress", "--elit-head-depth", "1",
            "--elit-tail-depth", "1"]
    trainer = Trainer(parse_config(TrainConfig, argv), model_kwargs=TINY)
    K = len(trainer.model.budget_levels)
    drawn = set()
    for step in range(STEPS):
        trainer.step = step
        drawn.add(round(trainer.step_condition()["budget"] * K))
    assert drawn == levels, (K, sorted(drawn))
