"""ImageBind-Huge weights: download (resumable, checksummed), one-time conversion to per-trunk
safetensors in the user cache, and mmap loading.

Where the weights come from, first match wins:
  1. `--weights PATH` (passed to the factory) or $RECALL_IMAGEBIND_WEIGHTS: either the official
     `imagebind_huge.pth` or a folder already holding the converted `{vision,text,audio}.safetensors`;
  2. converted files in <cache>/imagebind-huge/ (cache = platformdirs user_cache_dir("recall"),
     or $RECALL_CACHE_DIR);
  3. <cache>/imagebind_huge.pth placed there by hand;
  4. download from IMAGEBIND_HUGE_URL into <cache>/imagebind_huge.pth.part (HTTP Range resume),
     verify SHA-256, convert, delete the .pth (the converted files hold the same numbers).

The converted files are written in the safetensors format by a streaming writer (one tensor in
memory at a time) and read back through numpy.memmap, so building a trunk touches no weight bytes
until they are used and a text-only query maps only the text trunk (~1.2 GB of 4.5 GB).

Which official key becomes which of ours is checkpoint.py's business.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from recall_cli.errors import RecallError

IMAGEBIND_HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
# SHA-256 of the official imagebind_huge.pth.  NOT KNOWN when this was written: Meta publishes no
# checksum and the file could not be downloaded from the development machines, so the pin is empty.
# While it is empty the download is trusted on first use: its SHA-256 is computed, recorded in the
# conversion manifest and becomes part of the model version.  Set the constant (or
# $RECALL_IMAGEBIND_SHA256) to the real value to have every download checked against it.
IMAGEBIND_HUGE_SHA256 = ""
SHA256_ENV = "RECALL_IMAGEBIND_SHA256"
WEIGHTS_ENV = "RECALL_IMAGEBIND_WEIGHTS"
URL_ENV = "RECALL_IMAGEBIND_URL"
CACHE_ENV = "RECALL_CACHE_DIR"
CHECKPOINT_NAME = "imagebind_huge.pth"
CONVERTED_DIR = "imagebind-huge"
TRUNK_FILES = ("vision", "text", "audio")
MANIFEST = "manifest.json"
CHUNK = 1 << 20


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("recall"))


def expected_sha256() -> str:
    return (os.environ.get(SHA256_ENV) or IMAGEBIND_HUGE_SHA256).strip().lower()


def no_weights_error(reason: str) -> RecallError:
    target = cache_dir() / CHECKPOINT_NAME
    return RecallError(
        f"ImageBind-Huge weights are not available ({reason}); download {IMAGEBIND_HUGE_URL} and put it at "
        f"{target} (or pass --weights PATH / set {WEIGHTS_ENV}), or use --model minilm for text-only search"
    )


# ------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 8):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str = "", progress: bool | None = None, timeout: float = 30.0) -> str:
    """Download `url` to `dest`, resuming a previous `dest.part` with an HTTP Range request.
    Returns the SHA-256 of the file.  Raises RecallError on network failure (the .part file is kept
    for the next attempt) or on a checksum mismatch (the .part file is deleted)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "recall"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the .part is complete
            return _finish(part, dest, sha256)
        raise no_weights_error(f"download failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise no_weights_error(f"download failed: {reason}") from None
    with response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        mode = "ab" if have else "wb"
        bar = _progress_bar(progress, total, have, dest.name)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError) as exc:
                        raise no_weights_error(f"download interrupted: {exc}; run again to resume") from None
                    if not block:
                        break
                    f.write(block)
                    if bar:
                        bar.advance(len(block))
        finally:
            if bar:
                bar.close()
        if total is not None and part.stat().st_size < total:
            raise no_weights_error(
                f"download interrupted at {part.stat().st_size} of {total} bytes; run again to resume"
            )
    return _finish(part, dest, sha256)


def _finish(part: Path, dest: Path, sha256: str) -> str:
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise RecallError(
            f"checksum mismatch for {dest.name}: expected {sha256}, got {digest}; "
            "the partial file was deleted, run again to re-download"
        )
    os.replace(part, dest)
    return digest


class _Bar:
    def __init__(self, total, done, name):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(f"downloading {name}", total=total, completed=done)

    def advance(self, n):
        self.progress.advance(self.task, n)

    def close(self):
        self.progress.stop()


def _progress_bar(progress: bool | None, total, done, name):
    if progress is None:
        progress = sys.stderr.isatty()
    return _Bar(total, done, name) if progress else None


# ------------------------------------------------------------------------------------------------
# safetensors: streaming writer, mmap reader
# ------------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors in the safetensors format, one tensor in memory at a time (atomic rename)."""
    import torch

    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata or {}}
    offset = 0
    items = sorted(tensors.items())
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": names[str(t.dtype).removeprefix("torch.")],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in items:
            t = t.detach().contiguous().cpu()
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            f.write(t.numpy().tobytes())
    os.replace(tmp, path)


def load_safetensors_mmap(path: Path) -> dict[str, Any]:
    """Tensors of a safetensors file backed by a private memory map (nothing read until used)."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.exists():
        raise RecallError(f"weights file missing: {path}")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        kind = _ST_DTYPES[info["dtype"]]
        chunk = mm[8 + n + a : 8 + n + b]
        if kind == "bfloat16":
            t = torch.from_numpy(chunk.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(chunk.view(np.dtype(kind)))
        out[name] = t.reshape(info["shape"])
    return out


# ------------------------------------------------------------------------------------------------
# conversion and resolution
# ------------------------------------------------------------------------------------------------


def convert_checkpoint(checkpoint: Path, out_dir: Path, sha256: str | None = None, config=None) -> dict:
    """Official checkpoint -> out_dir/{vision,text,audio}.safetensors + manifest.json (written last,
    so a folder with a manifest is complete).  Checks strictly that every trunk key is present."""
    import torch

    from recall_cli.models.imagebind.checkpoint import check_trunk_state_dicts, convert_official_state_dict

    checkpoint = Path(checkpoint)
    try:
        official = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise RecallError(f"cannot read ImageBind checkpoint {checkpoint}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(official, dict) and "model" in official and isinstance(official["model"], dict):
        official = official["model"]
    try:
        trunks = convert_official_state_dict(official)
        check_trunk_state_dicts(trunks, config)
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:300]
        raise RecallError(f"{checkpoint} is not an ImageBind-Huge checkpoint: {reason}") from None
    sha256 = sha256 or sha256_file(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for kind, sd in trunks.items():
        save_safetensors(sd, out_dir / f"{kind}.safetensors", {"source_sha256": sha256, "trunk": kind})
    manifest = {
        "source": str(checkpoint),
        "source_sha256": sha256,
        "trunks": list(trunks),
        "format": "recall-imagebind-v1",
        "created": time.time(),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _converted(folder: Path) -> tuple[dict[str, Path], str] | None:
    manifest = folder / MANIFEST
    if not manifest.exists():
        return None
    info = json.loads(manifest.read_text())
    files = {k: folder / f"{k}.safetensors" for k in TRUNK_FILES}
    if not all(p.exists() for p in files.values()):
        return None
    return files, _version(info.get("source_sha256", ""))


def _version(sha: str) -> str:
    if sha and sha == expected_sha256():
        return "official"
    return f"sha256-{sha[:12]}" if sha else "unknown"


def imagebind_trunk_files(
    weights: str | Path | None = None, download_ok: bool = True, progress: bool | None = None, config=None
) -> tuple[dict[str, Path], str]:
    """{"vision"|"text"|"audio": safetensors path} and a version string, converting (and
    downloading) once if needed.  RecallError with instructions when no weights can be had.
    `config` (default HUGE_CONFIG) is only for tests with small checkpoints."""
    given = weights or os.environ.get(WEIGHTS_ENV)
    root = cache_dir()
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            found = _converted(path)
            if found is None:
                raise RecallError(f"{path} holds no converted ImageBind weights; pass the imagebind_huge.pth file")
            return found
        if not path.is_file():
            raise RecallError(f"ImageBind weights not found at {path}")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        out = root / f"{CONVERTED_DIR}-{key}"
        found = _converted(out)
        if found is None:
            _say(f"converting {path} to per-trunk safetensors in {out} (once)")
            convert_checkpoint(path, out, config=config)
            found = _converted(out)
        return found
    out = root / CONVERTED_DIR
    found = _converted(out)
    if found is not None:
        return found
    checkpoint = root / CHECKPOINT_NAME
    downloaded = False
    sha = None
    if not checkpoint.exists():
        if not download_ok:
            raise no_weights_error("not downloaded yet")
        url = os.environ.get(URL_ENV) or IMAGEBIND_HUGE_URL
        _say(f"downloading ImageBind-Huge weights (4.5 GB) from {url}")
        sha = download(url, checkpoint, expected_sha256(), progress=progress)
        if not expected_sha256():
            _say(f"note: no pinned SHA-256 for the checkpoint; recorded sha256={sha}")
        downloaded = True
    elif expected_sha256():
        sha = sha256_file(checkpoint)
        if sha != expected_sha256():
            raise RecallError(f"{checkpoint} has sha256 {sha}, expected {expected_sha256()}; delete it and run again")
    _say(f"converting {checkpoint} to per-trunk safetensors in {out} (once)")
    convert_checkpoint(checkpoint, out, sha, config=config)
    if downloaded:
        checkpoint.unlink(missing_ok=True)
    found = _converted(out)
    assert found is not None
    return found


def _say(message: str) -> None:
    print(f"recall: {message}", file=sys.stderr)
