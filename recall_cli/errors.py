"""Errors the user sees as one line (never a traceback)."""

from __future__ import annotations

import errno
import os
import re


class RecallError(Exception):
    """A problem the user can act on.  The message is one line that says what to do."""

    exit_code = 2


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when it has none): how a failure
    is reported in one line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:limit] if limit else text


# --- storage problems: disk full, read-only, no permission, damaged files ---------------------
# They reach us as OSError (Python file writes), sqlite3 errors (which keep only a phrase) and
# LanceDB's Rust errors (RuntimeError/OSError whose text holds "... (os error 28)"); all become one
# StorageError line that says what happened and what to do.

REBUILD_HINT = (
    "rebuild it with `recall index --rebuild PATH...` (the old index is replaced only once the new one is complete)"
)

_OS_ERROR_NUMBER = re.compile(r"os error (\d+)")
_RUST_SOURCE = re.compile(r",\s*\S+\.rs:\d+:\d+")  # where in lance's sources an error was raised


def error_text(error: BaseException, limit: int = 160) -> str:
    """first_line without the Rust source locations lance appends."""
    return _RUST_SOURCE.sub("", first_line(error))[:limit]


_PHRASES = (  # lower-case text -> errno (or a tag), checked in order
    ("no space left on device", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("file too large", errno.EFBIG),
    ("read-only file system", errno.EROFS),
    ("attempt to write a readonly database", "readonly"),
    ("permission denied", errno.EACCES),
    ("operation not permitted", errno.EPERM),
    ("file is not a database", "damaged"),
    ("database disk image is malformed", "damaged"),
    ("disk i/o error", "ioerr"),
    ("unable to open database file", "cantopen"),
)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


class StorageError(RecallError):
    """The index could not be written (or read): `reason` is an errno, or "damaged", "readonly",
    "ioerr" or "cantopen" (SQLite's words, for which it keeps no errno)."""

    def __init__(self, message: str, reason):
        super().__init__(message)
        self.reason = reason

    @property
    def read_only(self) -> bool:
        return self.reason in (errno.EROFS, errno.EACCES, errno.EPERM)


def _chain(error: BaseException):
    seen = 0
    while error is not None and seen < 8:
        yield error
        error = error.__cause__ or error.__context__
        seen += 1


def _elsewhere(error: OSError, db_dir) -> bool:
    """An OSError about a file that is neither in the index nor on the way to it (the weights
    file, a file being indexed): not a problem of the index."""
    if db_dir is None or not error.filename or not isinstance(error.filename, (str, bytes, os.PathLike)):
        return False
    name = os.path.abspath(os.fsdecode(error.filename))
    index = os.path.abspath(os.fspath(db_dir))
    return not (name == index or name.startswith(index + os.sep) or index.startswith(name.rstrip(os.sep) + os.sep))


def storage_reason(error: BaseException, db_dir=None):
    """The storage problem behind an exception (an errno, "damaged", "readonly", "ioerr"), or None."""
    for link in _chain(error):
        if isinstance(link, StorageError):
            return link.reason
        if isinstance(link, OSError) and _elsewhere(link, db_dir):
            return None
        if isinstance(link, OSError) and link.errno in STORAGE_ERRNOS:
            return link.errno
        text = str(link).lower()
        number = _OS_ERROR_NUMBER.search(text)
        if number and int(number.group(1)) in STORAGE_ERRNOS:
            return int(number.group(1))
        for phrase, reason in _PHRASES:
            if phrase in text:
                return reason
    return None


def storage_error(error: BaseException, db_dir=None, reading: bool = False) -> StorageError | None:
    """One clear line for a storage problem met while using the index at `db_dir` (`reading`:
    while opening it to read), or None when `error` is something else."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, RecallError):  # already says what to do
        return None
    reason = storage_reason(error, db_dir)
    if reason is None:
        return None
    where = f"the index at {db_dir}" if db_dir is not None else "the index"
    intact = "then run the command again (what was already indexed is intact)"
    if reason in ("readonly", "ioerr", errno.EACCES, errno.EPERM) and db_dir is not None:
        reason = _refine_reason(reason, os.fspath(db_dir))
    if reason == errno.ENOSPC:
        message = (
            f"no space left on device writing {where}: free some space (or move the index to "
            f"another disk with --db), {intact}"
        )
    elif reason == errno.EDQUOT:
        message = f"disk quota exceeded writing {where}: free some space or raise your quota, {intact}"
    elif reason == errno.EFBIG:
        message = f"file size limit reached writing {where} (see `ulimit -f`): raise the limit, {intact}"
    elif reason == errno.EROFS:
        message = (
            f"{where} is on a read-only file system: queries still work; to change the index, "
            "remount it read-write or use --db elsewhere"
        )
    elif reason == "cantopen" or (reading and reason in (errno.EACCES, errno.EPERM)):
        message = (
            f"cannot open {where} ({error_text(error, 120)}): make it readable for your user "
            "(chmod -R u+rwX), or use --db elsewhere"
        )
    elif reason in (errno.EACCES, errno.EPERM, "readonly"):
        if db_dir is not None and not os.path.exists(db_dir):
            message = f"cannot create {where}: permission denied; choose a --db directory you can write to"
        else:
            message = (
                f"no permission to write {where}: queries still work; to change the index, make "
                f"it writable for your user (chmod -R u+w) or use --db elsewhere"
            )
    elif reason == "damaged":
        message = f"{where} is damaged ({error_text(error)}); {REBUILD_HINT}"
    else:  # "ioerr": SQLite keeps no errno
        message = f"disk I/O error writing {where}: check the disk and its free space, {intact}"
    return StorageError(message, reason)


def _refine_reason(reason, db_dir: str):
    """SQLite says only "readonly" or "disk I/O error": find out which problem it is."""
    try:
        stat = os.statvfs(db_dir if os.path.exists(db_dir) else os.path.dirname(db_dir))
    except OSError:
        return reason
    if stat.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if reason == "ioerr":
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return errno.EFBIG
        if stat.f_bavail * stat.f_frsize < 1 << 20:  # under 1 MiB left
            return errno.ENOSPC
    return errno.EACCES if reason == "readonly" else reason
