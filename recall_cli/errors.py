"""Errors the user sees as one line (never a traceback)."""


class RecallError(Exception):
    """A problem the user can act on.  The message is one line that says what to do."""

    exit_code = 2
