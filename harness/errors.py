"""A usage mistake on the command line: `mfu` prints it as one line and exits 2, no traceback.

It lives in its own module, not in cli.py, so that `python -m harness.cli` (where cli.py runs as
__main__) still catches the one class every command module raises.
"""


class UsageError(Exception):
    pass
