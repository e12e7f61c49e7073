"""Modality sniffing by content, and text extraction from notes, HTML and PDF."""

import io
import wave

import pytest
from PIL import Image

from recall_cli.index.sniff import sniff_path
from recall_cli.models.base import DecodeError
from recall_cli.models.textextract import extract_text


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(b"\x00\x00" * 1600)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("photo.png", png_bytes(), "image"),
        ("not-really.txt", png_bytes(), "image"),  # content beats the extension
        ("sound.wav", wav_bytes(), "audio"),
        ("README", b"plain words with no extension\n", "text"),
        ("script.py", b"print('hi')\n", "text"),
        ("blob.xyz", bytes(range(256)) * 4, None),
        ("archive.zip", b"PK\x03\x04" + bytes(60), None),
        ("clip.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(50), "video"),
        ("song.m4a", b"\x00\x00\x00\x18ftypM4A " + bytes(50), "audio"),
        ("empty.jpg", b"", "image"),  # empty media is reported as a bad image later, not skipped
    ],
)
def test_sniff(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert sniff_path(path, len(content)) == expected


def test_html_is_stripped_to_text(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><style>p{color:red}</style><script>var secret=1</script></head>"
        "<body><h1>Train times</h1><p>Berlin &amp; Munich</p></body></html>"
    )
    text = extract_text(page)
    assert "Train times" in text and "Berlin & Munich" in text
    assert "secret" not in text and "color" not in text


def test_utf8_bom_and_utf16_are_read(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffcafé".encode("utf-8"))
    (tmp_path / "wide.txt").write_bytes("naïve text".encode("utf-16"))
    assert extract_text(tmp_path / "bom.txt") == "café"
    assert extract_text(tmp_path / "wide.txt") == "naïve text"


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"\x00\x01\x02binary\x00" * 10, "binary"),
        (bytes(range(128, 256)) * 20, "not UTF-8"),
        (b"   \n\t  ", "no text"),
    ],
)
def test_unusable_text_gives_a_one_line_reason(tmp_path, content, reason):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as caught:
        extract_text(path)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a text stream, written by hand (byte offsets computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_text_is_extracted(tmp_path):
    path = tmp_path / "doc.pdf"
    path.write_bytes(minimal_pdf("Quarterly tax return for the bakery"))
    assert sniff_path(path, path.stat().st_size) == "text"
    assert "Quarterly tax return for the bakery" in extract_text(path)


def test_damaged_pdf_is_a_decode_error(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n garbage garbage")
    with pytest.raises(DecodeError):
        extract_text(path)
