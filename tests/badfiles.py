"""A corpus of every kind of bad file a person's folders hold, made from real encoders, and a way to
run `recall` as an ordinary user (tests run as root here, and root reads every file)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO
from restricted import LAUNCH, binds

# file name -> words its one-line reason must hold (the good files are indexed, see GOOD)
BAD = {
    "empty.txt": "empty file",
    "empty.jpg": "empty file",
    "empty.mp4": "empty file",
    "truncated.jpg": "cannot decode image",
    "truncated.png": "cannot decode image",
    "truncated.mp4": "no video stream",
    "bad-utf8.txt": "not UTF-8",
    "binary-named.txt": "binary data",
    "bomb.png": "image too large",
    "audio-only.mp4": "no video stream",
    "broken-link.txt": "broken symlink",
    "self-loop": "symlink loop",
    "locked.txt": "Permission denied",
}
GOOD = [
    "plain.txt",
    "name\nwith newline.txt",
    "-rf.txt",
    os.fsdecode(b"caf\xe9-latin1.txt"),
    "good.jpg",
    "good.mp4",
    "good.mp3",
    "truncated.mp3",
    "short.wav",
    "long.m4a",
    "long.flac",
    "loop/note.md",
]


def image_bytes(fmt: str, size=(64, 48), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def write_video(path: Path, seconds: int = 1, video: bool = True, audio: bool = False) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        if video:
            vstream = container.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
            for i in range(10 * seconds):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20 % 255, np.uint8), format="rgb24")
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
        if audio:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
            _encode_tone(container, astream, 16000 * seconds, 16000)


def _encode_tone(container, stream, samples: int, rate: int) -> None:
    import av

    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
    frame.sample_rate = rate
    for packet in list(stream.encode(frame)) + list(stream.encode()):
        container.mux(packet)


def write_mp3(path: Path, seconds: int = 2) -> None:
    import av

    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=16000)
        stream.layout = "mono"
        _encode_tone(container, stream, 16000 * seconds, 16000)


def write_long_m4a(path: Path, seconds: int, rate: int = 8000) -> None:
    """A long AAC file made in well under a second: one encoded second, its packets muxed again
    and again with shifted timestamps (a real, playable file)."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 12000
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        packets = [p for p in list(stream.encode(frame)) + list(stream.encode()) if p.pts is not None]
        samples = 1024  # per AAC frame: packets are stamped back to back
        for number in range(seconds * rate // samples):
            packet = packets[number % len(packets)]
            copy = av.Packet(bytes(packet))
            copy.stream, copy.time_base, copy.duration = stream, packet.time_base, samples
            copy.pts = copy.dts = number * samples
            container.mux(copy)


def make_bad_corpus(root: Path) -> Path:
    """Every bad input of issue 8 beside good files of every modality."""
    import soundfile
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "plain.txt").write_text("a perfectly fine note about red apples")
    (root / "name\nwith newline.txt").write_text("a note whose file name holds a newline")
    (root / "-rf.txt").write_text("a note whose file name starts with a dash")
    with open(os.fsencode(root) + b"/caf\xe9-latin1.txt", "wb") as handle:
        handle.write(b"a note whose file name is latin-1 bytes, not UTF-8")
    for name in ("empty.txt", "empty.jpg", "empty.mp4"):
        (root / name).write_bytes(b"")
    (root / "good.jpg").write_bytes(image_bytes("JPEG"))
    jpeg, png = image_bytes("JPEG", (320, 240)), image_bytes("PNG", (320, 240))
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    write_video(root / "good.mp4")
    mp4 = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    write_video(root / "audio-only.mp4", video=False, audio=True)
    write_mp3(root / "good.mp3")
    mp3 = (root / "good.mp3").read_bytes()
    (root / "truncated.mp3").write_bytes(mp3[: len(mp3) // 3])  # what is left still plays
    (root / "bad-utf8.txt").write_bytes(b"caf\xff\xfe \xfa\xfb " * 20)
    (root / "binary-named.txt").write_bytes(bytes(range(256)) * 4)
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # 400 Mpx, 49 KB on disk
    soundfile.write(root / "short.wav", np.zeros(1600, np.float32), 16000)  # 0.1 s
    soundfile.write(
        root / "long.flac",
        (0.05 * np.sin(np.arange(8000 * 3 * 3600) * 0.05)).astype(np.float32),
        8000,
        subtype="PCM_16",
    )  # 3 hours
    write_long_m4a(root / "long.m4a", 3 * 3600)
    (root / "locked.txt").write_text("private words")
    os.chmod(root / "locked.txt", 0)
    os.symlink(root / "nowhere.txt", root / "broken-link.txt")
    os.symlink("self-loop", root / "self-loop")
    (root / "loop").mkdir()
    (root / "loop" / "note.md").write_text("a note beside a directory link that loops back")
    os.symlink("..", root / "loop" / "up")  # a directory cycle: must not be walked forever
    return root


def run_recall_as_user(*args, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`recall` in a fresh process bound by file permissions (as root: without the capabilities
    that bypass them; anyone else: as is); output as bytes, file names may not be UTF-8."""
    env = dict(
        os.environ,
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local/share"),
        RECALL_DEVICE="cpu",
    )
    command = [sys.executable, "-m", "recall_cli", *map(str, args)]
    if os.geteuid() == 0:
        command = [sys.executable, "-c", LAUNCH, "nodac", "0", *command[1:]]
    return subprocess.run(command, capture_output=True, env=env, timeout=timeout, cwd=REPO)


def permissions_bind(folder: Path) -> str | None:
    """None when run_recall_as_user is bound by file permissions here, else why not."""
    if os.geteuid() != 0:
        return None
    works, why = binds(("nodac", 0), folder)
    return None if works else f"cannot drop root's file capabilities here: {why}"


def remove_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if not path.is_symlink():
            try:
                os.chmod(path, 0o755)
            except OSError:
                pass
    shutil.rmtree(folder, ignore_errors=True)
