"""Fuzz tests (issue 8): every decoder, the ignore-file handling and the query language take any
input and either give a valid result or the one-line error a user sees -- never another exception,
a traceback, NaN embeddings or a hang.

Inputs are random bytes/strings and, mostly, mutations of small valid files (fuzz_seeds.py): a bit
flip inside a PNG chunk or an MP4 box reaches far deeper into a decoder than random bytes do.
Runs are derandomized (the same examples on every machine) and bounded: the whole file takes well
under a minute on two cores.  RECALL_FUZZ_SCALE=20 runs twenty times as many examples locally.
The crashes these tests found are kept at the end as plain regression tests with the exact input.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import shutil
import signal
import tempfile
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import fuzz_seeds
import numpy as np
import pytest
import soundfile
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
    mutate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from recall_cli.errors import RecallError
from recall_cli.index.scan import PathFilter, ScanOptions, scan_roots
from recall_cli.index.sniff import sniff_bytes, sniff_path
from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media import audio as media_audio
from recall_cli.models.imagebind.media import common as media_common
from recall_cli.models.imagebind.media import image as media_image
from recall_cli.models.imagebind.media import video as media_video
from recall_cli.models.textextract import decode_text_bytes, extract_text, html_to_text
from recall_cli.query.language import is_weighted, parse_date, parse_query

SCALE = float(os.environ.get("RECALL_FUZZ_SCALE", "1"))
HANG_SECONDS = 20  # one example; the slowest real one takes ~50 ms


def fuzz_settings(examples: int, deadline_s: float = 3.0) -> settings:
    # deadline: a decoder that takes seconds on a 2 kB file is a denial-of-service bug even when
    # it finishes (the 58396x20 JPEG below took 2.4 s and 440 MB); generous for a loaded CI box
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=timedelta(seconds=deadline_s),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


class Hung(BaseException):
    """Raised into a hung example.  A BaseException, so the decoders' `except Exception` (which
    turns everything into DecodeError) cannot hide it."""


@contextmanager
def time_limit(seconds: float = HANG_SECONDS):
    """Fail an example that never returns: SIGALRM interrupts Python code, and faulthandler ends
    the whole process with every thread's stack if a C decoder loops without returning to Python."""

    def on_alarm(signum, frame):
        raise Hung(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 3, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------

EDITS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**16), st.integers(0, 2**16)), min_size=1, max_size=6)


def file_bytes(suffixes: tuple[str, ...]):
    """(suffix, content): mostly a mutated valid file; also the first 0-64 bytes of one (its
    magic number and header) followed by random bytes."""
    mutated = st.builds(
        lambda suffix, edits: (suffix, mutate(fuzz_seeds.seeds()[suffix], edits)), st.sampled_from(suffixes), EDITS
    )
    headed = st.builds(
        lambda suffix, n, tail: (suffix, fuzz_seeds.seeds()[suffix][:n] + tail),
        st.sampled_from(suffixes),
        st.integers(0, 64),
        st.binary(max_size=512),
    )
    return st.one_of(mutated, mutated, mutated, headed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(workdir: Path, suffix: str, content: bytes) -> Path:
    path = workdir / f"input{suffix}"
    path.write_bytes(content)
    return path


def decode_or_refuse(decode, path: Path):
    """The decoder's result, or None after checking that it refused with one line."""
    with time_limit():
        try:
            return decode(path)
        except DecodeError as error:
            assert_one_line(error)
            return None


# ------------------------------------------------------------------------------------------------
# decoders
# ------------------------------------------------------------------------------------------------


@fuzz_settings(120)
@given(case=file_bytes(IMAGE_SUFFIXES))
def test_image_decoder_gives_224_square_or_one_line_error(workdir, case):
    image = decode_or_refuse(media_image.load_image, write(workdir, *case))
    if image is not None:
        assert_media_tensor(image[None], (3, 224, 224), 1)


@fuzz_settings(60)
@given(case=file_bytes(VIDEO_SUFFIXES))
def test_video_decoder_gives_clips_or_one_line_error(workdir, case):
    video = decode_or_refuse(media_video.load_video, write(workdir, *case))
    if video is not None:
        assert_media_tensor(video, (3, 2, 224, 224), media_video.VIDEO_CLIPS * media_video.VIDEO_CROPS)
        assert video.shape[0] % media_video.VIDEO_CROPS == 0


@fuzz_settings(120)
@given(case=file_bytes(AUDIO_SUFFIXES))
def test_audio_decoder_gives_spectrograms_or_one_line_error(workdir, case):
    audio = decode_or_refuse(media_audio.load_audio, write(workdir, *case))
    if audio is not None:
        assert_media_tensor(audio, (1, 128, 204), media_audio.AUDIO_MAX_CLIPS)


@fuzz_settings(120)
@given(case=file_bytes(TEXT_SUFFIXES))
def test_text_extraction_gives_text_or_one_line_error(workdir, case):
    text = decode_or_refuse(extract_text, write(workdir, *case))
    if text is not None:
        assert isinstance(text, str) and text and text == text.strip()


@pytest.mark.parametrize("decoder", ["image", "video", "audio", "text"])
def test_every_decoder_refuses_other_formats_in_one_line(workdir, decoder):
    """The indexer picks the decoder from the sniffed content, so a file whose sniffing went wrong
    reaches the wrong one: that must be a clean refusal (or a valid decode) too."""
    decode = {
        "image": media_image.load_image,
        "video": media_video.load_video,
        "audio": media_audio.load_audio,
        "text": extract_text,
    }[decoder]
    for suffix, content in fuzz_seeds.seeds().items():
        decode_or_refuse(decode, write(workdir, suffix, content))


@fuzz_settings(300, deadline_s=1.0)
@given(
    raw=st.one_of(
        st.binary(max_size=2048),
        st.text(max_size=512).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.builds(mutate, st.just(fuzz_seeds.TEXT), EDITS),
    )
)
def test_text_bytes_decode_or_one_line_refusal(raw):
    try:
        text = decode_text_bytes(raw)
    except DecodeError as error:
        assert_one_line(error)
    else:
        assert isinstance(text, str)


@fuzz_settings(200, deadline_s=1.0)
@given(
    markup=st.one_of(
        st.text(max_size=512),
        st.builds(mutate, st.just(fuzz_seeds.HTML), EDITS).map(lambda b: b.decode("utf-8", "replace")),
        st.lists(
            st.sampled_from(
                [
                    "<",
                    ">",
                    "</",
                    "<!--",
                    "-->",
                    "<script>",
                    "</script>",
                    "&",
                    "&#x",
                    "&#",
                    ";",
                    "<![CDATA[",
                    "]]>",
                    "<p",
                    " a='",
                    "'",
                    '"',
                    "x",
                    "<?",
                    "<!doctype",
                    "\x00",
                    "\ud800",
                ]
            ),
            max_size=40,
        ).map("".join),
    )
)
def test_html_to_text_never_raises(markup):
    assert isinstance(html_to_text(markup), str)


KNOWN_SUFFIXES = sorted(
    {
        ".jpg",
        ".png",
        ".gif",
        ".webp",
        ".bmp",
        ".heic",
        ".mp4",
        ".mkv",
        ".ogv",
        ".wav",
        ".mp3",
        ".m4a",
        ".ogg",
        ".txt",
        ".pdf",
        ".html",
        ".zip",
        "",
    }
)


@fuzz_settings(300, deadline_s=1.0)
@given(
    head=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda suffix, edits: mutate(fuzz_seeds.seeds()[suffix], edits)[:64],
            st.sampled_from(sorted(fuzz_seeds.seeds())),
            EDITS,
        ),
    ),
    suffix=st.one_of(st.sampled_from(KNOWN_SUFFIXES), st.text(max_size=6).map(lambda s: "." + s)),
)
def test_sniffing_names_a_modality_or_none(head, suffix):
    assert sniff_bytes(head, suffix) in MODALITIES


@fuzz_settings(60)
@given(case=file_bytes(tuple(sorted(fuzz_seeds.seeds()))))
def test_sniffing_a_file_names_a_modality_or_none(workdir, case):
    path = write(workdir, *case)
    assert sniff_path(path, path.stat().st_size) in MODALITIES


# ------------------------------------------------------------------------------------------------
# query language
# ------------------------------------------------------------------------------------------------

# pieces of the weighted-query grammar, so that random sequences are often nearly valid
QUERY_TOKENS = [
    '"',
    "'",
    '\\"',
    "\\",
    "+",
    "-",
    ":",
    " ",
    "2:",
    "0.5:",
    ".5:",
    "0:",
    "1.:",
    "9" * 400 + ":",
    "dog",
    "red kayak",
    "Grandma's",
    "\t",
    "\n",
    "é",
    "\x00",
]


@fuzz_settings(600, deadline_s=1.0)
@given(text=st.one_of(st.text(max_size=200), st.lists(st.sampled_from(QUERY_TOKENS), max_size=20).map("".join)))
def test_any_query_parses_or_gets_one_line_error(text):
    try:
        terms = parse_query(text)
    except RecallError as error:
        assert_one_line(error)
    else:
        assert_valid_query(terms)


WEIGHTS = st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3})?\Z"))
TERMS = st.text(
    st.characters(blacklist_characters="\"'\\", blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda s: s.strip())


@fuzz_settings(200, deadline_s=1.0)
@given(
    parts=st.lists(st.tuples(st.sampled_from(["+", "-"]), WEIGHTS, TERMS), min_size=1, max_size=5),
    quote=st.sampled_from(['"', "'"]),
)
def test_weighted_query_reads_back_what_was_written(parts, quote):
    text = " ".join(f"{sign} {weight + ':' if weight else ''}{quote}{term}{quote}" for sign, weight, term in parts)
    expected = [((-1.0 if sign == "-" else 1.0) * float(weight or 1), term.strip()) for sign, weight, term in parts]
    if all(weight == 0 for weight, _ in expected):
        with pytest.raises(RecallError, match="every weight is zero"):
            parse_query(text)
    else:
        assert is_weighted(text) and parse_query(text) == expected


@fuzz_settings(300, deadline_s=1.0)
@given(
    text=st.one_of(st.text(max_size=40), st.dates().map(str), st.datetimes().map(lambda d: d.isoformat())),
    end=st.booleans(),
)
def test_any_date_parses_to_int64_or_one_line_error(text, end):
    try:
        ns = parse_date(text, end)
    except RecallError as error:
        assert_one_line(error)
    else:
        assert isinstance(ns, int) and -(2**63) <= ns <= 2**63 - 1


@fuzz_settings(200, deadline_s=1.0)
@given(day=st.dates())
def test_every_calendar_date_is_accepted(day):
    """`--since 0001-01-01` / `--until 9999-12-31` are valid dates: clamped, never refused."""
    text = f"{day.year:04d}-{day.month:02d}-{day.day:02d}"
    assert parse_date(text) <= parse_date(text, end=True)


# ------------------------------------------------------------------------------------------------
# ignore files and --exclude
# ------------------------------------------------------------------------------------------------

BAD_LINES = ("!", "\\", "a\\", "[z-a]", "!\\")  # lines pathspec cannot compile
PATTERN_LINE = st.one_of(
    st.text(alphabet="*?[]!#/\\-^ .abcdemnotxy\u00fc", max_size=12),
    st.sampled_from(
        [
            "*.txt",
            "!*.txt",
            "notes/",
            "/b.md",
            "**/d.jpg",
            "build",
            "!build/e.log",
            "\\!bang.md",
            "\\#hash.md",
            "[[]x].md",
            "x\\ y.txt",
            "*",
            "**",
            "/",
            "#",
            "",
            " ",
            *BAD_LINES,
        ]
    ),
    st.text(max_size=12),
)
IGNORE_FILE = st.one_of(
    st.lists(PATTERN_LINE, max_size=8).map("\n".join).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(PATTERN_LINE, max_size=8).map("\r\n".join).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
)


@contextmanager
def tree(workdir: Path, ignore_files: dict[str, bytes]):
    """A fresh copy of TREE with the given ignore files, removed afterwards."""
    root = Path(tempfile.mkdtemp(dir=workdir))
    try:
        for relative in TREE:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text("x")
        for relative, content in ignore_files.items():
            (root / relative).write_bytes(content)
        yield root
    finally:
        shutil.rmtree(root)


def scanned(root: Path, options: ScanOptions = ScanOptions()) -> set[str]:
    with time_limit():
        report = scan_roots([str(root)], options)
    assert report.problems == []
    found = {os.path.relpath(entry.path, root) for entry in report.files}
    assert found <= set(TREE)
    # the watcher's single-path decisions agree with the walk, file by file
    path_filter = PathFilter([str(root)], options)
    for relative in TREE:
        assert path_filter.ignored(str(root / relative), False) == (relative not in found), relative
    return found


@fuzz_settings(150, deadline_s=5.0)
@given(top=IGNORE_FILE, nested=IGNORE_FILE, bad=st.lists(st.sampled_from(BAD_LINES), min_size=1, max_size=3))
def test_any_ignore_file_scans_and_bad_lines_change_nothing(workdir, top, nested, bad):
    with tree(workdir, {".gitignore": top, "notes/.ignore": nested}) as root:
        found = scanned(root)
    # the same files with uncompilable lines added: skipped, so the scan sees exactly the same
    with tree(
        workdir,
        {
            ".gitignore": top + b"\n" + "\n".join(bad).encode(),
            "notes/.ignore": nested,
            "notes/.recallignore": "\n".join(bad).encode(),
        },
    ) as root:
        assert scanned(root) == found


@fuzz_settings(150, deadline_s=5.0)
@given(excludes=st.lists(PATTERN_LINE, min_size=1, max_size=4))
def test_any_exclude_glob_scans_or_gets_one_line_error(workdir, excludes):
    with tree(workdir, {}) as root:
        try:
            scanned(root, ScanOptions(excludes=tuple(excludes)))
        except RecallError as error:
            assert_one_line(error)
            assert "--exclude" in str(error)


# ------------------------------------------------------------------------------------------------
# regression tests: the crashes the fuzzers found, with their exact inputs
# ------------------------------------------------------------------------------------------------


def test_bad_gitignore_lines_are_skipped_with_one_warning_each(tmp_path, caplog):
    """Found while writing the ignore-file fuzz test: a lone `!`, a trailing backslash or `[z-a]`
    in a .gitignore raised GitIgnorePatternError / re.error out of scan_roots, stopping the whole
    index run.  Git skips such lines; so does recall, with a one-line warning naming file and line."""
    (tmp_path / ".gitignore").write_text("*.log\n!\nb\\\n[z-a]\n")
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / "drop.log").write_text("x")
    with caplog.at_level(logging.WARNING, logger="recall"):
        report = scan_roots([str(tmp_path)])
    assert [os.path.basename(entry.path) for entry in report.files] == ["keep.txt"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3 and all("\n" not in line for line in messages)
    assert any(".gitignore:2: skipped bad ignore pattern '!'" in line for line in messages)


def test_bad_exclude_glob_is_one_line_error(tmp_path):
    with pytest.raises(RecallError, match=r"bad --exclude pattern '\[z-a\]'"):
        scan_roots([str(tmp_path)], ScanOptions(excludes=("[z-a]",)))
    with pytest.raises(RecallError, match="bad --exclude pattern '!'"):
        PathFilter([str(tmp_path)], ScanOptions(excludes=("!",)))


def test_ignore_line_with_many_stars_does_not_stall_the_scan(tmp_path):
    """Found while fuzzing ignore files: with Python's backtracking `re`, `*a*a*a*a*a*ab` against a
    200-character name of a's takes minutes (4 stars: 1.7 s per file, 5: 82 s, each more star
    x50).  Fixed by depending on pathspec[re2] (google-re2 matches in linear time)."""
    (tmp_path / ".gitignore").write_text("*a" * 6 + "b\n")
    (tmp_path / ("a" * 200 + ".txt")).write_text("x")
    with time_limit(2):
        assert len(scan_roots([str(tmp_path)]).files) == 1


def test_thin_strip_image_is_decoded_without_a_giant_resize(tmp_path):
    """Found by the image fuzzer: one flipped bit in the height field of a 28x20 JPEG (mutation
    [(0, 65085, 49892)] of the seed) made it 58396x20; the shorter side went to 224 first, a
    653995x224 image (440 MB, 2.4 s) to crop 224x224 from.  Rebuilt here without the encoder-
    dependent seed."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (58396, 20), (200, 30, 30)).save(path)
    with time_limit(2):
        assert_media_tensor(media_image.load_image(path)[None], (3, 224, 224), 1)
    # the cropped path gives (nearly) what resize-then-crop gives, on an image that allows both
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 3000, 3), dtype=np.uint8))
    exact = strip.resize((int(224 * 3000 / 40), 224), Image.BICUBIC)
    left = (exact.size[0] - 224) // 2
    expected = np.asarray(exact.crop((left, 0, left + 224, 224)), dtype=np.float32) / 255
    got = media_image.preprocess_image(strip).permute(1, 2, 0).numpy()
    got = got * np.array(media_common.CLIP_STD, np.float32) + np.array(media_common.CLIP_MEAN, np.float32)
    assert np.abs(got - expected).max() < 2 / 255


def test_odd_sample_rate_resamples_quickly(tmp_path):
    """Found by the audio fuzzer: edits to the seed WAV's header made it 7998 Hz (gcd with 16000
    is 2), and resampling built an 8000 x 4013 kernel (2.5 s, 256 MB); 44101 Hz would need
    5.6 GB.  Odd rates are snapped to the nearest 100 Hz; rates no format uses are refused."""
    soundfile.write(str(tmp_path / "fuzzed.wav"), np.zeros(2399, np.float32), 7998)
    with time_limit(2):
        assert_media_tensor(media_audio.load_audio(tmp_path / "fuzzed.wav"), (1, 128, 204), 1)
    soundfile.write(str(tmp_path / "odd.wav"), np.zeros(44101, np.float32), 44101)
    with time_limit(2):
        assert_media_tensor(media_audio.load_audio(tmp_path / "odd.wav"), (1, 128, 204), 1)
    soundfile.write(str(tmp_path / "slow.wav"), np.zeros(900, np.float32), 300)
    with pytest.raises(DecodeError, match=r"unsupported audio sample rate \(300 Hz\)"):
        media_audio.load_audio(tmp_path / "slow.wav")


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("value", [np.nan, np.inf, 3e38])
def test_float_wav_with_invalid_samples_is_refused(tmp_path, value, channels):
    """Found reading the code, then by the audio fuzzer once it had a float seed (.aif): a float
    file may hold NaN/inf, and 3e38 overflows the power spectrum; each gave a NaN spectrogram, so
    a NaN embedding in the index.  Now a one-line refusal, without numpy's overflow warnings."""
    samples = np.zeros((8000, channels), np.float32)
    samples[100:200] = value
    soundfile.write(str(tmp_path / "bad.wav"), samples, 8000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecodeError, match="invalid samples"):
            media_audio.load_audio(tmp_path / "bad.wav")


def test_huge_query_weight_is_one_line_error():
    """Found by the query fuzzer: 400 digits before ':' parsed as weight inf, and the query vector
    as NaN."""
    with pytest.raises(RecallError, match="weight too large at character 1"):
        parse_query("9" * 400 + ':"dog"')


@pytest.mark.parametrize(
    "text, end, expected",
    [("9999-12-31", True, 2**63 - 1), ("0001-01-01", False, -(2**63)), ("0001-01-01", True, None)],
)
def test_extreme_calendar_dates_clamp(text, end, expected):
    """Found by the date fuzzer: `--until 9999-12-31` and `--since 0001-01-01` said "cannot read
    date" (the day after 9999-12-31, and year 1 in local time, overflow datetime)."""
    ns = parse_date(text, end)
    assert ns == expected if expected is not None else -(2**63) <= ns < 0


def test_damaged_pdf_is_refused_without_pypdf_log_noise(tmp_path, caplog):
    """pypdf logs a warning per repair ("Object 6 0 not defined."), which the CLI printed as extra
    `recall:` lines around the one-line result."""
    path = write(tmp_path, ".pdf", mutate(fuzz_seeds.seeds()[".pdf"], [(1, 20, 6)]))
    with caplog.at_level(logging.DEBUG):
        decode_or_refuse(extract_text, path)
    assert not [record for record in caplog.records if record.name.startswith("pypdf")]
