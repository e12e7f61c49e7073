"""Small valid files of every format recall decodes, the byte mutations the fuzzers apply, and
the checks both fuzzers make of a result.

Shared by tests/test_fuzz.py (hypothesis) and tests/fuzz_targets.py (atheris).  Mutating a valid
file reaches the parsers' deep code paths (chunk tables, codec headers, page trees); random bytes
alone mostly stop at the first magic-number check.  Seeds are built once per process and cached:
encoding them costs about a second.
"""

from __future__ import annotations

import functools
import io

import numpy as np

# suffix -> which decoder reads it (the keys double as the file name the decoder sees)
IMAGE_SUFFIXES = (".jpg", ".png", ".gif", ".webp")
VIDEO_SUFFIXES = (".mp4",)
AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".m4a")  # .aif: float samples
TEXT_SUFFIXES = (".txt", ".html", ".pdf")


def _image(fmt: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _container(fmt: str, write) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        write(container)
    return buffer.getvalue()


def _write_video(container) -> None:
    """1 s of 32x24 H.264 at 8 fps: small, yet several frames and a real index table."""
    import av

    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    for i in range(8):
        array = np.full((24, 32, 3), i * 30, np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _write_aac(container) -> None:
    import av

    rate = 16000
    samples = _tone(0.5, rate)
    stream = container.add_stream("aac", rate=rate)
    stream.layout = "mono"
    for i in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _soundfile(fmt: str, subtype: str | None = None) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, _tone(0.3, 8000), 8000, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _pdf() -> bytes:
    """A one-page PDF with a text object, written by hand (pypdf cannot add text); the xref
    offsets are computed so that the file is valid, not merely recoverable."""
    content = b"BT /F1 12 Tf 20 100 Td (red kayak at sunset) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


HTML = (
    b"<!doctype html><html><head><title>Trip</title><style>p{color:red}</style>"
    b"<script>var x = '<p>';</script></head><body><h1>Kayak</h1><p>Red kayak &amp; "
    b"sunset &#x1F6F6;</p><ul><li>one<li>two</ul><!-- note --><![CDATA[x]]></body></html>"
)
TEXT = "Notes: the red kayak, caf\u00e9, \u65e5\u672c, emoji \U0001f6f6.\n".encode() * 3


@functools.cache
def seeds() -> dict[str, bytes]:
    """suffix -> one small valid file in that format."""
    return {
        ".jpg": _image("JPEG"),
        ".png": _image("PNG"),
        ".gif": _image("GIF"),
        ".webp": _image("WEBP"),
        ".mp4": _container("mp4", _write_video),
        ".m4a": _container("ipod", _write_aac),  # ipod = the m4a muxer
        ".wav": _soundfile("WAV"),
        ".flac": _soundfile("FLAC"),
        ".aif": _soundfile("AIFF", "FLOAT"),  # float samples: a mutation can make NaN or 1e38
        ".pdf": _pdf(),
        ".html": HTML,
        ".txt": TEXT,
    }


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flips bits of a byte, 1 overwrites a byte, 2 inserts
    a byte, 3 deletes a byte, 4 truncates, 5 overwrites 4 bytes with an extreme 32-bit value
    (lengths, counts and sample rates are where parsers trust headers).  Positions wrap around the
    current length, so any integers make a valid edit."""
    out = bytearray(data)
    extremes = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000)
    for kind, position, value in edits:
        if not out:
            out.append(value & 0xFF)
            continue
        i = position % len(out)
        kind %= 6
        if kind == 0:
            out[i] ^= (value & 0xFF) or 1
        elif kind == 1:
            out[i] = value & 0xFF
        elif kind == 2:
            out.insert(i, value & 0xFF)
        elif kind == 3:
            del out[i]
        elif kind == 4:
            del out[i:]
        else:
            extreme = extremes[value % len(extremes)]
            order = "little" if value & 0x100 else "big"
            out[i : i + 4] = extreme.to_bytes(4, order)
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# what counts as a good outcome
# ------------------------------------------------------------------------------------------------

MODALITIES = (None, "image", "audio", "video", "text")
# names that exercise glob syntax in ignore-file fuzzing: brackets, a leading `!`/`#`, spaces,
# non-ASCII, nested directories
TREE = (
    "a.txt",
    "b.md",
    "x y.txt",
    "\u00fcn\u00ef.txt",
    "[x].md",
    "!bang.md",
    "#hash.md",
    "notes/c.txt",
    "notes/deep/d.jpg",
    "build/e.log",
)


def assert_one_line(error: BaseException) -> None:
    """What the user sees for a refused file or query: one non-empty line."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"multi-line message: {message!r}"


def assert_media_tensor(tensor, per_clip: tuple[int, ...], max_clips: int) -> None:
    """Model input the encoder can take: float32, [clips, *per_clip], finite (a NaN would become a
    NaN embedding and poison every search)."""
    import torch

    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert tuple(tensor.shape[1:]) == per_clip and 1 <= tensor.shape[0] <= max_clips, tensor.shape
    assert torch.isfinite(tensor).all()


def assert_valid_query(terms) -> None:
    """What search.py needs of a parsed query: terms with finite weights (an inf weight makes a NaN
    query vector), non-empty stripped text, and not every weight zero."""
    import math

    assert terms and isinstance(terms, list)
    for weight, term in terms:
        assert isinstance(weight, float) and math.isfinite(weight), weight
        assert isinstance(term, str) and term and term == term.strip()
    assert any(weight != 0 for weight, _ in terms)
