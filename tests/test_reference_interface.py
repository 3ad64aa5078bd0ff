"""The public reference's interface (../shared/reference_interface.md; snap-research/elit @4c7184a): every
train.py / generate.py key and flag it accepts either maps to ours with the same meaning or is refused in one
line saying why and what to use. Its YAMLs (experiments/train, experiments/generation) load as written, and
our *_reference.yaml presets hold the same training settings."""

import os

import pytest
import yaml

from conftest import ROOT, tiny_model
from sampling.options import GenerateConfig, InferenceConfig
from sampling.reference_keys import check_checkpoint_expectations
from training.options import TrainConfig
from utils.cli import parse_config, reference_expectations, to_dict
from utils.errors import UserError

TRAIN_DIR = os.path.join(ROOT, "experiments_updated", "train")


def load(schema, tmp_path, text: dict, *argv, flag="--config"):
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return parse_config(schema, [flag, str(path), *argv])


def flags(settings: dict) -> list:
    """{'batch_size': 256} -> ['--batch-size', '256'] (lists: several values; booleans: --x / --no-x)."""
    out = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + name[2:])
        elif isinstance(value, list):
            out += [name, *map(str, value)]
        else:
            out += [name, "none" if value is None else str(value)]
    return out


# ----------------------------------------------------------------------------------------------------------
# train.py: key (with the reference's value) -> our option and value.

TRAIN_MAPPED = [
    # (reference settings, our option, expected value)
    (dict(output_dir="exps"), "output_dir", "exps"),
    (dict(exp_name="elit-sit-xl-2-256px"), "exp_name", "elit-sit-xl-2-256px"),
    (dict(report_to="wandb"), "report_to", "wandb"),
    (dict(sampling_steps=10000), "sample_every", 10000),               # the interval between grids
    (dict(resume_step=-1), "resume_step", -1),
    (dict(model="ELIT-SiT-XL/2"), "model", "ELIT-SiT-XL/2"),
    (dict(model="SiT-XL/2", encoder_depth=8), "repa_depth", 0),        # REPA off: unused, as in the reference
    (dict(model="SiT-XL/2", encoder_depth=8, enc_type="dinov2-vit-b", proj_coeff=0.5), "repa_depth", 8),
    (dict(model="ELIT-SiT-XL/2", encoder_depth=8), "elit_head_depth", 8),   # its ELIT head depth
    (dict(model="ELIT-SiT-XL/2", encoder_depth=6, enc_type="dinov2-vit-b", proj_coeff=0.5), "repa_depth", 6),
    (dict(fused_attn=True), "model", TrainConfig().model),                # accepted: our attention is fused
    (dict(qk_norm=False), "qk_norm", False),
    (dict(data_dir="/path/to/imagenet_256/train"), "data_dir", "/path/to/imagenet_256/train"),
    (dict(s3_cache_dir=None), "data_dir", None),
    (dict(resolution=512), "resolution", 512),
    (dict(batch_size=256), "global_batch_size", 256),                     # global in both
    (dict(allow_tf32=True), "allow_tf32", True),
    (dict(mixed_precision="bf16"), "mixed_precision", "bf16"),
    (dict(max_train_steps=7000000), "max_train_steps", 7000000),
    (dict(checkpointing_steps=50000), "checkpointing_steps", 50000),
    (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps", 2),
    (dict(learning_rate=1.0e-4), "learning_rate", 1e-4),
    (dict(adam_beta1=0.9), "adam_beta1", 0.9),
    (dict(adam_beta2=0.95), "adam_beta2", 0.95),
    (dict(adam_weight_decay=0.01), "weight_decay", 0.01),
    (dict(adam_epsilon=1e-08), "adam_epsilon", 1e-8),
    (dict(max_grad_norm=1.0), "max_grad_norm", 1.0),
    (dict(lr_scheduler_type="constant_with_linear_warmup", warmup_steps=10000), "warmup_steps", 10000),
    (dict(lr_scheduler_type="constant_with_linear_warmup"), "warmup_steps", 0),
    (dict(lr_scheduler_type="constant"), "warmup_steps", 0),
    (dict(seed=0), "seed", 0),
    (dict(num_workers=4), "num_workers", 4),
    (dict(path_type="cosine"), "path_type", "cosine"),
    (dict(prediction="v"), "path_type", "linear"),                        # accepted: velocity is all we train
    (dict(cfg_prob=0.1), "label_dropout", 0.1),
    (dict(enc_type="none"), "proj_coeff", 0.0),
    (dict(enc_type="dinov2-vit-b,clip-vit-L"), "repa_encoder", "dinov2-vit-b,clip-vit-L"),
    (dict(proj_coeff=0.0), "proj_coeff", 0.0),
    (dict(weighting="lognormal"), "weighting", "lognormal"),
    (dict(legacy=False), "label_dropout", 0.1),
    (dict(model="DFM-SiT-XL/2", stages_count=2), "dfm_stages", 2),
    (dict(model="DFM-SiT-XL/2", stage_weights=[0.9, 0.1]), "dfm_stage_weights", [0.9, 0.1]),
    (dict(model="DFM-SiT-XL/2", num_steps_per_scale=[40, 10]), "sample_num_steps", 50),
    (dict(model="DFM-SiT-XL/2", stage_sampling_thresholds=[0.1]), "sample_num_steps", 50),
    (dict(model="SiT-XL/2", num_steps_per_scale=[40, 10]), "sample_num_steps", 50),   # unused for SiT
    (dict(elit_max_mask_prob=0.0), "elit_max_mask_prob", 0.0),
    (dict(elit_min_mask_prob=None), "elit_min_mask_prob", None),
    (dict(elit_group_size=4), "elit_group_size", 4),
    (dict(elit_read_depth=1), "elit_group_size", None),                   # accepted: one Read layer
    (dict(elit_write_depth=1), "elit_write_depth", 1),
]


@pytest.mark.parametrize("settings, ours, expected", TRAIN_MAPPED, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("how", ["yaml", "flags"])
def test_train_key_maps_to_ours(tmp_path, settings, ours, expected, how):
    cfg = load(TrainConfig, tmp_path, settings) if how == "yaml" else parse_config(TrainConfig, flags(settings))
    assert getattr(cfg, ours) == expected


TRAIN_REFUSED = [
    (dict(num_classes=1000), "dataset"),
    (dict(fused_attn=False), "scaled_dot_product_attention"),
    (dict(s3_cache_dir="/lssd/imagenet_512_cache/"), "copy the dataset to a local disk"),
    (dict(epochs=1400), "max_train_steps"),
    (dict(logging_dir="logs"), "OUTPUT_DIR/EXP_NAME/logs"),
    (dict(prediction="eps"), "velocity"),
    (dict(legacy=True), "label_dropout"),
    (dict(elit_read_depth=2), "one Read layer"),
    (dict(lr_scheduler_type="constant", warmup_steps=10000), "set warmup_steps 0"),
    (dict(enc_type="none", proj_coeff=0.5), "turns REPA off"),
    (dict(model="DFM-SiT-XL/2", num_steps_per_scale=[30, 20]), "set sample_num_steps"),
    (dict(model="DFM-SiT-XL/2", stage_sampling_thresholds=[0.2]), "dfm_stage_thresholds"),
    (dict(batch_size=256, global_batch_size=128), "same option 'global_batch_size'"),
    (dict(cfg_prob=0.2, label_dropout=0.1), "same option 'label_dropout'"),
    (dict(model="ELIT-SiT-XL/2", encoder_depth=8, elit_head_depth=4), "same option 'elit_head_depth'"),
]


@pytest.mark.parametrize("settings, words", TRAIN_REFUSED, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("how", ["yaml", "flags"])
def test_train_key_is_refused_in_one_line(tmp_path, settings, words, how):
    with pytest.raises(UserError) as info:
        load(TrainConfig, tmp_path, settings) if how == "yaml" else parse_config(TrainConfig, flags(settings))
    message = str(info.value)
    assert words in message and "\n" not in message
    key = list(settings)[-1]                                 # the reference's key is named
    assert key in message or key.replace("_", "-") in message


def test_alias_and_canonical_agreeing_are_accepted(tmp_path):
    cfg = load(TrainConfig, tmp_path, dict(batch_size=64, global_batch_size=64, cfg_prob=0.2, label_dropout=0.2))
    assert cfg.global_batch_size == 64 and cfg.label_dropout == 0.2


def test_command_line_overrides_an_alias_in_the_yaml(tmp_path):
    cfg = load(TrainConfig, tmp_path, dict(batch_size=256, sampling_steps=10000), "--global-batch-size", "32",
               "--sample_every", "5")
    assert cfg.global_batch_size == 32 and cfg.sample_every == 5
    cfg = load(TrainConfig, tmp_path, dict(global_batch_size=256), "--batch_size", "16")
    assert cfg.global_batch_size == 16


# The reference's multibudget YAML as reference_interface.md lists it, and its seven train YAMLs.
MULTIBUDGET_EXAMPLE = dict(
    batch_size=256, learning_rate=1.0e-4, lr_scheduler_type="constant_with_linear_warmup", warmup_steps=10000,
    weighting="lognormal", prediction="v", enc_type="none", proj_coeff=0.0, elit_max_mask_prob=0.9375,
    elit_min_mask_prob=0.0, elit_group_size=4, report_to="wandb", output_dir="exps", sampling_steps=10000,
    resume_step=-1, model="ELIT-SiT-XL/2", exp_name="elit_sit_xl_256_multibudget")


def test_reference_multibudget_example_loads(tmp_path):
    cfg = load(TrainConfig, tmp_path, MULTIBUDGET_EXAMPLE)
    assert (cfg.global_batch_size, cfg.warmup_steps, cfg.weighting, cfg.proj_coeff) == (256, 10000, "lognormal", 0.0)
    assert (cfg.elit_min_mask_prob, cfg.elit_max_mask_prob, cfg.elit_group_size) == (0.0, 0.9375, 4)
    assert (cfg.report_to, cfg.output_dir, cfg.sample_every, cfg.resume_step) == ("wandb", "exps", 10000, -1)


def reference_train_yaml(model, res, exp, *, steps=400000, warmup=False, weighting="lognormal", **extra):
    text = dict(exp_name=exp, output_dir="exps", report_to="wandb", model=model,
                data_dir=f"/path/to/imagenet_{res}/train", resolution=res, batch_size=256, allow_tf32=True,
                mixed_precision="bf16", learning_rate=1.0e-4, max_train_steps=steps, checkpointing_steps=50000,
                sampling_steps=10000)
    if res == 512:
        text["s3_cache_dir"] = "/lssd/imagenet_512_cache/"
    if warmup:
        text.update(lr_scheduler_type="constant_with_linear_warmup", warmup_steps=10000)
    text.update(path_type="linear", prediction="v", weighting=weighting, enc_type="none", proj_coeff=0.0)
    text.update(extra, seed=0, resume_step=-1)
    return text


REFERENCE_TRAIN_YAMLS = {   # our preset -> the reference's experiments/train YAML (keys and values as written)
    "sit_xl_256_reference": reference_train_yaml("SiT-XL/2", 256, "sit-xl-2-256px", weighting="uniform"),
    "sit_xl_512_reference": reference_train_yaml("SiT-XL/2", 512, "sit-xl-2-512px", weighting="uniform"),
    "elit_sit_xl_256_reference": reference_train_yaml("ELIT-SiT-XL/2", 256, "elit-sit-xl-2-256px",
                                                      elit_max_mask_prob=0.0, elit_group_size=4),
    "elit_sit_xl_256_multibudget_reference": reference_train_yaml(
        "ELIT-SiT-XL/2", 256, "elit_sit_xl_256_multibudget", steps=7000000, warmup=True, elit_max_mask_prob=0.9375,
        elit_min_mask_prob=0.0, elit_group_size=4),
    "elit_sit_xl_512_reference": reference_train_yaml("ELIT-SiT-XL/2", 512, "elit-sit-xl-2-512px",
                                                      elit_max_mask_prob=0.0, elit_group_size=8),
    "elit_sit_xl_512_multibudget_reference": reference_train_yaml(
        "ELIT-SiT-XL/2", 512, "elit-sit-xl-2-512px-multibudget", steps=7000000, warmup=True,
        elit_max_mask_prob=0.9375, elit_min_mask_prob=0.0, elit_group_size=8),
    "dfm_sit_xl_512_reference": reference_train_yaml(
        "DFM-SiT-XL/2", 512, "dfm-sit-xl-2-512px", stages_count=2, stage_weights=[0.9, 0.1],
        num_steps_per_scale=[40, 10], stage_sampling_thresholds=[0.1]),
}
# What the preset sets beyond the reference YAML: its model layout (the reference's ELIT factory: head =
# encoder_depth 8, tail 4, Write over every slot), the speed/logging/path knobs, the data folder.
NOT_COMPARED = {"elit_head_depth", "elit_tail_depth", "elit_write_dropped_latents", "compile", "report_to",
                "data_dir", "num_workers", "sample_low_budget"}


@pytest.mark.parametrize("preset", sorted(REFERENCE_TRAIN_YAMLS))
def test_reference_train_yaml_loads_and_matches_our_preset(tmp_path, preset):
    text = dict(REFERENCE_TRAIN_YAMLS[preset])
    if "s3_cache_dir" in text:
        with pytest.raises(UserError, match="s3_cache_dir.*S3 data is not supported"):
            load(TrainConfig, tmp_path, text)
        del text["s3_cache_dir"]                             # the one refused key of its YAMLs
    theirs = load(TrainConfig, tmp_path, text)
    ours = parse_config(TrainConfig, ["--config", os.path.join(TRAIN_DIR, preset + ".yaml")])
    for key, value in to_dict(ours).items():
        if key not in NOT_COMPARED and key != "resume_step":
            assert getattr(theirs, key) == value, key
    assert theirs.resume_step == -1                          # the reference's YAMLs resume the latest
    if ours.model.startswith("ELIT"):
        assert (ours.elit_head_depth, ours.elit_tail_depth, ours.elit_write_dropped_latents) == (8, 4, True)


def test_every_reference_train_yaml_has_a_preset():
    presets = {name[:-5] for name in os.listdir(TRAIN_DIR) if name.endswith("_reference.yaml")}
    assert presets == set(REFERENCE_TRAIN_YAMLS)


# ----------------------------------------------------------------------------------------------------------
# generate.py.

GENERATE_MAPPED = [
    (dict(ckpt="exps/x/checkpoints/0400000.pt"), "ckpt", "exps/x/checkpoints/0400000.pt"),
    (dict(sample_dir="results"), "sample_dir", "results"),
    (dict(per_proc_batch_size=16), "per_proc_batch_size", 16),
    (dict(num_fid_samples=50000), "num_samples", 50000),
    (dict(global_seed=3), "seed", 3),                          # per image here, per rank there (docstring)
    (dict(mode="sde"), "mode", "sde"),
    (dict(num_steps=50), "num_steps", 50),
    (dict(cfg_scale=1.5), "cfg_scale", 1.5),
    (dict(guidance_low=0.0), "guidance_low", 0.0),
    (dict(guidance_high=0.7), "guidance_high", 0.7),
    (dict(heun=True), "heun", True),
    (dict(vae="ema"), "vae", "stabilityai/sd-vae-ft-ema"),
    (dict(vae="mse"), "vae", "stabilityai/sd-vae-ft-mse"),
    (dict(inference_budget=0.25), "inference_budget", 0.25),
    (dict(unconditional_inference_budget=0.0625), "unconditional_inference_budget", 0.0625),
    (dict(autoguidance=True), "autoguidance", True),
    (dict(num_steps_per_scale=[40, 10]), "dfm_steps_per_stage", [40, 10]),
    (dict(stage_sampling_thresholds=[0.1]), "dfm_stage_thresholds", [0.1]),
    (dict(tf32=True), "precision", "bf16"),
    (dict(fused_attn=True), "precision", "bf16"),
    (dict(legacy=False), "precision", "bf16"),
    (dict(elit_max_mask_prob=0.5, elit_min_mask_prob=None), "inference_budget", None),   # training settings
    (dict(enable_repa=False, projector_embed_dims="768"), "inference_budget", None),
    (dict(elit_read_depth=1), "inference_budget", None),
]


@pytest.mark.parametrize("settings, ours, expected", GENERATE_MAPPED, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("how", ["yaml", "flags"])
def test_generate_key_maps_to_ours(tmp_path, settings, ours, expected, how):
    cfg = load(GenerateConfig, tmp_path, settings) if how == "yaml" else parse_config(GenerateConfig, flags(settings))
    assert getattr(cfg, ours) == expected


ARCHITECTURE = dict(model="ELIT-SiT-XL/2", num_classes=1000, encoder_depth=8, resolution=256, qk_norm=False,
                    elit_group_size=4, elit_write_depth=1, stages_count=2, path_type="linear")


@pytest.mark.parametrize("how", ["yaml", "flags"])
def test_generate_architecture_keys_become_checkpoint_expectations(tmp_path, how):
    cfg = load(GenerateConfig, tmp_path, ARCHITECTURE) if how == "yaml" else parse_config(GenerateConfig,
                                                                                          flags(ARCHITECTURE))
    assert reference_expectations(cfg) == ARCHITECTURE
    assert to_dict(cfg) == to_dict(GenerateConfig())               # nothing else changed; not in the saved config


@pytest.mark.parametrize("settings, words", [
    (dict(tf32=False), "TF32"),
    (dict(fused_attn=False), "scaled_dot_product_attention"),
    (dict(legacy=True), "models.convert"),
    (dict(exp_name="elit-sit-xl-2-256px"), "sample_dir"),
    (dict(elit_read_depth=2), "one Read layer"),
    (dict(num_fid_samples=100, num_samples=50), "same option 'num_samples'"),
    (dict(global_seed=1, seed=2), "same option 'seed'"),
], ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("how", ["yaml", "flags"])
def test_generate_key_is_refused_in_one_line(tmp_path, settings, words, how):
    with pytest.raises(UserError) as info:
        load(GenerateConfig, tmp_path, settings) if how == "yaml" else parse_config(GenerateConfig, flags(settings))
    assert words in str(info.value) and "\n" not in str(info.value)


# The reference's generation YAMLs (experiments/generation), as written.
EVAL_CCFG = dict(inference_budget=1.0, unconditional_inference_budget=0.0625, mode="ode", num_steps=50,
                 cfg_scale=4.0, guidance_low=0.0, guidance_high=1.0, path_type="linear", heun=False,
                 num_fid_samples=50000, per_proc_batch_size=32, vae="ema", global_seed=0)
EVAL_DFM = dict(mode="ode", cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0, path_type="linear", heun=False,
                num_steps_per_scale=[40, 10], stage_sampling_thresholds=[0.1], num_fid_samples=50000,
                per_proc_batch_size=16, vae="ema", global_seed=0)


def test_train_config_and_eval_config_layer_as_in_the_reference(tmp_path):
    train, evaluation = tmp_path / "train.yaml", tmp_path / "eval.yaml"
    train.write_text(yaml.safe_dump(REFERENCE_TRAIN_YAMLS["elit_sit_xl_256_reference"]))
    evaluation.write_text(yaml.safe_dump(EVAL_CCFG))
    cfg = parse_config(GenerateConfig, ["--train-config", str(train), "--eval-config", str(evaluation),
                                        "--ckpt", "c.pt", "--cfg-scale", "2"])
    assert (cfg.cfg_scale, cfg.unconditional_inference_budget, cfg.inference_budget) == (2.0, 0.0625, 1.0)
    assert (cfg.num_samples, cfg.per_proc_batch_size, cfg.seed, cfg.vae) == (50000, 32, 0, "stabilityai/sd-vae-ft-ema")
    expected = reference_expectations(cfg)                # architecture from the train YAML, checked later
    assert expected == dict(model="ELIT-SiT-XL/2", resolution=256, elit_group_size=4, path_type="linear")
    # its training settings (batch_size, exp_name, s3_cache_dir, ...) are not read: no refusal, no change
    assert cfg.sample_dir == GenerateConfig().sample_dir
    # the eval YAML wins over the train YAML, whichever comes first on the command line
    evaluation.write_text(yaml.safe_dump(dict(EVAL_DFM, path_type="cosine")))
    cfg = parse_config(GenerateConfig, ["--eval_config", str(evaluation), "--train_config", str(train)])
    assert reference_expectations(cfg)["path_type"] == "cosine"
    assert (cfg.dfm_steps_per_stage, cfg.dfm_stage_thresholds, cfg.per_proc_batch_size) == ([40, 10], [0.1], 16)


def test_our_train_preset_works_as_train_config(tmp_path):
    cfg = parse_config(GenerateConfig, ["--train-config", os.path.join(TRAIN_DIR, "elit_sit_xl_256_reference.yaml")])
    assert reference_expectations(cfg) == dict(model="ELIT-SiT-XL/2", resolution=256, path_type="linear",
                                               elit_group_size=4, elit_head_depth=8, elit_tail_depth=4,
                                               elit_write_dropped_latents=True)


def test_multibudget_inference_takes_the_generate_names(tmp_path):
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump(REFERENCE_TRAIN_YAMLS["sit_xl_256_reference"]))
    cfg = parse_config(InferenceConfig, ["--train-config", str(train), "--global-seed", "5", "--vae", "mse"])
    assert (cfg.model, cfg.resolution, cfg.seed) == ("SiT-XL/2", 256, 5)      # its own model / resolution options
    assert cfg.vae == "stabilityai/sd-vae-ft-mse"


# ----------------------------------------------------------------------------------------------------------
# The generate-side hook: expectations against the checkpoint's model.

@pytest.mark.parametrize("family, expected, words", [
    ("ELIT-SiT", dict(model="ELIT-SiT-S/2", elit_group_size=2, encoder_depth=1, path_type="linear"), None),
    ("ELIT-SiT", dict(path_type="cosine"), "path_type 'cosine' does not match the checkpoint, which holds path_type "
                                           "'linear'"),
    ("ELIT-SiT", dict(model="ELIT-SiT-XL/2"), "model 'ELIT-SiT-XL/2' does not match"),
    ("ELIT-SiT", dict(elit_group_size=4), "elit_group_size 4 does not match the checkpoint, which holds "
                                          "elit_group_size 2"),
    ("ELIT-SiT", dict(encoder_depth=8), "encoder_depth 8 does not match"),
    ("SiT", dict(elit_group_size=4), "does not apply to the checkpoint's model SiT-S/2"),
    ("SiT", dict(encoder_depth=8, num_classes=10, qk_norm=False), None),     # no REPA projector: unused
    ("SiT", dict(num_classes=1000), "num_classes 1000 does not match"),
    ("DFM-SiT", dict(stages_count=2), None),
    ("DFM-SiT", dict(stages_count=3), "stages_count 3 does not match"),
    ("SiT", dict(resolution=512), None),                                     # resolution unknown: not checked
])
def test_checkpoint_expectations_are_checked_in_one_line(family, expected, words):
    model = tiny_model(family, randomize=False)
    if words is None:
        check_checkpoint_expectations(expected, model, "linear")
    else:
        with pytest.raises(UserError) as info:
            check_checkpoint_expectations(expected, model, "linear")
        assert words in str(info.value) and "\n" not in str(info.value)


def test_resolution_is_checked_when_the_caller_knows_it():
    model = tiny_model("SiT", randomize=False)
    check_checkpoint_expectations(dict(resolution=64), model, "linear", resolution=64)
    with pytest.raises(UserError, match="resolution 256 does not match"):
        check_checkpoint_expectations(dict(resolution=256), model, "linear", resolution=64)
