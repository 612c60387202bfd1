"""The one error type for bad input.

:class:`UserError` is what a user can fix: an unknown name, a value of the wrong type or
out of range, a run folder, data set or checkpoint that does not fit the command. The
``worldplan`` command prints its message in one line (``worldplan: error: ...``, exit
code 2); every other exception is a bug and shows its traceback. It subclasses
``ValueError`` so that library callers catching ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, reported in one line by the ``worldplan`` command."""
