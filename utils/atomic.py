"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

Readers (a resumed run, a second process, the evaluator) never see a partial file: a path either holds the
old content, the complete new content, or nothing. (`evaluation/` keeps its own copy so that it depends on nothing else in the repository.)
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable, suffix: str = "") -> None:
    """Call write(binary file object) on a temp file in `path`'s folder, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")
