"""The one error type for bad input.

:class:`UserError` is what a user can fix: an unknown name, a value of the wrong type or
out of range, a run folder, data set or checkpoint that does not fit the command. The
``worldplan`` command prints its message in one line (``worldplan: error: ...``, exit
code 2); every other exception is a bug and shows its traceback. It subclasses
``ValueError`` so that library callers catching ``ValueError`` keep working.

The helpers below are how the command tells the two apart where no ``UserError`` is raised
(an ``OSError``, an interrupt surfacing as another error).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

# File-system conditions a user fixes (space, quota, permissions): one line naming the path
# wherever they happen, like any OSError on a file of the run folder.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class UserError(ValueError):
    """Bad input, reported in one line by the ``worldplan`` command."""


def about_users_files(exc: OSError, run_path: Path) -> bool:
    """Is ``exc`` about the user's storage (no space, no permission) or a file of the run
    folder ``run_path`` (a missing or unreadable input)? Other OSErrors, like a missing
    file the package itself should hold, are bugs."""
    if exc.errno in STORAGE_ERRNOS:
        return True
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    root = run_path.resolve()
    return any(Path(os.fsdecode(n)).resolve().is_relative_to(root) for n in names)


def os_error_line(exc: OSError) -> str:
    """``exc`` as one line naming its path: ``Permission denied: runs/x``."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def caused_by_interrupt(exc: BaseException) -> bool:
    """Was ``exc`` raised while handling a Ctrl-C? A KeyboardInterrupt that lands inside an
    import (torch imports some modules lazily, mid-training) surfaces as another error whose
    cause or context is the interrupt."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush to a closed pipe
    cannot raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
