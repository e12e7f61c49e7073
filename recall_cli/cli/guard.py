"""How a command's outcome reaches the user: its exit status (like grep's: 0 found, 1 nothing,
2 error; 3 when an index run left some files failed), one line on stderr for every failure, never
a traceback (unless -v asks for one), and logging to stderr."""

from __future__ import annotations

import errno
import logging
import sys

import typer

from recall_cli.errors import RecallError, storage_error

EXIT_OK, EXIT_NO_RESULTS, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 2, 3


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"recall: {message}", err=True)
    return typer.Exit(code)


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="recall: %(message)s", stream=sys.stderr)
    logging.getLogger("recall").setLevel(level)


def run_guarded(action, verbose: bool = False):
    """Run a command body; turn known problems into one line, unknown ones into one line too."""
    try:
        return action()
    except RecallError as error:
        raise fail(str(error), error.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except BrokenPipeError:  # `recall query ... | head`
        sys.stderr.close()
        raise typer.Exit(EXIT_OK) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:  # never a traceback for the user
        if verbose:
            raise
        storage = storage_error(error)  # disk full, read-only disk, damaged file: what to do
        if storage is not None and storage.reason not in (errno.EACCES, errno.EPERM):  # whose file?
            raise fail(str(storage), storage.exit_code) from None
        first = (str(error).splitlines() or [""])[0]
        raise fail(f"unexpected error: {type(error).__name__}: {first} (rerun with -v for details)") from None
