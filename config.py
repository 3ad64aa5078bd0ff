"""Temporary shim (floor-plan renovation): the generic machinery lives in utils/cli.py, each schema beside
the code it configures."""
from dataio.options import ConvertConfig, DemoConfig, EncodeConfig, FashionMnistConfig  # noqa: F401
from evaluation.options import EvalConfig  # noqa: F401
from sampling.options import (GenerateConfig, InferenceConfig, OutputOptions, SamplingOptions,  # noqa: F401
                              parse_budget_schedule)
from studies.options import ClassifierConfig, FashionMnistStudyConfig  # noqa: F401
from training.options import (MODEL_SETTINGS, DataOptions, LossOptions, ModelOptions, OptimOptions,  # noqa: F401
                              RunOptions, TrainConfig, model_overrides)
from utils.cli import build_parser, load_yaml, opt, parse_config, save_config, to_dict  # noqa: F401
