"""The typed sampling plan: frozen, equal options -> equal plans and folders, every knob named, evaluations
counted as the samplers run them, and the sampler table's entry point agreeing with a resolved plan."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from conftest import pixel_meta, tiny_model
from dataio.codec import checkpoint_record
from samplers import SAMPLERS, sample_model
from sampling.load import Decoder, SamplingCheckpoint
from sampling.options import GenerateConfig
from sampling.plan import SamplingPlan, resolve_generation, resolve_plan
from sampling.run import draw_inputs, run_sampler
from utils.cli import parse_config

FAMILIES = ("SiT", "ELIT-SiT", "DFM-SiT")
BASE = parse_config(GenerateConfig, ["--num-steps", "4", "--num-samples", "10", "--per-proc-batch-size", "4"])


@pytest.fixture(scope="module")
def models():
    return {f: tiny_model(f, in_channels=3) for f in FAMILIES}


def checkpoint(model, meta="pixels") -> SamplingCheckpoint:
    return SamplingCheckpoint(model=model, dataset_meta=pixel_meta() if meta == "pixels" else meta,
                              path_type="linear", step=12, label="tiny", fingerprint="0123abcd", path="tiny.pt")


def folder(model, **changes) -> str:
    cfg = dataclasses.replace(BASE, **changes)
    ck = checkpoint(model, checkpoint_record(None, model) if cfg.vae else "pixels")   # converted: the SD-VAE record
    return resolve_generation(cfg, ck, Decoder(ck.dataset_meta, cfg.vae)).folder_name


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_is_frozen_and_equal_options_give_equal_plans(models, family):
    model = models[family]
    plan = resolve_plan(model, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cfg_scale = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps.num_steps = 3
    again = resolve_plan(model, dataclasses.replace(BASE))
    assert again == plan and hash(again) == hash(plan) and again is not plan
    assert folder(model) == folder(model)
    assert SamplingPlan.from_dict(plan.to_dict()) == plan                   # generation.json round trip
    assert plan.sampler is SAMPLERS[family]


def test_every_knob_changes_the_folder_name(models):
    elit, dfm = models["ELIT-SiT"], models["DFM-SiT"]
    variants = [dict(), dict(inference_budget=0.5), dict(inference_budget=0.25), dict(cfg_scale=2.0),
                dict(cfg_scale=3.0), dict(cfg_scale=2.0, guidance_high=0.7), dict(cfg_scale=2.0, guidance_low=0.2),
                dict(cfg_scale=2.0, unconditional_inference_budget=0.25),
                dict(cfg_scale=2.0, unconditional_inference_budget=0.5),
                dict(cfg_scale=2.0, unconditional_inference_budget=0.25, autoguidance=True),
                dict(budget_schedule="0.5:0.25,0:1"), dict(budget_schedule="0.7:0.25,0:1"), dict(mode="sde"),
                dict(heun=True), dict(num_steps=5), dict(seed=1), dict(num_samples=9), dict(per_proc_batch_size=5),
                dict(weights="model"), dict(num_classes_sampled=3), dict(vae="some/other-vae")]
    names = [folder(elit, **v) for v in variants]
    assert len(set(names)) == len(names), names
    dfm_names = [folder(dfm, **v) for v in (dict(), dict(dfm_steps_per_stage=[2, 2]),
                                             dict(dfm_stage_thresholds=[0.3]), dict(cfg_scale=2.0))]
    assert len(set(dfm_names)) == len(dfm_names), dfm_names
    # Knobs without effect do not split folders: no guidance -> no interval; all classes = no restriction.
    assert folder(elit, guidance_high=0.7) == folder(elit)
    assert folder(elit, num_classes_sampled=10) == folder(elit)
    assert folder(elit, inference_budget=8.0) == folder(elit, inference_budget=0.5)


class Counter(nn.Module):
    """Forwards to a model and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, []
        self.num_classes, self.stages, self.family = inner.num_classes, inner.stages, inner.family

    def forward(self, x, t, y, **kw):
        self.rows.append(y.shape[0])
        return self.inner(x, t, y, **kw)


@pytest.mark.parametrize("family, changes, evaluations", [
    ("SiT", dict(), 4),
    ("SiT", dict(heun=True), 7),                                       # Heun: 2n - 1
    ("SiT", dict(mode="sde"), 4),
    ("SiT", dict(cfg_scale=2.0, guidance_low=0.3, guidance_high=0.8), 4),
    ("SiT", dict(heun=True, cfg_scale=2.0, guidance_high=0.6), 7),
    ("ELIT-SiT", dict(cfg_scale=2.0, unconditional_inference_budget=0.25, guidance_low=0.5), 4),
    ("ELIT-SiT", dict(cfg_scale=2.0, inference_budget=0.5), 4),
    ("DFM-SiT", dict(), 4),
    ("DFM-SiT", dict(cfg_scale=2.0, guidance_low=0.3), 4),
    ("DFM-SiT", dict(cfg_scale=2.0, guidance_high=0.5, dfm_steps_per_stage=[3, 2]), 5),
])
def test_model_evaluations_count_what_the_sampler_runs(models, family, changes, evaluations):
    model = models[family]
    plan = resolve_plan(model, dataclasses.replace(BASE, **changes))
    evals = plan.model_evaluations()
    guided = sum(g for _, g in evals)
    assert len(evals) == evaluations
    if plan.cfg_scale != 1.0 and family != "DFM-SiT":
        assert 0 < guided < len(evals) or (plan.guidance_low, plan.guidance_high) == (0.0, 1.0)
    B = 3
    noise, labels, sde = draw_inputs(model, range(B), 0, model.num_classes, plan.steps.sde_steps)
    counter = Counter(model)
    run_sampler(counter, plan, noise, labels, sde)
    # CFG doubles the batch of a guided evaluation (one forward of 2B, or a second forward: cheap CFG).
    assert sum(counter.rows) == B * (len(evals) + guided)
    assert len(counter.rows) == len(evals) + (guided if plan.unconditional_budget is not None else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_model_is_the_default_plan(models, family):
    model = models[family]
    cfg = dataclasses.replace(BASE, cfg_scale=2.0)
    noise, labels, _ = draw_inputs(model, range(2), 0, model.num_classes)
    planned = run_sampler(model, resolve_plan(model, cfg), noise, labels)
    direct = sample_model(model, noise, labels, num_steps=cfg.num_steps, cfg_scale=cfg.cfg_scale)
    assert torch.equal(planned, direct) and direct.shape == (2, 3, 8, 8)
    if model.budget_levels:
        low = sample_model(model, noise, labels, num_steps=2, budget=0.25)
        assert not torch.allclose(low, sample_model(model, noise, labels, num_steps=2))
