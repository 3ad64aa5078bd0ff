"""Temporary shim (floor-plan renovation): the code lives in utils/atomic.py."""
from utils.atomic import atomic_write, write_json, write_text  # noqa: F401
