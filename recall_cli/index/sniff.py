"""Decide a file's modality from its first bytes, with the extension as a tie-breaker.

Content wins over the name where the bytes are unambiguous (a PNG named .txt is an image);
containers that can hold either sound or pictures (MP4, Ogg, Matroska) use the extension.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
AUDIO_EXT = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aiff", ".aif"}
VIDEO_EXT = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv"}
TEXT_EXT = {
    ".txt",
    ".md",
    ".markdown",
    ".rst",
    ".org",
    ".tex",
    ".csv",
    ".tsv",
    ".json",
    ".yaml",
    ".yml",
    ".toml",
    ".ini",
    ".cfg",
    ".conf",
    ".log",
    ".html",
    ".htm",
    ".xhtml",
    ".xml",
    ".pdf",
    ".py",
    ".js",
    ".ts",
    ".tsx",
    ".jsx",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".rs",
    ".go",
    ".java",
    ".kt",
    ".swift",
    ".rb",
    ".php",
    ".sh",
    ".bash",
    ".zsh",
    ".fish",
    ".lua",
    ".pl",
    ".r",
    ".sql",
    ".css",
    ".scss",
    ".el",
    ".vim",
    ".hs",
    ".ml",
    ".scala",
    ".cs",
    ".m",
    ".jl",
    ".dart",
    ".nim",
}
# Known binary formats we cannot embed: skipped without reading them.
SKIP_EXT = {
    ".zip",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".7z",
    ".rar",
    ".zst",
    ".tar",
    ".iso",
    ".dmg",
    ".exe",
    ".dll",
    ".so",
    ".dylib",
    ".o",
    ".a",
    ".class",
    ".jar",
    ".pyc",
    ".bin",
    ".dat",
    ".db",
    ".sqlite",
    ".lance",
    ".pth",
    ".safetensors",
    ".pt",
    ".ckpt",
    ".npy",
    ".npz",
    ".parquet",
    ".woff",
    ".woff2",
    ".ttf",
    ".otf",
    ".doc",
    ".xls",
    ".ppt",
    ".docx",
    ".xlsx",
    ".pptx",
}

SNIFF_BYTES = 64


def sniff_bytes(head: bytes, suffix: str) -> str | None:
    """Modality for a file starting with `head`, or None when it is nothing we embed."""
    suffix = suffix.lower()
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image"
    if head[:6] in (b"GIF87a", b"GIF89a") or head.startswith(b"BM") and suffix == ".bmp":
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image"
    if head[:4] == b"RIFF":
        kind = head[8:12]
        return {b"WEBP": "image", b"WAVE": "audio", b"AVI ": "video"}.get(kind)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif"):
            return "image"
        if brand in (b"M4A ", b"M4B ", b"M4P ", b"F4A "):
            return "audio"
        return "audio" if suffix in AUDIO_EXT else "video"
    if head.startswith(b"fLaC") or head.startswith(b"ID3") or head[:4] == b"FORM":
        return "audio"
    if len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and suffix in AUDIO_EXT:
        return "audio"  # MPEG audio frame sync (mp3/aac without ID3)
    if head.startswith(b"OggS"):
        return "video" if suffix == ".ogv" else "audio"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "audio" if suffix in AUDIO_EXT else "video"
    if head.startswith(b"%PDF"):
        return "text"
    if suffix in SKIP_EXT:
        return None
    if suffix in TEXT_EXT or _looks_textual(head):
        return "text"
    return None


def _looks_textual(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end is fine
        return error.start >= len(head) - 3


def sniff_path(path: Path, size: int) -> str | None:
    """Modality of the file at `path` (None: not embeddable).  Empty files are text by extension
    only, so a zero-byte .jpg is still reported as a bad image rather than silently skipped."""
    suffix = path.suffix.lower()
    if size == 0:
        for modality, extensions in (
            ("image", IMAGE_EXT),
            ("audio", AUDIO_EXT),
            ("video", VIDEO_EXT),
            ("text", TEXT_EXT),
        ):
            if suffix in extensions:
                return modality
        return None
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    modality = sniff_bytes(head, suffix)
    if modality is None:  # broken headers: trust a media extension so the failure gets reported
        for candidate, extensions in (("image", IMAGE_EXT), ("audio", AUDIO_EXT), ("video", VIDEO_EXT)):
            if suffix in extensions:
                return candidate
    return modality
