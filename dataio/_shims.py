"""Temporary (floor-plan renovation): lets an old module path forward attribute writes to the new modules.

The old modules (`vae.py`, `dataset_tools.py`'s re-exports) re-export names that now live in dataio/; a
test that monkeypatches `vae.encode_images` must still reach the code that calls it. Removed with the shims.
"""

from __future__ import annotations

import sys
import types


def forward_writes(name: str, *targets: types.ModuleType) -> None:
    """Make `setattr(sys.modules[name], attr, value)` also set `attr` on every target module that has it."""

    class Forwarding(types.ModuleType):
        def __setattr__(self, attr, value):
            for target in targets:
                if hasattr(target, attr):
                    setattr(target, attr, value)
            super().__setattr__(attr, value)

    sys.modules[name].__class__ = Forwarding
