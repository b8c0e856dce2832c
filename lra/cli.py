"""How every command ends on an error: one line for what the user can fix, and exit codes that say
which kind it was.

    exit 2  a user error: a bad config or input, a data, checkpoint or results file at fault, or
            the file system (a full disk, a read-only or missing folder, a file where a folder
            should be). One line on stderr naming the file or key and the fix.
    exit 1  an internal error (a bug): one line with the exception, and how to see the traceback.

`HYDRA_FULL_ERROR=1` (the switch Hydra users know) shows the full traceback for either kind.
`lra.train`, `lra.results`, `lra.bench` and `python -m data_prep` all end through `call`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

USER_EXIT, INTERNAL_EXIT = 2, 1


class UserError(RuntimeError):
    """A failure the user causes or meets (a corrupt checkpoint or summary, a full disk when
    torch reports it without an errno). The message names the file and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    # Imported here, when a command fails: `python -m data_prep` need not load torch and the
    # zoo to start.
    from attention_zoo import AttentionError
    from data_prep.cache import DataError
    from lra.config import ConfigError
    from lra.run import RunLocked

    return (UserError, ConfigError, DataError, AttentionError, RunLocked, OSError)


# What to say for the file-system errors a user meets, by errno.
OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or point the path elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or point the path elsewhere",
    errno.EROFS: "the file system is read-only; point the path at a writable folder",
    errno.EACCES: "permission denied; point the path at a folder you can write",
    errno.EPERM: "operation not permitted; point the path at a folder you can write",
    errno.ENOTDIR: "a part of this path is a file, not a folder; point the path at a folder",
    errno.EEXIST: "a file is in the way where a folder should be; move it or use another path",
    errno.EISDIR: "this is a folder where a file should be",
    errno.ENOENT: "no such file or folder",
}


# OSError's own subclasses (FileNotFoundError, ...) are file-system errors; library subclasses of
# OSError with their own message (e.g. an HTTP error) keep it.
OS_TYPES = {OSError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
            IsADirectoryError}


def os_error_line(err: OSError) -> str:
    """One line for a file-system error: the path, what happened and the fix."""
    path = err.filename if err.filename is not None else "(no path given)"
    hint = OS_HINTS.get(err.errno, err.strerror or str(err))
    return f"{path}: {hint} ({err.strerror or type(err).__name__})"


def one_line(err: BaseException) -> str:
    text = (os_error_line(err) if type(err) in OS_TYPES and err.errno is not None
            else str(err))
    return " ".join(text.split())  # a wrapped library message may span several lines


def debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report(err: Exception) -> int:
    """Print the one line for `err` on stderr and return its exit code (re-raise it, traceback
    and all, under HYDRA_FULL_ERROR=1). Call it from an `except` block."""
    if debug():
        raise err
    if isinstance(err, user_errors()):
        print(f"error: {one_line(err)}", file=sys.stderr)
        return USER_EXIT
    print(f"internal error: {type(err).__name__}: {one_line(err)} (a bug: rerun with "
          "HYDRA_FULL_ERROR=1 for the traceback, and report it)", file=sys.stderr)
    return INTERNAL_EXIT


def call(command: Callable[[], Any]) -> Any:
    """Return `command()`; on a failure print one line on stderr and exit with its code."""
    try:
        return command()
    except Exception as err:
        sys.exit(report(err))
