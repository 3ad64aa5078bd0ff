"""User-facing errors: bad input gets one line on stderr and exit code 2, never a deep traceback.

Scripts run their body under `run_main`; library code raises `UserError` for problems the user can fix
(a missing file, an unknown key, an invalid budget). `ELIT_DEBUG=1` shows the full traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

# A file that cannot be written (full disk, quota, read-only, permissions) is the user's to fix: one line.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class UserError(Exception):
    """A problem with the user's input or files, reported as one line."""


@contextlib.contextmanager
def user_errors(prefix: str = ""):
    """Turn ValueError/TypeError raised by validating library calls (model names, budgets) into UserError."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise UserError(f"{prefix}{e}") from e


def run_main(fn) -> None:
    """Run a script's main function; a UserError prints 'error: ...' and exits with status 2."""
    try:
        fn()
    except UserError as e:
        if os.environ.get("ELIT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS or os.environ.get("ELIT_DEBUG"):
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        sys.exit(2)
