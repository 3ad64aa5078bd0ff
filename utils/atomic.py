"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

Readers (a resumed run, a second process, the evaluator) never see a partial file: a path either holds the
old content, the complete new content, or nothing. (`evaluation/` keeps its own copy so that it depends on nothing else in the repository.)

A failed write (full disk, read-only folder) is one `UserError` naming the file; the old file stays intact.
Temp files are named `.tmp-PID@HOST~RANDOM.ext`, so a process killed mid-write (SIGKILL, power loss) leaves
a file the next run can tell is stale (`remove_stale_temps`: its writer is dead) and remove. `folder_lock`
keeps two processes from writing one folder at once; a lock left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import tempfile
import time
from typing import Callable, Optional

from utils.errors import UserError

TEMP_PREFIX = ".tmp-"
_TEMP_OWNER = re.compile(r"^\.tmp-(\d+)@([^~]*)~")
UNOWNED_STALE_S = 3600      # a temp file of unknown writer (another host, older naming) untouched this long is stale


def _owner_tag() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}~"


def write_failed(path: str, e: OSError) -> UserError:
    return UserError(f"cannot write {path}: {e.strerror or e} (any previous file there is intact)")


def atomic_write(path: str, write: Callable, suffix: str = "") -> None:
    """Call write(binary file object) on a temp file in `path`'s folder, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_owner_tag(), suffix=suffix or os.path.splitext(path)[1])
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
        raise


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: str, pid: Optional[int], host: Optional[str]) -> bool:
    if pid is not None and host == socket.gethostname():
        return not _alive(pid)
    try:
        return time.time() - os.path.getmtime(path) > UNOWNED_STALE_S
    except OSError:
        return False


def remove_stale_temps(folder: str) -> list[str]:
    """Remove the temp files in `folder` whose writer is gone (a killed save); returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")):
        m = _TEMP_OWNER.match(os.path.basename(path))
        if _stale(path, int(m.group(1)) if m else None, m.group(2) if m else None):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def writable_dir(path: str, what: str = "output folder") -> str:
    """Check now that files can be written into `path` (else one UserError). Folders created for the check are
    removed again, so a run refused later (e.g. a checkpoint mismatch) leaves nothing behind."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a folder")
    created, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        created.append(p)
        p = os.path.dirname(p)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=_owner_tag()):
            pass
    except OSError as e:
        raise UserError(f"cannot write into {what} {path}: {e.strerror or e}") from None
    finally:
        for folder in created:                                  # deepest first; stops at one another run filled
            try:
                os.rmdir(folder)
            except OSError:
                break
    return path


@contextlib.contextmanager
def folder_lock(path: str, what: str = "this folder"):
    """Hold the lock file `path` (pid and host inside) for the block; refuse when a live process holds it.

    A lock whose process is dead (same host) is taken over; yields a note saying so, else None.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mine = json.dumps(dict(pid=os.getpid(), host=socket.gethostname()))
    note = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = json.load(f)
                pid, host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = None, None
            if pid is not None and host == socket.gethostname() and not _alive(pid):
                note = f"took over the lock of process {pid}, which is gone ({path})"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            who = f"process {pid} on {host}" if pid is not None else "another process"
            raise UserError(f"{who} is writing {what} (lock {path}); wait for it to finish, or remove the lock "
                            f"if that process is gone") from None
        except OSError as e:
            raise write_failed(path, e) from None
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        break
    else:
        raise UserError(f"cannot take the lock {path}: another process keeps creating it")
    try:
        yield note
    finally:
        with contextlib.suppress(OSError):
            with open(path) as f:
                held = f.read()
            if held == mine:
                os.unlink(path)

