"""File names as words, for the full-text index: people search their files by the words they gave
them (`IMG_kayak_2019.jpg` -> `img kayak 2019 jpg`, `myHolidayPhoto.png` -> `myholidayphoto my
holiday photo png`).  A name is split at every character that is not a letter or a digit, and
each run again at camelCase and letter/digit boundaries; the whole run is kept too, so that the
name as typed still matches.  Lower case; the full-text tokenizer folds accents.

Folders count as well, but only from the indexed root down (the root's own name included): the
folders above it (`/home/alice`) are the same for every file and would match everything.
"""

from __future__ import annotations

import os
import re

_RUNS = re.compile(r"[^\W_]+")  # letters and digits of any script


def split_words(text: str) -> list[str]:
    """The words of a name, in order: each run of letters and digits, then its camelCase and
    letter/digit parts when there is more than one."""
    words = []
    for run in _RUNS.findall(text):
        words.append(run.lower())
        parts = _parts(run)
        if len(parts) > 1:
            words.extend(part.lower() for part in parts)
    return words


def name_words(path: str) -> str:
    """The words of a file's own name (extension included: `jpg` finds JPEGs by name)."""
    return " ".join(split_words(os.path.basename(path)))


def path_words(path: str, root: str | None) -> str:
    """The words of the folders from the root (its own name included) down to the file, and of
    the file's name."""
    root = (root or os.path.dirname(path)).rstrip("/")
    inside = path[len(root) + 1 :] if path.startswith(root + "/") else os.path.basename(path)
    return " ".join(split_words(os.path.basename(root) + "/" + inside))


def _kind(char: str) -> str:
    if char.isdigit():
        return "digit"
    return "upper" if char.isupper() else "lower" if char.islower() else "other"


def _parts(run: str) -> list[str]:
    """`HTTPServer2Config` -> HTTP, Server, 2, Config: a new part starts where digits meet letters,
    where a lower-case letter meets an upper-case one, and before the last capital of a capital
    run that goes on in lower case; scripts without case (CJK...) stay whole."""
    parts, start = [], 0
    for index in range(1, len(run)):
        before, here = _kind(run[index - 1]), _kind(run[index])
        after = _kind(run[index + 1]) if index + 1 < len(run) else None
        boundary = (
            ("digit" in (before, here) and before != here)
            or (before == "lower" and here == "upper")
            or (before == "upper" and here == "upper" and after == "lower")
            or ("other" in (before, here) and before != here)
        )
        if boundary:
            parts.append(run[start:index])
            start = index
    parts.append(run[start:])
    return parts
