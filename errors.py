"""Temporary shim (floor-plan renovation): the code lives in utils/errors.py."""
from utils.errors import *  # noqa: F401,F403
from utils.errors import UserError, run_main, user_errors  # noqa: F401
