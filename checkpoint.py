"""Temporary shim (floor-plan renovation): the code lives in models/checkpoint.py."""
from models.checkpoint import atomic_save, latest_checkpoint, load_checkpoint, model_from_checkpoint  # noqa: F401
