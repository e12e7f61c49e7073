"""Errors the user sees as one line (never a traceback)."""


class RecallError(Exception):
    """A problem the user can act on.  The message is one line that says what to do."""

    exit_code = 2


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when it has none): how a failure
    is reported in one line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:limit] if limit else text
