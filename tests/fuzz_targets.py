"""Coverage-guided fuzzing (atheris / libFuzzer) of every decoder and parser recall has.

    python tests/fuzz_targets.py TARGET [libFuzzer flags]
    python tests/fuzz_targets.py text -max_total_time=600         # ten minutes on one target

Targets: image, video, audio, text, sniff, query, date, ignore, exclude.  Each input must give a
valid result or the one-line DecodeError/RecallError a user would see; any other exception, a
failed check, a hang (-timeout) or a memory blow-up (-rss_limit_mb) is a crash that libFuzzer
reports and saves as crash-<sha1> (replay: `python tests/fuzz_targets.py TARGET crash-<sha1>`).
The decoders start from the valid files of fuzz_seeds.py, written to a scratch corpus directory
($TMPDIR/recall-fuzz-*, left behind: libFuzzer exits without Python's cleanup).  Coverage comes
from recall's own code, pypdf, html.parser and pathspec (pure Python, instrumented);
Pillow/PyAV/libsndfile are C and are fuzzed blind.  tests/test_fuzz_atheris.py runs every target
for a few seconds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris
import fuzz_seeds
from fuzz_seeds import (
    AUDIO_SUFFIXES,
    IMAGE_SUFFIXES,
    MODALITIES,
    TEXT_SUFFIXES,
    TREE,
    VIDEO_SUFFIXES,
    assert_media_tensor,
    assert_one_line,
    assert_valid_query,
)

# pure-Python code whose branches guide the fuzzer; torch, numpy and the C decoders are imported
# uninstrumented (instrumenting torch would take minutes)
INSTRUMENTED = ["recall_cli", "pypdf", "pathspec", "html"]
WORK = Path(tempfile.mkdtemp(prefix="recall-fuzz-"))

# Every target below is a function returning (test one input, seed inputs).  Imports happen
# inside it, under atheris.instrument_imports (see main), so that the parser targets do not pay
# torch's import.


# ------------------------------------------------------------------------------------------------
# decoders: first byte picks the format (the file name the decoder sees), the rest is the file
# ------------------------------------------------------------------------------------------------


def _file(data: bytes, suffixes: tuple[str, ...]) -> Path:
    suffix = suffixes[data[0] % len(suffixes)] if data else suffixes[0]
    path = WORK / f"input{suffix}"
    path.write_bytes(data[1:])
    return path


def _decoder_target(decode, suffixes, check):
    from recall_cli.models.base import DecodeError

    def one_input(data: bytes) -> None:
        try:
            result = decode(_file(data, suffixes))
        except DecodeError as error:
            assert_one_line(error)
            return
        check(result)

    return one_input, [bytes([i]) + fuzz_seeds.seeds()[suffix] for i, suffix in enumerate(suffixes)]


def image():
    from recall_cli.models.imagebind.media import image as media_image

    return _decoder_target(
        media_image.load_image, IMAGE_SUFFIXES, lambda image: assert_media_tensor(image[None], (3, 224, 224), 1)
    )


def video():
    from recall_cli.models.imagebind.media import video as media_video

    return _decoder_target(
        media_video.load_video,
        VIDEO_SUFFIXES,
        lambda video: assert_media_tensor(video, (3, 2, 224, 224), media_video.VIDEO_CLIPS * media_video.VIDEO_CROPS),
    )


def audio():
    from recall_cli.models.imagebind.media import audio as media_audio

    return _decoder_target(
        media_audio.load_audio,
        AUDIO_SUFFIXES,
        lambda audio: assert_media_tensor(audio, (1, 128, 204), media_audio.AUDIO_MAX_CLIPS),
    )


def text():
    import pypdf  # noqa: F401 - imported here, not on first use, so that it is instrumented

    from recall_cli.models.textextract import extract_text

    def check(text) -> None:
        assert isinstance(text, str) and text and text == text.strip()

    return _decoder_target(extract_text, TEXT_SUFFIXES, check)


def sniff():
    from recall_cli.index.sniff import sniff_bytes, sniff_path

    suffixes = tuple(sorted(fuzz_seeds.seeds()))

    def one_input(data: bytes) -> None:
        path = _file(data, suffixes)
        assert sniff_bytes(data[1:65], path.suffix) in MODALITIES
        assert sniff_path(path, path.stat().st_size) in MODALITIES

    return one_input, [bytes([i]) + fuzz_seeds.seeds()[suffix][:64] for i, suffix in enumerate(suffixes)]


# ------------------------------------------------------------------------------------------------
# query language
# ------------------------------------------------------------------------------------------------


def query():
    from recall_cli.errors import RecallError
    from recall_cli.query.language import parse_query

    def one_input(data: bytes) -> None:
        text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
        try:
            terms = parse_query(text)
        except RecallError as error:
            assert_one_line(error)
            return
        assert_valid_query(terms)

    queries = [
        "red kayak",
        '"beach" + "dog" - "people"',
        "2:'dog' + 0.5:'cat'",
        '"sea" - .5:"boat"',
        '"a \\" quote"',
        "Grandma's pie",
        '-"x"',
        '0:"a" + 0:"b"',
    ]
    # FuzzedDataProvider's string format: a first byte with bit 0 clear means ASCII
    return one_input, [b"\x00" + query.encode() for query in queries]


def date():
    from recall_cli.errors import RecallError
    from recall_cli.query.language import parse_date

    def one_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        end = provider.ConsumeBool()
        try:
            ns = parse_date(provider.ConsumeUnicodeNoSurrogates(len(data)), end)
        except RecallError as error:
            assert_one_line(error)
            return
        assert isinstance(ns, int) and -(2**63) <= ns <= 2**63 - 1

    dates = [
        "2024-05-01",
        "9999-12-31",
        "0001-01-01",
        "2024-05-01T14:30",
        "2024-05-01T14:30:00Z",
        "2024-05-01 14:30:00.123456+05:30",
    ]
    return one_input, [end + b"\x00" + day.encode() for day in dates for end in (b"\x00", b"\x01")]


# ------------------------------------------------------------------------------------------------
# ignore files and --exclude: one fixed tree, the ignore files rewritten for every input
# ------------------------------------------------------------------------------------------------

ROOT = WORK / "tree"


def _scanner():
    """check(options): scan ROOT, and check what a scan must give whatever the ignore rules."""
    from recall_cli.index.scan import PathFilter, ScanOptions, scan_roots

    for relative in TREE:
        (ROOT / relative).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / relative).write_text("x")

    def check(options: ScanOptions = ScanOptions()) -> None:
        report = scan_roots([str(ROOT)], options)
        assert report.problems == []
        found = {os.path.relpath(entry.path, ROOT) for entry in report.files}
        assert found <= set(TREE)
        path_filter = PathFilter([str(ROOT)], options)  # the watcher's decisions agree with the walk
        for relative in TREE:
            assert path_filter.ignored(str(ROOT / relative), False) == (relative not in found), relative

    return check


def ignore():
    """Input: .gitignore content, a NUL, notes/.ignore content."""
    check = _scanner()

    def one_input(data: bytes) -> None:
        top, _, nested = data.partition(b"\x00")
        (ROOT / ".gitignore").write_bytes(top)
        (ROOT / "notes" / ".ignore").write_bytes(nested)
        check()

    return one_input, [
        b"*.log\n!important.log\nbuild/\n\x00*.jpg\n",
        b"\\!bang.md\n\\#hash.md\n[[]x].md\n\x00deep/",
        b"**/d.jpg\n!\n[z-a]\nx\\ y.txt\x00/c.txt\n!c.txt\n",
    ]


def exclude():
    """Input: --exclude globs, one a line."""
    from recall_cli.errors import RecallError
    from recall_cli.index.scan import ScanOptions

    check = _scanner()

    def one_input(data: bytes) -> None:
        patterns = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data)).split("\n")
        try:
            check(ScanOptions(excludes=tuple(patterns)))
        except RecallError as error:
            assert_one_line(error)

    return one_input, [b"\x00*.md\nnotes/deep\n!notes/deep/d.jpg", b"\x00**/[ab].*\n/build/"]


TARGETS = {target.__name__: target for target in (image, video, audio, text, sniff, query, date, ignore, exclude)}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dirs or files]")
    with atheris.instrument_imports(include=INSTRUMENTED):
        one_input, seeds = TARGETS[sys.argv[1]]()
    flags = sys.argv[2:]
    if not any(not flag.startswith("-") for flag in flags):  # no corpus given: start from the seeds
        corpus = WORK / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(seed)
        flags.append(str(corpus))
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
