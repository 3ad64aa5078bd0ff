"""Temporary shim (floor-plan renovation): the study's options and presets live in studies/fmnist/options.py
(config.py still imports them from here)."""
from studies.fmnist.options import ClassifierConfig, FashionMnistStudyConfig  # noqa: F401
