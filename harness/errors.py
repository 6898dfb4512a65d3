"""Mistakes `mfu` reports as one line with exit 2, no traceback.

They live in their own module, not in cli.py, so that `python -m harness.cli` (where cli.py runs as
__main__) still catches the one class every command module raises.
"""

import os


class UsageError(Exception):
    """A usage mistake on the command line, or an input file `mfu` cannot use."""


def os_error_text(exc: OSError, fallback_path=None) -> str:
    """'PATH: Permission denied' for an OSError from reading or writing a file; `fallback_path`
    names the file when the error does not (a failed write on an open file names none)."""
    reason = exc.strerror or str(exc)
    path = exc.filename if exc.filename is not None else fallback_path
    if isinstance(exc, FileExistsError) and path is not None and not os.path.isdir(path):
        reason += " and is not a directory"  # mkdir(exist_ok=True) over a file
    if path is None:
        return reason
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{path}{target}: {reason}"
